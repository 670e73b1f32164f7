#!/usr/bin/env bash
# Build the CodeForge images without Docker Hub and without a Docker engine: a Python base image made from
# Debian's packages (debootstrap --variant=minbase), then the repository's own Dockerfiles built on it with
# buildah, plus a Redis image from Debian's redis-server for the chart's Redis pods.
#
#   localhost/codeforge-python:<suite>    base: python3 (+ venv/ensurepip) from Debian <suite>
#   localhost/codeforge-redis:<suite>     redis-server and redis-cli from Debian <suite>
#   localhost/codeforge-agent:dev         agent_image/Dockerfile  (--build-arg PYTHON_IMAGE=<base>)
#   localhost/codeforge-operator:dev      operator/Dockerfile     (--build-arg PYTHON_IMAGE=<base>)
#
# Everything is cached under $CODEFORGE_CACHE (default ~/.cache/codeforge): the debootstrap'ed root filesystems
# (images/), the image store (containers/) and buildah's layer cache, so a warm run only rebuilds the layers
# whose inputs changed. The Dockerfiles are unchanged for `docker build` on the official python image.
# Each image is also saved as an archive in $CODEFORGE_CACHE/images/archives/ (what the real node imports).
#
# Usage: hack/images.sh [--print-env]
#   --print-env   print KEY=value lines (image names, archive paths, CONTAINERS_* files) and build nothing
# Environment: CODEFORGE_CACHE, CODEFORGE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              CODEFORGE_IMAGE_TAG (default dev).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"
CACHE="${CODEFORGE_CACHE:-${HOME}/.cache/codeforge}"
# The Debian suite of the base images (pinned: a new suite is a deliberate change here). The package versions
# that went in are recorded next to each root filesystem (<name>.packages) and in the image's labels.
DEBIAN_SUITE=bookworm
MIRROR="${CODEFORGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TAG="${CODEFORGE_IMAGE_TAG:-dev}"
PYTHON_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
REDIS_PACKAGES="redis-server,redis-tools"

IMAGES="${CACHE}/images"
ARCHIVES="${IMAGES}/archives"
STORE="${CACHE}/containers"
BASE_IMAGE="localhost/codeforge-python:${DEBIAN_SUITE}"
REDIS_IMAGE="localhost/codeforge-redis:${DEBIAN_SUITE}"
AGENT_IMAGE="localhost/codeforge-agent:${TAG}"
OPERATOR_IMAGE="localhost/codeforge-operator:${TAG}"

# buildah and podman read these: an image store inside the cache (not /var/lib/containers) and the ulimits a
# VM without CAP_SYS_RESOURCE can grant (podman's default raises RLIMIT_NOFILE beyond it).
export CONTAINERS_STORAGE_CONF="${STORE}/storage.conf"
export CONTAINERS_CONF="${STORE}/containers.conf"

if [[ "${1:-}" == "--print-env" ]]; then
  cat <<EOF
BASE_IMAGE=${BASE_IMAGE}
REDIS_IMAGE=${REDIS_IMAGE}
AGENT_IMAGE=${AGENT_IMAGE}
OPERATOR_IMAGE=${OPERATOR_IMAGE}
ARCHIVE_DIR=${ARCHIVES}
CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF}
CONTAINERS_CONF=${CONTAINERS_CONF}
EOF
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--print-env]" >&2; exit 2; }

