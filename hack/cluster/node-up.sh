#!/usr/bin/env bash
# Join one real node to the local control plane that hack/cluster/up.sh started: containerd and runc (Debian's
# packages) with a CNI bridge, a kubelet, kube-proxy (iptables) and CoreDNS (host processes built by
# `build.sh --node`), plus the images of `hack/images.sh` imported into containerd. Real pods run there.
#
# up.sh runs this itself when CODEFORGE_REAL_NODE=1 (it then also serves the API on the node's address);
# hack/cluster/node-down.sh (run by down.sh) stops it and restores the host: links, routes, iptables chains,
# sysctls, mounts.
#
# The node is tainted codeforge.io/real-node=true:NoSchedule and labelled codeforge.io/node=real, so kwok's
# pretend pods never land on it and a pod that wants it says so (toleration + nodeSelector).
#
# Needs root. Environment (besides up.sh's): CODEFORGE_NODE_BRIDGE (default codeforge0),
# CODEFORGE_NODE_SUBNET (default 10.245.0.0/24; the node's address is its first host, pods get the rest).
# Only one real node per machine: a second one is refused while the first runs.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
STATE="${CODEFORGE_CLUSTER_DIR:-${CACHE}/cluster}"
WAIT="${CODEFORGE_CLUSTER_WAIT:-60}"
NODE_STATE="${STATE}/node"
LOGS="${STATE}/logs"
PKI="${STATE}/pki"
OWNER_FILE=/run/codeforge-node.owner

