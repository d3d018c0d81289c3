#!/bin/bash
# vm.sh: haul's two test VMs (src, dst) under plain QEMU (TCG), without Vagrant or libvirt.
#
#   vagrant/vm.sh up                 build/reuse the image, boot dst and src, wait for ssh and
#                                    for /srv/haul-shared (NFS from dst) on both
#   vagrant/vm.sh provision          copy haul's binaries from target/release/ (haul, mtouch,
#                                    haul-launch, file-churn, when present), the host's CRIU >= 4.1 and the
#                                    shared key into both, start `haul serve` on dst
#                                    (guest/haul-provision)
#   vagrant/vm.sh ssh NODE [CMD...]  run CMD (a shell string) on NODE (src|dst); no CMD: a shell
#   vagrant/vm.sh scp ARGS...        scp with NODE:PATH operands, e.g. `scp f src:/tmp/`
#   vagrant/vm.sh collect DIR        copy console logs, journals, haul's --img-path (all but
#                                    the memory pages) and the shared dir's logs into DIR
#   vagrant/vm.sh status             nodes, pids, ssh ports; exit 0 only if both answer ssh
#   vagrant/vm.sh down               quit both through the qemu monitor, remove the state dir
#   vagrant/vm.sh -h|--help
#
# The guests: -accel tcg -cpu max -m 768 -smp 1 (HAUL_VM_MEM overrides the memory, in MiB;
# HAUL_VM_ACCEL=kvm uses -accel kvm -cpu host instead of TCG: it hangs on this project's
# machines, whose /dev/kvm cannot run a stock Debian kernel), direct kernel boot of the cached
# image (build-image.sh) on a throw-away qcow2 overlay each (HAUL_VM_DISK, e.g. 16G, makes the
# overlay that large and grows the guest's root file system to it at `up`). eth0 is
# qemu user networking (restrict=on: no way out) with ssh forwarded from a free port on
# 127.0.0.1; eth1 is a private link between the two guests only (-netdev dgram over unix
# sockets in the state dir: no bridge, no tap, no IP traffic on the host), 192.168.77.1 (src)
# and 192.168.77.2 (dst). State (pids, ports, ssh_config, monitors, consoles, overlays) lives
# in HAUL_VM_STATE (default /var/tmp/haul-vm). Every step is bounded by a timeout and fails
# with the step's name. `up` and `down` are idempotent; `up` cleans up after itself on failure.
set -uo pipefail
PROG=vm.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

STATE=${HAUL_VM_STATE:-/var/tmp/haul-vm}
MEM=${HAUL_VM_MEM:-768}
ACCEL=${HAUL_VM_ACCEL:-tcg}
DISK=${HAUL_VM_DISK:-}
case $ACCEL in
tcg) ACCEL_ARGS=(-accel tcg -cpu max) ;;
kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
*) die "unknown HAUL_VM_ACCEL '$ACCEL' (tcg or kvm)" ;;
esac
NODES="dst src"
BOOT_LIMIT=${HAUL_VM_BOOT_LIMIT:-300}
SHARE_LIMIT=${HAUL_VM_SHARE_LIMIT:-300}
SELF=$HAUL_VAGRANT_DIR/vm.sh

node_mac() { case $1 in src) echo 52:54:00:77:00:01 ;; dst) echo 52:54:00:77:00:02 ;; esac; }
node_peer() { case $1 in src) echo dst ;; dst) echo src ;; esac; }
check_node() { case ${1:-} in src|dst) ;; *) die "unknown node '${1:-}' (src or dst)" ;; esac; }
ssh_cfg() { echo "$STATE/ssh_config"; }

# node_pid NODE: the pid of NODE's qemu if it is running (and really is our qemu)
node_pid() {
    local f=$STATE/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-name haul-$1,.*$STATE/$1.qcow2" || return 1
    echo "$pid"
}

free_port() { # free_port START: the first TCP port >= START that nothing listens on (127.0.0.1)
    local p=$1
    while ss -Htln "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
    echo "$p"
}

node_ssh() { local n=$1; shift; ssh -F "$(ssh_cfg)" "$n" "$@"; }

start_node() {
    local n=$1 port=$2 img=$3 cmdline
    cmdline="$(cat "$img/cmdline") haul.role=$n"
    rm -f "$STATE/$n.pid" "$STATE/$n.mon" "$STATE/$n.link"
    nice -n "$HAUL_VM_NICE" qemu-system-x86_64 \
        -name "haul-$n,process=haul-$n" \
        "${ACCEL_ARGS[@]}" -m "$MEM" -smp 1 \
        -nodefaults -no-user-config -display none \
        -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$cmdline" \
        -drive "file=$STATE/$n.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
        -netdev "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" \
        -device virtio-net-pci,netdev=mgmt,romfile= \
        -netdev "dgram,id=link,local.type=unix,local.path=$STATE/$n.link,remote.type=unix,remote.path=$STATE/$(node_peer "$n").link" \
        -device "virtio-net-pci,netdev=link,mac=$(node_mac "$n"),romfile=" \
        -device virtio-rng-pci \
        -serial "file:$STATE/$n.console.log" \
        -monitor "unix:$STATE/$n.mon,server=on,wait=off" \
        -pidfile "$STATE/$n.pid" -daemonize \
        2>"$STATE/$n.qemu.log"
}

