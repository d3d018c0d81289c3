#!/bin/bash
# e2e.sh: haul end to end on two VMs: up -> provision -> run_migrations -> collect -> down.
#
#   vagrant/e2e.sh [--driver qemu|vagrant] [--out DIR] [--limit SECS] [--with-haul] [--keep-up]
#                  [--sizes "64m 256m 1g"] [--howto] [--repeat N]
#   vagrant/e2e.sh -h|--help
#
#   --driver qemu     plain QEMU through vagrant/vm.sh (the default, and what CI uses)
#   --driver vagrant  vagrant-libvirt, libvirtd in its own network namespace (libvirt-ns.sh)
#   --out DIR         results, step timings and collected logs (default vagrant/out/e2e-<time>)
#   --limit SECS      bound on the whole run, tear-down included (default 1200)
#   --with-haul       also migrate with `haul pid` and each strategy in HAUL_E2E_STRATEGIES
#                     (default "stop-copy pre-copy post-copy hybrid"); HAUL_E2E_WITH_HAUL=1 too
#   --keep-up         leave the VMs running at the end (for a look inside); `vm.sh down` later
#   --sizes LIST      measure each memory size in LIST (HAUL_E2E_SIZES): the toucher is
#                     SIZE:SIZE:PAUSE (every page resident; PAUSE from HAUL_E2E_PAUSE, default
#                     10000 us), migrated by each method; names get .SIZE.rN
#   --howto           also the P.Haul HOWTO workload, 256m:64m:100000 (HAUL_E2E_HOWTO=1);
#                     names get .howto.rN; "howto" in the --sizes list puts it at that place
#   --repeat N        run every (workload, method) cell N times (HAUL_E2E_REPEAT, default 1)
#   Without --sizes and --howto the run is the CI one: one workload, HAUL_E2E_SIZE, plain names.
#   With them, the guests' memory is raised to fit the largest size (HAUL_VM_MEM, unless set:
#   768 MiB or 2 x SIZE + 1 GiB), their disks to hold a pre-copy's rounds (HAUL_VM_DISK, unless
#   set: 4 GiB + 12 x SIZE), the migration steps' limits scale with SIZE, and each cell's
#   memory images are deleted once it is checked (their listing stays: imgs-<node>.txt).
#   HAUL_E2E_CRIU_REFS=0 leaves out the plain-CRIU migrations (criu-precopy, criu-stopcopy).
#   HAUL_E2E_HAUL_ARGS: more `haul pid` options for every haul migration (e.g. --max-rounds 2).
#
# run_migrations is the hook for the migrations. Each moves a memory toucher (SIZE:PRE:PAUSE
# from HAUL_E2E_SIZE, default 64m:64m:10000) from src to dst, in its own directory of
# /srv/haul-shared, and checks that it is gone from src, runs on dst and that its memory is
# intact (no mismatch at its final check):
#   criu-precopy, criu-stopcopy  plain CRIU (pre-dump --track-mem, dump --prev-images-dir,
#                                restore -d; or dump, restore -d) of guest/memtoucher.c with
#                                the image's own criu, Debian's 3.17.1: a self-test of the VMs
#                                (HAUL_E2E_CRIU=/usr/local/sbin/criu: the one from the host)
#   haul-<strategy>              with --with-haul: `haul pid` to dst's `haul serve`, moving
#                                haul's mtouch when the guests have it (HAUL_E2E_TOUCHER=
#                                memtoucher|mtouch overrides)
# Every step is bounded and fails with its name; the total is bounded by --limit; a trap
# always tears the VMs down. Prints `e2e: N passed, N failed` last; exits non-zero if
# anything failed. Output in --out: results.tsv, steps.tsv (name, seconds, exit status),
# collect/ (consoles, journals, haul's reports and CRIU logs), summary.
set -uo pipefail
PROG=e2e.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

