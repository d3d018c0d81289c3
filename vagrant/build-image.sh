#!/bin/bash
# build-image.sh: build the Debian 12 (bookworm) guest image of haul's two test VMs, cached.
#
#   vagrant/build-image.sh              build (or reuse) the image; print its directory
#   vagrant/build-image.sh --deps-only  only install the host packages the VM scripts need
#   vagrant/build-image.sh --force      rebuild even when the cache holds this image
#   vagrant/build-image.sh --cache DIR  cache directory (default $HAUL_VM_CACHE or /var/cache/haul-vm)
#   vagrant/build-image.sh -h|--help
#
# Output, in DIR/images/<hash>/ (DIR/current points at it): rootfs.qcow2 (ext4 labelled
# haul-root, no partition table, 4 GiB virtual), vmlinuz, initrd.img, cmdline (the kernel
# command line to boot it with), manifest (packages, timings). The hash covers this script and
# guest/haul-node-setup (less their comment lines), the guest's ssh public key and the Debian
# mirror: a second run with the same inputs does nothing (about 0.1 s). The two newest images
# are kept. The .deb files are cached too (DIR/debs), so a rebuild downloads nothing. The root ssh key is DIR/ssh/id_ed25519 (made once).
#
# Host packages, installed when missing: debootstrap, e2fsprogs, socat, openssh-client from
# bookworm; qemu-system-x86 from bookworm-backports (a binary entry in its own file under
# /etc/apt/sources.list.d/, derived from debian.sources). Run as root.
#
# The guest: debootstrap minbase + systemd, openssh-server (root login by key only),
# nfs-kernel-server, nfs-common, criu (Debian's 3.17.1), iproute2, iptables; kernel
# linux-image-amd64 with a small initramfs (virtio_pci virtio_blk virtio_net ext4); booted
# with -kernel/-initrd; systemd-networkd DHCP on eth0; THP never at boot; haul-node.service
# runs haul-node-setup with haul.role=src|dst from the kernel command line (link address,
# NFS export on dst, /srv/haul-shared mounted on both).
set -uo pipefail
PROG=build-image.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

FORCE=0
DEPS_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
    --force) FORCE=1 ;;
    --deps-only) DEPS_ONLY=1 ;;
    --cache) [ $# -ge 2 ] || die "--cache needs a directory"; HAUL_VM_CACHE=$2; shift ;;
    --cache=*) HAUL_VM_CACHE=${1#--cache=} ;;
    -h|--help) usage_from_header "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
need_root
export HAUL_VM_CACHE

SUITE=bookworm
GUEST_PKGS=systemd-sysv,udev,dbus,openssh-server,nfs-common,nfs-kernel-server,criu,iproute2,procps,kmod,netbase,e2fsprogs,iptables,iputils-ping,less
# what a CRIU >= 4.1 built on a bookworm host links to (vm.sh provision copies it in)
CRIU_LIBS=libbsd0,libgnutls30,libnftables1,libprotobuf-c1,libnl-3-200,libnet1,libuuid1
INITRD_MODULES="virtio_pci virtio_blk virtio_net ext4"
DISK_SIZE=4G
# the guest boots with this; vm.sh and the box's Vagrantfile add haul.role=src|dst
CMDLINE="root=LABEL=haul-root rw console=ttyS0 net.ifnames=0 transparent_hugepage=never quiet"

# ---------------------------------------------------------------- host packages
host_deps() {
    apt_install_bookworm debootstrap e2fsprogs socat openssh-client qemu-utils util-linux coreutils
    ensure_qemu_system
}
renice -n "$HAUL_VM_NICE" -p $$ >/dev/null 2>&1 || true
host_deps
if [ $DEPS_ONLY = 1 ]; then
    log "host packages in place"
    exit 0
fi

mkdir -p "$HAUL_VM_CACHE/ssh" "$HAUL_VM_CACHE/images" "$HAUL_VM_CACHE/debs"
exec 9>"$HAUL_VM_CACHE/.lock"
flock -w 1800 9 || die "another build holds $HAUL_VM_CACHE/.lock"

KEY=$(ssh_key)
if [ ! -s "$KEY" ]; then
    ssh-keygen -q -t ed25519 -N '' -C haul-vm -f "$KEY" || die "ssh-keygen failed"
    log "made the guests' root ssh key $KEY"
fi

