#!/bin/bash
# demo.sh: the P.Haul HOWTO on one machine. Two nodes (network namespaces joined by a veth
# pair, sharing this file system as the HOWTO's NFS mount), `haul serve` on node B, the memory
# toucher `mtouch` (HOWTO parameters 256m:64m:100000) in its own pid namespace on node A,
# `haul pid` moves it to B, then mtouch is stopped and checks every page.
#
#   scripts/demo.sh [--strategy S] [--spec SIZE:PRE:PAUSE] [--keep]
#
# Needs root, CRIU >= 4.1 and a release build (scripts/setup.sh does both). Cleans up the
# namespaces and processes it made, also on failure; --keep keeps the images and logs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=$HERE/target/release
STRATEGY=auto SPEC=256m:64m:100000 KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --strategy) STRATEGY=$2; shift 2 ;;
    --spec) SPEC=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
for b in haul mtouch haul-launch; do
    [ -x "$BIN/$b" ] || { echo "demo.sh: $BIN/$b missing: run scripts/setup.sh (or cargo build --release)" >&2; exit 1; }
done
command -v criu >/dev/null || PATH=$PATH:/usr/local/sbin

TMP=$(mktemp -d /tmp/haul-demo.XXXXXX)
NS_A=haul-demo-$$-a NS_B=haul-demo-$$-b
ADDR_A=10.77.$(( $$ % 200 + 1 )).1 ADDR_B=10.77.$(( $$ % 200 + 1 )).2 PORT=27500
SERVE_PID= MTOUCH_PID=
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null
    for ns in $NS_A $NS_B; do
        [ -e /run/netns/$ns ] || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if [ $KEEP = 1 ]; then echo "kept images and logs in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

ip netns add $NS_A; ip netns add $NS_B
ip link add hd$$a netns $NS_A type veth peer name hd$$b netns $NS_B
ip -n $NS_A addr add $ADDR_A/24 dev hd$$a; ip -n $NS_B addr add $ADDR_B/24 dev hd$$b
for ns in $NS_A $NS_B; do ip -n $ns link set lo up; done
ip -n $NS_A link set hd$$a up; ip -n $NS_B link set hd$$b up
echo "nodes: A $ADDR_A ($NS_A), B $ADDR_B ($NS_B); shared directory $TMP/shared"

mkdir -p "$TMP/shared"
"$BIN/haul" keygen "$TMP/key" >/dev/null
nsenter --net=/run/netns/$NS_B "$BIN/haul" serve --listen $ADDR_B:$PORT --key "$TMP/key" \
    --img-path "$TMP/img-b" </dev/null >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do grep -q "haul serve on" "$TMP/serve.log" && break; sleep 0.1; done
grep -q "haul serve on" "$TMP/serve.log" || { cat "$TMP/serve.log"; exit 1; }
echo "node B: haul serve listening on $ADDR_B:$PORT"

out=$("$BIN/haul-launch" --netns $NS_A --cwd "$TMP/shared" -- "$BIN/mtouch" mem-touch.log "$SPEC")
echo "node A: $out"
MTOUCH_PID=$(echo "$out" | awk '/^Child/{print $2}')
sleep 2
echo "node A: haul pid $MTOUCH_PID $ADDR_B:$PORT --strategy $STRATEGY"
nsenter --net=/run/netns/$NS_A "$BIN/haul" pid "$MTOUCH_PID" $ADDR_B:$PORT --key "$TMP/key" \
    --img-path "$TMP/img-a" --strategy "$STRATEGY" --report "$TMP/report.json"
sleep 1
in_b=$(ip netns pids $NS_B | while read -r p; do if [ "$(cat /proc/$p/comm 2>/dev/null)" = mtouch ]; then echo "$p"; fi; done)
[ -n "$in_b" ] || { echo "mtouch does not run in node B" >&2; exit 1; }
echo "node B: mtouch runs as host pid $in_b; stopping it and checking its memory"
touch "$TMP/shared/mem-touch-stop"
for _ in $(seq 300); do grep -q '^Finish' "$TMP/shared/mem-touch.log" && break; sleep 0.1; done
grep -q '^Finish' "$TMP/shared/mem-touch.log" || { echo "mtouch never finished" >&2; exit 1; }
if grep -q Mismatch "$TMP/shared/mem-touch.log"; then
    echo "mtouch found $(grep -c Mismatch "$TMP/shared/mem-touch.log") damaged pages" >&2; exit 1
fi
echo "mtouch: Finish, no Mismatch: every page arrived intact"
