#!/usr/bin/env bash
# Install Debian packages that are not installed yet (idempotent: a no-op when all are there).
# Usage: hack/ensure-apt.sh PACKAGE...
# Services that packages would start (containerd, podman's socket) are kept from starting: the scripts under
# hack/ run their own instances.
set -euo pipefail
missing=()
for pkg in "$@"; do
  [[ "$(dpkg-query -W -f '${db:Status-Status}' "${pkg}" 2>/dev/null)" == "installed" ]] || missing+=("${pkg}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ "$(id -u)" -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
command -v apt-get >/dev/null 2>&1 || { echo "error: apt-get is not available: install ${missing[*]} and retry" >&2; exit 1; }
echo ">> installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# One apt at a time (several scripts may ask at once).
exec 7>/tmp/codeforge-ensure-apt.lock
flock 7
$SUDO apt-get update -qq
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