MIRROR=$(debian_mirror)
SEC_MIRROR=$(debian_security_mirror)
# comment lines do not count: editing the help text does not rebuild the image
HASH=$( {
    grep -hv '^[[:space:]]*#' "$0" "$HAUL_VAGRANT_DIR/guest/haul-node-setup"
    cat "$KEY.pub"
    echo "$MIRROR $SEC_MIRROR $SUITE $GUEST_PKGS $CRIU_LIBS $INITRD_MODULES $DISK_SIZE $CMDLINE"
} | sha256sum | cut -c1-16)
OUT=$HAUL_VM_CACHE/images/$HASH

if [ $FORCE = 0 ] && [ -f "$OUT/done" ]; then
    ln -sfn "images/$HASH" "$HAUL_VM_CACHE/current"
    log "cached image $OUT"
    echo "$OUT"
    exit 0
fi

# ---------------------------------------------------------------- build
WORK=$HAUL_VM_CACHE/build.$$
ROOT=$WORK/rootfs
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$WORK"
mkdir -p "$WORK"
BUILD_LOG=$HAUL_VM_CACHE/build.log
: >"$BUILD_LOG"
T_ALL=$(now_ms)
TIMINGS=
timed() { # timed NAME CMD...: run CMD, log to build.log, record its duration
    local name=$1 t0 rc
    shift
    t0=$(now_ms)
    log "$name"
    "$@" >>"$BUILD_LOG" 2>&1
    rc=$?
    TIMINGS="$TIMINGS$name: $(since_ms "$t0") s
"
    if [ $rc != 0 ]; then
        tail -n 25 "$BUILD_LOG" >&2
        die "$name failed (exit $rc; full log $BUILD_LOG)"
    fi
}
mount_in() { # mount_in TYPE SRC DIR [OPTS]
    mkdir -p "$3"
    mount ${4:+-o "$4"} -t "$1" "$2" "$3" || die "mount $2 on $3"
    MOUNTS+=("$3")
}
in_root() { nice -n "$HAUL_VM_NICE" chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root "$@"; }

timed "debootstrap $SUITE (minbase)" nice -n "$HAUL_VM_NICE" debootstrap --variant=minbase \
    --cache-dir="$HAUL_VM_CACHE/debs" --include="$GUEST_PKGS,$CRIU_LIBS" "$SUITE" "$ROOT" "$MIRROR"

# apt inside the guest: the same mirror; no services started while building
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
${SEC_MIRROR:+deb $SEC_MIRROR $SUITE-security main}
EOF
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAcquire::Check-Valid-Until "false";\n' >"$ROOT/etc/apt/apt.conf.d/90haul"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$ROOT/etc/initramfs-tools/conf.d/haul.conf"
printf '%s\n' $INITRD_MODULES >>"$ROOT/etc/initramfs-tools/modules"
mount_in proc proc "$ROOT/proc"
mount_in sysfs sysfs "$ROOT/sys"
mount_in none /dev "$ROOT/dev" bind
mount_in devpts devpts "$ROOT/dev/pts"
mkdir -p "$HAUL_VM_CACHE/debs/apt"
mount_in none "$HAUL_VM_CACHE/debs/apt" "$ROOT/var/cache/apt/archives" bind
timed "kernel and initramfs (linux-image-amd64)" in_root sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends linux-image-amd64'

