#!/usr/bin/env python3
"""tables.py RUNS_DIR: markdown tables (T_SECS=3.0 for runs-T3, the target the summary compares to) from run.sh's case directories (README.md's tables).

Per case: what the toucher saw (its longest pause, its touch rate before, during each round and
after, every page checked), haul's or CRIU's figures, one row per pre-dump round; medians over
the repetitions of a case (NAME-rN); the link; the failure runs' states.

For plain CRIU's loop the per-round dirty rate and estimated downtime are computed here with
haul's formulas (src/migrate/converge/estimate.rs, throttle 0): rate_i = pages_i * 4096 /
(start_i - start_{i-1}), link = the best round's bytes/s, est_i = rate_i * secs_i / link
(the estimate before runs-T3b: memory part only, at the best round's bandwidth).
"""
import datetime
import json
import os
import re
import statistics
import sys

MIB = 1048576.0
PAGE = 4096


def results(d):
    """result lines of results.txt as (kind, {key: value}, head) in order."""
    out = []
    try:
        lines = open(os.path.join(d, "results.txt")).read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(r"result (\S+) ?(.*)", line)
        if not m:
            continue
        kv = dict(re.findall(r'(\S+?)=("[^"]*"|\S*)', m.group(1) + " " + m.group(2)))
        kv = {k: v.strip('"') for k, v in kv.items()}
        kind = m.group(1).split("=")[0]
        out.append((kind, kv, m.group(1)))
    return out


def first(res, kind):
    return next((kv for k, kv, _ in res if k == kind), None)


def report(d):
    try:
        return json.load(open(os.path.join(d, "report.json")))
    except (OSError, ValueError):
        return None


def rate_log(d):
    """(unix s, bytes/s touched) per second, from mtouch's --rate-log."""
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
    """the toucher's mean touch rate (MiB/s) over the samples that end within [t0, t1]."""
    xs = [r for t, r in samples if t0 <= t <= t1]
    return statistics.mean(xs) / MIB if xs else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log_rounds(d):
    """round number -> end time (unix s, the guest's clock) from haul-pid.log's round lines;
    also the time of 'pre-copy stops' and of 'process runs on the destination'."""
    ends, marks = {}, {}
    try:
        lines = open(os.path.join(d, "haul-pid.log")).read().splitlines()
    except OSError:
        return ends, marks
    for l in lines:
        m = re.match(r"(\S+Z)\s+INFO\s+(.*)", l)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        r = re.match(r"round=(\d+) ", m.group(2))
        if r:
            ends[int(r.group(1))] = t
        elif m.group(2).startswith("pre-copy stops"):
            marks["stop"] = t
        elif m.group(2).startswith("process runs on the destination"):
            marks["running"] = t
        elif m.group(2).startswith("throttle released"):
            marks["released"] = t
    return ends, marks


def haul_rounds(d, rep):
    """per-round dicts for a haul run."""
    samples = rate_log(d)
    ends, _ = log_rounds(d)
    out = []
    for r in rep.get("rounds", []):
        end = ends.get(r["round"])
        touch = mean_rate(samples, end - r["secs"], end) if end else None
        rate = r.get("dirty_rate")
        out.append({
            "round": r["round"], "throttle": r.get("throttle", 0), "pages": r["stats"]["pages_written"],
            "skipped": r["stats"]["pages_skipped_parent"], "secs": r["secs"],
            "bw": r["bandwidth"] / MIB, "link": r.get("link_bandwidth", 0) / MIB,
            "fixed": r.get("fixed_secs"), "rate": rate / MIB if rate is not None else None,
            "rate_at": r.get("dirty_rate_throttle"), "est": r["est_downtime_secs"],
            # haul after the frozen part was counted: est = memory part + frozen part; before,
            # est_downtime_secs was the memory part alone
            "est_mem": r.get("est_memory_secs"), "est_frz": r.get("est_frozen_secs"),
            "frozen": r.get("frozen_secs", 0), "touch": touch,
            "verdict": r.get("verdict", "").split(":")[0],
        })
    return out


