#!/bin/bash
# run.sh: issue #15's VM runs: pre-copy of a toucher that dirties faster than the link, with
# haul's throttle on and off and with plain CRIU's pre-dump loop; pre-dump modes; failures
# mid-way. Runs on the host, as root, against the two guests of vagrant/vm.sh (up and
# provisioned with this branch's binaries), each case under the measurement lock.
#
#   HAUL_VM_STATE=DIR run.sh OUT CASE...
#
# CASE (add -rN to repeat a name):
#   auto      haul pid --strategy pre-copy --max-downtime $T --throttle auto
#   off       the same with --throttle off (--on-timeout proceed: the final dump comes anyway)
#   criu      plain CRIU: pre-dump --track-mem rounds to a page server on dst (P.Haul's rules,
#             and haul's plateau rule, decide when they stop), dump --prev-images-dir, images
#             copied, restore on dst
#   criu-read the same with pre-dump --pre-dump-mode read
#   splice, read   haul pid --strategy pre-copy --pre-dump-mode M (no target: P.Haul's rules)
#   auto-read haul pid ... --throttle auto --pre-dump-mode read
#   fail-serve     --throttle auto; haul serve killed (SIGKILL) during a throttled round
#   fail-term      --throttle auto; haul pid gets SIGTERM during a throttled round
#   fail-kill      --throttle auto; haul pid gets SIGKILL during a throttled round; then a
#                  second haul pid (to a closed port) sweeps what the first left
#   link      raw TCP throughput between the guests (linkbw.py; 64 MiB, python and bash senders)
#
# Environment: T (ms, default 1000), SPEC (default 64m:64m:0), MTOUCH ("--rate 16m
# --cpu-per-page 50 --no-hugepages"), SETTLE (s before the migration, 12), AFTER (s after, 10).
set -uo pipefail
STATE=${HAUL_VM_STATE:-/var/tmp/haul-vm}
T=${T:-1000}
SPEC=${SPEC:-64m:64m:0}
MTOUCH=${MTOUCH:---rate 16m --cpu-per-page 50 --no-hugepages}
SETTLE=${SETTLE:-12}
AFTER=${AFTER:-10}
LOCK=${LOCK:-/work/measure.lock}
HERE=$(cd "$(dirname "$0")" && pwd)
SSH=(ssh -F "$STATE/ssh_config")
g() { local n=$1; shift; "${SSH[@]}" "$n" "tw-guest $*"; }
log() { printf '==> %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

clock_sync() {
    local n
    for n in src dst; do
        (sleep 1.5; date +%s.%N) | timeout 30 "${SSH[@]}" "$n" 'read -r t; date -s "@$t" >/dev/null' 2>/dev/null
    done
}

fetch() { # fetch NAME DIR: the run's small files from the share
    timeout 120 "${SSH[@]}" src "cd /srv/haul-shared/tw/$1 && tar -cf - --ignore-failed-read report.json haul-pid.log rate.log cgroup.before restore.result img/*/stats.txt 2>/dev/null" |
        tar -C "$2" -xf - 2>/dev/null
    timeout 60 "${SSH[@]}" dst "journalctl -u haul-serve --since '-5min' --no-pager" >"$2/serve-journal.txt" 2>&1
}

# haul_case NAME [HAUL-OPTION...]: launch, settle, migrate, after, verify on dst
haul_case() {
    local name=$1 out=$OUT/$1
    shift
    g src launch "$name" "$SPEC" "$MTOUCH"
    sleep "$SETTLE"
    g src state "$name" | sed 's/^result state/result before/'
    g src haul "$name" "$@"
    g src state "$name" | sed 's/^result state/result after-src/'
    sleep "$AFTER"
    g dst verify "$name" || g src verify "$name"
    fetch "$name" "$out"
    g src cleanup "$name" >/dev/null
    g dst cleanup "$name" >/dev/null
}

# criu_case NAME: plain CRIU's pre-dump loop
criu_case() {
    local name=$1 out=$1 n=1 parent= prev= port pages stop= line go
    out=$OUT/$1
    g src launch "$name" "$SPEC" "$MTOUCH"
    sleep "$SETTLE"
    g src state "$name" | sed 's/^result state/result before/'
    echo "result criu-start unix_ms=$(date +%s%3N)"
    while :; do
        port=$((27600 + n))
        g dst page-server "$name" "$n" "$port" "$parent" >/dev/null || return 1
        line=$("${SSH[@]}" src "CRIU_PRE_DUMP_MODE=${CRIU_MODE:-} tw-guest criu-round $name $n pre-dump $port $parent") || return 1
        echo "$line"
        pages=$(sed -n 's/.*pages_written=\([0-9]*\).*/\1/p' <<<"$line")
        if [ "${pages:-0}" -le 64 ]; then stop="only $pages pages dirty"
        elif [ -n "$prev" ] && [ $((pages * 100)) -gt $((prev * 110)) ]; then stop="the dirty set grew from $prev to $pages pages"
        elif [ -n "$prev" ] && [ $((pages * 100)) -gt $((prev * 90)) ]; then stop="the dirty set went from $prev to $pages pages: it stopped shrinking"
        elif [ "$n" -ge 8 ]; then stop="8 rounds"
        fi
        parent=$n prev=$pages n=$((n + 1))
        [ -n "$stop" ] && break
    done
    echo "result criu-stop rounds=$((n - 1)) why=\"$stop\""
    port=$((27600 + n)) go=$((27700 + n))
    g dst page-server "$name" "$n" "$port" "$parent" >/dev/null || return 1
    g dst restore-on-go "$name" "$n" "$go" >/dev/null || return 1
    g src criu-round "$name" "$n" dump "$port" "$parent" "$go" || return 1
    for _ in $(seq 1 120); do
        line=$("${SSH[@]}" dst "cat /srv/haul-shared/tw/$name/restore.result 2>/dev/null") && [ -n "$line" ] && break
        sleep 1
    done
    echo "${line:-result restore rc=timeout}"
    sleep "$AFTER"
    g dst verify "$name"
    fetch "$name" "$out"
    g src cleanup "$name" >/dev/null
    g dst cleanup "$name" >/dev/null
}

# fail_case NAME HOW: a throttled migration that fails mid-way
fail_case() {
    local name=$1 how=$2 out=$OUT/$1 kill
    g src launch "$name" "$SPEC" "$MTOUCH"
    sleep "$SETTLE"
    g src state "$name" | sed 's/^result state/result before/'
    # in the guest (no ssh round trips): the throttle engaged, one second more (the first
    # throttled round lasts several), the toucher's state, then the fault
    local wait="R=/srv/haul-shared/tw/$name; for i in \$(seq 1 3000); do grep -q 'throttling pid' \$R/haul-pid.log 2>/dev/null && break; sleep 0.1; done; sleep 1; tw-guest state $name | sed 's/^result state/result throttled/'"
    case $how in
    serve) ("${SSH[@]}" src "$wait" && echo "result fault how=serve unix_ms=$(date +%s%3N)" &&
        "${SSH[@]}" dst 'systemctl kill -s KILL haul-serve.service') & ;;
    term | kill) ("${SSH[@]}" src "$wait; echo result fault how=$how unix_ms=\$(date +%s%3N); kill -$(tr a-z A-Z <<<"$how") \$(cat \$R/haul.pid)") & ;;
    esac
    local watcher=$!
    g src haul "$name" --strategy pre-copy --max-downtime "$T" --throttle auto
    wait "$watcher"
    sleep 1
    g src state "$name" | sed 's/^result state/result after-fault/'
    if [ "$how" = kill ]; then
        # the next haul pid on the node sweeps what the killed one left
        "${SSH[@]}" src "haul pid \$(cat /srv/haul-shared/tw/$name/pid.src) 192.168.77.2:1 --key /etc/haul/key 2>&1 | tail -n 3" | sed 's/^/# second haul pid: /'
        g src state "$name" | sed 's/^result state/result after-sweep/'
    fi
    sleep "$AFTER"
    g src state "$name" | sed 's/^result state/result end/'
    g src verify "$name"
    fetch "$name" "$out"
    g src cleanup "$name" >/dev/null
    g dst cleanup "$name" >/dev/null
    [ "$how" = serve ] && "${SSH[@]}" dst 'systemctl restart haul-serve.service'
}

