#!/usr/bin/env python3
"""e2e-table.py: markdown tables from one or more vagrant/e2e.sh output directories.

    vagrant/e2e-table.py [--clock FILE] OUT_DIR [OUT_DIR...] > tables.md

Reads each OUT_DIR's results.tsv (one line per migration: name, ok|FAIL, figures) and haul's
JSON reports (collect/shared/e2e/<name>/report.json), groups migrations by cell (the name
without its .rN repeat suffix: haul-post-copy.1g, criu-stopcopy.howto, ...) and prints:

  1. per cell: runs (ok/all), total, frozen (P.Haul's sum over every freeze), downtime (the
     final freeze only), restore, the longest gap the workload saw between two of its own
     log lines, and post-copy's time until the last page arrived; each figure as the median
     and, with more than one run, the range;
  2. per pre-copy/hybrid run: every round's pages written and skipped, seconds, estimated
     downtime, and why the rounds stopped;
  3. the failures, with the step that failed.

The longest gap is read from the toucher's log, written on src and then on dst, each line
stamped with that guest's CLOCK_REALTIME: the gap across the migration is off by the clocks'
difference (dst minus src). e2e.sh sets both clocks from the host before the migrations and
logs the offsets left in OUT_DIR/clock.tsv; for a run without that, --clock FILE gives samples
(lines "HH:MM:SS<TAB>src|dst<TAB>ms"; OUT_DIR/clock-samples.tsv is read too, if there, each guest's clock minus the host's; the smallest
sample of each node within 10 minutes counts, as latency only adds). The gap across the
migration is then corrected by the difference at that time: for haul's runs it is the largest
gap between the freeze (haul's log: resume time less downtime, on src's clock) and the resume;
for plain CRIU's (1 s ticks) the largest gap of the run.

Python 3 standard library only.
"""
import json
import lzma
import os
import re
import statistics
import sys

FIG = re.compile(r"(\w+)=([^\s\]]+)")


