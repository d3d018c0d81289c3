#!/usr/bin/env python3
"""dry-run-accuracy.py RUNS.jsonl: how well `haul pid --dry-run` predicted each migration.

Reads a harness results file of a scenario with `dry_run_first = true`
(harness/scenarios/dry-run.toml) and prints, per memory size and strategy, the medians of the
dry run's estimated downtime, haul's measured downtime (freeze until running on B, its own
clock) and the pause the workload saw, and the estimate's error against each (issue #13 asks
within +-50 %)."""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("tool") != "haul" or r.get("outcome") != "ok":
        continue
    f = r["figures"]
    if f.get("estimated_downtime_secs") is None:
        continue
    key = (r["workload"]["size_bytes"], r["method"], f.get("strategy_used"))
    for k in ("estimated_downtime_secs", "downtime_secs", "observed_downtime_secs"):
        if f.get(k) is not None:
            rows[key][k].append(f[k])

print("| size | method (ran) | n | estimated | measured (haul) | error | workload's gap | error |")
print("|---|---|---|---|---|---|---|---|")
for (size, method, used), v in sorted(rows.items()):
    med = {k: statistics.median(x) for k, x in v.items()}
    est, dt, gap = med["estimated_downtime_secs"], med.get("downtime_secs"), med.get("observed_downtime_secs")
    def err(m):
        return f"{(est - m) / m * 100:+.0f} %" if m else "-"
    print(f"| {size >> 20} MiB | {method} ({used}) | {len(v['estimated_downtime_secs'])} | {est:.3f} s | "
          f"{dt:.3f} s | {err(dt)} | {gap:.3f} s | {err(gap)} |")