log() { printf '>> [images %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "building images needs root (debootstrap, buildah): run as root"
bash "${HERE}/ensure-apt.sh" debootstrap buildah podman runc

mkdir -p "${IMAGES}" "${ARCHIVES}" "${STORE}/storage" "${STORE}/run"
exec 8>"${IMAGES}/.build.lock"
flock 8

cat >"${CONTAINERS_STORAGE_CONF}.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "${STORE}/storage"
runroot = "${STORE}/run"
EOF
mv -f "${CONTAINERS_STORAGE_CONF}.tmp" "${CONTAINERS_STORAGE_CONF}"
# runc, not crun: crun fails on the hybrid cgroup hierarchy of our VMs. Limits of open files and processes that
# a VM without CAP_SYS_RESOURCE lets runc set (podman's defaults are higher and make `podman run` fail there).
NOFILE=4096
cat >"${CONTAINERS_CONF}.tmp" <<EOF
[containers]
default_ulimits = ["nofile=${NOFILE}:${NOFILE}", "nproc=${NOFILE}:${NOFILE}"]
[engine]
runtime = "runc"
EOF
mv -f "${CONTAINERS_CONF}.tmp" "${CONTAINERS_CONF}"

started=${SECONDS}

# rootfs NAME PACKAGES: a minbase root filesystem tarball of Debian $DEBIAN_SUITE with PACKAGES, made once per
# (suite, packages, this function's recipe); prints the tarball's path
rootfs() {
  local name="$1" packages="$2" key dir tar
  key="$(printf '%s\n' "v1" "${DEBIAN_SUITE}" "${MIRROR}" "${packages}" | sha256sum | cut -c1-12)"
  tar="${IMAGES}/${name}-${DEBIAN_SUITE}-${key}.tar"
  if [[ -f "${tar}" ]]; then
    echo "${tar}"
    return
  fi
  dir="${IMAGES}/.${name}-rootfs"
  rm -rf "${dir}"
  log "debootstrap ${DEBIAN_SUITE} (minbase) + ${packages} -> ${tar}" >&2
  mkdir -p "${IMAGES}/debs"
  debootstrap --variant=minbase --include="${packages}" --cache-dir="${IMAGES}/debs" \
    "${DEBIAN_SUITE}" "${dir}" "${MIRROR}" >"${IMAGES}/${name}.debootstrap.log" 2>&1 ||
    die "debootstrap failed (log: ${IMAGES}/${name}.debootstrap.log)"
  chroot "${dir}" dpkg-query -W -f '${Package}=${Version}\n' >"${tar%.tar}.packages"
  # An image carries no package caches, no apt lists and no logs of its making.
  rm -rf "${dir}"/var/cache/apt/* "${dir}"/var/lib/apt/lists/* "${dir}"/var/log/* "${dir}"/tmp/* \
    "${dir}"/usr/share/doc/* "${dir}"/usr/share/man/* "${dir}"/usr/share/info/*
  tar --numeric-owner -C "${dir}" -cf "${tar}.tmp" .
  mv -f "${tar}.tmp" "${tar}"
  rm -rf "${dir}"
  echo "${tar}"
}

# import TAR IMAGE: the tarball as IMAGE, unless IMAGE was already imported from this very tarball
import_rootfs() {
  local tar="$1" image="$2" source
  source="$(basename "${tar}")"
  if [[ "$(podman image inspect --format '{{ index .Labels "org.codeforge.rootfs" }}' "${image}" 2>/dev/null)" == "${source}" ]]; then
    return
  fi
  log "importing ${source} as ${image}"
  podman import --quiet \
    --change "LABEL org.codeforge.rootfs=${source}" \
    --change "LABEL org.opencontainers.image.base.name=debian:${DEBIAN_SUITE}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' \
    "${tar}" "${image}" >/dev/null
}

t=${SECONDS}
import_rootfs "$(rootfs python "${PYTHON_PACKAGES}")" "${BASE_IMAGE}"
import_rootfs "$(rootfs redis "${REDIS_PACKAGES}")" "${REDIS_IMAGE}"
log "base images ready in $((SECONDS - t))s"

# The build steps trust what the host trusts (a machine behind a TLS-inspecting proxy has its CA in the system
# bundle): the host's bundle, a pip.conf and a uv.toml naming it are mounted into every RUN step, never copied
# into an image.
BUILD_CONF="${STORE}/build-conf"
mkdir -p "${BUILD_CONF}"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"${BUILD_CONF}/pip.conf"
printf 'native-tls = true\n' >"${BUILD_CONF}/uv.toml"
TRUST=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  TRUST=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
    --volume "${BUILD_CONF}/pip.conf:/etc/pip.conf:ro" --volume "${BUILD_CONF}/uv.toml:/etc/uv/uv.toml:ro")
fi

# bud IMAGE DOCKERFILE: build the repository's Dockerfile on the Debian base; --layers keeps every step's layer
# so only the steps whose inputs changed run again. The host network: PyPI is reached as the host reaches it.
bud() {
  local image="$1" dockerfile="$2" t=${SECONDS}
  log "building ${image} from ${dockerfile}"
  buildah bud --quiet --layers --force-rm --runtime runc --network host --ulimit "nofile=${NOFILE}:${NOFILE}" \
    "${TRUST[@]}" --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" \
    -f "${ROOT}/${dockerfile}" -t "${image}" "${ROOT}" >"${IMAGES}/$(basename "$(dirname "${dockerfile}")").build.log" 2>&1 ||
    { tail -n 30 "${IMAGES}/$(basename "$(dirname "${dockerfile}")").build.log" >&2; die "building ${image} failed"; }
  log "built ${image} in $((SECONDS - t))s"
}
bud "${AGENT_IMAGE}" agent_image/Dockerfile
bud "${OPERATOR_IMAGE}" operator/Dockerfile

# Archives for `ctr images import` (docker-archive: it carries the image's name), rewritten only when the image
# changed.
for image in "${BASE_IMAGE}" "${REDIS_IMAGE}" "${AGENT_IMAGE}" "${OPERATOR_IMAGE}"; do
  name="${image#localhost/}"
  name="${name%%:*}"
  id="$(podman image inspect --format '{{.Id}}' "${image}")"
  if [[ "$(cat "${ARCHIVES}/${name}.id" 2>/dev/null)" != "${id}" || ! -f "${ARCHIVES}/${name}.tar" ]]; then
    rm -f "${ARCHIVES}/${name}.tar"
    podman save --quiet --format docker-archive -o "${ARCHIVES}/${name}.tar.tmp" "${image}"
    mv -f "${ARCHIVES}/${name}.tar.tmp" "${ARCHIVES}/${name}.tar"
    echo "${id}" >"${ARCHIVES}/${name}.id"
  fi
  size="$(podman image inspect --format '{{.Size}}' "${image}")"
  log "$(printf '%-36s %4d MB  %s' "${image}" $((size / 1000000)) "${ARCHIVES}/${name}.tar")"
done
log "images ready in $((SECONDS - started))s"
