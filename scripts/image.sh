#!/usr/bin/env bash
# Build pxo's container image from nothing but Debian's archive and PyPI, with podman:
#   1. the base (once): mmdebstrap --variant=minbase bookworm, imported as
#      localhost/pxo-base:bookworm (documentation excluded by dpkg);
#   2. deploy/image/Dockerfile on top of it: BCC from Debian, pxo with its locked
#      dependencies (requirements/runtime.txt), a non-root user, OCI labels;
#      tagged localhost/pxo:<version>.
#
#   scripts/image.sh [--save FILE] [--rebuild-base]
#     --save FILE      also write the image as an OCI archive (for `kind load image-archive`,
#                      `ctr -n k8s.io images import`, `podman load`)
#     --rebuild-base   make the base again (a new Debian snapshot)
# Prints the image's name last. Needs root and podman, mmdebstrap, runc (scripts/setup.sh installs them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=localhost/pxo-base:bookworm
MIRROR=${PXO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
save="" rebuild_base=0
while [ $# -gt 0 ]; do
    case $1 in
        --save) save=${2:?--save needs a file}; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (podman builds rootful images here)"
for tool in podman mmdebstrap; do
    command -v $tool >/dev/null || die "$tool not found: run scripts/setup.sh"
done
version=$("$ROOT/.venv/bin/python" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])' 2>/dev/null \
          || python3 -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] || revision="$revision-dirty"
# The commit's time, not now: the same commit builds the same labels and timestamps.
epoch=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
image=localhost/pxo:$version
# Podman's defaults ask for more open files than a container may have on some machines:
# no more than this shell is allowed.
ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)")
# pip inside the build trusts what this machine trusts (a proxy's CA, say), for the build only.
host_ca=/etc/ssl/certs/ca-certificates.crt
build_ca=()
[ -f "$host_ca" ] && build_ca=(--volume "$host_ca:/run/pxo-build-ca.crt:ro" --build-arg PIP_CERT=/run/pxo-build-ca.crt)
started=$(date +%s)

if [ $rebuild_base = 1 ] || ! podman image exists "$BASE"; then
    log "making the base $BASE with mmdebstrap (minbase bookworm)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --aptopt='APT::Install-Recommends "false"' \
        bookworm "$tmp/base.tar" "$MIRROR" </dev/null
    podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
        --message "debian bookworm minbase (mmdebstrap)" "$tmp/base.tar" "$BASE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
fi

log "building $image (revision ${revision:0:12})"
podman build --quiet --network host "${ulimits[@]}" "${build_ca[@]}" --layers \
    --file "$ROOT/deploy/image/Dockerfile" \
    --build-arg "BASE=$BASE" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --timestamp "$epoch" \
    --tag "$image" "$ROOT" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
log "built $image: $((size / 1048576)) MiB in $(( $(date +%s) - started )) s"
if [ -n "$save" ]; then
    rm -f "$save"
    podman save --quiet --format oci-archive --output "$save" "$image"
    log "saved $image to $save (OCI archive)"
fi
echo "$image"
