#!/run/pxo/busybox sh
# Stage 2: PID 1 in the host's (shared, read-only) root, run by busybox sh from
# /run/pxo. Makes the guest look like a freshly booted Kubernetes-style node
# (cgroup v2 only, no tracefs, debugfs or bpffs mounted, loopback up), runs the
# command from cmd.sh with its output on the pxo.out virtio port, reports
# "start <uptime>" and then "exit <status>" on the pxo.status port, powers off.
# busybox's ash waits with waitpid(-1), so as PID 1 it also reaps orphans.
BB=/run/pxo/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /run/pxo/kernel.conf

say() { echo "pxo-guest stage 2: $*" >/dev/console; }
off() {
    $BB sync
    $BB poweroff -f
    echo o >/proc/sysrq-trigger
    $BB sleep 60
}

$BB mount -t proc -o nosuid,nodev,noexec proc /proc
$BB mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$BB mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000 devpts /dev/pts
$BB mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
# What udev or systemd would add to /dev.
$BB ln -sf /proc/self/fd /dev/fd
$BB ln -sf /proc/self/fd/0 /dev/stdin
$BB ln -sf /proc/self/fd/1 /dev/stdout
$BB ln -sf /proc/self/fd/2 /dev/stderr
$BB ln -sf /proc/kcore /dev/core

# cgroup v2 only, with systemd's mount options (memory_recursiveprot needs 5.7+)
# and the controllers a kubelet uses enabled for the root's children.
cg=/sys/fs/cgroup
$BB mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate,memory_recursiveprot cgroup2 $cg 2>/dev/null \
    || $BB mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 $cg || say "cannot mount cgroup2"
for c in cpu io memory pids; do
    case " $($BB cat $cg/cgroup.controllers) " in
        *" $c "*) echo "+$c" >$cg/cgroup.subtree_control || say "cannot enable +$c" ;;
    esac
done

# Loopback: the kernel adds 127.0.0.1 and ::1 itself when lo comes up.
$BB ip link set lo up
$BB hostname "guest-$SUITE"
echo "guest-$SUITE" >/etc/hostname
# As Debian's installer does: the node's own name resolves without DNS.
echo "127.0.1.1 guest-$SUITE" >>/etc/hosts

# The ports have no udev symlinks; their names are in sysfs.
out='' status=''
for p in /sys/class/virtio-ports/*; do
    case "$($BB cat "$p/name" 2>/dev/null)" in
        pxo.out) out=/dev/${p##*/} ;;
        pxo.status) status=/dev/${p##*/} ;;
    esac
done
if [ -z "$out" ] || [ -z "$status" ]; then
    say "virtio ports pxo.out/pxo.status not found"
    off
fi

exec 3>"$status"
echo "start $($BB cut -d' ' -f1 /proc/uptime)" >&3
$BB sh /run/pxo/cmd.sh </dev/null >"$out" 2>&1 3>&-
echo "exit $?" >&3
exec 3>&-
off
