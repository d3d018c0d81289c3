#!/bin/bash
# e2e.sh: haul end to end on two VMs: up -> provision -> run_migrations -> collect -> down.
#
#   vagrant/e2e.sh [--driver qemu|vagrant] [--out DIR] [--limit SECS] [--with-haul] [--keep-up]
#   vagrant/e2e.sh -h|--help
#
#   --driver qemu     plain QEMU through vagrant/vm.sh (the default, and what CI uses)
#   --driver vagrant  vagrant-libvirt, libvirtd in its own network namespace (libvirt-ns.sh)
#   --out DIR         results, step timings and collected logs (default vagrant/out/e2e-<time>)
#   --limit SECS      bound on the whole run, tear-down included (default 1200)
#   --with-haul       also migrate with `haul pid` and each strategy in HAUL_E2E_STRATEGIES
#                     (default "stop-copy pre-copy post-copy hybrid"); HAUL_E2E_WITH_HAUL=1 too
#   --keep-up         leave the VMs running at the end (for a look inside); `vm.sh down` later
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
    -h|--help) usage_from_header "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
case $DRIVER in qemu|vagrant) ;; *) die "unknown driver '$DRIVER' (qemu or vagrant)" ;; esac
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
    for n in src dst; do
        timeout 60 "${SSH[@]}" "$n" 'echo "$(hostname): $(uname -r), criu $(criu --version | sed -n "s/^Version: //p") ($(command -v criu)) and $(/usr/sbin/criu --version | sed -n "s/^Version: //p") (/usr/sbin/criu), THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"; haul --version 2>/dev/null || true' >&2
    done
}

# cleanup_run RUN: end the workload wherever it still runs (by its pid files)
cleanup_run() {
    local run=$1
    timeout 30 "${SSH[@]}" src "[ -s $run/pid.src ] && kill -9 \$(cat $run/pid.src) 2>/dev/null; true" >/dev/null 2>&1
    timeout 30 "${SSH[@]}" dst "[ -s $run/pid.dst ] && kill -9 \$(cat $run/pid.dst) 2>/dev/null; true" >/dev/null 2>&1
}

# criu_migration NAME ROUNDS: plain CRIU, ROUNDS pre-dumps then the final dump
criu_migration() {
    local name=$1 rounds=$2 run=$HAUL_SHARED/e2e/$1 i figs=
    g src "$name: launch on src" 60 launch "$run" "$HAUL_SHARED/e2e/bin/memtoucher" "$SIZE" || { record "$name" FAIL launch; return; }
    sleep 2
    for ((i = 1; i <= rounds; i++)); do
        g src "$name: criu pre-dump $i" 300 predump "$run" "$i" || { record "$name" FAIL "pre-dump $i"; cleanup_run "$run"; return; }
        figs="$figs predump${i}[$R]"
        sleep 1
    done
    g src "$name: criu dump" 300 dump "$run" $((rounds + 1)) || { record "$name" FAIL dump; cleanup_run "$run"; return; }
    figs="$figs dump[$R]"
    g dst "$name: criu restore on dst" 300 restore "$run" $((rounds + 1)) || { record "$name" FAIL restore; cleanup_run "$run"; return; }
    figs="$figs restore[$R]"
    g src "$name: gone from src" 60 gone "$run" >/dev/null || { record "$name" FAIL "still on src"; cleanup_run "$run"; return; }
    g dst "$name: runs on dst, memory intact" 120 verify "$run" || { record "$name" FAIL verify; cleanup_run "$run"; return; }
    figs="$figs verify[$R]"
    record "$name" ok "$figs"
}

# haul_migration STRATEGY: `haul pid` from src to dst's haul serve
haul_migration() {
    local s=$1 name="haul-$1" run=$HAUL_SHARED/e2e/haul-$1 figs=
    g src "$name: launch ${HAUL_TOUCHER##*/} on src" 60 launch "$run" "$HAUL_TOUCHER" "$SIZE" || { record "$name" FAIL launch; return; }
    sleep 2
    g src "$name: haul pid --strategy $s" "${HAUL_E2E_HAUL_LIMIT:-300}" haul "$run" "$s" "${HAUL_LISTEN:-$HAUL_DST_IP:27500}" || { record "$name" FAIL "haul pid"; cleanup_run "$run"; return; }
    figs="haul[$R]"
    g src "$name: gone from src" 60 gone "$run" >/dev/null || { record "$name" FAIL "still on src"; cleanup_run "$run"; return; }
    g dst "$name: runs on dst, memory intact" 120 verify "$run" || { record "$name" FAIL verify; cleanup_run "$run"; return; }
    record "$name" ok "$figs verify[$R]"
}

# the hook: every migration the end-to-end test makes
run_migrations() {
    criu_migration criu-precopy 1
    criu_migration criu-stopcopy 0
    if [ "$WITH_HAUL" = 1 ]; then
        if ! timeout 30 "${SSH[@]}" dst 'systemctl is-active --quiet haul-serve' 2>/dev/null; then
            record haul-serve FAIL "haul serve does not run on dst (journalctl -u haul-serve)"
            return
        fi
        for s in $STRATEGIES; do haul_migration "$s"; done
    fi
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
