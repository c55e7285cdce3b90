#!/usr/bin/env bash
# Builds the small Debian guest that the real-guest libvirt tests boot (test/helpers/test-guest.ts), from
# Debian packages only: no loop mounts, no downloads beyond Debian's archive.
#
#   bash scripts/make-test-guest.sh        # as root (mmdebstrap --mode=root, mke2fs -d keeps ownership)
#
# Prints the directory that holds the result (last line of stdout):
#   vmlinuz, initrd.img  the host's Debian kernel and initramfs (linux-image-amd64), booted directly by
#                        libvirt (<kernel>/<initrd>/<cmdline>); Debian's initramfs has virtio_blk
#   guest.qcow2          ext4 root filesystem (no partition table: root=/dev/vda), hostname cbguest-a
#   guest-b.qcow2        the same with hostname cbguest-b (a second guest for group tests)
#   cmdline              the kernel command line the guest expects
#   manifest.txt         what went in (kernel, packages and their versions)
#
# The guest's PID 1 is /sbin/clonebox-init (below): it loads virtio_console (minbase has no kernel
# modules, so the host's module is copied in), starts qemu-ga on the port named org.qemu.guest_agent.0
# with a freeze hook that fails while /run/clonebox-freeze-fail exists, and appends a counter to
# /var/log/clonebox-counter.log, with `sync` after each line.
# Baked in, not installed: /root/clonebox-probe_1.0_all.deb (for the guest-aware diff's --packages test).
#
# Cached by the content of its inputs: the hash of this script, the package list and the kernel's
# package version names the result directory, so a second run (or a second test file) returns at once
# and CI builds it once per run. Concurrent runs wait on a lock; a build that fails leaves nothing behind.
#
# Environment:
#   CLONEBOX_GUEST_CACHE   cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/clonebox/test-guest)
#   CLONEBOX_GUEST_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   CLONEBOX_GUEST_SUITE   Debian suite (default bookworm)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

CACHE="${CLONEBOX_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clonebox/test-guest}"
MIRROR="${CLONEBOX_GUEST_MIRROR:-http://deb.debian.org/debian}"
SUITE="${CLONEBOX_GUEST_SUITE:-bookworm}"
PACKAGES="qemu-guest-agent,kmod"
# The filesystem's size (sparse): room for the tests' writes above the ~170 MiB of the tree.
FS_SIZE=768M
CMDLINE="root=/dev/vda rw console=ttyS0 init=/sbin/clonebox-init panic=-1 noresume fsck.mode=skip mitigations=off loglevel=4"

