#!/usr/bin/env bash
# Build the local Kubernetes control plane from the Go module proxy: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok and helm, every version pinned in versions.env and
# every dependency pinned by the go.mod/go.sum files under hack/cluster/go/.
#
# The binaries land in $CODEFORGE_CACHE/k8s-<v>-etcd-<v>-kwok-<v>-helm-<v>/bin (CODEFORGE_CACHE defaults to
# ~/.cache/codeforge), Go's module and build caches in $CODEFORGE_CACHE/go/. Only the first run on a machine
# builds; a later run checks a stamp per binary and returns at once.
#
# Usage: hack/cluster/build.sh [--node] [--print-bin-dir | BINARY...]
#   --node            the real node's kubelet, kube-proxy, coredns and pause (own directory, own stamps)
#   --print-bin-dir   print the binary directory and exit (builds nothing)
#   BINARY...         build only these (e.g. `kubectl helm` for hack/kind.sh); default: all seven
# Environment: CODEFORGE_CACHE, CODEFORGE_BUILD_JOBS (go build -p, default: nproc).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null # versions.env: plain KEY=value lines
source "${HERE}/versions.env"

CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
BIN_DIR="${CACHE}/k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}/bin"
# --node: the real node's binaries instead (kubelet, kube-proxy, CoreDNS; hack/cluster/node-up.sh), in a
# directory of their own so building them never waits on, nor invalidates, the control plane's build.
NODE=false
if [[ "${1:-}" == "--node" ]]; then
  NODE=true
  shift
  BIN_DIR="${CACHE}/node-k8s-${KUBERNETES_VERSION}-coredns-${COREDNS_VERSION}/bin"
fi

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "${BIN_DIR}"
  exit 0
fi

log() { printf '>> [cluster-build %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

k8s_minor="${KUBERNETES_VERSION#v}"
k8s_major="${k8s_minor%%.*}"
k8s_minor="${k8s_minor#*.}"
k8s_minor="${k8s_minor%%.*}"

ldflags_for() {
  local name="$1" flags="-s -w" pkg
  case "${name}" in
    kube-*|kubectl|kubelet)
      # What `kubectl version`, clients and Helm's capabilities see (as in kubernetes/hack/lib/version.sh).
      for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        flags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
        flags+=" -X ${pkg}.gitMajor=${k8s_major} -X ${pkg}.gitMinor=${k8s_minor}"
        if [[ -n "${KUBERNETES_GIT_COMMIT:-}" ]]; then
          flags+=" -X ${pkg}.gitCommit=${KUBERNETES_GIT_COMMIT} -X ${pkg}.gitTreeState=clean"
        fi
        flags+=" -X ${pkg}.buildDate=${KUBERNETES_BUILD_DATE}"
      done
      ;;
    etcd)
      flags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
      ;;
    coredns)
      flags+=" -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
      ;;
    kwok)
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION}"
      ;;
    helm)
      flags+=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
      flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      # The Kubernetes version `helm template` assumes without a cluster.
      for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
      done
      ;;
  esac
  echo "${flags}"
}

# A stamp records what a binary was built from: the go.mod/go.sum its module was resolved with, its sources and
# its -ldflags (which carry the pinned versions). A binary whose stamp still matches is not built again.
fingerprint() {
  local name="$1" mod_dir="$2"
  {
    cat "${HERE}/go/${mod_dir}/go.mod" "${HERE}/go/${mod_dir}/go.sum"
    find "${HERE}/go/${mod_dir}" -maxdepth 1 -name '*.go' -exec cat {} +
    ldflags_for "${name}"
  } | sha256sum | cut -d' ' -f1
}

is_current() {
  local name="$1" mod_dir="$2"
  [[ -x "${BIN_DIR}/${name}" && -f "${BIN_DIR}/.${name}.stamp" ]] &&
    [[ "$(cat "${BIN_DIR}/.${name}.stamp")" == "$(fingerprint "${name}" "${mod_dir}")" ]]
}

# Everything to build: binary name, module folder under go/, package path.
TARGETS=(
  "etcd etcd ."
  "kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler kubernetes k8s.io/kubernetes/cmd/kube-scheduler"
  "kubectl kubernetes k8s.io/kubernetes/cmd/kubectl"
  "kwok kwok sigs.k8s.io/kwok/cmd/kwok"
  "helm helm helm.sh/helm/v3/cmd/helm"
)
if ${NODE}; then
  # go/node: the kubernetes module's go.mod with the go.sum entries the kubelet and kube-proxy need beyond it.
  TARGETS=(
    "kubelet node k8s.io/kubernetes/cmd/kubelet"
    "kube-proxy node k8s.io/kubernetes/cmd/kube-proxy"
    "coredns coredns ."
    "pause pause ."
  )
