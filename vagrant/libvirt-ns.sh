#!/bin/bash
# libvirt-ns.sh: libvirt (and Vagrant) inside a network namespace of their own, for the
# Vagrant path of haul's two test VMs. Run as root.
#
#   vagrant/libvirt-ns.sh deps         install vagrant, vagrant-libvirt, libvirt, dnsmasq-base
#                                      from bookworm (qemu-system-x86 from bookworm-backports)
#   vagrant/libvirt-ns.sh start        make the namespace, start virtlogd and libvirtd in it
#   vagrant/libvirt-ns.sh exec CMD...  run CMD inside the namespace (vagrant, virsh, ssh ...)
#   vagrant/libvirt-ns.sh status       namespace and daemons
#   vagrant/libvirt-ns.sh stop         destroy every domain and network this libvirtd runs,
#                                      stop the daemons, end what is left in the namespace,
#                                      delete the namespace
#   vagrant/libvirt-ns.sh -h|--help
#
# The namespace is HAUL_LIBVIRT_NETNS (default haul-libvirt): libvirt's bridges, dnsmasq and
# the guests' taps live there, so no test traffic touches the machine's own interfaces; enter
# it with `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which also makes a private
# mount namespace). `deps` appends to (or creates) /etc/libvirt/qemu.conf what libvirt needs on a machine
# without systemd: namespaces = [], user/group root, dynamic_ownership = 0 (once, marked
# "# haul-vagrant"). `start` refuses to run when some other libvirtd already runs.
set -uo pipefail
PROG=libvirt-ns.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

NS=${HAUL_LIBVIRT_NETNS:-haul-libvirt}
NSPATH=/run/netns/$NS
PIDS=/run/haul-libvirt
in_ns() { nsenter --net="$NSPATH" "$@"; }

cmd_deps() {
    need_root
    ensure_qemu_system
    apt_install_bookworm vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu \
        libvirt-clients dnsmasq-base iptables iproute2 qemu-utils ruby-libvirt
    local conf=/etc/libvirt/qemu.conf
    # libvirtd parses its compiled-in default user before reading qemu.conf: it must exist
    # (libvirt-daemon-system would make it; qemu runs as root all the same, see below)
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null ||
        useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    # bookworm's libvirt-daemon ships no qemu.conf (libvirt-daemon-system does): defaults then
    if ! grep -q '^# haul-vagrant' "$conf" 2>/dev/null; then
        mkdir -p /etc/libvirt
        grep -Eq '^[[:space:]]*(namespaces|user|group|dynamic_ownership)[[:space:]]*=' "$conf" 2>/dev/null &&
            die "$conf already sets namespaces/user/group/dynamic_ownership: check it by hand"
        cat >>"$conf" <<'EOF'
# haul-vagrant: libvirt on a machine without systemd, inside a network namespace
namespaces = []
user = "root"
group = "root"
dynamic_ownership = 0
EOF
        log "configured $conf"
    fi
}

daemon_pid() { # daemon_pid NAME: pid of NAME (libvirtd|virtlogd) that we started, if it runs
    local f=$PIDS/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/self/ns/net 2>/dev/null)" ] && return 1
    echo "$pid"
}

cmd_start() {
    need_root
    command -v libvirtd >/dev/null || cmd_deps
    if daemon_pid libvirtd >/dev/null; then
        log "libvirtd already runs in $NS (pid $(daemon_pid libvirtd))"
        return 0
    fi
    pgrep -x libvirtd >/dev/null && die "another libvirtd runs on this machine (not ours): stop it first"
    # directories libvirt-daemon-system would make
    mkdir -p "$PIDS" /var/log/libvirt/qemu /var/lib/libvirt/images /var/lib/libvirt/qemu \
        /var/lib/libvirt/dnsmasq /var/cache/libvirt
    [ -e "$NSPATH" ] || ip netns add "$NS" || die "ip netns add $NS"
    in_ns ip link set lo up
    daemon_pid virtlogd >/dev/null || in_ns virtlogd -d -p "$PIDS/virtlogd.pid" || die "virtlogd did not start"
    in_ns libvirtd -d -p "$PIDS/libvirtd.pid" || die "libvirtd did not start"
    wait_until "libvirtd answers" 60 virsh -c qemu:///system version || die "libvirtd does not answer"
    log "libvirtd (pid $(daemon_pid libvirtd)) and virtlogd run in network namespace $NS"
}

cmd_stop() {
    need_root
    local d n pid p
    if daemon_pid libvirtd >/dev/null; then
        for d in $(timeout 30 virsh -c qemu:///system list --name 2>/dev/null); do
            log "destroying domain $d"
            timeout 60 virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
        done
        for n in $(timeout 30 virsh -c qemu:///system net-list --name 2>/dev/null); do
            log "stopping network $n"
            timeout 60 virsh -c qemu:///system net-destroy "$n" >/dev/null 2>&1 || true
        done
    fi
    for d in libvirtd virtlogd; do
        pid=$(daemon_pid "$d") || continue
        log "stopping $d (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    done
    rm -f "$PIDS"/*.pid
    if [ -e "$NSPATH" ]; then
        # whatever is left in our namespace was started by us (qemu, dnsmasq)
        for p in $(ip netns pids "$NS" 2>/dev/null); do
            log "ending pid $p ($(cat "/proc/$p/comm" 2>/dev/null)) left in $NS"
            kill -TERM "$p" 2>/dev/null
        done
        sleep 1
        for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$NS" || warn "ip netns del $NS failed"
    fi
    log "stopped (namespace $NS removed)"
}

cmd_status() {
    local rc=0
    if [ -e "$NSPATH" ]; then echo "namespace $NS: present"; else echo "namespace $NS: absent"; rc=3; fi
    for d in virtlogd libvirtd; do
        if p=$(daemon_pid "$d"); then echo "$d: pid $p"; else echo "$d: not running"; rc=3; fi
    done
    [ $rc = 0 ] && timeout 30 virsh -c qemu:///system list --all
    return $rc
}

[ $# -ge 1 ] || { usage_from_header "$0"; exit 2; }
cmd=$1
shift
case $cmd in
-h|--help|help) usage_from_header "$0" ;;
deps) cmd_deps ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
exec)
    [ $# -ge 1 ] || die "usage: libvirt-ns.sh exec CMD..."
    [ -e "$NSPATH" ] || die "no namespace $NS (libvirt-ns.sh start)"
    exec nsenter --net="$NSPATH" "$@"
    ;;
*) die "unknown command '$cmd' (try --help)" ;;
esac