# link_case: raw TCP between the guests, 64 MiB: a python sender, then bash's /dev/tcp with
# head -c (a python receiver on dst each time)
link_case() {
    local how
    for how in python bash; do
        "${SSH[@]}" dst 'timeout 300 python3 /usr/local/bin/linkbw.py serve 5001' | sed "s/^/result link-recv how=$how /" &
        sleep 3
        case $how in
        python) "${SSH[@]}" src 'python3 /usr/local/bin/linkbw.py send 192.168.77.2 5001 64' | sed 's/^/# /' ;;
        bash) "${SSH[@]}" src 't0=$(date +%s%3N); head -c 64M /dev/zero >/dev/tcp/192.168.77.2/5001; echo "# bash sent 64 MiB in $(($(date +%s%3N) - t0)) ms"' ;;
        esac
        wait
    done
}

one_case() { # one_case CASE: runs it, writing OUT/CASE/results.txt
    local c=$1 base=${1%-r[0-9]*}
    mkdir -p "$OUT/$c"
    {
        echo "# case $c at $(date -u +%FT%TZ); T=$T SPEC=$SPEC MTOUCH=$MTOUCH; host $(uptime)"
        clock_sync
        case $base in
        auto) haul_case "$c" --strategy pre-copy --max-downtime "$T" --throttle auto ;;
        auto-read) haul_case "$c" --strategy pre-copy --max-downtime "$T" --throttle auto --pre-dump-mode read ;;
        off) haul_case "$c" --strategy pre-copy --max-downtime "$T" --throttle off ;;
        splice | read) haul_case "$c" --strategy pre-copy --pre-dump-mode "$base" ;;
        criu) criu_case "$c" ;;
        criu-read) CRIU_MODE=read criu_case "$c" ;;
        link) link_case ;;
        fail-serve) fail_case "$c" serve ;;
        fail-term) fail_case "$c" term ;;
        fail-kill) fail_case "$c" kill ;;
        *) echo "unknown case $c" >&2; return 2 ;;
        esac
        echo "# end $(date -u +%FT%TZ); host $(uptime)"
    } 2>&1 | tee "$OUT/$c/results.txt"
}

if [ "${1:-}" = __case ]; then
    OUT=$2
    one_case "$3"
    exit
fi
[ $# -ge 2 ] || { sed -n '2,26p' "$0"; exit 2; }
OUT=$1
shift
mkdir -p "$OUT"
for n in src dst; do
    timeout 60 scp -q -F "$STATE/ssh_config" "$HERE/tw-guest" "$HERE/linkbw.py" "$n:/usr/local/bin/" || { echo "cannot reach $n" >&2; exit 1; }
done
for c in "$@"; do
    log "case $c (waiting for $LOCK)"
    flock "$LOCK" "$0" __case "$OUT" "$c"
done