DRIVER=${HAUL_E2E_DRIVER:-qemu}
OUT=${HAUL_E2E_OUT:-}
LIMIT=${HAUL_E2E_LIMIT:-1200}
WITH_HAUL=${HAUL_E2E_WITH_HAUL:-0}
STRATEGIES=${HAUL_E2E_STRATEGIES:-stop-copy pre-copy post-copy hybrid}
SIZE=${HAUL_E2E_SIZE:-64m:64m:10000}
SIZES=${HAUL_E2E_SIZES:-}
HOWTO=${HAUL_E2E_HOWTO:-0}
REPEAT=${HAUL_E2E_REPEAT:-1}
PAUSE=${HAUL_E2E_PAUSE:-10000}
CRIU_REFS=${HAUL_E2E_CRIU_REFS:-1}
HAUL_ARGS=${HAUL_E2E_HAUL_ARGS:-}
E2E_CRIU=${HAUL_E2E_CRIU:-/usr/sbin/criu}
KEEP=0
ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
    --driver) [ $# -ge 2 ] || die "--driver needs qemu or vagrant"; DRIVER=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift ;;
    --limit) [ $# -ge 2 ] || die "--limit needs seconds"; LIMIT=$2; shift ;;
    --with-haul) WITH_HAUL=1 ;;
    --keep-up) KEEP=1 ;;
    --sizes) [ $# -ge 2 ] || die "--sizes needs a list, e.g. \"64m 256m 1g\""; SIZES=$2; shift ;;
    --howto) HOWTO=1 ;;
    --repeat) [ $# -ge 2 ] || die "--repeat needs a count"; REPEAT=$2; shift ;;
    -h|--help) usage_from_header "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
case $DRIVER in qemu|vagrant) ;; *) die "unknown driver '$DRIVER' (qemu or vagrant)" ;; esac
case $REPEAT in '' | *[!0-9]* | 0) die "--repeat needs a positive count, not '$REPEAT'" ;; esac

# size_mib SIZE: 64m, 1g, 512k, 1048576 -> MiB (rounded up)
size_mib() {
    local v=${1%[kKmMgG]} u=${1#"${1%[kKmMgG]}"}
    case $v in '' | *[!0-9]*) die "bad size '$1' (e.g. 64m, 1g)" ;; esac
    case $u in
    g | G) echo $((v * 1024)) ;;
    m | M) echo "$v" ;;
    k | K) echo $(((v + 1023) / 1024)) ;;
    *) echo $(((v + 1048575) / 1048576)) ;;
    esac
}
# WORKLOADS: "LABEL SPEC" lines; an empty LABEL (.) is the CI run's single workload
MATRIX=0
MAX_MIB=0
WORKLOADS=
if [ -n "$SIZES" ] || [ "$HOWTO" = 1 ]; then
    MATRIX=1
    # "howto" in the list puts the HOWTO workload at that place; --howto appends it
    [ "$HOWTO" = 1 ] && ! [[ " $SIZES " = *" howto "* ]] && SIZES="$SIZES howto"
    for sz in $SIZES; do
        if [ "$sz" = howto ]; then
            WORKLOADS="${WORKLOADS}howto 256m:64m:100000"$'\n'
            sz=256m
        else
            WORKLOADS="$WORKLOADS$sz $sz:$sz:$PAUSE"$'\n'
        fi
        m=$(size_mib "$sz")
        [ "$m" -gt "$MAX_MIB" ] && MAX_MIB=$m
    done
    # memory and disk for the largest workload (the outer run exports them to vm.sh)
    if [ -z "${HAUL_VM_MEM:-}" ] && [ $((2 * MAX_MIB + 1024)) -gt 768 ]; then
        export HAUL_VM_MEM=$((2 * MAX_MIB + 1024))
    fi
    [ -z "${HAUL_VM_DISK:-}" ] && export HAUL_VM_DISK=$((4 + (12 * MAX_MIB + 1023) / 1024))G
else
    WORKLOADS=". $SIZE"$'\n'
    MAX_MIB=$(size_mib "${SIZE%%:*}")