monitor_cmd() { # monitor_cmd NODE CMD: send one command to NODE's qemu monitor
    local mon=$STATE/$1.mon
    [ -S "$mon" ] || return 1
    printf '%s\n' "$2" | timeout 10 socat -t 2 - "UNIX-CONNECT:$mon" >/dev/null 2>&1
}

stop_node() {
    local n=$1 pid
    pid=$(node_pid "$n") || { rm -f "$STATE/$n.pid"; return 0; }
    log "stopping $n (qemu pid $pid) through its monitor"
    monitor_cmd "$n" quit || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$n did not quit through the monitor: SIGTERM to pid $pid"
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && { warn "SIGKILL to pid $pid"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; }
    fi
    rm -f "$STATE/$n.pid"
}

cmd_down() {
    if [ ! -d "$STATE" ]; then
        log "nothing to stop ($STATE does not exist)"
        return 0
    fi
    local n
    for n in src dst; do stop_node "$n"; done
    for n in src dst; do
        if node_pid "$n" >/dev/null; then die "$n is still running"; fi
    done
    rm -rf "$STATE"
    log "down: both guests stopped, $STATE removed"
}

show_console_tail() {
    local n
    for n in $NODES; do
        echo "---- $n: last console lines ($STATE/$n.console.log)" >&2
        tail -n 15 "$STATE/$n.console.log" 2>/dev/null | sed 's/\r$//' >&2
        [ -s "$STATE/$n.qemu.log" ] && { echo "---- $n: qemu stderr" >&2; cat "$STATE/$n.qemu.log" >&2; }
    done
}

cmd_up() {
    local img n port t0 rc
    t0=$(now_ms)
    if [ -f "$STATE/env" ] && node_pid src >/dev/null && node_pid dst >/dev/null &&
        timeout 20 ssh -F "$(ssh_cfg)" src true 2>/dev/null && timeout 20 ssh -F "$(ssh_cfg)" dst true 2>/dev/null; then
        log "already up (state in $STATE)"
        return 0
    fi
    [ -d "$STATE" ] && { log "cleaning up a previous, incomplete run"; cmd_down; }
    step "image (build-image.sh)" "${HAUL_VM_IMAGE_LIMIT:-1500}" "$HAUL_VAGRANT_DIR/build-image.sh" >/dev/null || return 1
    img=$(image_dir) || die "no image in $HAUL_VM_CACHE"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (build-image.sh --deps-only)"
    mkdir -p "$STATE"
    chmod 0700 "$STATE"
    # from here on, a failure takes everything down again
    trap 'rc=$?; if [ $rc != 0 ]; then show_console_tail; log "up failed: tearing down"; cmd_down; fi' EXIT
    : >"$(ssh_cfg)"
    port=$(free_port "${HAUL_VM_SSH_PORT:-20022}")
    {
        echo "IMAGE=$img"
        echo "STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "ACCEL=$ACCEL"
        echo "MEM_MIB=$MEM"
        echo "DISK=${DISK:-as the image}"
    } >"$STATE/env"
    for n in $NODES; do
        # shellcheck disable=SC2086 # DISK: empty (the image's size) or one size argument
        qemu-img create -q -f qcow2 -F qcow2 -b "$img/rootfs.qcow2" "$STATE/$n.qcow2" $DISK || die "qemu-img create $n overlay"
        port=$(free_port "$port")
        echo "SSH_PORT_$n=$port" >>"$STATE/env"
        cat >>"$(ssh_cfg)" <<EOF
Host $n
    HostName 127.0.0.1
    Port $port
    User root
    IdentityFile $(ssh_key)
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 5
    ServerAliveCountMax 12

EOF
        step "start $n (qemu)" 60 "$SELF" __start "$n" "$port" "$img" || exit 1
        port=$((port + 1))
    done
    for n in $NODES; do
        wait_until "boot $n: ssh" "$BOOT_LIMIT" ssh -F "$(ssh_cfg)" "$n" true || exit 1
    done
    if [ -n "$DISK" ]; then
        for n in $NODES; do
            step "$n: grow / to the $DISK disk" 120 ssh -F "$(ssh_cfg)" "$n" 'resize2fs "$(findmnt -no SOURCE /)" >/dev/null 2>&1 && df -h / | tail -n 1' || exit 1
        done
    fi
    for n in $NODES; do
        wait_until "$n: $HAUL_SHARED mounted" "$SHARE_LIMIT" ssh -F "$(ssh_cfg)" "$n" \
            "mountpoint -q $HAUL_SHARED" || {
            node_ssh "$n" 'systemctl status --no-pager haul-node.service; journalctl -b -u haul-node --no-pager | tail -n 20' >&2 || true
            exit 1
        }
    done
    echo "UP_SECONDS=$(since_ms "$t0")" >>"$STATE/env"
    trap - EXIT
    log "up in $(since_ms "$t0")s: ssh -F $(ssh_cfg) src|dst (or vm.sh ssh NODE)"
}

