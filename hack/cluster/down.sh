#!/usr/bin/env bash
# Stop the local control plane that hack/cluster/up.sh started in $CODEFORGE_CLUSTER_DIR
# (default ~/.cache/codeforge/cluster) and delete its state: etcd data, certificates, kubeconfigs.
#
# Usage: hack/cluster/down.sh [--keep-logs]
#   --keep-logs   keep $CODEFORGE_CLUSTER_DIR/logs (up.sh uses it when a start fails)
# Only the processes whose pids up.sh recorded are stopped, and only while they still run a binary of the
# control plane (a pid reused by another program is left alone). Safe to run when nothing is running.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
STATE="${CODEFORGE_CLUSTER_DIR:-${CACHE}/cluster}"
PIDS="${STATE}/pids"
BIN_DIR="$(CODEFORGE_CACHE="${CACHE}" "${HERE}/build.sh" --print-bin-dir)"

keep_logs=false
case "${1:-}" in
  --keep-logs) keep_logs=true ;;
  "") ;;
  *) echo "usage: $0 [--keep-logs]" >&2; exit 2 ;;
esac

log() { printf '>> [cluster-down %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ours PID: the process still runs a binary from BIN_DIR
ours() {
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  [[ "${exe}" == "${BIN_DIR}/"* ]]
}

# The real node (hack/cluster/node-up.sh) first: it restores the host and needs the state directory.
if [[ -d "${STATE}/node" ]]; then
  bash "${HERE}/node-down.sh"
fi

stopped=()
# Clients first, etcd last, so nothing logs errors about a vanished API server longer than needed.
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pid_file="${PIDS}/${name}.pid"
  [[ -f "${pid_file}" ]] || continue
  pid="$(cat "${pid_file}")"
  if [[ "${pid}" =~ ^[0-9]+$ ]] && ours "${pid}"; then
    kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 1 50); do  # up to 10 s for a clean exit
      ours "${pid}" || break
      sleep 0.2
    done
    if ours "${pid}"; then
      log "${name} (pid ${pid}) ignored SIGTERM for 10s: killing it"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
    stopped+=("${name}")
  fi
  rm -f "${pid_file}"
done

if [[ -d "${STATE}" && ! -f "${STATE}/.codeforge-control-plane" ]]; then
  log "${STATE} was not made by up.sh: leaving it alone"
elif [[ -d "${STATE}" ]]; then
  if ${keep_logs}; then
    find "${STATE}" -mindepth 1 -maxdepth 1 ! -name logs ! -name .codeforge-control-plane -exec rm -rf {} +
  else
    rm -rf "${STATE}"
  fi
fi
if [[ ${#stopped[@]} -gt 0 ]]; then
  log "stopped ${stopped[*]}; removed ${STATE}$(${keep_logs} && echo ' (logs kept)')"
else
  log "nothing was running in ${STATE}"
fi