fi
# a migration step's limit for this workload: BASE seconds, plus PER_GIB seconds per GiB
# above 64 MiB (TCG moves some 20-30 MB/s: a pre-copy round of 1 GiB alone takes ~45 s)
scaled() { local base=$1 per_gib=$2 mib=$3; echo $((base + (mib > 64 ? (mib - 64) * per_gib / 1024 : 0))); }
need_root
[ -n "$OUT" ] || OUT=$HAUL_VAGRANT_DIR/out/e2e-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export HAUL_STEP_LOG=$OUT/steps.tsv
VMS=$HAUL_VAGRANT_DIR/vm.sh
LVNS=$HAUL_VAGRANT_DIR/libvirt-ns.sh
G=$HAUL_SHARED/e2e/bin/haul-e2e-guest

# ---------------------------------------------------------------- drivers
if [ "$DRIVER" = qemu ]; then
    SSH=(ssh -F "${HAUL_VM_STATE:-/var/tmp/haul-vm}/ssh_config")
else
    SSH=("$LVNS" exec ssh -F "$OUT/ssh_config")
fi
vg() { "$LVNS" exec env VAGRANT_CWD="$HAUL_VAGRANT_DIR" vagrant "$@"; }

drv_up() {
    if [ "$DRIVER" = qemu ]; then
        step "up (vm.sh up)" 900 "$VMS" up || return 1
        step "provision (vm.sh provision)" 600 "$VMS" provision || return 1
    else
        step "libvirt in a network namespace" 300 "$LVNS" start || return 1
        step "box (build-box.sh)" 1500 "$HAUL_VAGRANT_DIR/build-box.sh" || return 1
        step "vagrant up (log: vagrant-up.log)" 1200 sh -c "'$LVNS' exec env VAGRANT_CWD='$HAUL_VAGRANT_DIR' vagrant up --no-tty >'$OUT/vagrant-up.log' 2>&1" ||
            { tr '\r' '\n' <"$OUT/vagrant-up.log" | grep -v -e Progress -e '^[[:space:]]*$' | tail -n 30 >&2; return 1; }
        step "vagrant ssh-config" 120 sh -c "'$LVNS' exec env VAGRANT_CWD='$HAUL_VAGRANT_DIR' vagrant ssh-config >'$OUT/ssh_config'" || return 1
    fi
}

drv_collect() {
    if [ "$DRIVER" = qemu ]; then
        step "collect" "${COLLECT_LIMIT:-600}" "$VMS" collect "$OUT/collect"
        return
    fi
    local n
    for n in src dst; do
        mkdir -p "$OUT/collect/$n"
        timeout 60 "${SSH[@]}" "$n" 'journalctl -b --no-pager' >"$OUT/collect/$n/journal.txt" 2>&1
        timeout 120 "${SSH[@]}" "$n" "cd /var/local && find haul -type f ! -name 'pages-*.img' -size -20M -print0 2>/dev/null | tar --null -T - -cf -" |
            tar -C "$OUT/collect/$n" -xf - 2>/dev/null
    done
    timeout 120 "${SSH[@]}" src "cd $HAUL_SHARED && find . -type f \\( -name '*.log' -o -name '*.json' -o -name '*.txt' \\) -size -20M -print0 | tar --null -T - -cf -" |
        { mkdir -p "$OUT/collect/shared" && tar -C "$OUT/collect/shared" -xf -; } 2>/dev/null
    return 0
}

teardown() {
    [ $KEEP = 1 ] && { log "--keep-up: the VMs stay up"; return 0; }
    if [ "$DRIVER" = qemu ]; then
        timeout -k 10 120 "$VMS" down || warn "vm.sh down failed"
    else
        [ -e "/run/netns/${HAUL_LIBVIRT_NETNS:-haul-libvirt}" ] &&
            { timeout -k 10 300 "$LVNS" exec env VAGRANT_CWD="$HAUL_VAGRANT_DIR" vagrant destroy -f >/dev/null 2>&1 || warn "vagrant destroy failed"; }
        timeout -k 10 120 "$LVNS" stop || warn "libvirt-ns.sh stop failed"
    fi
}

