#!/bin/bash
# memory-bench.sh: haul's memory path beside plain CRIU doing the same kind of migration, on two
# local nodes, interleaved, REPS times (default 3), with the link floor measured in the same run.
# Uses the acceptance checks' helpers (CHECK_LIB, default ../shared/acceptance/lib) for nodes,
# the toucher, haul serve and the plain-CRIU migrations. Run from the checkout's root as root,
# under the machine's measurement lock: flock /work/measure.lock scripts/memory-bench.sh
# Env: REPS, PC_SIZES (post-copy sizes, default "64m 1g"), SC_SIZES (stop-copy, "64m 256m 1g"),
# HAUL_ARGS (extra `haul pid` options), OUT (TSV of every trial, default /tmp/memory-bench.tsv),
# BEFORE=1 (also haul with --memory-path criu: the path before the engine, same binary).
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK_LIB=${CHECK_LIB:-$HERE/../../shared/acceptance/lib}
[ -f "$CHECK_LIB/checklib.sh" ] || CHECK_LIB=/work/shared/acceptance/lib
. "$CHECK_LIB/checklib.sh"
REPS=${REPS:-3}
PC_SIZES=${PC_SIZES:-"64m 1g"}
SC_SIZES=${SC_SIZES:-"64m 256m 1g"}
OUT=${OUT:-/tmp/memory-bench.tsv}
HAUL_ARGS=${HAUL_ARGS:-}
check_init memory-bench
need_root
need_criu
build_toucher
build_haul
setup_nodes
start_haul_serve "$NS_B" "$ADDR_B" "$CHECK_TMP/serve-img"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT"
bw0=$(python3 "$HERE/linkbw.py" "$NS_A" "$NS_B" "$ADDR_B")
echo -e "linkbw\tstart\t$bw0" | tee -a "$OUT"
one() {  # KIND SIZE MODE [haul args]
    local kind=$1 size=$2 mode=$3; shift 3
    local t="$kind-$size-$r" push= cpu= eng= log
    toucher_trial "$mode" "$t" "$size:$size:1000" "$@" >/dev/null 2>&1
    if [ "$mode" = haul ]; then
        log="$CHECK_TMP/haul-pid-$t.log"
        push=$(sed -n 's/.*pushed on .* in \([0-9.]*\)s.*/\1/p' "$log")
        cpu=$(sed -n 's/.*, \([0-9.]*\) CPU-s/\1/p' "$log")
        down=$(sed -n 's/^downtime is ~\([0-9.]*\) .*/\1/p' "$log")
        eng=$(cat "$CHECK_TMP"/serve-img/*/final/lazy-engine.log 2>/dev/null | sed -n 's/.*fill_secs: \([0-9.]*\), cpu_secs: \([0-9.]*\).*/\1 \2/p' | tail -1)
        rm -rf "$CHECK_TMP"/serve-img/* "$CHECK_TMP"/src-img/*
    else
        down=$TR_FROZEN
    fi
    rm -rf "$CHECK_TMP"/criu-*
    printf '%s\t%s\t%s\tok=%s\tgap=%s\ttotal=%s\tdowntime=%s\trestore=%s\tpush=%s\tsrc_cpu=%s\tengine=%s\t%s\n' \
        "$kind" "$size" "$mode" "$TR_OK" "$TR_GAP" "$TR_TOTAL" "$down" "$TR_RESTORE" "$push" "$cpu" "${eng// /,}" "$TR_WHY" | tee -a "$OUT"
}
for r in $(seq 1 "$REPS"); do
    for s in $PC_SIZES; do
        one post-copy "$s" haul --strategy post-copy $HAUL_ARGS
        [ "${BEFORE:-0}" = 1 ] && one post-copy-before "$s" haul --strategy post-copy --memory-path criu
        one post-copy "$s" criu-lazy
    done
    for s in $SC_SIZES; do
        one stop-copy "$s" haul --strategy stop-copy $HAUL_ARGS
        [ "${BEFORE:-0}" = 1 ] && one stop-copy-before "$s" haul --strategy stop-copy --memory-path criu
        one stop-copy "$s" criu
    done
done
bw1=$(python3 "$HERE/linkbw.py" "$NS_A" "$NS_B" "$ADDR_B")
echo -e "linkbw\tend\t$bw1" | tee -a "$OUT"
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
check_finish 0 "wrote $OUT"
