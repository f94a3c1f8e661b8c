#!/usr/bin/env bash
# Fetch Debian's cloud kernels (with their headers) so the test suite can boot
# them under qemu with this machine's root filesystem shared into the guest
# (tests/helpers/guest.py). Nothing is installed as the host's kernel: the
# packages are downloaded with `apt-get download` from Debian's archive through a
# private apt state and unpacked with `dpkg -x` into
#   ${PXO_KERNEL_CACHE:-/var/cache/pxo/kernels}/<suite>/
# which then holds root/ (the unpacked packages), kernel.env (read by Python)
# and the initramfs guest.py builds.
#
#   scripts/kernels.sh [SUITE...]   SUITE: bullseye bookworm trixie sid, or all
#                                   (default: bookworm)
# Idempotent: a suite whose newest kernel is already unpacked is left alone.
set -euo pipefail

CACHE=${PXO_KERNEL_CACHE:-/var/cache/pxo/kernels}
MIRROR=${PXO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${PXO_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
ALL_SUITES=(bullseye bookworm trixie sid)

die() { echo "kernels.sh: $*" >&2; exit 1; }

# Host tools for guest.py: qemu (TCG), qemu's own C virtiofsd (shipped in
# qemu-system-common up to qemu 7.2, bookworm's), a static busybox for the
# initramfs, kmod's depmod for the unpacked module trees.
ensure_host_tools() {
    local need=()
    [[ -x /usr/bin/qemu-system-x86_64 ]] || need+=(qemu-system-x86)
    [[ -x /usr/lib/qemu/virtiofsd ]] || need+=(qemu-system-common)
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
    command -v depmod >/dev/null || need+=(kmod)
    command -v unshare >/dev/null || need+=(util-linux)
    [[ -f $KEYRING ]] || need+=(debian-archive-keyring)
    ((${#need[@]} == 0)) && return 0
    echo "kernels.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" </dev/null >/dev/null 2>&1 \
        || die "apt-get install ${need[*]} failed"
    [[ -x /usr/lib/qemu/virtiofsd ]] || die "/usr/lib/qemu/virtiofsd missing after installing qemu-system-common (needs qemu <= 7.2, i.e. Debian bookworm)"
}

sources_for() {  # one-line-per-source sources.list for a suite
    local s=$1 opt="[arch=amd64 signed-by=$KEYRING]"
    case $s in
        sid) echo "deb $opt $MIRROR sid main" ;;
        bullseye | bookworm | trixie)
            echo "deb $opt $MIRROR $s main"
            echo "deb $opt $MIRROR $s-updates main"
            echo "deb $opt $SECURITY $s-security main" ;;
        *) die "unknown suite '$s' (expected: ${ALL_SUITES[*]} or all)" ;;
    esac
}

# Fixes inside an unpacked tree: absolute symlinks (bookworm's build/source,
# kbuild's scripts/tools links) point at the host's paths; make them relative
# so they resolve inside the tree wherever it is reached from.
relink_absolute() {
    local root=$1 link target
    while IFS= read -r -d '' link; do
        target=$(readlink "$link")
        ln -sfn "$(realpath -ms --relative-to="$(dirname "$link")" "$root$target")" "$link"
    done < <(find "$root" -type l -lname '/*' -print0)
}

fetch_suite() {
    local suite=$1 start=$SECONDS
    local dir=$CACHE/$suite apt=$CACHE/$suite/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/prefs.d"
    sources_for "$suite" >"$apt/sources.list"
    : >"$apt/status"  # an empty dpkg status: the host's installed packages play no part
    # A private apt state: the host's sources, lists, caches and pinning stay untouched.
    local o=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=-
             -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
             -o Dir::State::status="$apt/status" -o Dir::Etc::preferences="$apt/prefs"
             -o Dir::Etc::preferencesparts="$apt/prefs.d" -o APT::Architectures::=amd64
             -o Acquire::Languages=none -o APT::Sandbox::User=root -qq)
    apt-get "${o[@]}" update </dev/null >"$apt/update.log" 2>&1 \
        || die "$suite: apt-get update failed: $(grep -m1 -E '^(E|Err):' "$apt/update.log" || tail -n1 "$apt/update.log")"

    # The metapackage names the suite's current cloud kernel (bullseye-security
    # also lists a newer 6.1 backport and -unsigned images: the metapackage avoids both).
    # (No `| head` in these pipelines: with pipefail, a SIGPIPE upstream would end the script.)
    local image version
    image=$(apt-cache "${o[@]}" depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' || true)
    image=${image%%$'\n'*}
    [[ -n $image ]] || die "$suite: no linux-image-*-cloud-amd64 package found in $suite"
    local release=${image#linux-image-}
    version=$(apt-cache "${o[@]}" policy "$image" 2>/dev/null | sed -n 's/^ *Candidate: //p' || true)
    [[ -n $version && $version != "(none)" ]] || die "$suite: package $image not found in $suite"

    if [[ -f $dir/kernel.env && -d $dir/root ]] && grep -qx "RELEASE=$release" "$dir/kernel.env" \
        && grep -qx "VERSION=$version" "$dir/kernel.env"; then
        printf '%-9s %-32s %4ss (cached)\n' "$suite" "$release" $((SECONDS - start))
        return 0
    fi

    # The image, the headers, and the versioned linux-* packages they depend on:
    # sid splits the image into linux-binary-*, linux-modules-*, linux-base-*;
    # the headers need -common and linux-kbuild-*.
    local pkgs=() queue=("$image" "linux-headers-$release") p dep
    while ((${#queue[@]})); do
        p=${queue[0]}; queue=("${queue[@]:1}")
        [[ " ${pkgs[*]} " == *" $p "* ]] && continue
        apt-cache "${o[@]}" show "$p" >/dev/null 2>&1 || die "$suite: package $p not found in $suite"
        pkgs+=("$p")
        # First alternative of each dependency only (the headers depend on
        # "image | image-unsigned"), versioned linux-* packages only.
        for dep in $(apt-cache "${o[@]}" depends "$p" 2>/dev/null \
            | awk '/^ *\|?Depends:/ { if (!alt) print $2; alt = ($1 ~ /^\|/); next } { alt = 0 }' \
            | grep -E '^linux-(image|binary|modules|base|headers|kbuild)-[0-9]' || true); do
            queue+=("$dep")
        done
    done

    rm -rf "$dir/debs.new" "$dir/root.new"
    mkdir -p "$dir/debs.new" "$dir/root.new"
    (cd "$dir/debs.new" && apt-get "${o[@]}" download "${pkgs[@]}" </dev/null >"$apt/download.log" 2>&1) \
        || die "$suite: apt-get download failed: $(grep -m1 -E '^(E|Err):' "$apt/download.log" || tail -n1 "$apt/download.log")"
    local deb
    for deb in "$dir"/debs.new/*.deb; do dpkg -x "$deb" "$dir/root.new"; done

    local root=$dir/root.new modules vmlinuz
    relink_absolute "$root"
    # Module tree and kernel image: /lib/modules and /boot up to trixie,
    # /usr/lib/modules/<release>/vmlinuz in sid.
    for modules in "$root/usr/lib/modules/$release" "$root/lib/modules/$release"; do
        if [[ -d $modules && ! -L $modules ]]; then break; fi
    done
    [[ -d $modules ]] || die "$suite: no modules directory for $release in the unpacked packages"
    for vmlinuz in "$root/boot/vmlinuz-$release" "$modules/vmlinuz"; do
        if [[ -f $vmlinuz ]]; then break; fi
    done
    [[ -f $vmlinuz ]] || die "$suite: no vmlinuz for $release in the unpacked packages"
    # depmod looks under <base>/lib/modules (kmod <= 31): give sid's tree that path too.
    if [[ ! -e $root/lib/modules/$release ]]; then
        mkdir -p "$root/lib/modules"
        ln -s "../../usr/lib/modules/$release" "$root/lib/modules/$release"
    fi
    depmod -b "$root" "$release" || die "$suite: depmod failed for $release"

    # BCC reads the kernel's headers through /lib/modules/<release>/build (the
    # arch tree, with include/generated) and /source (the -common tree).
    local build=$root/usr/src/linux-headers-$release common
    common=$(find "$root/usr/src" -maxdepth 1 -name 'linux-headers-*-common')
    common=${common%%$'\n'*}
    [[ -d $build/include/generated ]] || die "$suite: headers for $release lack include/generated"
    [[ -n $common ]] || die "$suite: no linux-headers-*-common tree for $release"
    ln -sfn "$(realpath -ms --relative-to="$modules" "$build")" "$modules/build"
    ln -sfn "$(realpath -ms --relative-to="$modules" "$common")" "$modules/source"

    # Swap in the new tree; paths in kernel.env are final paths.
    rm -rf "$dir/root" "$dir/debs"
    mv "$dir/root.new" "$dir/root"
    mv "$dir/debs.new" "$dir/debs"
    rm -f "$dir"/initramfs-*.cpio  # built by guest.py for the kernel it was built from
    local final_modules=$dir/root${modules#"$root"} final_vmlinuz=$dir/root${vmlinuz#"$root"}
    cat >"$dir/kernel.env.new" <<EOF
SUITE=$suite
RELEASE=$release
VERSION=$version
VMLINUZ=$final_vmlinuz
MODULES=$final_modules
PACKAGES='${pkgs[*]}'
EOF
    mv "$dir/kernel.env.new" "$dir/kernel.env"
    printf '%-9s %-32s %4ss\n' "$suite" "$release" $((SECONDS - start))
}

main() {
    [[ $(id -u) == 0 ]] || die "must run as root (installs qemu, writes $CACHE)"
    local suites=("$@")
    ((${#suites[@]})) || suites=(bookworm)
    [[ " ${suites[*]} " == *" all "* ]] && suites=("${ALL_SUITES[@]}")
    local s
    for s in "${suites[@]}"; do sources_for "$s" >/dev/null; done  # reject unknown suites before any work
    ensure_host_tools
    mkdir -p "$CACHE"
    for s in "${suites[@]}"; do fetch_suite "$s"; done
}

main "$@"