# sweep: end whatever this run started and left behind (an orphaned step after a timeout),
# found by the run's own token in its environment; after teardown only
sweep() {
    local p left=
    [ $KEEP = 1 ] && return 0
    for p in $(env -u HAUL_E2E_RUN sh -c 'grep -l -z -x -F "HAUL_E2E_RUN=$1" /proc/[0-9]*/environ 2>/dev/null' _ "$HAUL_E2E_RUN" | cut -d/ -f3); do
        [ "$p" = $$ ] && continue
        [ -d "/proc/$p" ] || continue
        left="$left $p($(cat "/proc/$p/comm" 2>/dev/null))"
        kill -TERM "$p" 2>/dev/null
    done
    [ -n "$left" ] && warn "ended processes this run left behind:$left"
    return 0
}

# ---------------------------------------------------------------- outer: bound and tear down
# The inner run gets LIMIT less 150 s (its own collect and tear-down included); the outer keeps
# the rest to tear down and sweep if the inner run had to be killed.
if [ -z "${HAUL_E2E_INNER:-}" ]; then
    T0=$(now_ms)
    : >"$HAUL_STEP_LOG"
    rm -f "$OUT/summary"
    INNER_LIMIT=$((LIMIT > 210 ? LIMIT - 150 : 60))
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -srm), $(nproc) cpus, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(awk '/^MemTotal/ {printf "%d MiB", $2 / 1024}' /proc/meminfo)"
        echo "qemu: $(qemu-system-x86_64 --version 2>/dev/null | head -n 1)"
        echo "guests: accel ${HAUL_VM_ACCEL:-tcg}, ${HAUL_VM_MEM:-768} MiB, 1 vcpu, disk ${HAUL_VM_DISK:-as the image}"
        echo "commit: $(git -C "$HAUL_ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$HAUL_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (+ uncommitted changes)')"
        b=${HAUL_BIN_DIR:-$HAUL_ROOT/target/release}/haul
        [ -x "$b" ] && echo "haul: $b, $("$b" --version 2>/dev/null), sha256 $(sha256sum "$b" | cut -c1-16), built $(date -u -r "$b" +%Y-%m-%dT%H:%M:%SZ)"
        echo "workloads: $(printf '%s' "$WORKLOADS" | tr '\n' ';')repeat $REPEAT; strategies: $STRATEGIES; haul pid options: ${HAUL_ARGS:-none}"
    } >"$OUT/machine.txt"
    HAUL_E2E_RUN=$$-$(date +%s%N)
    export HAUL_E2E_RUN
    HAUL_E2E_INNER=1 HAUL_E2E_OUT=$OUT HAUL_E2E_DRIVER=$DRIVER HAUL_E2E_INNER_LIMIT=$INNER_LIMIT \
        timeout -k 90 "$INNER_LIMIT" "$0" "${ARGS[@]}"
    rc=$?
    if [ ! -s "$OUT/summary" ]; then
        printf '%s: the run was killed (limit %ss) in step: %s\n' "$PROG" "$INNER_LIMIT" \
            "$(cat "$HAUL_STEP_LOG.current" 2>/dev/null || echo '?')" >&2
        ok=$(awk -F'\t' '$2 == "ok"' "$OUT/results.tsv" 2>/dev/null | wc -l)
        bad=$(awk -F'\t' '$2 != "ok"' "$OUT/results.tsv" 2>/dev/null | wc -l)
        echo "e2e: $ok passed, $((bad + 1)) failed"
        [ $rc = 0 ] && rc=1
    fi
    teardown # idempotent: the inner run has normally done it already
    sweep
    log "total $(since_ms "$T0")s; results in $OUT"
    exit $rc
fi