def figures(text):
    """key=value pairs of a results.tsv figures column, grouped by their bracket prefix."""
    out = {}
    for part in re.finditer(r"(\w+)\[([^\]]*)\]", text):
        out[part.group(1)] = dict(FIG.findall(part.group(2)))
    return out


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cell_of(name):
    m = re.match(r"^(.*)\.r(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, 1)


def method_and_workload(cell):
    if "." in cell:
        method, workload = cell.split(".", 1)
    else:
        method, workload = cell, "default"
    return method, workload


def hms(text):
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def load_clock(paths):
    """{"src": [(seconds of day, offset s)], "dst": [...]}: each guest's clock minus the host's,
    from sampler lines (HH:MM:SS, node, ms) or e2e.sh's clock.tsv (HH:MM:SS, label, src=ms dst=ms)."""
    per = {"src": [], "dst": []}
    for path in paths:
        if not os.path.exists(path):
            continue
        for line in open(path):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or ":" not in parts[0]:
                continue
            t = hms(parts[0])
            if parts[1] in per:
                kv = {parts[1]: parts[2]}
            else:
                kv = dict(x.split("=", 1) for x in parts[2].split() if "=" in x)
            for n in per:
                try:
                    per[n].append((t, float(kv[n]) / 1000))
                except (KeyError, ValueError):
                    pass
    return per


def delta_at(clock, t, window=600.0):
    """dst minus src at t: each node's smallest offset within the window (a sample is the host's
    time sent down an open ssh channel: latency, large when a guest is busy, only adds)."""
    if not clock or t is None or not clock["src"] or not clock["dst"]:
        return None
    best = {}
    for n in ("src", "dst"):
        near = [o for u, o in clock[n] if abs(u - t) <= window]
        if not near:
            near = [min(clock[n], key=lambda x: abs(x[0] - t))[1]]
        best[n] = min(near)
    return best["dst"] - best["src"]


ISO = re.compile(r"^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d\.\d+)Z")


def run_dir_of(d, name):
    """an e2e.sh output directory (collect/shared/e2e/NAME) or a copy kept in results/ (runs/NAME)"""
    for sub in (os.path.join("collect", "shared", "e2e", name), os.path.join("runs", name)):
        if os.path.isdir(os.path.join(d, sub)):
            return os.path.join(d, sub)
    return os.path.join(d, "runs", name)


def touch_lines(path):
    out = []
    if os.path.exists(path + ".xz"):
        f = lzma.open(path + ".xz", "rt", errors="replace")
    elif os.path.exists(path):
        f = open(path, errors="replace")
    else:
        return out
    for line in f:
        f = line.split()
        if len(f) >= 2 and f[0] in ("t", "tick"):
            try:
                out.append(float(f[1]) if f[0] == "t" else float(f[1]) / 1000)
            except ValueError:
                pass
    return out


def migration_gap(r, clock):
    """(corrected gap across the migration, the rest's largest gap, clock difference) or Nones."""
    run_dir = run_dir_of(r["dir"], r["name"])
    ts = touch_lines(os.path.join(run_dir, "touch.log"))
    if len(ts) < 2:
        return None, None, None
    gaps = [(ts[i + 1] - ts[i], i) for i in range(len(ts) - 1)]
    t_resume = down = None
    if r["method"].startswith("haul-"):
        log = os.path.join(run_dir, "haul-pid.log")
        if os.path.exists(log):
            for line in open(log, errors="replace"):
                m = ISO.match(line)
                dm = re.search(r"runs on the destination as pid \d+ after ([\d.]+)s frozen", line)
                if m and dm:
                    t_resume, down = hms(m.group(1)), float(dm.group(1))
    day0 = int(ts[0] // 86400) * 86400
    if t_resume is not None:
        delta = delta_at(clock, t_resume)
        t_freeze = t_resume - down
        cand = [(g, i) for g, i in gaps
                if t_freeze - 1.0 <= ts[i] - day0 <= t_resume + 0.5]
    else:
        delta = delta_at(clock, (ts[-1] - day0))
        cand = gaps
    if not cand or delta is None:
        return None, None, delta
    g, i = max(cand)
    rest = max([x for x, j in gaps if j != i], default=0.0)
    return g - delta, rest, delta


def load(dirs, clock_files=()):
    runs = []
    for d in dirs:
        clock = load_clock(list(clock_files) + [os.path.join(d, f) for f in ("clock.tsv", "clock-samples.tsv")])
        path = os.path.join(d, "results.tsv")
        if not os.path.exists(path):
            continue
        for line in open(path):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                continue
            name, status = parts[0], parts[1]
            figs = figures(parts[2] if len(parts) > 2 else "")
            cell, rep = cell_of(name)
            method, workload = method_and_workload(cell)
            r = {"dir": d, "name": name, "ok": status == "ok", "status": status,
                 "detail": parts[2] if len(parts) > 2 else "", "cell": cell,
                 "method": method, "workload": workload, "rep": rep, "figs": figs}
            rep_path = os.path.join(run_dir_of(d, name), "report.json")
            if os.path.exists(rep_path):
                try:
                    r["report"] = json.load(open(rep_path))
                except ValueError:
                    pass
            r.update(extract(r))
            mg, rest, delta = migration_gap(r, clock) if r["ok"] else (None, None, None)
            r["delta"] = delta
            if mg is not None:
                r["gap_raw"] = r["gap"]
                r["gap"] = max(mg, rest)
                r["mig_gap"] = mg
            runs.append(r)
    return runs


def extract(r):
    """total, frozen, downtime, restore, gap, window (seconds) of one migration."""
    f, out = r["figs"], {}
    gap = num(f.get("verify", {}).get("max_tick_gap_ms"))
    out["gap"] = gap / 1000 if gap is not None else None
    if r["method"].startswith("haul-"):
        rep = r.get("report") or {}
        h = f.get("haul", {})
        out["total"] = rep.get("total_secs", num(h.get("total_s")))
        out["frozen"] = rep.get("frozen_secs", num(h.get("frozen_s")))
        out["downtime"] = rep.get("downtime_secs", num(h.get("downtime_s")))
        out["restore"] = rep.get("restore_secs", num(h.get("restore_s")))
        out["window"] = rep.get("postcopy_window_secs")
    else:
        frozen = [num(v.get("frozen_us")) for k, v in f.items() if k.startswith(("predump", "dump"))]
        frozen = [x / 1e6 for x in frozen if x is not None]
        dump = f.get("dump", {})
        steps = [num(v.get("ms")) for k, v in f.items() if k.startswith(("predump", "dump", "restore"))]
        steps = [x / 1000 for x in steps if x is not None]
        out["total"] = sum(steps) if steps else None  # the CRIU commands' own wall time, no ssh
        out["frozen"] = sum(frozen) if frozen else None
        out["downtime"] = num(dump.get("frozen_us")) / 1e6 if num(dump.get("frozen_us")) is not None else None
        rs = num(f.get("restore", {}).get("restore_us"))
        out["restore"] = rs / 1e6 if rs is not None else None
        out["window"] = None
    return out


def fmt(values):
    v = [x for x in values if x is not None]
    if not v:
        return "—"
    med = statistics.median(v)
    if len(v) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(v):.2f}–{max(v):.2f})"


