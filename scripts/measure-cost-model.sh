#!/usr/bin/env bash
# Measures what the cost model (src/preflight/cost.rs) needs from plain CRIU on this machine:
# how long a plain `criu dump` and a lazy `criu dump --lazy-pages` keep the process frozen
# (from CRIU's "Seized task" log line to "Writing stats", resp. "Starting lazy pages server")
# for sparse-map (64 MiB resident, 64 GiB / 256 GiB / 1 TiB mapped) and for mtouch (64 MiB /
# 256 MiB / 1 GiB, all resident); images on tmpfs. Prints one TSV line per run. Run as root
# after `cargo build --release -p haul-launch -p haul-workloads`, under the measurement lock:
#   flock /work/measure.lock scripts/measure-cost-model.sh
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN="${BIN:-$REPO/target/release}"
CRIU="${CRIU:-criu}"
REPS="${REPS:-3}"
WORK=$(mktemp -d /dev/shm/haul-cost.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT

# ts LOG PATTERN: the timestamp (s) of the first line matching PATTERN.
ts() { grep -m1 "$2" "$1" | sed -E 's/^\(([0-9.]+)\).*/\1/'; }

launch() { # DIR CMD...: the workload's host pid
  local d=$1; shift; mkdir -p "$d"
  "$BIN/haul-launch" --cwd "$d" --pidfile "$d/pid" -- "$@" >/dev/null || return 1
  local p; p=$(cat "$d/pid"); PIDS+=("$p"); echo "$p"
}

wait_resident() { # PID BYTES: until VmRSS reaches BYTES
  for _ in $(seq 600); do
    local kb; kb=$(awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -ge $(( $2 / 1024 )) ] && return 0
    sleep 0.05
  done
  return 1
}

plain() { # NAME PID: plain dump, prints the frozen time
  local img=$WORK/img-$1; rm -rf "$img"; mkdir -p "$img"
  "$CRIU" dump -t "$2" -D "$img" -o dump.log -v4 >/dev/null 2>&1 || { echo "FAILED"; return; }
  echo "$(ts "$img/dump.log" 'Seized task') $(ts "$img/dump.log" 'Writing stats')" | awk '{printf "%.3f", $2-$1}'
}

lazy() { # NAME PID PORT: lazy dump until its page server starts; then ends it; prints the set-up
  local img=$WORK/lazy-$1; rm -rf "$img"; mkdir -p "$img"
  "$CRIU" dump -t "$2" -D "$img" -o dump.log -v4 --lazy-pages --address 127.0.0.1 --port "$3" >/dev/null 2>&1 &
  local c=$!
  for _ in $(seq 1200); do grep -q "Starting lazy pages server" "$img/dump.log" 2>/dev/null && break; sleep 0.05; done
  local r; r=$(echo "$(ts "$img/dump.log" 'Seized task') $(ts "$img/dump.log" 'Starting lazy pages server')" | awk '{printf "%.3f", $2-$1}')
  kill -9 "$c" 2>/dev/null; wait "$c" 2>/dev/null
  echo "$r"
}

echo -e "workload\tmapped\tresident\tmethod\trep\tfrozen_s"
port=47700
for map in 64g 256g 1t; do
  for rep in $(seq "$REPS"); do
    d=$WORK/sparse-$map-$rep
    p=$(launch "$d" "$BIN/sparse-map" --map "$map" --resident 64m) || continue
    wait_resident "$p" $((64 << 20))
    echo -e "sparse-map\t$map\t64m\tlazy\t$rep\t$(lazy "s$map$rep" "$p" $((port++)))"
    kill -9 "$p" 2>/dev/null
    p=$(launch "$d" "$BIN/sparse-map" --map "$map" --resident 64m) || continue
    wait_resident "$p" $((64 << 20))
    echo -e "sparse-map\t$map\t64m\tplain\t$rep\t$(plain "s$map$rep" "$p")"
    kill -9 "$p" 2>/dev/null
  done
done
for size in 64m 256m 1g; do
  for rep in $(seq "$REPS"); do
    d=$WORK/mtouch-$size-$rep
    bytes=$(numfmt --from=iec "${size^^}")
    p=$(launch "$d" "$BIN/mtouch" mem-touch.log "$size:$size:100000" --pattern sequential) || continue
    wait_resident "$p" "$bytes"
    echo -e "mtouch\t$size\t$size\tplain\t$rep\t$(plain "m$size$rep" "$p")"
    kill -9 "$p" 2>/dev/null
    p=$(launch "$d" "$BIN/mtouch" mem-touch.log "$size:$size:100000" --pattern sequential) || continue
    wait_resident "$p" "$bytes"
    echo -e "mtouch\t$size\t$size\tlazy\t$rep\t$(lazy "m$size$rep" "$p" $((port++)))"
    kill -9 "$p" 2>/dev/null
  done
done