fi

names=" "
for target in "${TARGETS[@]}"; do names+="${target%% *} "; done
wanted=("$@")
for name in "${wanted[@]}"; do
  [[ "${names}" == *" ${name} "* ]] || die "unknown binary '${name}'; usage: $0 [--node] [--print-bin-dir | BINARY...] with BINARY one of${names}"
done
# missing: the wanted targets whose binary is absent or stale
find_missing() {
  missing=()
  local target name mod_dir _pkg
  for target in "${TARGETS[@]}"; do
    read -r name mod_dir _pkg <<<"${target}"
    if [[ ${#wanted[@]} -gt 0 && " ${wanted[*]} " != *" ${name} "* ]]; then
      continue
    fi
    is_current "${name}" "${mod_dir}" || missing+=("${target}")
  done
}
find_missing
if [[ ${#missing[@]} -eq 0 ]]; then
  log "up to date: ${BIN_DIR}"
  exit 0
fi

# One build at a time per binary directory (make cluster-build and a test run may start together).
mkdir -p "${BIN_DIR}"
exec 9>"${BIN_DIR}/.build.lock"
if ! flock --nonblock 9; then
  log "another build.sh is building into ${BIN_DIR}: waiting for it"
  flock 9
  find_missing
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "up to date: ${BIN_DIR}"
    exit 0
  fi
fi

command -v go >/dev/null || die "Go ${GO_MIN_VERSION} or newer is needed to build the control plane (https://go.dev/dl/)"
go_version="$(go env GOVERSION)"  # e.g. go1.26.8
go_version="${go_version#go}"
if [[ "$(printf '%s\n%s\n' "${GO_MIN_VERSION}" "${go_version}" | sort -V | head -n1)" != "${GO_MIN_VERSION}" ]]; then
  die "Go ${GO_MIN_VERSION} or newer is needed, found ${go_version}"
fi

export GOMODCACHE="${CACHE}/go/mod"
export GOCACHE="${CACHE}/go/build"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false -p=${CODEFORGE_BUILD_JOBS:-$(nproc)}"
export CGO_ENABLED=0
mkdir -p "${BIN_DIR}" "${GOMODCACHE}" "${GOCACHE}"

log "Go ${go_version}; building ${#missing[@]} binaries into ${BIN_DIR}"
log "module cache ${GOMODCACHE}, build cache ${GOCACHE} (a cold build fetches ~1.4 GB of modules, fills ~5 GB of build cache and takes about 15-20 min on 2 cores)"
total_start=${SECONDS}
downloaded=()
for target in "${missing[@]}"; do
  read -r name mod_dir pkg <<<"${target}"
  mod_path="${HERE}/go/${mod_dir}"
  if [[ " ${downloaded[*]-} " != *" ${mod_dir} "* ]]; then
    log "downloading the modules of go/${mod_dir} (verified against its go.sum)"
    (cd "${mod_path}" && go mod download) || die "go mod download failed in ${mod_path}"
    downloaded+=("${mod_dir}")
  fi
  log "building ${name} (${pkg})"
  start=${SECONDS}
  tmp="${BIN_DIR}/.${name}.tmp"
  # A heartbeat so a long compile shows it is alive. Its sleep is killed with it: an orphaned sleep would keep
  # this script's stdout open, and a reader of that pipe would wait for it.
  (
    trap 'kill "${nap}" 2>/dev/null; exit 0' TERM
    while true; do
      sleep 60 & nap=$!
      wait "${nap}"
      log "   still building ${name} ($(( SECONDS - start ))s)"
    done
  ) &
  heartbeat=$!
  if ! (cd "${mod_path}" && go build -ldflags "$(ldflags_for "${name}")" -o "${tmp}" "${pkg}"); then
    kill "${heartbeat}" 2>/dev/null || true
    rm -f "${tmp}"
    die "building ${name} failed (module ${mod_path})"
  fi
  kill "${heartbeat}" 2>/dev/null || true
  wait "${heartbeat}" 2>/dev/null || true
  mv -f "${tmp}" "${BIN_DIR}/${name}"
  fingerprint "${name}" "${mod_dir}" >"${BIN_DIR}/.${name}.stamp"
  log "built ${name} in $(( SECONDS - start ))s"
done
log "done in $(( SECONDS - total_start ))s: ${BIN_DIR}"
