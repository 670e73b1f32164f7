#!/usr/bin/env bash
# Build the `temporal` CLI (its dev server is the Temporal peer of `codeforge bench workflow`) from the Go module
# proxy. The version is pinned in versions.env and every dependency by hack/bench/go/temporal/go.mod and go.sum.
#
# Why v1.5.1 and not the newest: from v1.6 the CLI needs github.com/temporalio/cli/cliext, a nested module that
# its go.mod brings in with a local replace; the module proxy does not serve it, so newer versions do not build
# from the proxy alone.
#
# The binary lands in $CODEFORGE_CACHE/temporal-<v>/bin/temporal (CODEFORGE_CACHE defaults to ~/.cache/codeforge),
# Go's module and build caches in $CODEFORGE_CACHE/go/ (shared with hack/cluster/build.sh). A later run checks a
# stamp and returns at once. A cold build fetches ~400 MB of modules; it took 28 min niced on the shared 2-core
# machine (other builds and test suites beside it).
#
# Usage: hack/bench/build-temporal.sh [--print-bin]
# Environment: CODEFORGE_CACHE, CODEFORGE_BUILD_JOBS (go build -p, default: nproc).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null # versions.env: plain KEY=value lines
source "${HERE}/versions.env"

CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
BIN_DIR="${CACHE}/temporal-${TEMPORAL_CLI_VERSION}/bin"
BIN="${BIN_DIR}/temporal"
MOD_DIR="${HERE}/go/temporal"

if [[ "${1:-}" == "--print-bin" ]]; then
  echo "${BIN}"
  exit 0
fi

log() { printf '>> [bench-build %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ldflags="-s -w -X github.com/temporalio/cli/temporalcli.Version=${TEMPORAL_CLI_VERSION#v}"
fingerprint() { { cat "${MOD_DIR}/go.mod" "${MOD_DIR}/go.sum"; echo "${ldflags}"; } | sha256sum | cut -d' ' -f1; }
is_current() { [[ -x "${BIN}" && -f "${BIN_DIR}/.temporal.stamp" && "$(cat "${BIN_DIR}/.temporal.stamp")" == "$(fingerprint)" ]]; }

if is_current; then
  log "up to date: ${BIN}"
  exit 0
fi
mkdir -p "${BIN_DIR}"
exec 9>"${BIN_DIR}/.build.lock"
if ! flock --nonblock 9; then
  log "another build-temporal.sh is building ${BIN}: waiting for it"
  flock 9
  if is_current; then
    log "up to date: ${BIN}"
    exit 0
  fi
fi

command -v go >/dev/null || die "Go ${GO_MIN_VERSION} or newer is needed to build the temporal CLI"
go_version="$(go env GOVERSION)"
go_version="${go_version#go}"
if [[ "$(printf '%s\n%s\n' "${GO_MIN_VERSION}" "${go_version}" | sort -V | head -n1)" != "${GO_MIN_VERSION}" ]]; then
  die "Go ${GO_MIN_VERSION} or newer is needed, found ${go_version}"
fi

export GOMODCACHE="${CACHE}/go/mod"
export GOCACHE="${CACHE}/go/build"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false -p=${CODEFORGE_BUILD_JOBS:-$(nproc)}"
export CGO_ENABLED=0
mkdir -p "${GOMODCACHE}" "${GOCACHE}"

start=${SECONDS}
log "Go ${go_version}; downloading the modules of go/temporal (verified against its go.sum)"
(cd "${MOD_DIR}" && go mod download) || die "go mod download failed in ${MOD_DIR}"
log "building temporal ${TEMPORAL_CLI_VERSION} into ${BIN_DIR}"
tmp="${BIN_DIR}/.temporal.tmp"
if ! (cd "${MOD_DIR}" && nice -n 10 go build -ldflags "${ldflags}" -o "${tmp}" github.com/temporalio/cli/cmd/temporal); then
  rm -f "${tmp}"
  die "building temporal failed (module ${MOD_DIR})"
fi
mv -f "${tmp}" "${BIN}"
fingerprint >"${BIN_DIR}/.temporal.stamp"
log "built temporal in $(( SECONDS - start ))s: ${BIN}"
