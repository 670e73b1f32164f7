#!/usr/bin/env bash
# Start a local Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok, which plays the kubelet of a few fake nodes so pods scheduled there become Running
# and Ready. No Docker, no root, no kubelet. The binaries come from build.sh (built once, cached).
#
# Usage: hack/cluster/up.sh
# Environment:
#   CODEFORGE_CACHE          cache root (default ~/.cache/codeforge)
#   CODEFORGE_CLUSTER_DIR    state directory: certificates, kubeconfigs, etcd data, pids, logs
#                            (default $CODEFORGE_CACHE/cluster); one control plane per directory
#   CODEFORGE_KWOK_NODES     number of fake nodes (default 3)
#   CODEFORGE_CLUSTER_WAIT   seconds to wait for each component (default 60)
#   CODEFORGE_REAL_NODE      1: also join one real node (kubelet, containerd, kube-proxy, CoreDNS; needs root):
#                            hack/cluster/node-up.sh, which says more. The API server then also listens on the
#                            node's address (for pods; node-up.sh lets only loopback and the node's bridge in).
#
# On success it prints the kubeconfig path and writes $CODEFORGE_CLUSTER_DIR/cluster.env (KEY=value lines:
# KUBECONFIG, BIN_DIR, API_SERVER, ports, versions). hack/cluster/down.sh stops everything it started.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null # versions.env: plain KEY=value lines
source "${HERE}/versions.env"

CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
STATE="${CODEFORGE_CLUSTER_DIR:-${CACHE}/cluster}"
NODES="${CODEFORGE_KWOK_NODES:-3}"
WAIT="${CODEFORGE_CLUSTER_WAIT:-60}"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR="10.244.0.1/16"
KWOK_POD_CIDR="10.244.0.0/16"  # where kwok makes up its pods' addresses
REAL_NODE="${CODEFORGE_REAL_NODE:-0}"
NODE_BRIDGE="${CODEFORGE_NODE_BRIDGE:-codeforge0}"
NODE_SUBNET="${CODEFORGE_NODE_SUBNET:-10.245.0.0/24}"
[[ "${REAL_NODE}" == 0 || "${REAL_NODE}" == 1 ]] || die "CODEFORGE_REAL_NODE must be 0 or 1, got '${REAL_NODE}'"
[[ "${NODE_SUBNET}" =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] ||
  die "CODEFORGE_NODE_SUBNET must be an IPv4 /24 ending in .0/24, got '${NODE_SUBNET}'"
NODE_IP="${BASH_REMATCH[1]}.1"
API_BIND=127.0.0.1
API_ADVERTISE=127.0.0.1
API_SANS="IP:127.0.0.1"
API_ENDPOINTS=(--endpoint-reconciler-type=none)
if [[ "${REAL_NODE}" == 1 ]]; then
  [[ "$(id -u)" -eq 0 ]] || die "CODEFORGE_REAL_NODE=1 needs root (containerd, network links, iptables)"
  # Pods reach the API server through the `kubernetes` Service, whose endpoint is the node's address.
  API_BIND=0.0.0.0
  API_ADVERTISE="${NODE_IP}"
  API_SANS="IP:127.0.0.1,IP:${NODE_IP}"
  API_ENDPOINTS=()
fi

log() { printf '>> [cluster-up %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ "${NODES}" =~ ^[0-9]+$ ]] || die "CODEFORGE_KWOK_NODES must be a number, got '${NODES}'"
for tool in openssl python3 curl; do
  command -v "${tool}" >/dev/null || die "${tool} is needed (apt-get install ${tool})"
done

BIN_DIR="$(CODEFORGE_CACHE="${CACHE}" "${HERE}/build.sh" --print-bin-dir)"
PKI="${STATE}/pki"
LOGS="${STATE}/logs"
PIDS="${STATE}/pids"
KUBECONFIG_ADMIN="${STATE}/admin.kubeconfig"

# Already running? Then there is nothing to do (and two control planes must not share one directory).
if compgen -G "${PIDS}/*.pid" >/dev/null; then
  alive=0
  for pid_file in "${PIDS}"/*.pid; do
    kill -0 "$(cat "${pid_file}")" 2>/dev/null && alive=$((alive + 1))
  done
  if [[ ${alive} -gt 0 ]] && "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_ADMIN}" get --raw /readyz >/dev/null 2>&1; then
    log "already running (${STATE}); KUBECONFIG=${KUBECONFIG_ADMIN}"
    exit 0
  fi
  log "found a stopped or broken control plane in ${STATE}: cleaning it up first"
  "${HERE}/down.sh"
fi

CODEFORGE_CACHE="${CACHE}" "${HERE}/build.sh"

started=${SECONDS}
# The state directory is wiped at every start: refuse a non-empty one that up.sh did not make.
MARKER="${STATE}/.codeforge-control-plane"
if [[ -d "${STATE}" && ! -f "${MARKER}" && -n "$(ls -A "${STATE}")" ]]; then
  die "${STATE} is not empty and was not made by up.sh: refusing to wipe it (set CODEFORGE_CLUSTER_DIR)"
fi
rm -rf "${STATE}"
mkdir -p "${PKI}" "${LOGS}" "${PIDS}" "${STATE}/etcd"
chmod 700 "${STATE}" "${STATE}/etcd"
touch "${MARKER}"

# Any failure from here on: show the logs' tails and stop what was started.
on_error() {
  local rc=${1:-$?}
  trap - ERR INT TERM
  echo "error: the control plane did not start (exit ${rc}); last lines of its logs (all in ${LOGS}):" >&2
  for f in "${LOGS}"/*.log; do
    [[ -s "${f}" ]] || continue
    echo "---- ${f}" >&2
    tail -n 15 "${f}" >&2
  done
  "${HERE}/down.sh" --keep-logs >&2 || true
  exit "${rc}"
}
trap on_error ERR
trap 'on_error 130' INT
trap 'on_error 143' TERM

# --- free ports on 127.0.0.1 -----------------------------------------------------------------------------------
read -r ETCD_PORT ETCD_PEER_PORT API_PORT KWOK_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
API_SERVER="https://127.0.0.1:${API_PORT}"

# --- certificates (ECDSA P-256: fast to make) --------------------------------------------------------------------
log "certificates in ${PKI}"
new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
openssl_quiet() {
  openssl "$@" 2>"${LOGS}/openssl.log" || { cat "${LOGS}/openssl.log" >&2; return 1; }
  rm -f "${LOGS}/openssl.log"
}
# sign NAME SUBJECT EXTENSIONS: a key and a CA-signed certificate, valid for a year
sign() {
  local name="$1" subject="$2" ext="$3"
  new_key "${PKI}/${name}.key"
  openssl_quiet req -new -key "${PKI}/${name}.key" -subj "${subject}" -out "${PKI}/${name}.csr"
  printf '%s\n' "${ext}" >"${PKI}/${name}.ext"
  openssl_quiet x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "${PKI}/${name}.ext" -out "${PKI}/${name}.crt"
  rm -f "${PKI}/${name}.csr" "${PKI}/${name}.ext"
}
new_key "${PKI}/ca.key"
openssl_quiet req -x509 -new -key "${PKI}/ca.key" -subj "/CN=codeforge-local-ca" -days 365 -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out "${PKI}/ca.crt"
CLIENT_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=${API_SANS},IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
sign admin "/O=system:masters/CN=kubernetes-admin" "${CLIENT_EXT}"
# The API server's client certificate towards kubelets (kubectl logs, exec).
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${CLIENT_EXT}"
sign controller-manager "/CN=system:kube-controller-manager" "${CLIENT_EXT}"
sign scheduler "/CN=system:kube-scheduler" "${CLIENT_EXT}"
# kwok plays every fake node's kubelet and also patches pods of all namespaces: it gets cluster-admin rights.
sign kwok "/O=system:masters/CN=kwok-controller" "${CLIENT_EXT}"
# The service-account token signing pair.
new_key "${PKI}/sa.key"
openssl_quiet ec -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"
chmod 600 "${PKI}"/*.key

# kubeconfig NAME USER: a kubeconfig for one client certificate
kubeconfig() {
  local name="$1" user="$2" file="${STATE}/$1.kubeconfig"
  cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: codeforge-local
  cluster:
    server: ${API_SERVER}
    certificate-authority: ${PKI}/ca.crt
users:
- name: ${user}
  user:
    client-certificate: ${PKI}/${name}.crt
    client-key: ${PKI}/${name}.key
contexts:
- name: codeforge-local
  context:
    cluster: codeforge-local
    user: ${user}
current-context: codeforge-local
EOF
  chmod 600 "${file}"
}
kubeconfig admin kubernetes-admin
kubeconfig controller-manager system:kube-controller-manager
kubeconfig scheduler system:kube-scheduler
kubeconfig kwok kwok-controller

# start NAME BINARY ARGS...: run a component in the background (its own process group), record its pid
start() {
  local name="$1" binary="$2"
  shift 2
  setsid "${BIN_DIR}/${binary}" "$@" >"${LOGS}/${name}.log" 2>&1 </dev/null &
  echo $! >"${PIDS}/${name}.pid"
}

alive() { kill -0 "$(cat "${PIDS}/$1.pid")" 2>/dev/null; }
# wait_for COMPONENT WHAT COMMAND...: poll until COMMAND succeeds, for at most WAIT seconds; fail at once
# when COMPONENT's process has exited
wait_for() {
  local component="$1" what="$2" deadline=$((SECONDS + WAIT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! alive "${component}"; then
      echo "error: ${component} exited while waiting for ${what} (log: ${LOGS}/${component}.log)" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "error: timed out after ${WAIT}s waiting for ${what} (log: ${LOGS}/${component}.log)" >&2
      return 1
    fi
    sleep 0.1
  done
}
kubectl_admin() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_ADMIN}" "$@"; }

# --- etcd: data in the state directory, no fsync (a throw-away test cluster) -------------------------------------
log "etcd ${ETCD_VERSION} on 127.0.0.1:${ETCD_PORT}"
start etcd etcd \
  --name=codeforge-local \
  --data-dir="${STATE}/etcd" \
  --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="codeforge-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync \
  --quota-backend-bytes=4294967296 \
  --log-level=warn
wait_for etcd "etcd" curl -fsS "http://127.0.0.1:${ETCD_PORT}/health"

# --- kube-apiserver ----------------------------------------------------------------------------------------------
# ShardedListAndWatch (alpha since 1.36): the operator's Workflow shards list and watch their own hash range
# only (operator/codeforge/controller/sharding.py); a server without it sends them all, and a shard stops.
log "kube-apiserver ${KUBERNETES_VERSION} on ${API_SERVER}"
start kube-apiserver kube-apiserver \
  --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
  --bind-address="${API_BIND}" \
  --advertise-address="${API_ADVERTISE}" \
  "${API_ENDPOINTS[@]}" \
  --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
  --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --secure-port="${API_PORT}" \
  --cert-dir="${PKI}" \
  --tls-cert-file="${PKI}/apiserver.crt" \
  --tls-private-key-file="${PKI}/apiserver.key" \
  --client-ca-file="${PKI}/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="${PKI}/sa.pub" \
  --service-account-signing-key-file="${PKI}/sa.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --authorization-mode=Node,RBAC \
  --allow-privileged=true \
  --profiling=false \
  --feature-gates=ShardedListAndWatch=true \
  --v=1
wait_for kube-apiserver "kube-apiserver /readyz" kubectl_admin get --raw /readyz

# --- controllers, scheduler and kwok -----------------------------------------------------------------------------
log "kube-controller-manager, kube-scheduler, kwok ${KWOK_VERSION} (${NODES} fake nodes)"
# High client rates: a pool scaling to 500 replicas must not wait on the default 20 requests/s.
start kube-controller-manager kube-controller-manager \
  --kubeconfig="${STATE}/controller-manager.kubeconfig" \
  --authentication-kubeconfig="${STATE}/controller-manager.kubeconfig" \
  --authorization-kubeconfig="${STATE}/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port=0 \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="${PKI}/sa.key" \
  --root-ca-file="${PKI}/ca.crt" \
  --cluster-signing-cert-file="${PKI}/ca.crt" \
  --cluster-signing-key-file="${PKI}/ca.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --kube-api-qps=500 \
  --kube-api-burst=1000 \
  --concurrent-replicaset-syncs=10 \
  --concurrent-deployment-syncs=10 \
  --v=1

cat >"${STATE}/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ${STATE}/scheduler.kubeconfig
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
EOF
start kube-scheduler kube-scheduler \
  --config="${STATE}/scheduler.yaml" \
  --authentication-kubeconfig="${STATE}/scheduler.kubeconfig" \
  --authorization-kubeconfig="${STATE}/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port=0 \
  --v=1

start kwok kwok \
  --config="${HERE}/kwok-stages.yaml" \
  --kubeconfig="${STATE}/kwok.kubeconfig" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 \
  --cidr="${POD_CIDR}" \
  --node-ip=127.0.0.1 \
  --server-address="127.0.0.1:${KWOK_PORT}"

# --- fake nodes: no taints, so every pod may land on them; kwok gives them a large capacity --------------------
nodes_yaml=""
for i in $(seq 0 $((NODES - 1))); do
  nodes_yaml+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-${i}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-${i}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: \"\"
"
done
if ((NODES > 0)); then
  kubectl_admin apply -f - <<<"${nodes_yaml}" >/dev/null
fi

for component in kube-controller-manager kube-scheduler kwok; do
  alive "${component}" || { echo "error: ${component} exited at start" >&2; false; }
done
if ((NODES > 0)); then
  wait_for kwok "${NODES} Ready kwok nodes" kubectl_admin wait --for=condition=Ready node -l type=kwok --timeout=1s
fi
# Pods need their namespace's `default` ServiceAccount, which the controller manager creates.
wait_for kube-controller-manager "the default ServiceAccount" kubectl_admin get serviceaccount default --namespace default

cat >"${STATE}/cluster.env" <<EOF
KUBECONFIG=${KUBECONFIG_ADMIN}
BIN_DIR=${BIN_DIR}
API_SERVER=${API_SERVER}
ETCD_PORT=${ETCD_PORT}
API_PORT=${API_PORT}
KWOK_PORT=${KWOK_PORT}
KWOK_NODES=${NODES}
KUBERNETES_VERSION=${KUBERNETES_VERSION}
ETCD_VERSION=${ETCD_VERSION}
KWOK_VERSION=${KWOK_VERSION}
HELM_VERSION=${HELM_VERSION}
SERVICE_CIDR=${SERVICE_CIDR}
KWOK_POD_CIDR=${KWOK_POD_CIDR}
EOF
if [[ "${REAL_NODE}" == 1 ]]; then
  cat >>"${STATE}/cluster.env" <<EOF
NODE_IP=${NODE_IP}
NODE_BRIDGE=${NODE_BRIDGE}
NODE_SUBNET=${NODE_SUBNET}
EOF
  bash "${HERE}/node-up.sh"
fi
trap - ERR INT TERM
log "ready in $((SECONDS - started))s. Use it with:"
echo "  export KUBECONFIG=${KUBECONFIG_ADMIN} PATH=${BIN_DIR}:\$PATH"
