#!/usr/bin/env python3
"""memory-bench-summary.py TSV: medians per (kind, size, method) from scripts/memory-bench.sh."""
import collections, statistics, sys

rows = collections.defaultdict(list)
bw = {}
for line in open(sys.argv[1]):
    if line.startswith("#"):
        print(line.rstrip()); continue
    f = line.rstrip("\n").split("\t")
    if f[0] == "linkbw":
        bw[f[1]] = float(f[2]); continue
    kind, size, mode = f[:3]
    kv = dict(x.split("=", 1) for x in f[3:] if "=" in x)
    rows[(kind, size, mode)].append(kv)

def med(vs, key):
    xs = []
    for v in vs:
        try: xs.append(float(v.get(key, "").split(",")[0]))
        except ValueError: pass
    return statistics.median(xs) if xs else float("nan")

link = statistics.median(bw.values()) if bw else float("nan")
print(f"link: {link/2**30:.2f} GiB/s (start {bw.get('start',0)/2**30:.2f}, end {bw.get('end',0)/2**30:.2f})")
print("| kind | size | method | n ok | gap (workload) | downtime (src clock) | total | push | src CPU-s | engine fill s, CPU-s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (kind, size, mode), vs in sorted(rows.items()):
    ok = sum(v.get("ok") == "yes" for v in vs)
    eng = [v.get("engine", "") for v in vs if v.get("engine")]
    fills = statistics.median(float(e.split(",")[0]) for e in eng) if eng else float("nan")
    ecpu = statistics.median(float(e.split(",")[1]) for e in eng) if eng else float("nan")
    print(f"| {kind} | {size} | {mode} | {ok}/{len(vs)} | {med(vs,'gap'):.3f} | {med(vs,'downtime'):.3f} | {med(vs,'total'):.2f} | {med(vs,'push'):.3f} | {med(vs,'src_cpu'):.3f} | {fills:.3f}, {ecpu:.3f} |")
mult = {"k": 2**10, "m": 2**20, "g": 2**30}
for size in sorted({k[1] for k in rows}):
    b = int(size[:-1]) * mult[size[-1]]
    print(f"floor {size}: {b/link:.3f} s (2x floor + 0.5 s = {2*b/link+0.5:.3f} s)")