die() { echo "make-test-guest: error: $*" >&2; exit 1; }
T0=$(date +%s)
log() { echo "make-test-guest: [$(($(date +%s) - T0)) s] $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root and mke2fs -d keep file ownership); try sudo"
for b in mmdebstrap mke2fs debugfs qemu-img dpkg-deb flock sha256sum; do
  command -v "$b" >/dev/null || die "$b is missing; run scripts/install-system-deps.sh"
done

# The newest Debian kernel installed on the host (linux-image-amd64 pulls it in), with its initramfs.
KVER=""
for k in $(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
  [ -f "/boot/initrd.img-$k" ] && [ -f "/lib/modules/$k/kernel/drivers/char/virtio_console.ko" ] && KVER="$k"
done
[ -n "$KVER" ] || die "no Debian kernel with an initramfs in /boot; install linux-image-amd64 (scripts/install-system-deps.sh)"
KPKG="$(dpkg-query -W -f='${Package}=${Version}' "linux-image-$KVER" 2>/dev/null || echo "linux-image-$KVER")"

KEY="$( { cat "$0"; echo "$PACKAGES $SUITE $MIRROR $KPKG"; } | sha256sum | cut -c1-16)"
OUT="$CACHE/$KEY"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 900 9 || die "another build holds $CACHE/.lock for more than 15 minutes"
if [ -f "$OUT/ready" ]; then
  echo "$OUT"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.build-$KEY-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"

# 1. The tree: minbase plus the agent and kmod (insmod). ~20 s from a nearby mirror.
log "mmdebstrap $SUITE ($PACKAGES) from $MIRROR"
mmdebstrap --quiet --mode=root --variant=minbase --include="$PACKAGES" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  "$SUITE" "$ROOT" "$MIRROR" </dev/null >&2 || die "mmdebstrap failed (is $MIRROR reachable?)"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*_Packages

# 2. What minbase lacks to run as the tests' guest.
mkdir -p "$ROOT/lib/clonebox" "$ROOT/etc/qemu"
cp "/lib/modules/$KVER/kernel/drivers/char/virtio_console.ko" "$ROOT/lib/clonebox/"
cat >"$ROOT/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
# qemu-ga runs this with "freeze" before freezing filesystems and "thaw" after thawing them; the tests
# read what it was called with in /run/clonebox-fsfreeze-hook.log. They make freezing fail (a
# misconfigured hook, as in real life) by creating /run/clonebox-freeze-fail.
echo "$1" >>/run/clonebox-fsfreeze-hook.log
if [ "$1" = freeze ] && [ -e /run/clonebox-freeze-fail ]; then
  echo "clonebox test hook refuses to freeze" >&2
  exit 1
fi
exit 0
EOF
chmod 755 "$ROOT/etc/qemu/fsfreeze-hook"
cat >"$ROOT/sbin/clonebox-init" <<'EOF'
#!/bin/sh
# PID 1 of the clonebox test guest. The initramfs has mounted / (rw), /proc, /sys, /dev and /run.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "clonebox-init: $*" >/dev/console; }
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs tmpfs /run
mkdir -p /tmp /var/log
hostname -F /etc/hostname 2>/dev/null || true
insmod /lib/clonebox/virtio_console.ko 2>/dev/null || say "insmod virtio_console failed"
port=""
i=0
while [ -z "$port" ] && [ $i -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do
    if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && [ -e "/dev/${p##*/}" ]; then port="/dev/${p##*/}"; fi
  done
  [ -n "$port" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -n "$port" ]; then
  qemu-ga --daemonize --method=virtio-serial --path="$port" --fsfreeze-hook=/etc/qemu/fsfreeze-hook \
    --pidfile=/run/qemu-ga.pid --logfile=/run/qemu-ga.log --statedir=/run
  say "qemu-ga on $port"
else
  say "no org.qemu.guest_agent.0 port: running without an agent"
fi
n=0
while :; do
  n=$((n + 1))
  echo "$n" >>/var/log/clonebox-counter.log
  sync
  sleep 0.2
done
EOF
chmod 755 "$ROOT/sbin/clonebox-init"
echo cbguest-a >"$ROOT/etc/hostname"
: >"$ROOT/etc/fstab"
rm -f "$ROOT/var/log/clonebox-counter.log"

# A small local package for `dpkg -i` in the guest (no network there).
PKG="$WORK/probe"
mkdir -p "$PKG/DEBIAN" "$PKG/usr/share/clonebox-probe"
cat >"$PKG/DEBIAN/control" <<'EOF'
Package: clonebox-probe
Version: 1.0
Architecture: all
Maintainer: clonebox tests <tests@clonebox.invalid>
Description: probe package for clonebox's guest-aware diff tests
 Installs one file, /usr/share/clonebox-probe/hello.
EOF
echo "hello from clonebox-probe" >"$PKG/usr/share/clonebox-probe/hello"
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$ROOT/root/clonebox-probe_1.0_all.deb" >/dev/null

{
  echo "kernel $KPKG ($KVER)"
  echo "suite $SUITE, mirror $MIRROR, packages $PACKAGES"
  chroot "$ROOT" dpkg-query -W -f='${Package} ${Version}\n'
} >"$WORK/manifest.txt"

# 3. Filesystem image from the tree (mke2fs -d: no mount), then qcow2.
log "mke2fs -d, qemu-img convert"
mke2fs -q -F -t ext4 -L cbroot -d "$ROOT" "$WORK/root.raw" "$FS_SIZE" >&2 || die "mke2fs -d failed"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/guest.qcow2"
printf 'cbguest-b\n' >"$WORK/hostname-b"
debugfs -w -R "rm /etc/hostname" "$WORK/root.raw" >/dev/null 2>&1
debugfs -w -R "write $WORK/hostname-b /etc/hostname" "$WORK/root.raw" >/dev/null 2>&1
[ "$(debugfs -R 'cat /etc/hostname' "$WORK/root.raw" 2>/dev/null)" = cbguest-b ] || die "cannot set the second guest's hostname"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/guest-b.qcow2"
rm -rf "$ROOT" "$WORK/root.raw" "$PKG" "$WORK/hostname-b"

cp "/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "/boot/initrd.img-$KVER" "$WORK/initrd.img"
echo "$CMDLINE" >"$WORK/cmdline"
chmod 644 "$WORK"/*
chmod 755 "$WORK"
touch "$WORK/ready"
rm -rf "$OUT"
mv "$WORK" "$OUT"
trap - EXIT
# Earlier builds (other inputs) are of no further use.
for d in "$CACHE"/*/; do
  [ "${d%/}" = "$OUT" ] || rm -rf "${d%/}"
done
log "built $OUT"
echo "$OUT"
