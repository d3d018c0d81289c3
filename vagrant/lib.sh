# lib.sh: helpers shared by haul's VM scripts (build-image.sh, build-box.sh, vm.sh,
# libvirt-ns.sh). Sourced, never run. Bash only.
#
# Settings every script honours (environment):
#   HAUL_VM_CACHE   image cache (default /var/cache/haul-vm)
#   HAUL_VM_NICE    niceness of the heavy steps: debootstrap, mkfs, qemu (default 10)

HAUL_VAGRANT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HAUL_ROOT=$(cd "$HAUL_VAGRANT_DIR/.." && pwd)
HAUL_VM_CACHE=${HAUL_VM_CACHE:-/var/cache/haul-vm}
HAUL_VM_NICE=${HAUL_VM_NICE:-10}
PROG=${PROG:-$(basename "$0")}

# The guests' private link (exists only between the two guests) and their link MACs.
HAUL_LINK_NET=192.168.77
HAUL_SRC_IP=$HAUL_LINK_NET.1
HAUL_DST_IP=$HAUL_LINK_NET.2
HAUL_SHARED=/srv/haul-shared

log() { printf '==> %s: %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# now_ms: wall clock in milliseconds; since_ms T0: seconds since T0 as "12.345"
now_ms() { date +%s%3N; }
since_ms() { local d=$(($(now_ms) - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

# usage_from_header FILE: print the leading comment block of FILE (after the shebang) as help
usage_from_header() {
    awk 'NR == 1 && /^#!/ {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$1"
}

# step NAME SECS CMD...: run the external command CMD bounded by SECS seconds (then SIGTERM,
# SIGKILL 10 s later). A failure or a timeout is reported with the step's name, and the
# command's exit status is returned (124 on timeout). Durations go to $HAUL_STEP_LOG if set
# (NAME, seconds, exit status; tab-separated), the running step's name to $HAUL_STEP_LOG.current.
# CMD's standard input is /dev/null.
step() {
    local name=$1 secs=$2 t0 rc dur
    shift 2
    t0=$(now_ms)
    log "step '$name' (limit ${secs}s)"
    [ -n "${HAUL_STEP_LOG:-}" ] && printf '%s\n' "$name" >"$HAUL_STEP_LOG.current"
    # in the background and waited for, so that a trapped signal (a total time bound) is handled
    # at once; the trap may end the step through $HAUL_STEP_PID
    timeout -k 10 "$secs" "$@" &
    HAUL_STEP_PID=$!
    wait "$HAUL_STEP_PID"
    rc=$?
    HAUL_STEP_PID=
    dur=$(since_ms "$t0")
    if [ -n "${HAUL_STEP_LOG:-}" ]; then
        printf '%s\t%s\t%s\n' "$name" "$dur" "$rc" >>"$HAUL_STEP_LOG"
    fi
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        printf '%s: STEP TIMED OUT: %s (after %ss, limit %ss)\n' "$PROG" "$name" "$dur" "$secs" >&2
        return 124
    elif [ $rc != 0 ]; then
        printf '%s: STEP FAILED: %s (exit %s after %ss)\n' "$PROG" "$name" "$rc" "$dur" >&2
        return $rc
    fi
    log "step '$name' done in ${dur}s"
    return 0
}

# wait_until NAME SECS CMD...: retry CMD (each try bounded to 20 s) once a second until it
# succeeds; fail with the step's name when SECS have passed.
wait_until() {
    local name=$1 secs=$2 t0 deadline
    shift 2
    t0=$(now_ms)
    deadline=$((t0 + secs * 1000))
    log "waiting: '$name' (limit ${secs}s)"
    [ -n "${HAUL_STEP_LOG:-}" ] && printf '%s\n' "$name" >"$HAUL_STEP_LOG.current"
    while :; do
        if timeout -k 5 20 "$@" >/dev/null 2>&1; then
            log "'$name' after $(since_ms "$t0")s"
            [ -n "${HAUL_STEP_LOG:-}" ] && printf '%s\t%s\t0\n' "$name" "$(since_ms "$t0")" >>"$HAUL_STEP_LOG"
            return 0
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            printf '%s: STEP TIMED OUT: %s (limit %ss)\n' "$PROG" "$name" "$secs" >&2
            [ -n "${HAUL_STEP_LOG:-}" ] && printf '%s\t%s\t124\n' "$name" "$(since_ms "$t0")" >>"$HAUL_STEP_LOG"
            return 124
        fi
        sleep 1
    done
}

need_root() { [ "$(id -u)" = 0 ] || die "run me as root"; }

# ---------------------------------------------------------------- apt (host side)
# Debian's mirror, derived from the machine's own sources (never a host name written here).
debian_mirror() {
    local uri=
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || die "cannot find the Debian mirror URI in /etc/apt/sources.list.d/debian.sources"
    printf '%s\n' "$uri"
}
debian_security_mirror() {
    local uri=
    uri=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 ~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    printf '%s\n' "$uri"
}

missing_pkgs() {
    local p out=
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out="$out $p"
    done
    printf '%s\n' "$out"
}

HAUL_APT_UPDATED=0
apt_update() {
    [ $HAUL_APT_UPDATED = 1 ] && return 0
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq || die "apt-get update failed"
    HAUL_APT_UPDATED=1
}

# apt_install_bookworm PKG...: install what is missing, from bookworm
apt_install_bookworm() {
    local miss
    miss=$(missing_pkgs "$@")
    [ -z "${miss// /}" ] && return 0
    log "installing from bookworm:$miss"
    apt_update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm --no-install-recommends $miss ||
        die "apt-get install$miss failed"
}

# ensure_backports_source: a bookworm-backports binary entry in its own file (backports are
# built for bookworm; trixie/sid binary entries are never added: they would upgrade libc)
HAUL_BACKPORTS_LIST=/etc/apt/sources.list.d/haul-bookworm-backports.sources
ensure_backports_source() {
    [ -f "$HAUL_BACKPORTS_LIST" ] && return 0
    local uri
    uri=$(debian_mirror)
    log "adding bookworm-backports (binary) in $HAUL_BACKPORTS_LIST"
    cat >"$HAUL_BACKPORTS_LIST" <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    HAUL_APT_UPDATED=0
}

# ensure_qemu_system: qemu-system-x86 from bookworm-backports (matches the machine's qemu-utils;
# bookworm's own qemu-system-common conflicts with it)
ensure_qemu_system() {
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then return 0; fi
    ensure_backports_source
    apt_update
    log "installing qemu-system-x86 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports --no-remove \
        --no-install-recommends qemu-system-x86 qemu-utils ||
        die "apt-get install -t bookworm-backports qemu-system-x86 failed"
}

# ---------------------------------------------------------------- image cache
# image_dir: the current cached image (a directory with rootfs.qcow2, vmlinuz, initrd.img)
image_dir() {
    local d=$HAUL_VM_CACHE/current
    [ -f "$d/done" ] || return 1
    (cd "$d" && pwd -P)
}
ssh_key() { printf '%s\n' "$HAUL_VM_CACHE/ssh/id_ed25519"; }
haul_key_file() { printf '%s\n' "${HAUL_KEY_FILE:-$HAUL_VM_CACHE/haul.key}"; }

# ensure_haul_key: the shared key haul's source and destination authenticate with, made once
# unless HAUL_KEY_FILE names an existing one: by `haul keygen` when the host has haul built,
# else in its format (one line `haul-key-v1 <64 hex digits>`) from /dev/urandom
ensure_haul_key() {
    local f haul=$HAUL_ROOT/target/release/haul
    f=$(haul_key_file)
    [ -s "$f" ] && return 0
    mkdir -p "$(dirname "$f")"
    if [ -x "$haul" ] && "$haul" keygen "$f" >/dev/null 2>&1 && [ -s "$f" ]; then
        log "made the shared haul key $f (haul keygen)"
        return 0
    fi
    rm -f "$f"
    (umask 077 && printf 'haul-key-v1 %s\n' "$(head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n')" >"$f")
    log "made the shared haul key $f"
}

# host_criu: a CRIU >= 4.1 on the host to install into the guests (haul needs >= 4.1; the
# guests' Debian criu is 3.17.1): $HAUL_CRIU, else /usr/local/sbin/criu or the criu on PATH
host_criu() {
    local c v
    for c in ${HAUL_CRIU:-} /usr/local/sbin/criu "$(command -v criu 2>/dev/null)"; do
        [ -x "$c" ] || continue
        v=$("$c" --version 2>/dev/null | awk '/^Version:/ {print $2; exit}')
        [ -n "$v" ] && [ "$(printf '%s\n4.1\n' "$v" | sort -V | head -n 1)" = 4.1 ] && { echo "$c"; return 0; }
    done
    return 1
}