cmd_status() {
    local n pid rc=0 port
    if [ ! -f "$STATE/env" ]; then
        echo "down (no $STATE/env)"
        return 3
    fi
    for n in src dst; do
        port=$(sed -n "s/^SSH_PORT_$n=//p" "$STATE/env")
        if pid=$(node_pid "$n"); then
            if timeout 20 ssh -F "$(ssh_cfg)" "$n" true 2>/dev/null; then
                echo "$n: running, qemu pid $pid, ssh 127.0.0.1:$port, ssh ok"
            else
                echo "$n: running, qemu pid $pid, ssh 127.0.0.1:$port, ssh NOT answering"
                rc=1
            fi
        else
            echo "$n: not running"
            rc=1
        fi
    done
    return $rc
}

require_up() { [ -f "$STATE/env" ] || die "the VMs are not up (vagrant/vm.sh up)"; }

cmd_provision() {
    require_up
    local bindir=${HAUL_BIN_DIR:-$HAUL_ROOT/target/release} stage n b found=
    stage=$STATE/provision
    rm -rf "$stage"
    mkdir -p "$stage/bin"
    for b in haul mtouch haul-launch file-churn link-probe; do
        if [ -x "$bindir/$b" ]; then cp "$bindir/$b" "$stage/bin/"; found="$found $b"; fi
    done
    [ -n "$found" ] || warn "no haul binaries in $bindir (cargo build --release first): installing the key only"
    if c=$(host_criu); then
        mkdir -p "$stage/sbin"
        cp "$c" "$stage/sbin/criu"
        found="$found criu($c)"
    else
        warn "no CRIU >= 4.1 on the host (scripts/setup.sh builds one): the guests keep Debian's 3.17.1"
    fi
    ensure_haul_key
    install -m 0600 "$(haul_key_file)" "$stage/key"
    install -m 0755 "$HAUL_VAGRANT_DIR/guest/haul-provision" "$stage/haul-provision"
    for n in dst src; do
        step "provision $n: copy" 300 scp -q -r -F "$(ssh_cfg)" "$stage" "$n:/tmp/haul-provision.d" || return 1
        step "provision $n: install" 120 ssh -F "$(ssh_cfg)" "$n" \
            "/tmp/haul-provision.d/haul-provision $n /tmp/haul-provision.d && rm -rf /tmp/haul-provision.d" || return 1
    done
    rm -rf "$stage"
    log "provisioned:${found:- (key only)}"
}

COLLECT_IMG_PATH="cd /var/local && find haul -type f ! -name 'pages-*.img' -size -20M -print0 2>/dev/null | tar --null -T - -cf -"
cmd_collect() {
    require_up
    local out=${1:-} n
    [ -n "$out" ] || die "usage: vm.sh collect DIR"
    mkdir -p "$out"
    cp "$STATE/env" "$out/vm-env" 2>/dev/null || true
    for n in src dst; do
        mkdir -p "$out/$n"
        sed 's/\r$//' "$STATE/$n.console.log" >"$out/$n/console.log" 2>/dev/null || true
        cp "$STATE/$n.qemu.log" "$out/$n/" 2>/dev/null || true
        timeout 60 ssh -F "$(ssh_cfg)" "$n" 'journalctl -b --no-pager' >"$out/$n/journal.txt" 2>&1 || true
        timeout 30 ssh -F "$(ssh_cfg)" "$n" 'dmesg' >"$out/$n/dmesg.txt" 2>&1 || true
        # haul's --img-path: reports, CRIU logs and small images, not the memory pages
        timeout 120 ssh -F "$(ssh_cfg)" "$n" "$COLLECT_IMG_PATH" | tar -C "$out/$n" -xf - 2>/dev/null || true
    done
    # the shared dir's logs and reports (not the CRIU page images)
    timeout 120 ssh -F "$(ssh_cfg)" src "cd $HAUL_SHARED && find . -type f \\( -name '*.log' -o -name '*.json' -o -name '*.txt' \\) -size -20M -print0 | tar --null -T - -cf -" |
        { mkdir -p "$out/shared" && tar -C "$out/shared" -xf -; } 2>/dev/null || true
    log "collected into $out"
}

[ $# -ge 1 ] || { usage_from_header "$0"; exit 2; }
cmd=$1
shift
case $cmd in
-h|--help|help) usage_from_header "$0"; exit 0 ;;
up) need_root; cmd_up ;;
down) need_root; cmd_down ;;
status) cmd_status ;;
provision) need_root; cmd_provision ;;
collect) cmd_collect "$@" ;;
ssh)
    require_up
    check_node "${1:-}"
    n=$1
    shift
    if [ $# = 0 ]; then exec ssh -t -F "$(ssh_cfg)" "$n"; fi
    exec ssh -F "$(ssh_cfg)" "$n" "$@"
    ;;
scp) require_up; exec scp -F "$(ssh_cfg)" "$@" ;;
__start) start_node "$@" ;;
*) die "unknown command '$cmd' (try --help)" ;;
esac
