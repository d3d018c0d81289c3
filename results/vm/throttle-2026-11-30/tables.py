#!/usr/bin/env python3
"""tables.py OUT_DIR...: markdown tables from run.sh's case directories.

Per case: what the toucher saw (its longest pause, its dirty rate before and after, every page
checked), haul's or CRIU's figures, and one row per pre-dump round.
"""
import json
import os
import re
import statistics
import sys

MIB = 1048576.0


def results(d):
    """result lines of results.txt as (kind, {key: value}) in order."""
    out = []
    try:
        lines = open(os.path.join(d, "results.txt")).read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r"result (\S+) ?(.*)", line)
        if not m:
            continue
        kv = dict(re.findall(r'(\S+?)=("[^"]*"|\S*)', m.group(2)))
        kv = {k: v.strip('"') for k, v in kv.items()}
        head = m.group(2).split(" ")[0]
        out.append((m.group(1), kv, head))
    return out


def first(res, kind):
    return next((kv for k, kv, _ in res if k == kind), None)


def rate_log(d):
    try:
        lines = open(os.path.join(d, "rate.log")).read().splitlines()
    except OSError:
        return []
    out = []
    for l in lines:
        f = l.split()
        if len(f) == 4:
            out.append((float(f[0]), float(f[3])))
    return out


def mean_rate(samples, t0, t1):
    xs = [r for t, r in samples if t0 <= t <= t1]
    return statistics.mean(xs) / MIB if xs else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def case_row(name, d):
    res = results(d)
    rep = None
    try:
        rep = json.load(open(os.path.join(d, "report.json")))
    except (OSError, ValueError):
        pass
    samples = rate_log(d)
    ver = first(res, "verified") or {}
    haul = first(res, "haul")
    row = {"case": name}
    if haul:
        start, end = int(haul["start_unix_ms"]) / 1000, int(haul["end_unix_ms"]) / 1000
        row["rc"] = haul["rc"]
        row["total"] = int(haul["ms"]) / 1000
    else:
        cs = first(res, "criu-start")
        rs = first(res, "restore") or {}
        start = int(cs["unix_ms"]) / 1000 if cs else None
        end = None
        if rs.get("go_unix"):
            end = float(rs["go_unix"]) + (int(rs["copy_ms"]) + int(rs["restore_ms"])) / 1000
        row["rc"] = rs.get("rc", "?")
        row["total"] = (end - start) if start and end else None
    row["before"] = mean_rate(samples, start - 9, start) if start else None
    row["after"] = mean_rate(samples, end + 2, end + 9) if end else None
    row["gap"] = int(ver["max_gap_ms"]) / 1000 if ver.get("max_gap_ms") else None
    row["checked"] = ver.get("checked", "NOT VERIFIED")
    if rep:
        row["downtime"] = rep.get("downtime_secs")
        row["restore"] = rep.get("restore_secs")
        row["rounds"] = len(rep.get("rounds", []))
        t = rep.get("throttle")
        row["throttle"] = f"{t['max_level']}%" if t else "-"
        row["final_pages"] = rep.get("dump", {}).get("pages_written")
        row["why"] = rep.get("convergence", "")
        row["mode"] = rep.get("pre_dump_mode") or "-"
    else:
        dump = next((kv for k, kv, _ in res if k == "dump"), None)
        stop = first(res, "criu-stop") or {}
        rs = first(res, "restore") or {}
        row["rounds"] = int(stop.get("rounds", 0)) or None
        row["throttle"] = "-"
        row["final_pages"] = int(dump["pages_written"]) if dump and dump.get("pages_written") else None
        row["downtime"] = None
        if dump and rs.get("go_unix"):
            # freeze to running: the dump's time, then the copy and restore on dst
            row["downtime"] = int(dump["ms"]) / 1000 + (int(rs["copy_ms"]) + int(rs["restore_ms"])) / 1000
        row["restore"] = int(rs["restore_ms"]) / 1000 if rs.get("restore_ms") else None
        row["why"] = stop.get("why", "")
        row["mode"] = "read" if "criu-read" in name else "splice"
    return row


