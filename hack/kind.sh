#!/usr/bin/env bash
# For machines WITH a Docker engine: a kind cluster running the real CodeForge images, installed by Helm.
# (Our own machines and CI have no Docker engine: they use hack/cluster/up.sh, a control plane with kwok nodes.)
#
#   1. create the kind cluster $KIND_CLUSTER (default: codeforge) unless it exists;
#   2. docker build the operator image (operator/Dockerfile) and the agent image (agent_image/Dockerfile);
#   3. kind load both images into the cluster's nodes (no registry needed);
#   4. helm upgrade --install the chart helm/codeforge into $NAMESPACE, pointing it at those images.
#
# Usage: hack/kind.sh [up|down]        (default: up)
# Environment:
#   KIND_CLUSTER      cluster name (default codeforge)
#   KIND_NODE_IMAGE   node image (default: kind's own for the pinned KIND_VERSION)
#   NAMESPACE         release namespace (default codeforge-system)
#   IMAGE_TAG         tag of both images (default dev)
#   HELM_EXTRA_ARGS   more arguments for helm upgrade --install, e.g. "--set redis.mode=standalone"
#   CODEFORGE_CACHE   cache root (default ~/.cache/codeforge)
# kind comes from the Go module proxy (version pinned in hack/cluster/versions.env); kubectl and helm are the
# pinned ones of hack/cluster/build.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null # versions.env: plain KEY=value lines
source "${ROOT}/hack/cluster/versions.env"

CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
CLUSTER="${KIND_CLUSTER:-codeforge}"
NAMESPACE="${NAMESPACE:-codeforge-system}"
TAG="${IMAGE_TAG:-dev}"
OPERATOR_IMAGE="codeforge-operator:${TAG}"
AGENT_IMAGE="codeforge-agent:${TAG}"
KIND_BIN_DIR="${CACHE}/kind-${KIND_VERSION}/bin"
ACTION="${1:-up}"

log() { printf '>> [kind %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case "${ACTION}" in
  up|down) ;;
  *) die "usage: $0 [up|down]" ;;
esac

command -v docker >/dev/null || die "docker is needed (and a running Docker engine); without one use 'make cluster-up'"
docker info >/dev/null 2>&1 || die "no Docker engine answers ('docker info' failed); without one use 'make cluster-up'"

# kind, pinned, from the Go module proxy (go install verifies it against the checksum database).
KIND="${KIND_BIN_DIR}/kind"
if [[ ! -x "${KIND}" ]]; then
  command -v go >/dev/null || die "Go ${GO_MIN_VERSION}+ is needed to install kind ${KIND_VERSION}"
  log "installing kind ${KIND_VERSION} into ${KIND_BIN_DIR}"
  mkdir -p "${KIND_BIN_DIR}"
  GOBIN="${KIND_BIN_DIR}" GOMODCACHE="${CACHE}/go/mod" GOCACHE="${CACHE}/go/build" GOTOOLCHAIN=local \
    CGO_ENABLED=0 GOFLAGS="-trimpath" go install "sigs.k8s.io/kind@${KIND_VERSION}"
fi

if [[ "${ACTION}" == "down" ]]; then
  log "deleting kind cluster ${CLUSTER}"
  "${KIND}" delete cluster --name "${CLUSTER}"
  exit 0
fi

# The pinned kubectl and helm (only these two are built: a minute or two the first time).
bash "${ROOT}/hack/cluster/build.sh" kubectl helm
BIN_DIR="$(bash "${ROOT}/hack/cluster/build.sh" --print-bin-dir)"
KUBECTL="${BIN_DIR}/kubectl"
HELM="${BIN_DIR}/helm"

if "${KIND}" get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  log "kind cluster ${CLUSTER} exists"
else
  log "creating kind cluster ${CLUSTER}"
  "${KIND}" create cluster --name "${CLUSTER}" --wait 120s ${KIND_NODE_IMAGE:+--image "${KIND_NODE_IMAGE}"}
fi
KUBECONFIG_FILE="${CACHE}/kind-${CLUSTER}.kubeconfig"
"${KIND}" get kubeconfig --name "${CLUSTER}" >"${KUBECONFIG_FILE}"
chmod 600 "${KUBECONFIG_FILE}"

log "building ${OPERATOR_IMAGE} and ${AGENT_IMAGE} (context: the repository root)"
[[ -f "${ROOT}/operator/Dockerfile" ]] || die "operator/Dockerfile is missing"
[[ -f "${ROOT}/agent_image/Dockerfile" ]] || die "agent_image/Dockerfile is missing"
docker build --file "${ROOT}/operator/Dockerfile" --tag "${OPERATOR_IMAGE}" "${ROOT}"
docker build --file "${ROOT}/agent_image/Dockerfile" --tag "${AGENT_IMAGE}" "${ROOT}"

log "loading the images into the kind nodes"
"${KIND}" load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}" "${AGENT_IMAGE}"

[[ -f "${ROOT}/helm/codeforge/Chart.yaml" ]] || die "the chart helm/codeforge is missing"
log "helm upgrade --install codeforge into namespace ${NAMESPACE}"
# The images are only in the nodes' containerd: never pull them.
# shellcheck disable=SC2086 # HELM_EXTRA_ARGS is a list of arguments on purpose
"${HELM}" --kubeconfig "${KUBECONFIG_FILE}" upgrade --install codeforge "${ROOT}/helm/codeforge" \
  --namespace "${NAMESPACE}" --create-namespace \
  --set operator.image.repository=codeforge-operator --set "operator.image.tag=${TAG}" \
  --set operator.image.pullPolicy=Never \
  --set agent.image.repository=codeforge-agent --set "agent.image.tag=${TAG}" \
  --set agent.image.pullPolicy=Never \
  --wait --timeout 5m ${HELM_EXTRA_ARGS:-}

"${KUBECTL}" --kubeconfig "${KUBECONFIG_FILE}" get pods --namespace "${NAMESPACE}"
log "done. Use it with:"
echo "  export KUBECONFIG=${KUBECONFIG_FILE} PATH=${BIN_DIR}:\$PATH"
echo "  CODEFORGE_E2E_EXISTING_CLUSTER=1 KUBECONFIG=${KUBECONFIG_FILE} make test PYTEST_ARGS=tests/e2e"
