#!/usr/bin/env bash
# Stop the real node that hack/cluster/node-up.sh started in $CODEFORGE_CLUSTER_DIR and restore the host as it
# was: its containers and their network namespaces, mounts, the bridge, routes, iptables chains (kube-proxy's and
# ours) and sysctls. down.sh runs it first; safe to run when no node runs.
set -uo pipefail

CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
STATE="${CODEFORGE_CLUSTER_DIR:-${CACHE}/cluster}"
NODE_STATE="${STATE}/node"
NPIDS="${NODE_STATE}/pids"
SOCK="/run/codeforge-node/containerd.sock"
OWNER_FILE=/run/codeforge-node.owner

log() { printf '>> [node-down %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

[[ -d "${NODE_STATE}" ]] || exit 0
ours=false
[[ "$(cat "${OWNER_FILE}" 2>/dev/null)" == "${STATE}" ]] && ours=true

# stop NAME: SIGTERM to a component node-up.sh started (while its pid still runs that program), then SIGKILL
stop() {
  local name="$1" pid exe
  [[ -f "${NPIDS}/${name}.pid" ]] || return 0
  pid="$(cat "${NPIDS}/${name}.pid")"
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || { rm -f "${NPIDS}/${name}.pid"; return 0; }
  [[ "$(basename "${exe}")" == "${name}" ]] || { rm -f "${NPIDS}/${name}.pid"; return 0; }
  kill -TERM "${pid}" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "${pid}" 2>/dev/null || true
  rm -f "${NPIDS}/${name}.pid"
}

# The kubelet first, so it restarts nothing; then every container (and its shim), then containerd.
for name in kubelet coredns kube-proxy; do stop "${name}"; done
if ${ours} && [[ -S "${SOCK}" ]]; then
  ctr_k8s() { ctr --address "${SOCK}" --namespace k8s.io "$@"; }
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
    ctr_k8s tasks kill --signal SIGKILL "${task}" >/dev/null 2>&1
  done
  sleep 0.5
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
    ctr_k8s tasks delete --force "${task}" >/dev/null 2>&1
  done
  for container in $(ctr_k8s containers ls -q 2>/dev/null); do
    ctr_k8s containers delete "${container}" >/dev/null 2>&1
  done
fi
stop containerd
if ${ours}; then
  # Shims of our containerd that outlived it (they serve its socket's ttrpc address).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address ${SOCK}( |$)" || true); do
    kill -KILL "${pid}" 2>/dev/null || true
  done
  # The pods' network namespaces (created after node-up.sh started) and every mount below the node's state.
  for path in /run/netns/*; do
    [[ -e "${path}" ]] || continue
    ns="$(basename "${path}")"
    if ! grep -qxF "${ns}" "${NODE_STATE}/netns.before" 2>/dev/null; then
      umount "/run/netns/${ns}" 2>/dev/null
      rm -f "/run/netns/${ns}"
    fi
  done
fi
for root in "${NODE_STATE}" "/run/codeforge-node"; do
  # Deepest first.
  findmnt -rn -o TARGET | grep -E "^${root}(/|$)" | sort -r | while read -r target; do
    umount "${target}" 2>/dev/null || umount -l "${target}" 2>/dev/null || true
  done
done
if [[ -f "${NODE_STATE}/restore.sh" ]]; then
  # Links, routes, iptables chains, sysctls: in the reverse order of their change.
  tac "${NODE_STATE}/restore.sh" | bash
fi
if ${ours} && [[ -f "${NODE_STATE}/chains.before" ]]; then
  # KUBE-* chains made while the node ran: first the rules that jump to them, then their rules, then them.
  for fam in iptables ip6tables; do
    "${fam}-save" 2>/dev/null | awk -v fam="${fam}" '/^\*/ {t=substr($0, 2)} /^:KUBE-/ {print fam, t, substr($1, 2)}' |
      grep -vxFf "${NODE_STATE}/chains.before" >"${NODE_STATE}/chains.new" || true
    while read -r _ table chain; do
      "${fam}" -w -t "${table}" -S 2>/dev/null | grep -E -- "^-A [A-Z]+ .*-j ${chain}( |$)" | grep -v "^-A KUBE-" |
        while read -r rule; do
          eval "${fam} -w -t ${table} -D ${rule#-A }" 2>/dev/null || true
        done
      "${fam}" -w -t "${table}" -F "${chain}" 2>/dev/null || true
    done <"${NODE_STATE}/chains.new"
    while read -r _ table chain; do
      "${fam}" -w -t "${table}" -X "${chain}" 2>/dev/null || true
    done <"${NODE_STATE}/chains.new"
  done
  # containerd's cgroup of the pods, when it was new (empty by now: every container is gone).
  for dir in /sys/fs/cgroup/*/k8s.io; do
    grep -qxF "${dir}" "${NODE_STATE}/cgroups.before" 2>/dev/null && continue
    find "${dir}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
fi
if ${ours}; then
  rm -rf /run/codeforge-node
  rm -f "${OWNER_FILE}"
fi
rm -rf "${NODE_STATE}"
log "stopped the real node of ${STATE} and restored the host"
