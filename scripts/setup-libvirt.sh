#!/usr/bin/env bash
# Installs and starts a libvirt daemon with the QEMU driver for clonebox's libvirt driver and its tests,
# on Debian 12 without systemd (CI containers, sandboxes). Idempotent: run it as often as you like.
#
#   bash scripts/setup-libvirt.sh          # as root (or with sudo available)
#
# What it changes, and why (see docs/libvirt.md):
#   - packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 (no recommends)
#   - /var/log/libvirt (libvirtd and virtlogd refuse to start without it; the package's tmpfiles/systemd
#     units normally create it)
#   - a `libvirt-qemu` user and `kvm`/`libvirt` groups (the package's postinst creates them, but only when
#     its maintainer scripts could run fully)
#   - /etc/libvirt/qemu.conf: qemu runs as root with no security driver, no cgroup controllers and no
#     mount namespaces, and libvirt does not try to remember file ownership in xattrs. Containers have no
#     systemd/machined for cgroups, often cannot create namespaces, and images in temp dirs are owned by
#     whoever created them. The rest of the file is preserved.
#   - starts `virtlogd -d` then `libvirtd -d` when they are not running, and waits (bounded) until
#     `virsh -c qemu:///system list` answers.
# Environment: LIBVIRT_WAIT_SECONDS (default 60) bounds the wait for the daemon.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
WAIT_SECONDS="${LIBVIRT_WAIT_SECONDS:-60}"
URI="qemu:///system"
QEMU_CONF=/etc/libvirt/qemu.conf

log() { echo "setup-libvirt: $*" >&2; }
die() { echo "setup-libvirt: error: $*" >&2; exit 1; }

# 1. Packages -------------------------------------------------------------------------------------------
pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  log "installing ${missing[*]}"
  # A fresh image may have no package lists, or stale ones: try without updating first only if lists exist.
  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
for b in virsh libvirtd virtlogd qemu-system-x86_64; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || die "$b is missing after installing ${pkgs[*]}"
done
export PATH="$PATH:/usr/sbin:/sbin"

# 2. Users, groups, directories -----------------------------------------------------------------------------
for g in kvm libvirt libvirt-qemu; do
  getent group "$g" >/dev/null || $SUDO groupadd --system "$g"
done
if ! getent passwd libvirt-qemu >/dev/null; then
  $SUDO useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
    --gid kvm libvirt-qemu
fi
$SUDO mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/lib/libvirt/images /run/libvirt

# 3. qemu.conf: set our keys, keep everything else ---------------------------------------------------------
# Each key: drop any active (uncommented) setting of it, then append ours in a marked block. Commented
# defaults shipped by Debian are left alone. Re-running rewrites the block identically.
set_conf() {
  local tmp
  tmp="$(mktemp)"
  [ -f "$QEMU_CONF" ] || { $SUDO mkdir -p "$(dirname "$QEMU_CONF")"; $SUDO touch "$QEMU_CONF"; }
  awk '
    /^# BEGIN clonebox \(scripts\/setup-libvirt.sh\)$/ { skip = 1; next }
    /^# END clonebox$/ { skip = 0; next }
    skip { next }
    /^[ \t]*(user|group|security_driver|cgroup_controllers|namespaces|remember_owner)[ \t]*=/ {
      # multi-line list values: skip until the closing bracket
      if ($0 ~ /\[/ && $0 !~ /\]/) { inlist = 1 }
      next
    }
    inlist { if ($0 ~ /\]/) inlist = 0; next }
    { print }
  ' "$QEMU_CONF" > "$tmp"
  # strip trailing blank lines left behind by an earlier block
  sed -i -e ':a' -e '/^\n*$/{$d;N;ba' -e '}' "$tmp"
  cat >> "$tmp" <<'EOF'

# BEGIN clonebox (scripts/setup-libvirt.sh)
# Containers without systemd: qemu runs as root, no SELinux/AppArmor/DAC relabeling, no cgroups, no
# private /dev namespace, no ownership bookkeeping in xattrs.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
# END clonebox
EOF
  if ! cmp -s "$tmp" "$QEMU_CONF"; then
    $SUDO cp "$tmp" "$QEMU_CONF"
    CONF_CHANGED=1
  fi
  rm -f "$tmp"
}
CONF_CHANGED=0
set_conf

# 4. Daemons ------------------------------------------------------------------------------------------------
running() { pgrep -x "$1" >/dev/null 2>&1; }
if ! running virtlogd; then
  log "starting virtlogd"
  $SUDO virtlogd -d
fi
if running libvirtd && [ "$CONF_CHANGED" = 1 ]; then
  # qemu.conf is read at start only; a daemon started with the old settings would fail to run domains.
  log "qemu.conf changed: restarting libvirtd"
  $SUDO kill "$(pgrep -x libvirtd)"
  for _ in $(seq 1 50); do running libvirtd || break; sleep 0.2; done
fi
if ! running libvirtd; then
  log "starting libvirtd"
  $SUDO libvirtd -d
fi

deadline=$(( $(date +%s) + WAIT_SECONDS ))
while :; do
  if out="$($SUDO virsh -c "$URI" list 2>&1)"; then
    log "libvirtd answers on $URI ($($SUDO virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p'))"
    exit 0
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    die "libvirtd did not answer on $URI within ${WAIT_SECONDS}s: $(echo "$out" | head -n 1); see /var/log/libvirt/ and run \`libvirtd -v\` in the foreground"
  fi
  running libvirtd || die "libvirtd exited during start-up: $(echo "$out" | head -n 1); run \`libvirtd -v\` in the foreground to see why"
  sleep 0.5
done
