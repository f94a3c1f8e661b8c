#!/usr/bin/env bash
# Installs everything pxo needs on a Debian (bookworm) machine, as root:
#   1. Debian packages: BCC (bpfcc-tools, python3-bpfcc), Python venv support,
#      kernel headers (linux-headers-amd64); for the test suite, Chromium (the
#      web page's tests) and qemu with a static busybox (the kernel matrix's
#      guests, scripts/kernels.sh), podman with runc and mmdebstrap (the
#      container image, scripts/image.sh, and `pxo deploy --containers`),
#      containerd (a real CRI runtime for the container-name tests; not started
#      as a service: the tests run their own).
#   2. The kernel-header fallback: when /lib/modules/$(uname -r)/build is
#      missing (as on the project's machines, whose kernel ships no headers),
#      link Debian's newest linux-headers tree there. BCC only needs headers to
#      compile; pxo takes every struct offset from the running kernel's BTF, so
#      a header tree from another kernel version is safe (see DESIGN.md).
#   3. A virtual environment in .venv with exactly the locked dependencies
#      (requirements/*.txt, checked by hash; scripts/lock.sh updates them) and
#      pxo installed editable, able to import Debian's bcc module.
# Idempotent: a second run only checks.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PXO_VENV:-$ROOT/.venv}
APT_PACKAGES=(bpfcc-tools python3-bpfcc python3 python3-venv python3-pip linux-headers-amd64 chromium
              qemu-system-x86 qemu-system-common busybox-static kmod
              podman runc containernetworking-plugins mmdebstrap containerd)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: pxo installs Debian packages and loads eBPF programs"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and its derivatives"

# -- 1. Debian packages ------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# -- 2. kernel headers for BCC -------------------------------------------------
release=$(uname -r)
moddir=/lib/modules/$release
if [ -e "$moddir/build/include/linux/kconfig.h" ] || [ -n "${BCC_KERNEL_SOURCE:-}" ]; then
    :
else
    # Newest Debian header tree: the -amd64 (arch) part and its -common part.
    arch_tree=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$arch_tree" ] || die "no kernel headers for $release and no linux-headers-*-amd64 tree in /usr/src"
    common_tree=${arch_tree%-amd64}-common
    [ -d "$common_tree" ] || die "$arch_tree has no matching $common_tree"
    log "no headers for kernel $release: linking $arch_tree (fallback, see DESIGN.md)"
    mkdir -p "$moddir"
    ln -sfn "$arch_tree" "$moddir/build"
    ln -sfn "$common_tree" "$moddir/source"
fi

# -- 3. Python environment -----------------------------------------------------
# Debian's python3 (not a pyenv or other interpreter on PATH): Debian's bcc
# module is installed for it.
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# bcc is pure Python over libbcc; Debian installs it in dist-packages. Putting
# that directory last on the venv's path makes `import bcc` work while every
# package pip installs in the venv still wins.
echo /usr/lib/python3/dist-packages > "$site/pxo-debian-bcc.pth"
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "the virtual environment cannot import bcc (is python3-bpfcc installed?)"

stamp=$VENV/.pxo-installed
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] \
    || [ -n "$(find "$ROOT/proto" "$ROOT/requirements" -newer "$stamp" \( -name '*.proto' -o -name '*.txt' \) \
               2>/dev/null)" ] \
    || ! "$VENV/bin/python" -c 'import pxo.v1.pxo_pb2' 2>/dev/null; then
    log "installing the locked dependencies and pxo into $VENV"
    # Exactly what CI tested: every package pinned and checked by hash (scripts/lock.sh makes the files).
    "$VENV/bin/python" -m pip install -q --require-hashes -r "$ROOT/requirements/build.txt" \
        -r "$ROOT/requirements/test.txt" </dev/null
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" </dev/null
    touch "$stamp"
fi
"$VENV/bin/pxo" version >/dev/null || die "pxo is not runnable from $VENV"
log "ready: $VENV/bin/pxo"