# ---------------------------------------------------------------- inner
PASSED=0
FAILED=0
RESULTS=$OUT/results.tsv
: >"$RESULTS"
HAUL_STEP_PID=
summary() {
    log "results ($RESULTS):"
    column -t -s "$(printf '\t')" "$RESULTS" >&2 2>/dev/null || cat "$RESULTS" >&2
    log "steps ($HAUL_STEP_LOG):"
    column -t -s "$(printf '\t')" "$HAUL_STEP_LOG" >&2 2>/dev/null || cat "$HAUL_STEP_LOG" >&2
    echo "e2e: $PASSED passed, $FAILED failed" | tee "$OUT/summary"
}
on_timeout() {
    trap '' TERM INT # timeout signals the child and then its whole group: a second TERM comes
    local cur
    cur=$(cat "$HAUL_STEP_LOG.current" 2>/dev/null || echo '?')
    printf '%s: TOTAL TIME LIMIT of %ss exceeded, in step: %s\n' "$PROG" "${HAUL_E2E_INNER_LIMIT:-?}" "$cur" >&2
    [ -n "$HAUL_STEP_PID" ] && kill -TERM "$HAUL_STEP_PID" 2>/dev/null
    record "time limit" FAIL "exceeded in step: $cur"
    COLLECT_LIMIT=60
    drv_collect >/dev/null 2>&1
    summary
    exit 124
}
trap 'teardown' EXIT
trap 'on_timeout' TERM INT

# g NODE STEP SECS ARGS...: run the guest helper on NODE as a bounded step; its result in $R
R=
g() {
    local node=$1 name=$2 secs=$3 rc
    shift 3
    step "$name" "$secs" "${SSH[@]}" "$node" "HAUL_CRIU_BIN=$E2E_CRIU $G $*" >"$OUT/.g.out"
    rc=$?
    R=$(sed -n 's/^result //p' "$OUT/.g.out")
    [ -n "$R" ] && printf '%s: %s\n' "$node" "$R" >&2
    return $rc
}

# record NAME OK|FAIL FIGURES...
record() {
    local name=$1 status=$2
    shift 2
    printf '%s\t%s\t%s\n' "$name" "$status" "$*" >>"$RESULTS"
    if [ "$status" = ok ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
    log "migration $name: $status $*"
}

HAUL_TOUCHER=
prepare_guests() {
    local tmp=$OUT/bin
    mkdir -p "$tmp"
    gcc -O2 -static -o "$tmp/memtoucher" "$HAUL_VAGRANT_DIR/guest/memtoucher.c" ||
        { warn "cannot build the memory toucher (gcc, libc6-dev)"; return 1; }
    install -m 0755 "$HAUL_VAGRANT_DIR/guest/haul-e2e-guest" "$tmp/haul-e2e-guest"
    step "guests: mkdir $HAUL_SHARED/e2e" 60 "${SSH[@]}" src "rm -rf $HAUL_SHARED/e2e && mkdir -p $HAUL_SHARED/e2e/bin" || return 1
    if [ "$DRIVER" = qemu ]; then
        step "guests: copy the toucher" 120 scp -q -F "${SSH[2]}" "$tmp/memtoucher" "$tmp/haul-e2e-guest" "src:$HAUL_SHARED/e2e/bin/" || return 1
    else
        step "guests: copy the toucher" 120 "$LVNS" exec scp -q -F "$OUT/ssh_config" "$tmp/memtoucher" "$tmp/haul-e2e-guest" "src:$HAUL_SHARED/e2e/bin/" || return 1
    fi
    local t=${HAUL_E2E_TOUCHER:-auto}
    if [ "$t" = auto ]; then
        t=memtoucher
        timeout 30 "${SSH[@]}" dst 'test -x /usr/local/bin/mtouch' && timeout 30 "${SSH[@]}" src 'test -x /usr/local/bin/mtouch' && t=mtouch
    fi
    case $t in
    mtouch) HAUL_TOUCHER=/usr/local/bin/mtouch ;;
    memtoucher) HAUL_TOUCHER=$HAUL_SHARED/e2e/bin/memtoucher ;;
    *) warn "unknown HAUL_E2E_TOUCHER '$t' (memtoucher or mtouch)"; return 1 ;;
    esac
    log "haul's migrations move $HAUL_TOUCHER"
    clock_sync
    for n in src dst; do
        timeout 60 "${SSH[@]}" "$n" 'echo "$(hostname): $(uname -r), $(nproc) cpu, $(awk "/^MemTotal/ {printf \"%d MiB\", \$2 / 1024}" /proc/meminfo), / $(df -h --output=size / | tail -n 1 | tr -d " "), criu $(criu --version | sed -n "s/^Version: //p") ($(command -v criu)) and $(/usr/sbin/criu --version | sed -n "s/^Version: //p") (/usr/sbin/criu), THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"; haul --version 2>/dev/null || true' | tee -a "$OUT/guests.txt" >&2
    done
}