# ---- guest configuration
cfg() { mkdir -p "$(dirname "$ROOT/$1")" && cat >"$ROOT/$1"; }
echo haul-vm >"$ROOT/etc/hostname"
cfg etc/hosts <<'EOF'
127.0.0.1 localhost
127.0.1.1 haul-vm
::1 localhost ip6-localhost ip6-loopback
EOF
: >"$ROOT/etc/resolv.conf"
cfg etc/fstab <<'EOF'
LABEL=haul-root / ext4 defaults,noatime 0 1
EOF
# a fresh machine id on every new disk (both guests come from one image; NFSv4 client
# identities and DHCP client ids derive from it)
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
# root: ssh key only
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$KEY.pub" "$ROOT/root/.ssh/authorized_keys"
cfg etc/ssh/sshd_config.d/haul.conf <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
EOF
# host keys are made on each disk's first boot (ed25519 only: quick under TCG)
rm -f "$ROOT"/etc/ssh/ssh_host_*
cfg etc/systemd/system/ssh.service.d/haul-hostkey.conf <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
EOF
# networking: DHCP on eth0 (qemu user net / the Vagrant management network); the private
# link is configured by haul-node-setup
cfg etc/systemd/network/90-eth0.network <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDNS=no
UseDomains=no
EOF
cfg etc/tmpfiles.d/haul-thp.conf <<'EOF'
w /sys/kernel/mm/transparent_hugepage/enabled - - - - never
w /sys/kernel/mm/transparent_hugepage/defrag - - - - never
EOF
cfg etc/systemd/journald.conf.d/haul.conf <<'EOF'
[Journal]
Storage=volatile
RuntimeMaxUse=32M
EOF
install -m 0755 "$HAUL_VAGRANT_DIR/guest/haul-node-setup" "$ROOT/usr/local/sbin/haul-node-setup"
cfg etc/systemd/system/haul-node.service <<'EOF'
[Unit]
Description=haul test node (link address, THP, NFS share) from haul.role= on the kernel command line
ConditionKernelCommandLine=haul.role
Wants=network.target
After=network.target systemd-networkd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/haul-node-setup --from-cmdline
TimeoutStartSec=400

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOT/var/local/haul" "$ROOT/etc/haul" "$ROOT/srv/haul-shared" "$ROOT/srv/haul-export"
chmod 0700 "$ROOT/etc/haul"
in_root systemctl enable systemd-networkd.service haul-node.service >>"$BUILD_LOG" 2>&1 ||
    die "systemctl enable in the guest failed"
# nfs-server runs on dst only (haul-node-setup starts it); nothing waits for "online";
# no periodic jobs or first-boot prompts in a test VM
in_root systemctl disable nfs-server.service >>"$BUILD_LOG" 2>&1 || true
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-firstboot.service \
    getty@tty1.service; do
    in_root systemctl mask "$u" >>"$BUILD_LOG" 2>&1 || true
done
rm -f "$ROOT/usr/sbin/policy-rc.d"
in_root apt-get clean >>"$BUILD_LOG" 2>&1 || true

# kernel and initrd out of the image (booted with -kernel/-initrd)
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -n 1)")
[ -f "$ROOT/boot/vmlinuz-$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] ||
    die "no kernel/initrd for $KVER in the image"
INITRD_LIST=$(in_root lsinitramfs "/boot/initrd.img-$KVER" 2>/dev/null)
for m in $INITRD_MODULES; do
    case $INITRD_LIST in *"/$m.ko"*) ;; *) warn "module $m is not in the initramfs (built in?)" ;; esac
done
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
{
    echo "image $HASH built $(date -u +%Y-%m-%dT%H:%M:%SZ) by $PROG"
    echo "suite $SUITE, mirror $MIRROR, kernel $KVER"
    echo "cmdline $CMDLINE"
    in_root dpkg-query -W -f='${Package} ${Version}\n' | sed 's/^/pkg /'
} >"$WORK/manifest"

for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" || umount -l "${MOUNTS[$i]}"; done
MOUNTS=()
timed "mkfs.ext4 -d ($DISK_SIZE)" sh -c "truncate -s $DISK_SIZE '$WORK/rootfs.raw' &&
    nice -n $HAUL_VM_NICE mkfs.ext4 -q -F -L haul-root -d '$ROOT' '$WORK/rootfs.raw'"
timed "qemu-img convert -O qcow2" nice -n "$HAUL_VM_NICE" qemu-img convert -O qcow2 \
    "$WORK/rootfs.raw" "$WORK/rootfs.qcow2"
rm -f "$WORK/rootfs.raw"

echo "$CMDLINE" >"$WORK/cmdline"
{
    printf '%s' "$TIMINGS" | sed 's/^/time /'
    echo "time total: $(since_ms "$T_ALL") s"
    echo "size rootfs.qcow2 $(du -m "$WORK/rootfs.qcow2" | cut -f1) MiB"
} >>"$WORK/manifest"
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$WORK/rootfs.qcow2" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/cmdline" "$WORK/manifest" "$OUT/"
echo "$HASH" >"$OUT/done"
ln -sfn "images/$HASH" "$HAUL_VM_CACHE/current"
# keep the two newest images, drop older ones
ls -1dt "$HAUL_VM_CACHE"/images/*/ 2>/dev/null | tail -n +3 | while read -r old; do
    log "removing old image $old"
    rm -rf "$old"
done
log "built $OUT in $(since_ms "$T_ALL") s"
grep '^time ' "$OUT/manifest" >&2
echo "$OUT"
