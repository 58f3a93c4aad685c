#!/bin/busybox sh
# PID 1 of a vm-test guest (busybox, from the initramfs). It mounts the
# host's root file system (read-only, over virtio-9p) with tmpfs where
# programs write, runs /run.sh inside it with its output on the second
# serial port, reports how that ended and powers the guest off (or, for
# `vm-test --shell`, gives that port a shell). Lines starting
# "@@vm-test " are for the harness; everything else is shown.
/bin/busybox --install -s /bin
export PATH=/bin
out=/dev/ttyS1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "@@vm-test $*" > $out; }
say booted "$(cut -d' ' -f1 /proc/uptime)"

fail() {
    say error "$*"
    say done 125
    poweroff -f
}

for module in $(cat /modules/order); do
    insmod /modules/$module.ko || fail "insmod $module failed"
done

host=/host
mkdir -p $host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $host \
    || fail "cannot mount the host's root over 9p"
# The host's root as it is, before tmpfs covers parts of it.
mkdir -p /orig
mount --bind $host /orig || fail "cannot bind the host's root"
for dir in tmp run var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs $host/$dir || fail "cannot mount tmpfs on /$dir"
done
# A repository under one of those (a clone in /tmp) stays visible at its
# path: config.sh names its tests directory.
repo=
if [ -e /config.sh ]; then
    repo=$(sed -n "s/^TESTS_DIR='\(.*\)\/tests'$/\1/p" /config.sh)
fi
case "$repo" in
/tmp/* | /run/* | /var/tmp/*)
    mkdir -p "$host$repo" && mount --bind "/orig$repo" "$host$repo" ||
        fail "cannot show $repo in the guest"
    ;;
esac
mount -t proc proc $host/proc
mount -t sysfs sysfs $host/sys
mount -t devtmpfs devtmpfs $host/dev
mkdir -p $host/dev/pts $host/dev/shm
mount -t devpts -o ptmxmode=666,gid=5,mode=620 devpts $host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $host/dev/shm
mount -t bpf bpf $host/sys/fs/bpf
# A pure cgroup v2 hierarchy, as on most distributions now (this project's
# own machines mount a hybrid one): the container tests make cgroups in it.
mount -t cgroup2 cgroup2 $host/sys/fs/cgroup
mount -t tracefs tracefs $host/sys/kernel/tracing
mount -t debugfs debugfs $host/sys/kernel/debug
ip link set lo up

# `vm-test --shell`: the terminal is the user's, and the tests are not run.
if [ -e /shell ]; then
    echo "vm-test: root shell on $(uname -r); the host's files, read-only; exit to power off" > $out
    chroot $host /usr/bin/env -i HOME=/tmp TERM=vt100 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /usr/bin/setsid -c /bin/bash < $out > $out 2>&1
    poweroff -f
fi

mkdir -p $host/run/vm-test
cp /run.sh /config.sh /hooks.py $host/run/vm-test/

# Through a pipe, as in CI: the serial port is a terminal, and programs
# that see one (libtest's colours) print differently.
{
    chroot $host /bin/sh /run/vm-test/run.sh < /dev/null
    echo $? > /status
} 2>&1 | cat > $out
say done "$(cat /status)"
sync
poweroff -f
