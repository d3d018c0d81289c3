#!/bin/bash
# build-box.sh: wrap haul's guest image as a vagrant-libvirt box and add it to Vagrant, offline.
#
#   vagrant/build-box.sh                 build the image if needed (build-image.sh), the box
#                                        if needed, and `vagrant box add` it unless already added
#   vagrant/build-box.sh --no-add        build the .box file only; print its path
#   vagrant/build-box.sh --name NAME     box name (default haul/debian12, or $HAUL_BOX)
#   vagrant/build-box.sh -h|--help
#
# The box (HAUL_VM_CACHE/box/<image-hash>/haul-debian12-libvirt.box, an uncompressed tar):
#   metadata.json  {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
#   box.img        the image's rootfs.qcow2
#   vmlinuz, initrd.img, id_ed25519   kernel, initramfs and root's ssh key
#   Vagrantfile    libvirt defaults: direct kernel boot of the files above, QEMU TCG
#                  (driver "qemu", cpu_mode "custom"), root login by that key, no sudo.
# It is added through a local catalog (catalog.json, file:// URL) with the version
# 1.<unix time of the image build>: a rebuilt image is a newer version, so vagrant-libvirt
# never reuses a stale volume of an older box; older versions are pruned. Cached: a second
# run with the same image changes nothing. Needs vagrant (vagrant/libvirt-ns.sh deps).
set -uo pipefail
PROG=build-box.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

NAME=${HAUL_BOX:-haul/debian12}
ADD=1
while [ $# -gt 0 ]; do
    case $1 in
    --no-add) ADD=0 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; NAME=$2; shift ;;
    -h|--help) usage_from_header "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
need_root

"$HAUL_VAGRANT_DIR/build-image.sh" >/dev/null || die "build-image.sh failed"
IMG=$(image_dir) || die "no image in $HAUL_VM_CACHE"
HASH=$(cat "$IMG/done")
VERSION=1.$(stat -c %Y "$IMG/done")
BOXDIR=$HAUL_VM_CACHE/box/$HASH
BOX=$BOXDIR/haul-debian12-libvirt.box

if [ ! -f "$BOX" ]; then
    t0=$(now_ms)
    rm -rf "$BOXDIR"
    mkdir -p "$BOXDIR/content"
    C=$BOXDIR/content
    ln "$IMG/rootfs.qcow2" "$C/box.img" 2>/dev/null || cp "$IMG/rootfs.qcow2" "$C/box.img"
    cp "$IMG/vmlinuz" "$IMG/initrd.img" "$C/"
    install -m 0600 "$(ssh_key)" "$C/id_ed25519"
    vsize=$(qemu-img info --output=json "$IMG/rootfs.qcow2" | awk -F'[:,]' '/"virtual-size"/ {gsub(/ /, "", $2); print int($2 / 1073741824); exit}')
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "${vsize:-4}" >"$C/metadata.json"
    cat >"$C/Vagrantfile" <<EOF
# Vagrantfile embedded in the haul/debian12 libvirt box (made by vagrant/build-box.sh,
# image $HASH). Defaults only: the project's Vagrantfile adds machines and networks.
Vagrant.configure("2") do |config|
  dir = File.dirname(__FILE__)
  config.ssh.username = "root"
  config.ssh.private_key_path = File.join(dir, "id_ed25519")
  config.ssh.insert_key = false
  config.ssh.sudo_command = "%c"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
    lv.cpu_mode = "custom"
    lv.memory = 768
    lv.cpus = 1
    lv.kernel = File.join(dir, "vmlinuz")
    lv.initrd = File.join(dir, "initrd.img")
    lv.cmd_line = "$(cat "$IMG/cmdline")"
  end
end
EOF
    tar -C "$C" -cf "$BOX.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img id_ed25519 ||
        die "tar of the box failed"
    mv "$BOX.tmp" "$BOX"
    rm -rf "$C"
    cat >"$BOXDIR/catalog.json" <<EOF
{
  "name": "$NAME",
  "description": "haul's Debian 12 test guest (image $HASH), built locally by vagrant/build-box.sh",
  "versions": [
    {"version": "$VERSION", "providers": [{"name": "libvirt", "url": "file://$BOX"}]}
  ]
}
EOF
    log "built $BOX in $(since_ms "$t0")s"
    # keep the boxes of the two newest images only
    ls -1dt "$HAUL_VM_CACHE"/box/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
fi
[ $ADD = 0 ] && { echo "$BOX"; exit 0; }

command -v vagrant >/dev/null || die "vagrant is not installed (vagrant/libvirt-ns.sh deps)"
VHOME=${VAGRANT_HOME:-$HOME/.vagrant.d}
if [ -d "$VHOME/boxes/${NAME//\//-VAGRANTSLASH-}/$VERSION/libvirt" ]; then
    log "box $NAME $VERSION already added"
else
    t0=$(now_ms)
    step "vagrant box add $NAME $VERSION" 600 vagrant box add --provider libvirt "$BOXDIR/catalog.json" ||
        die "vagrant box add failed"
    log "added box $NAME $VERSION in $(since_ms "$t0")s"
    # older versions of this box (vagrant box prune keeps the newest), and the volumes
    # vagrant-libvirt uploaded for them into libvirt's default pool
    timeout 120 vagrant box prune --name "$NAME" --force --keep-active-boxes >/dev/null 2>&1 || true
    prefix=${NAME//\//-VAGRANTSLASH-}_vagrant_box_image_
    for v in /var/lib/libvirt/images/"$prefix"*_box.img; do
        [ -f "$v" ] || continue
        [ "${v##*/}" = "${prefix}${VERSION}_box.img" ] && continue
        log "removing the stale box volume $v"
        rm -f "$v"
    done
    timeout 30 virsh -c qemu:///system pool-refresh default >/dev/null 2>&1 || true
fi
echo "$BOX"
