// Command coredns is the cluster DNS of the local control plane's real node: CoreDNS built from the Go module
// proxy with only the plugins a test cluster needs (Service and pod names from the API server), so it builds in
// a fraction of the full CoreDNS's time.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins of the Corefile that hack/cluster/node-up.sh writes, in the order they run.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "ready", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