log() { printf '>> [node-up %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "a real node needs root (containerd, network links, iptables)"
[[ -f "${STATE}/cluster.env" ]] || die "no control plane in ${STATE}: start it with hack/cluster/up.sh"
# shellcheck source=/dev/null # KEY=value lines written by up.sh
source "${STATE}/cluster.env"
[[ -n "${NODE_IP:-}" ]] || die "the control plane in ${STATE} was started without CODEFORGE_REAL_NODE=1"

if [[ -f "${OWNER_FILE}" ]]; then
  other="$(cat "${OWNER_FILE}")"
  if [[ "${other}" != "${STATE}" && -f "${other}/node/pids/containerd.pid" ]] &&
    kill -0 "$(cat "${other}/node/pids/containerd.pid")" 2>/dev/null; then
    die "a real node of ${other} runs on this machine already (one at a time): stop it with CODEFORGE_CLUSTER_DIR=${other} hack/cluster/down.sh"
  fi
fi

started=${SECONDS}
bash "${HERE}/../ensure-apt.sh" containerd runc containernetworking-plugins iptables conntrack
CODEFORGE_CACHE="${CACHE}" bash "${HERE}/build.sh" --node
NODE_BIN="$(CODEFORGE_CACHE="${CACHE}" bash "${HERE}/build.sh" --node --print-bin-dir)"
CODEFORGE_CACHE="${CACHE}" bash "${HERE}/../images.sh"
# shellcheck source=/dev/null # KEY=value lines
source <(CODEFORGE_CACHE="${CACHE}" bash "${HERE}/../images.sh" --print-env)
export CONTAINERS_STORAGE_CONF CONTAINERS_CONF

BRIDGE="${NODE_BRIDGE}"
PREFIX="${NODE_SUBNET#*/}"
NODE_NAME="real-node-0"
SOCK="/run/codeforge-node/containerd.sock"
RUN_DIR="/run/codeforge-node"
mkdir -p "${NODE_STATE}"/{pids,cni/net.d,cni/ipam,kubelet,pod-logs} "${RUN_DIR}"
echo "${STATE}" >"${OWNER_FILE}"
NPIDS="${NODE_STATE}/pids"
RESTORE="${NODE_STATE}/restore.sh"  # what node-down.sh runs last, written as the host is changed
: >"${RESTORE}"

on_error() {
  local rc=${1:-$?}
  trap - ERR INT TERM
  echo "error: the real node did not start (exit ${rc}); last lines of its logs (all in ${LOGS}):" >&2
  for f in "${LOGS}"/{containerd,kubelet,kube-proxy,coredns}.log; do
    [[ -s "${f}" ]] || continue
    echo "---- ${f}" >&2
    tail -n 15 "${f}" >&2
  done
  exit "${rc}"
}
trap on_error ERR
trap 'on_error 130' INT
trap 'on_error 143' TERM

# --- host: sysctls, a bridge with the node's address, routes, firewall chains ------------------------------------
# Every sysctl that the CNI bridge plugin or kube-proxy may set, restored by node-down.sh as it was.
for key in net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables \
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_be_liberal \
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait \
  net.ipv4.vs.conntrack net.ipv6.conf.all.forwarding; do
  value="$(sysctl -n "${key}" 2>/dev/null)" || continue
  echo "sysctl -q -w '${key}=${value}' || true" >>"${RESTORE}"
done
# Traffic between pods and Services crosses the bridge: it must see iptables (kube-proxy's NAT).
sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

log "bridge ${BRIDGE} with the node address ${NODE_IP}/${PREFIX}; pods in ${NODE_SUBNET}"
if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
  ip link add "${BRIDGE}" type bridge
  echo "ip link del '${BRIDGE}' 2>/dev/null || true" >>"${RESTORE}"
fi
ip addr replace "${NODE_IP}/${PREFIX}" dev "${BRIDGE}"
ip link set "${BRIDGE}" up
# Nothing bound for a Service address or a kwok pod's (pretend) address may leave the machine: such packets that
# kube-proxy does not rewrite end in a blackhole instead of the default route.
for cidr in "${SERVICE_CIDR}" "${KWOK_POD_CIDR}"; do
  if ip route add blackhole "${cidr}" 2>/dev/null; then
    echo "ip route del blackhole '${cidr}' 2>/dev/null || true" >>"${RESTORE}"
  fi
done

# CODEFORGE-NODE-FWD: pods talk to pods (and, through the node address, to the host) only; nothing they send is
# forwarded anywhere else. CODEFORGE-NODE-IN: the API server listens on every address for the pods' sake; only
# loopback and the bridge may reach it.
for fam in iptables ip6tables; do
  for chain in CODEFORGE-NODE-FWD CODEFORGE-NODE-IN; do
    "${fam}" -w -N "${chain}" 2>/dev/null || "${fam}" -w -F "${chain}"
  done
  "${fam}" -w -A CODEFORGE-NODE-FWD -i "${BRIDGE}" -o "${BRIDGE}" -j RETURN
  "${fam}" -w -A CODEFORGE-NODE-FWD -i "${BRIDGE}" -j DROP
  "${fam}" -w -A CODEFORGE-NODE-IN -i lo -j RETURN
  "${fam}" -w -A CODEFORGE-NODE-IN -i "${BRIDGE}" -j RETURN
  "${fam}" -w -A CODEFORGE-NODE-IN -p tcp --dport "${API_PORT}" -j DROP
  # (A node that crashed may have left its jumps: never two.)
  while "${fam}" -w -D FORWARD -j CODEFORGE-NODE-FWD 2>/dev/null; do :; done
  while "${fam}" -w -D INPUT -j CODEFORGE-NODE-IN 2>/dev/null; do :; done
  "${fam}" -w -I FORWARD 1 -j CODEFORGE-NODE-FWD
  "${fam}" -w -I INPUT 1 -j CODEFORGE-NODE-IN
  # One line: node-down.sh runs restore.sh's lines in reverse order.
  echo "${fam} -w -D FORWARD -j CODEFORGE-NODE-FWD; ${fam} -w -D INPUT -j CODEFORGE-NODE-IN; ${fam} -w -F CODEFORGE-NODE-FWD; ${fam} -w -X CODEFORGE-NODE-FWD; ${fam} -w -F CODEFORGE-NODE-IN; ${fam} -w -X CODEFORGE-NODE-IN; true" >>"${RESTORE}"
done
# The kubelet and kube-proxy make KUBE-* chains in every table (iptables and ip6tables): node-down.sh removes the
# ones that were not there before. Same for the cgroup that containerd puts the containers in.
for fam in iptables ip6tables; do
  "${fam}-save" 2>/dev/null | awk -v fam="${fam}" '/^\*/ {t=substr($0, 2)} /^:KUBE-/ {print fam, t, substr($1, 2)}'
done >"${NODE_STATE}/chains.before"
for dir in /sys/fs/cgroup/*/k8s.io; do
  [[ -d "${dir}" ]] && echo "${dir}"
done >"${NODE_STATE}/cgroups.before"
# Network namespaces that exist now are not ours; node-down.sh removes only those that appear later.
ls /run/netns 2>/dev/null >"${NODE_STATE}/netns.before" || true
for dir in /var/log/containers /var/log/pods; do [[ -d "${dir}" ]] || echo "rm -rf ${dir}" >>"${RESTORE}"; done

# --- certificates: the kubelet (client and serving), kube-proxy, CoreDNS -----------------------------------------
new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
sign() {
  local name="$1" subject="$2" ext="$3"
  new_key "${PKI}/${name}.key"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subject}" -out "${PKI}/${name}.csr" 2>/dev/null
  printf '%s\n' "${ext}" >"${PKI}/${name}.ext"
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "${PKI}/${name}.ext" -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr" "${PKI}/${name}.ext"
  chmod 600 "${PKI}/${name}.key"
}
CLIENT_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
sign kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" "${CLIENT_EXT}"
sign kubelet-serving "/CN=${NODE_NAME}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}"
sign kube-proxy "/CN=system:kube-proxy" "${CLIENT_EXT}"
# CoreDNS reads Services, EndpointSlices, Namespaces and Pods of every namespace.
sign coredns "/O=system:masters/CN=coredns" "${CLIENT_EXT}"
kubeconfig() {
  cat >"${STATE}/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: codeforge-local
  cluster: {server: "${API_SERVER}", certificate-authority: "${PKI}/ca.crt"}
users:
- name: $1
  user: {client-certificate: "${PKI}/$1.crt", client-key: "${PKI}/$1.key"}
contexts:
- name: codeforge-local
  context: {cluster: codeforge-local, user: $1}
current-context: codeforge-local
EOF
  chmod 600 "${STATE}/$1.kubeconfig"
}
kubeconfig kubelet
kubeconfig kube-proxy
kubeconfig coredns

free_ports() {
  python3 -c "
import socket
socks = [socket.socket() for _ in range($1)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))"
}
read -r KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT DNS_READY_PORT KUBELET_PORT < <(free_ports 5)

start() {
  local name="$1" binary="$2"
  shift 2
  setsid "${binary}" "$@" >"${LOGS}/${name}.log" 2>&1 </dev/null &
  echo $! >"${NPIDS}/${name}.pid"
}
alive() { kill -0 "$(cat "${NPIDS}/$1.pid")" 2>/dev/null; }
wait_for() {
  local component="$1" what="$2" deadline=$((SECONDS + WAIT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    alive "${component}" || { echo "error: ${component} exited while waiting for ${what} (log: ${LOGS}/${component}.log)" >&2; return 1; }
    ((SECONDS < deadline)) || { echo "error: timed out after ${WAIT}s waiting for ${what} (log: ${LOGS}/${component}.log)" >&2; return 1; }
    sleep 0.2
  done
}
kubectl_admin() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG}" "$@"; }
ctr_k8s() { ctr --address "${SOCK}" --namespace k8s.io "$@"; }

# --- containerd: its own socket, root and state; runc; the CNI bridge ----------------------------------------------
log "containerd $(containerd --version | awk '{print $3}') on ${SOCK}"
PAUSE_IMAGE="localhost/codeforge-pause:${KUBERNETES_VERSION}"
cat >"${NODE_STATE}/cni/net.d/10-codeforge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "codeforge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${NODE_SUBNET}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${NODE_STATE}/cni/ipam"
      }
    }
  ]
}
EOF
cat >"${NODE_STATE}/containerd.toml" <<EOF
version = 2
root = "${NODE_STATE}/containerd"
state = "${RUN_DIR}/state"
[grpc]
  address = "${SOCK}"
[ttrpc]
  address = "${SOCK}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: containers may only raise their OOM score, never lower it.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_STATE}/cni/net.d"
EOF
start containerd containerd --config "${NODE_STATE}/containerd.toml"
wait_for containerd "containerd's socket" ctr --address "${SOCK}" version

# The pause image: the Go pause binary alone on an empty root filesystem (made once, then cached).
pause_tar="${ARCHIVE_DIR}/codeforge-pause-$(sha256sum "${NODE_BIN}/pause" | cut -c1-12).tar"
if [[ ! -f "${pause_tar}" ]]; then
  ctr_id="$(buildah from scratch)"
  buildah copy --quiet "${ctr_id}" "${NODE_BIN}/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "${ctr_id}"
  buildah commit --quiet --rm "${ctr_id}" "${PAUSE_IMAGE}" >/dev/null
  podman save --quiet --format docker-archive -o "${pause_tar}.tmp" "${PAUSE_IMAGE}"
  mv -f "${pause_tar}.tmp" "${pause_tar}"
fi
t=${SECONDS}
for archive in "${pause_tar}" "${ARCHIVE_DIR}"/codeforge-{redis,agent,operator}.tar; do
  ctr_k8s images import "${archive}" >/dev/null
done
log "imported the pause, redis, agent and operator images in $((SECONDS - t))s"

# --- kubelet -----------------------------------------------------------------------------------------------------
: >"${NODE_STATE}/resolv.conf"  # pods resolve through CoreDNS only (no search domains of the host)
cat >"${NODE_STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://${SOCK}
failCgroupV1: false
cgroupDriver: cgroupfs
# No QoS cgroup tree of the kubelet's own on the host; runc still applies each container's limits.
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization:
  mode: AlwaysAllow
clusterDNS: [${NODE_IP}]
clusterDomain: cluster.local
resolvConf: ${NODE_STATE}/resolv.conf
podLogsDir: ${NODE_STATE}/pod-logs
registerWithTaints:
  - {key: codeforge.io/real-node, value: "true", effect: NoSchedule}
# Never collect the imported images (there is no registry to pull them again from).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
serializeImagePulls: false
maxPods: 110
EOF
log "kubelet ${KUBERNETES_VERSION} as node ${NODE_NAME} (${NODE_IP})"
start kubelet "${NODE_BIN}/kubelet" \
  --config="${NODE_STATE}/kubelet.yaml" \
  --kubeconfig="${STATE}/kubelet.kubeconfig" \
  --hostname-override="${NODE_NAME}" \
  --node-ip="${NODE_IP}" \
  --node-labels="codeforge.io/node=real" \
  --root-dir="${NODE_STATE}/kubelet" \
  --cert-dir="${NODE_STATE}/kubelet/pki" \
  --v=1

# --- kube-proxy (iptables) and CoreDNS ------------------------------------------------------------------------------
cat >"${NODE_STATE}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${STATE}/kube-proxy.kubeconfig}
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${NODE_SUBNET}
healthzBindAddress: 127.0.0.1:${PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
nodePortAddresses: [${NODE_IP}/32]
iptables: {localhostNodePorts: false}
# Zero: leave the host's conntrack table size and timeouts as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "${NODE_BIN}/kube-proxy" --config="${NODE_STATE}/kube-proxy.yaml" --v=1
echo "'${NODE_BIN}/kube-proxy' --cleanup >/dev/null 2>&1 || true" >>"${RESTORE}"

cat >"${NODE_STATE}/Corefile" <<EOF
.:53 {
    bind ${NODE_IP}
    errors
    ready 127.0.0.1:${DNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${STATE}/coredns.kubeconfig codeforge-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
start coredns "${NODE_BIN}/coredns" -conf "${NODE_STATE}/Corefile"

wait_for kubelet "node ${NODE_NAME} to be Ready" kubectl_admin wait --for=condition=Ready "node/${NODE_NAME}" --timeout=1s
wait_for kube-proxy "kube-proxy's health" curl -fsS "http://127.0.0.1:${PROXY_HEALTHZ_PORT}/healthz"
wait_for coredns "CoreDNS ready" curl -fsS "http://127.0.0.1:${DNS_READY_PORT}/ready"

cat >>"${STATE}/cluster.env" <<EOF
REAL_NODE=${NODE_NAME}
REAL_NODE_BIN_DIR=${NODE_BIN}
CONTAINERD_ADDRESS=${SOCK}
AGENT_IMAGE=${AGENT_IMAGE}
OPERATOR_IMAGE=${OPERATOR_IMAGE}
REDIS_IMAGE=${REDIS_IMAGE}
EOF
trap - ERR INT TERM
log "node ${NODE_NAME} Ready in $((SECONDS - started))s (taint codeforge.io/real-node=true:NoSchedule, label codeforge.io/node=real)"
