#!/usr/bin/env bash
# System packages the test suite uses (Debian): qemu-img/qemu-io to make and check reference images,
# zstd for comparisons, iproute2 for the LAN sync test. Idempotent; developers run it once, CI on every run.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v zstd >/dev/null || need+=(zstd)
# ip (network namespaces for the LAN sync test, which skips without root or without ip)
command -v ip >/dev/null || need+=(iproute2)
# mke2fs/debugfs and sfdisk build the guest filesystems and partition tables the guest-aware diff tests read
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
# a stock Redfish client for the `clonebox serve` tests; openssl makes the service's self-signed certificate
command -v redfishtool >/dev/null || need+=(redfishtool)
command -v openssl >/dev/null || need+=(openssl)
# the real-guest libvirt tests: scripts/make-test-guest.sh builds a Debian guest with mmdebstrap and boots
# it on the host's Debian kernel and initramfs (linux-image-amd64; its initramfs has virtio_blk)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || need+=(linux-image-amd64)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