def criu_rounds(d, res):
    """per-round dicts for plain CRIU's loop (pre-dumps only), haul's formulas applied."""
    samples = rate_log(d)
    out, link, prev_start = [], 0.0, None
    for k, kv, _ in res:
        if k != "pre-dump":
            continue
        secs = int(kv["ms"]) / 1000
        end = int(kv["end_unix_ms"]) / 1000
        start = end - secs
        pages = int(kv["pages_written"])
        bw = pages * PAGE / secs / MIB
        link = max(link, bw)
        rate = pages * PAGE / (start - prev_start) / MIB if prev_start is not None else None
        est = (rate * secs if rate is not None else pages * PAGE / MIB) / link
        out.append({
            "round": int(kv["pre-dump"]), "throttle": 0, "pages": pages, "skipped": int(kv["pages_skipped"]),
            "secs": secs, "bw": bw, "link": link, "fixed": secs - pages * PAGE / MIB / link,
            "rate": rate, "rate_at": 0 if rate is not None else None, "est": est,
            "frozen": int(kv["frozen_us"]) / 1e6, "touch": mean_rate(samples, start, end),
            "verdict": "",
        })
        prev_start = start
    return out


def case_row(name, d):
    res = results(d)
    rep = report(d)
    samples = rate_log(d)
    ver = first(res, "verified") or {}
    haul = first(res, "haul")
    row = {"case": name, "kind": re.sub(r"-r\d+$", "", name)}
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
        rounds = haul_rounds(d, rep)
        row["downtime"] = rep.get("downtime_secs")
        row["restore"] = rep.get("restore_secs")
        t = rep.get("throttle")
        row["throttle"] = t["max_level"] if t else 0
        row["final_pages"] = rep.get("dump", {}).get("pages_written")
        dump = rep.get("dump", {})
        row["final_memdump"] = dump.get("memdump_time_us", 0) / 1e6
        row["final_memwrite"] = dump.get("memwrite_time_us", 0) / 1e6
        last = rounds[-1] if rounds else {}
        row["est_frz"] = last.get("est_frz")
        row["why"] = rep.get("convergence", "")
        row["mode"] = rep.get("pre_dump_mode") or "-"
        row["est_mem"] = last.get("est_mem")
        row["est_link"] = last.get("link")
        row["final_parts"] = rep.get("final_parts")
        row["restore_wall"] = rep.get("restore_wall_secs")
    else:
        rounds = criu_rounds(d, res)
        dump = next((kv for k, kv, _ in res if k == "dump"), None)
        stop = first(res, "criu-stop") or {}
        rs = first(res, "restore") or {}
        row["throttle"] = 0
        row["final_pages"] = int(dump["pages_written"]) if dump and dump.get("pages_written") else None
        row["final_memdump"] = int(dump["memdump_us"]) / 1e6 if dump else None
        row["final_memwrite"] = int(dump["memwrite_us"]) / 1e6 if dump else None
        row["downtime"] = None
        if dump and rs.get("go_unix"):
            # freeze to running: the dump's time, then the copy and restore on dst
            row["downtime"] = int(dump["ms"]) / 1000 + (int(rs["copy_ms"]) + int(rs["restore_ms"])) / 1000
        row["restore"] = int(rs["restore_ms"]) / 1000 if rs.get("restore_ms") else None
        row["why"] = stop.get("why", "")
        row["mode"] = "read" if "criu-read" in name else "splice"
    row["rounds"] = rounds
    row["n_rounds"] = len(rounds)
    row["frozen_rounds"] = sum(r["frozen"] for r in rounds)
    row["link"] = max((r["bw"] for r in rounds), default=None)
    row["beyond"] = row["downtime"] - row["restore"] if row.get("downtime") is not None and row.get("restore") is not None else None
    # the final dump's freeze besides memory and restore: what the frozen-part estimate aims at
    row["nonmem"] = row["beyond"] - row["final_memdump"] if row.get("beyond") is not None and row.get("final_memdump") is not None else None
    return row