WORKLOAD_ORDER = {"64m": 0, "howto": 1, "256m": 2, "512m": 3, "1g": 4, "default": 5}
METHOD_ORDER = ["criu-stopcopy", "criu-precopy", "haul-stop-copy", "haul-pre-copy",
                "haul-post-copy", "haul-hybrid"]


def order(cell):
    method, workload = method_and_workload(cell)
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (WORKLOAD_ORDER.get(workload, 9), workload, m, method)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    args = argv[1:]
    clock_files = []
    while len(args) >= 2 and args[0] == "--clock":
        clock_files.append(args[1])
        args = args[2:]
    runs = load(args, clock_files)
    cells = sorted({r["cell"] for r in runs if r["method"] not in ("time limit", "up", "prepare")}, key=order)
    print("| workload | method | ok/runs | total s | frozen s (sum) | downtime s (final freeze) | restore s | longest gap the workload saw s | of which across the migration s | post-copy: last page after s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        rs = [r for r in runs if r["cell"] == c]
        ok = [r for r in rs if r["ok"]]
        method, workload = method_and_workload(c)
        cols = [fmt([r.get(k) for r in ok]) for k in ("total", "frozen", "downtime", "restore", "gap", "mig_gap", "window")]
        print(f"| {workload} | {method} | {len(ok)}/{len(rs)} | " + " | ".join(cols) + " |")
    print()
    print("Pre-copy rounds (haul's report: pages written / skipped as unchanged since the parent round, seconds, estimated downtime = pages written / measured bandwidth):")
    print()
    print("| run | rounds: written/skipped pages, s, est. downtime s | final dump pages | why the rounds stopped |")
    print("|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (order(r["cell"]), r["rep"])):
        rep = r.get("report")
        if not rep or not rep.get("rounds"):
            continue
        rounds = "; ".join(
            f"{x['round']}: {x['stats']['pages_written']}/{x['stats']['pages_skipped_parent']}, "
            f"{x['secs']:.1f}, {x['est_downtime_secs']:.2f}" for x in rep["rounds"])
        d = rep.get("dump", {})
        final = f"{d.get('pages_written', 0)} written, {d.get('pages_skipped_parent', 0)} skipped, {d.get('pages_lazy', 0)} lazy"
        print(f"| {r['name']} | {rounds} | {final} | {rep.get('convergence', '')} |")
    deltas = sorted({round(r["delta"], 3) for r in runs if r.get("delta") is not None})
    if deltas:
        print()
        print(f"Clock difference dst minus src used for the gap across the migration: {deltas[0]:.3f} to {deltas[-1]:.3f} s.")
    bad = [r for r in runs if not r["ok"]]
    if bad:
        print()
        print("Failures:")
        print()
        for r in bad:
            print(f"- {r['name']}: {r['status']} {r['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