# clock_offsets: each guest's CLOCK_REALTIME minus the host's, in ms ("src=-3.1 dst=2.0"), the
# host's time sent down an ssh channel that is already open (the sleep covers the handshake);
# the one-way latency (a few ms) is included. The toucher's log is written on src and then on
# dst: a pause that spans the migration is only right if both clocks agree.
clock_offsets() {
    local n r out=
    for n in src dst; do
        r=$( (sleep 1.5; date +%s%N) | timeout 30 "${SSH[@]}" "$n" 'read -r t; echo "$t $(date +%s%N)"' 2>/dev/null | awk '{printf "%.1f", ($2 - $1) / 1e6}')
        out="$out $n=${r:-?}"
    done
    echo "${out# }"
}
# clock_sync: set both guests' clocks from the host's (they boot from the RTC, whole seconds
# apart, and TCG guests drift); then log the offsets left
clock_sync() {
    local n
    for n in src dst; do
        (sleep 1.5; date +%s.%N) | timeout 30 "${SSH[@]}" "$n" 'read -r t; date -s "@$t" >/dev/null' 2>/dev/null ||
            warn "could not set $n's clock"
    done
    printf '%s\tsynced\t%s\n' "$(date -u +%H:%M:%S)" "$(clock_offsets)" | tee -a "$OUT/clock.tsv" >&2
}

# cleanup_run RUN: end the workload wherever it still runs (by its pid files)
cleanup_run() {
    local run=$1
    timeout 30 "${SSH[@]}" src "[ -s $run/pid.src ] && kill -9 \$(cat $run/pid.src) 2>/dev/null; true" </dev/null >/dev/null 2>&1
    timeout 30 "${SSH[@]}" dst "[ -s $run/pid.dst ] && kill -9 \$(cat $run/pid.dst) 2>/dev/null; true" </dev/null >/dev/null 2>&1
}

# free_images RUN: in the size matrix, delete the run's memory images on both nodes once it is
# checked (a pre-copy of 1 GiB leaves ~9 GiB of rounds); the listing stays in RUN/imgs-*.txt
free_images() {
    [ "$MATRIX" = 1 ] || return 0
    local n
    for n in src dst; do
        timeout 120 "${SSH[@]}" "$n" "HAUL_CRIU_BIN=$E2E_CRIU $G cleanup $1" </dev/null 2>/dev/null | sed -n "s/^result /$n: /p" >&2
    done
}

# criu_migration NAME ROUNDS SPEC: plain CRIU, ROUNDS pre-dumps then the final dump
criu_migration() {
    local name=$1 rounds=$2 spec=$3 run=$HAUL_SHARED/e2e/$1 i figs='' mib lim
    mib=$(size_mib "${spec%%:*}")
    lim=$(scaled 300 400 "$mib")
    g src "$name: launch on src" 180 launch "$run" "$HAUL_SHARED/e2e/bin/memtoucher" "$spec" || { record "$name" FAIL launch; free_images "$run"; return; }
    sleep 2
    for ((i = 1; i <= rounds; i++)); do
        g src "$name: criu pre-dump $i" "$lim" predump "$run" "$i" || { record "$name" FAIL "pre-dump $i"; cleanup_run "$run"; free_images "$run"; return; }
        figs="$figs predump${i}[$R]"
        sleep 1
    done
    g src "$name: criu dump" "$lim" dump "$run" $((rounds + 1)) || { record "$name" FAIL dump; cleanup_run "$run"; free_images "$run"; return; }
    figs="$figs dump[$R]"
    g dst "$name: criu restore on dst" "$lim" restore "$run" $((rounds + 1)) || { record "$name" FAIL restore; cleanup_run "$run"; free_images "$run"; return; }
    figs="$figs restore[$R]"
    g src "$name: gone from src" 60 gone "$run" >/dev/null || { record "$name" FAIL "still on src"; cleanup_run "$run"; free_images "$run"; return; }
    g dst "$name: runs on dst, memory intact" "$(scaled 120 120 "$mib")" verify "$run" || { record "$name" FAIL verify; cleanup_run "$run"; free_images "$run"; return; }
    figs="$figs verify[$R]"
    record "$name" ok "$figs"
    free_images "$run"
}