def summary(rows, T):
    print(f"| case | rounds | max throttle | link MiB/s (best round) | final pages | final dump: CRIU's memdump / memwrite s | downtime s | restore s | downtime - restore s | within T + restore? | downtime - restore - memdump s | est. frozen part s (last round) | toucher's longest pause s | frozen in pre-dumps s | total s | touch MiB/s before | after | every page checked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "-" if r.get("beyond") is None else ("yes" if r["beyond"] <= T else f"no (+{r['beyond'] - T:.2f} s)")
        print(
            f"| {r['case']} | {r['n_rounds']} | {r['throttle']}% | {fmt(r['link'])} | {r.get('final_pages') or '-'} | {fmt(r.get('final_memdump'))} / {fmt(r.get('final_memwrite'))} | "
            f"{fmt(r.get('downtime'))} | {fmt(r.get('restore'))} | {fmt(r.get('beyond'))} | {ok} | {fmt(r.get('nonmem'))} | {fmt(r.get('est_frz'))} | {fmt(r.get('gap'))} | "
            f"{fmt(r['frozen_rounds'])} | {fmt(r.get('total'), 1)} | {fmt(r.get('before'))} | {fmt(r.get('after'))} | {r['checked']} |"
        )


def final_parts(rows):
    """haul's runs with the final dump's parts (report.json's final_parts, runs-T3b on): the
    estimate at the stop against what the final dump took, part by part."""
    rs = [r for r in rows if r.get("final_parts")]
    if not rs:
        return
    print("| case | est. at the stop: memory + fixed s | est. page rate MiB/s | final dump's page rate MiB/s (pages / memdump) | until pre-dump s | dump until post-dump s (of which memdump) | hand-off s | restore call s (dst's wall / CRIU's restore) | downtime - restore - memdump s (the fixed part) | downtime - restore s | est. - (downtime - restore) s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        p = r["final_parts"]
        rate = r["final_pages"] * PAGE / MIB / r["final_memdump"] if r.get("final_pages") and r.get("final_memdump") else None
        est = (r["est_mem"] or 0) + (r["est_frz"] or 0) if r.get("est_mem") is not None else None
        diff = est - r["beyond"] if est is not None and r.get("beyond") is not None else None
        print(
            f"| {r['case']} | {fmt(r.get('est_mem'))} + {fmt(r.get('est_frz'))} | {fmt(r.get('est_link'))} | {fmt(rate)} | {fmt(p.get('until_pre_dump_secs'))} | "
            f"{fmt(p.get('dump_secs'))} ({fmt(r.get('final_memdump'))}) | {fmt(p.get('handoff_secs'))} | {fmt(p.get('restore_call_secs'))} ({fmt(r.get('restore_wall'))} / {fmt(r.get('restore'))}) | "
            f"{fmt(r.get('nonmem'))} | {fmt(r.get('beyond'))} | {'+' if diff is not None and diff >= 0 else ''}{fmt(diff)} |"
        )


def medians(rows, T):
    kinds = []
    for r in rows:
        if r["kind"] not in kinds:
            kinds.append(r["kind"])
    print("| variant | reps | rounds | max throttle | final pages | downtime s | restore s | downtime - restore s (T = %.1f s) | downtime - restore - memdump s | est. frozen part s | toucher's longest pause s | frozen in pre-dumps s | total s | touch MiB/s before | after |" % T)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in kinds:
        rs = [r for r in rows if r["kind"] == k]
        m = lambda key: med([r.get(key) for r in rs])
        print(
            f"| {k} | {len(rs)} | {fmt(m('n_rounds'), 0)} | {fmt(m('throttle'), 0)}% | {fmt(m('final_pages'), 0)} | {fmt(m('downtime'))} | "
            f"{fmt(m('restore'))} | {fmt(m('beyond'))} | {fmt(m('nonmem'))} | {fmt(m('est_frz'))} | {fmt(m('gap'))} | {fmt(m('frozen_rounds'))} | {fmt(m('total'), 1)} | "
            f"{fmt(m('before'))} | {fmt(m('after'))} |"
        )
    print()
    for k in kinds:
        rs = [r for r in rows if r["kind"] == k]
        n = max(r["n_rounds"] for r in rs)
        print(f"\n{k}: per round, median of the reps that had the round\n")
        print("| round | reps | throttle | pages written | s | dirty rate MiB/s | est. downtime s | est. memory s | est. frozen s | frozen s | toucher's touch rate MiB/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for i in range(n):
            xs = [r["rounds"][i] for r in rs if len(r["rounds"]) > i]
            m = lambda key: med([x.get(key) for x in xs])
            print(
                f"| {i + 1} | {len(xs)} | {fmt(m('throttle'), 0)}% | {fmt(m('pages'), 0)} | {fmt(m('secs'), 1)} | {fmt(m('rate'))} | "
                f"{fmt(m('est'))} | {fmt(m('est_mem'))} | {fmt(m('est_frz'))} | {fmt(m('frozen'))} | {fmt(m('touch'))} |"
            )
        print(
            f"| final | {len(rs)} | 0% | {fmt(med([r.get('final_pages') for r in rs]), 0)} | - | - | - | - | - | "
            f"{fmt(med([r.get('downtime') for r in rs]))} (downtime) | - |"
        )


def rounds_table(r):
    out = [f"\n#### {r['case']}\n"]
    out.append("| round | throttle | pages written | skipped | s | MiB/s | link MiB/s | fixed s | dirty rate MiB/s (at) | est. downtime s (memory + frozen) | frozen s | toucher's touch rate MiB/s | verdict |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["rounds"]:
        at = f" ({x['rate_at']}%)" if x["rate_at"] is not None else ""
        parts = f" ({x['est_mem']:.2f} + {x['est_frz']:.2f})" if x.get("est_mem") is not None and x.get("est_frz") is not None else ""
        out.append(
            f"| {x['round']} | {x['throttle']}% | {x['pages']} | {x['skipped']} | {x['secs']:.1f} | {x['bw']:.2f} | {fmt(x['link'])} | "
            f"{fmt(x['fixed'], 1)} | {fmt(x['rate'])}{at} | {x['est']:.2f}{parts} | {x['frozen']:.2f} | {fmt(x['touch'])} | {x['verdict']} |"
        )
    out.append(
        f"| final | 0% | {r.get('final_pages')} | - | - | - | - | - | - | - | {fmt(r.get('downtime'))} (downtime) | - | restore {fmt(r.get('restore'))} s |"
    )
    if r.get("why"):
        out.append(f"\nstop: {r['why']}")
    return "\n".join(out)


def failures(dirs):
    for name, d in dirs:
        res = results(d)
        print(f"\n#### {name}\n")
        if not first(res, "haul"):
            print("(incomplete: the run was cut off by the host's restart after its first state line)\n")
        for k, kv, head in res:
            if k in ("before", "throttled", "after-fault", "after-sweep", "end"):
                print(f"- {k}: cgroup `{kv.get('cgroup')}` (as before: {kv.get('cgroup_as_before')}), cpu.max `{kv.get('cpu.max')}`, "
                      f"haul cgroups: {kv.get('haul_cgroups', '').rstrip(',')}, journals: {kv.get('journals', '').rstrip(',')}")
            elif k == "fault":
                print(f"- fault: {kv.get('how')} at unix {int(kv['unix_ms']) / 1000:.3f}")
            elif k == "haul":
                print(f"- haul pid: exit {kv['rc']} after {int(kv['ms']) / 1000:.1f} s")
            elif k == "verified":
                print(f"- verified on the source: {kv.get('checked')}, longest pause {int(kv['max_gap_ms']) / 1000:.2f} s")
        try:
            tail = [l for l in open(os.path.join(d, "haul-pid.log")).read().splitlines() if "round=" in l or "throttl" in l or l.startswith("haul:")]
            print("\nhaul pid's log (rounds, throttle, the error):\n\n```")
            print("\n".join(tail))
            print("```")
        except OSError:
            pass


def link(d):
    for l in open(os.path.join(d, "results.txt")).read().splitlines():
        m = re.match(r"result link-recv how=(\S+) (.*)", l)
        if m:
            print(f"- {m.group(1)} sender, python receiver: {m.group(2)}")


def main():
    top = sys.argv[1]
    T = float(os.environ.get("T_SECS", "1.0"))
    dirs = [(n, os.path.join(top, n)) for n in sorted(os.listdir(top))
            if os.path.isfile(os.path.join(top, n, "results.txt"))]
    migrations = [(n, d) for n, d in dirs if re.match(r"(auto|off|criu)(-read)?-r\d+$", n)]
    order = {"auto": 0, "off": 1, "criu": 2}
    migrations.sort(key=lambda nd: (order.get(re.sub(r"-r\d+$", "", nd[0]), 9), nd[0]))
    rows = [case_row(n, d) for n, d in migrations]
    for n, d in dirs:
        if n == "link":
            print("### Link\n")
            link(d)
    print("\n### Every run\n")
    summary(rows, T)
    print("\n### Where the final dump's downtime went (haul's runs)\n")
    final_parts(rows)
    print("\n### Medians of the repetitions\n")
    medians(rows, T)
    print("\n### Rounds of every run")
    for r in rows:
        print(rounds_table(r))
    print("\n### Failures mid-way")
    failures([(n, d) for n, d in dirs if n.startswith("fail-")])


if __name__ == "__main__":
    main()
