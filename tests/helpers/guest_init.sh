#!/bin/busybox sh
# Stage 1, the initramfs's /init (busybox sh), built by tests/helpers/guest.py.
# Mounts the host's root (shared read-only over virtio-fs) at /newroot, gives the
# guest private writable copies of /etc /var /tmp /root /home (tmpfs overlays
# on the host's directories) and a plain tmpfs /run, points
# /lib/modules/<release> at the kernel's unpacked module tree (whose build and
# source links lead to that kernel's own headers, for BCC), then switch_roots
# into stage 2 (guest_stage2.sh) as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "pxo-guest stage 1: $*" >/dev/console
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# RELEASE=, MODULES= (the unpacked tree's path on the host), SUITE=
. /pxo/kernel.conf

# Only what mounting the share and reporting back needs, in dependency order
# (built-in ones are not listed): virtio_pci, virtiofs, virtio_console, overlay.
while read -r ko; do
    [ -n "$ko" ] || continue
    insmod "/modules/$ko" || fail "insmod $ko failed"
done </modules/order

# The device shows up asynchronously after virtio_pci binds it: retry briefly.
tries=0
until mount -t virtiofs -o ro root /newroot 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || fail "cannot mount the host's root (virtiofs tag 'root')"
    sleep 0.1
done

# Writable, private, empty-on-boot layers over the host's directories: the
# guest sees the host's files but its writes stay in guest memory.
mount -t tmpfs -o mode=0700 tmpfs /ovl || fail "tmpfs /ovl"
for d in etc var tmp root home; do
    [ -d "/newroot/$d" ] || continue
    mkdir -p "/ovl/$d/upper" "/ovl/$d/work"
    # The merged directory takes the upper's owner and mode (/tmp is 1777).
    chmod "$(stat -c %a "/newroot/$d")" "/ovl/$d/upper"
    chown "$(stat -c %u:%g "/newroot/$d")" "/ovl/$d/upper"
    mount -t overlay overlay -o "lowerdir=/newroot/$d,upperdir=/ovl/$d/upper,workdir=/ovl/$d/work" "/newroot/$d" \
        || fail "overlay on /$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "tmpfs /run"

# Hide the host's own module trees; the guest's kernel finds its modules (and,
# through build/source, its headers) in the unpacked packages. A symlink, not
# a bind mount, so the tree's relative build/source links resolve inside it.
mount -t tmpfs -o mode=0755 tmpfs /newroot/lib/modules || fail "tmpfs /lib/modules (the host needs a /lib/modules directory)"
ln -s "$MODULES" "/newroot/lib/modules/$RELEASE"
[ -d "/newroot$MODULES/kernel" ] || fail "$MODULES is not visible in the guest"

# Stage 2 and its busybox live in /run/pxo (tmpfs): after switch_root the
# initramfs is gone, and the host's busybox may not be static.
mkdir -p /newroot/run/pxo
cp /bin/busybox /pxo/stage2.sh /pxo/kernel.conf /pxo/cmd.sh /newroot/run/pxo/ || fail "copy stage 2"

# Stage 2 mounts its own proc, sysfs and devtmpfs, as a fresh boot would.
umount /proc /sys
umount -l /dev
exec switch_root /newroot /run/pxo/busybox sh /run/pxo/stage2.sh