# haul_migration STRATEGY NAME SPEC: `haul pid` from src to dst's haul serve
haul_migration() {
    local s=$1 name=$2 spec=$3 run=$HAUL_SHARED/e2e/$2 figs='' mib
    mib=$(size_mib "${spec%%:*}")
    g src "$name: launch ${HAUL_TOUCHER##*/} on src" 180 launch "$run" "$HAUL_TOUCHER" "$spec" || { record "$name" FAIL launch; free_images "$run"; return; }
    sleep 2
    g src "$name: haul pid --strategy $s" "${HAUL_E2E_HAUL_LIMIT:-$(scaled 300 1000 "$mib")}" haul "$run" "$s" "${HAUL_LISTEN:-$HAUL_DST_IP:27500}" $HAUL_ARGS || { record "$name" FAIL "haul pid"; cleanup_run "$run"; free_images "$run"; return; }
    figs="haul[$R]"
    g src "$name: gone from src" 60 gone "$run" >/dev/null || { record "$name" FAIL "still on src"; cleanup_run "$run"; free_images "$run"; return; }
    g dst "$name: runs on dst, memory intact" "$(scaled 120 120 "$mib")" verify "$run" || { record "$name" FAIL verify; cleanup_run "$run"; free_images "$run"; return; }
    record "$name" ok "$figs verify[$R]"
    free_images "$run"
}

# the hook: every migration the end-to-end test makes; for each repeat, each workload (in
# WORKLOADS' order), the plain-CRIU references and each of haul's strategies (in
# HAUL_E2E_STRATEGIES' order)
run_migrations() {
    local r label spec sfx s
    if [ "$WITH_HAUL" = 1 ] && ! timeout 30 "${SSH[@]}" dst 'systemctl is-active --quiet haul-serve' 2>/dev/null; then
        record haul-serve FAIL "haul serve does not run on dst (journalctl -u haul-serve)"
        WITH_HAUL=0
    fi
    for ((r = 1; r <= REPEAT; r++)); do
        # fd 3: the loop's body runs ssh, which would read its standard input
        while read -r -u 3 label spec; do
            [ -n "$label" ] || continue
            sfx=
            [ "$label" != . ] && sfx=".$label.r$r"
            [ "$label" = . ] && [ "$REPEAT" -gt 1 ] && sfx=".r$r"
            log "workload ${label/#./default} ($spec), repeat $r of $REPEAT"
            [ "$MATRIX" = 1 ] && printf '%s\t%s\t%s\n' "$(date -u +%H:%M:%S)" "before $label.r$r" "$(clock_offsets)" >>"$OUT/clock.tsv"
            # the CI run: the plain-CRIU self-test first; the size matrix: haul's strategies first
            if [ "$CRIU_REFS" = 1 ] && [ "$MATRIX" = 0 ]; then
                criu_migration "criu-precopy$sfx" 1 "$spec"
                criu_migration "criu-stopcopy$sfx" 0 "$spec"
            fi
            if [ "$WITH_HAUL" = 1 ]; then
                for s in $STRATEGIES; do haul_migration "$s" "haul-$s$sfx" "$spec"; done
            fi
            if [ "$CRIU_REFS" = 1 ] && [ "$MATRIX" = 1 ]; then
                criu_migration "criu-stopcopy$sfx" 0 "$spec"
                criu_migration "criu-precopy$sfx" 1 "$spec"
            fi
        done 3<<<"$WORKLOADS"
    done
}

T_IN=$(now_ms)
if ! drv_up; then
    record up FAIL "the VMs did not come up"
elif ! prepare_guests; then
    record prepare FAIL "could not put the toucher into the guests"
else
    run_migrations
fi
drv_collect || true
log "inner run $(since_ms "$T_IN")s"
summary
[ "$FAILED" = 0 ]