def rounds_table(name, d):
    out = [f"\n#### {name}\n"]
    try:
        rep = json.load(open(os.path.join(d, "report.json")))
    except (OSError, ValueError):
        rep = None
    if rep:
        out.append("| round | throttle | pages written | skipped | s | MiB/s | link MiB/s | fixed s | dirty rate MiB/s (at) | est. downtime s | frozen s | verdict |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rep.get("rounds", []):
            st = r["stats"]
            rate = r.get("dirty_rate")
            at = r.get("dirty_rate_throttle")
            verdict = r.get("verdict", "")
            verdict = verdict.split(":")[0]
            out.append(
                f"| {r['round']} | {r.get('throttle', 0)}% | {st['pages_written']} | {st['pages_skipped_parent']} | "
                f"{r['secs']:.1f} | {r['bandwidth'] / MIB:.2f} | {fmt(r.get('link_bandwidth', 0) / MIB)} | {fmt(r.get('fixed_secs'), 1)} | "
                f"{fmt(rate / MIB if rate is not None else None)}{f' ({at}%)' if at is not None else ''} | "
                f"{r['est_downtime_secs']:.2f} | {r.get('frozen_secs', 0):.2f} | {verdict} |"
            )
        d_ = rep.get("dump", {})
        out.append(
            f"| final | 0% | {d_.get('pages_written')} | {d_.get('pages_skipped_parent')} | - | - | - | - | - | - | "
            f"{rep.get('downtime_secs', 0):.2f} (downtime) | restore {rep.get('restore_secs', 0):.2f} s |"
        )
        if rep.get("convergence"):
            out.append(f"\nstop: {rep['convergence']}")
    else:
        res = results(d)
        out.append("| round | pages written | skipped | s | frozen s | memdump s | memwrite s |")
        out.append("|---|---|---|---|---|---|---|")
        for k, kv, head in res:
            if k in ("pre-dump", "dump"):
                us = lambda x: fmt(int(kv[x]) / 1e6 if kv.get(x) else None)
                label = kv.get(k) if k == "pre-dump" else f"final ({kv.get(k)})"
                out.append(
                    f"| {label} | {kv.get('pages_written')} | {kv.get('pages_skipped')} | {int(kv['ms']) / 1000:.1f} | "
                    f"{us('frozen_us')} | {us('memdump_us')} | {us('memwrite_us')} |"
                )
        rs = first(res, "restore") or {}
        stop = first(res, "criu-stop") or {}
        if rs:
            out.append(f"\nimages copied in {rs.get('copy_ms')} ms, restore {rs.get('restore_ms')} ms (rc {rs.get('rc')}); stop: {stop.get('why', '')}")
    return "\n".join(out)


def main():
    dirs = []
    for top in sys.argv[1:]:
        for name in sorted(os.listdir(top)):
            d = os.path.join(top, name)
            if os.path.isfile(os.path.join(d, "results.txt")):
                dirs.append((name, d))
    rows = [case_row(n, d) for n, d in dirs]
    print("| case | pre-dumps | rounds | max throttle | final pages | downtime s | restore s | toucher's longest pause s | total s | dirty MiB/s before | after | every page checked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r.get('mode', '-')} | {r.get('rounds') or '-'} | {r.get('throttle')} | {r.get('final_pages') or '-'} | "
            f"{fmt(r.get('downtime'))} | {fmt(r.get('restore'))} | {fmt(r.get('gap'))} | {fmt(r.get('total'), 1)} | "
            f"{fmt(r.get('before'))} | {fmt(r.get('after'))} | {r['checked']} |"
        )
    for n, d in dirs:
        print(rounds_table(n, d))


if __name__ == "__main__":
    main()
