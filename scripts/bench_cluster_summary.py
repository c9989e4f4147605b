#!/usr/bin/env python3
"""Medians of scripts/bench-cluster.sh's reports (herald-bench JSON for cluster-latency and
cluster-capacity, wrk summaries for cluster-throughput), Herald cluster against Nchan on Redis,
as a Markdown table."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench-results/cluster"
reports = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path) as f:
        r = json.load(f)
    if r.get("label") == "cluster-throughput":
        key = (f"cluster-throughput {r['nodes']} node{'s' if r['nodes'] > 1 else ''} {r['mode']}", r["target"])
    else:
        key = (r.get("label"), r.get("target"))
    reports.setdefault(key, []).append(r)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def latency(r, p):
    lat = r.get("latency")
    return lat[p] / 1000 if lat else None


def unacked(r):
    return r.get("published", 0) - r.get("acknowledged", 0) if r.get("published") else None


ROWS = {
    "cluster-latency": [
        ("cross-node latency p50 (ms)", lambda r: latency(r, "p50"), 1),
        ("cross-node latency p99 (ms)", lambda r: latency(r, "p99"), 1),
        ("cross-node latency p99.9 (ms)", lambda r: latency(r, "p999"), 1),
        ("cross-node latency max (ms)", lambda r: latency(r, "max"), 1),
        ("deliveries/s", lambda r: r.get("deliveriesPerSecond"), 0),
        ("server CPU µs per delivery (both nodes)",
         lambda r: (r.get("serverCPUSeconds") or 0) * 1e6 / r["deliveries"] if r.get("deliveries") else None, 2),
        ("missed events", lambda r: r.get("missed"), 0),
        ("duplicated events", lambda r: r.get("duplicated"), 0),
        ("publishes not acknowledged", unacked, 0),
    ],
    "throughput": [
        ("acknowledged events/s", lambda r: r.get("acknowledgedEventsPerSecond"), 0),
        ("POST latency p50 (ms)", lambda r: (r.get("postLatencyP50Micros") or 0) / 1000, 1),
        ("POST latency p99 (ms, worst node)", lambda r: (r.get("postLatencyP99Micros") or 0) / 1000, 1),
        ("errors (non-2xx, socket, timeout)", lambda r: r.get("errors"), 0),
    ],
    "cluster-capacity": [
        ("streams established", lambda r: r.get("established"), 0),
        ("time to establish (s)", lambda r: r.get("establishSeconds"), 1),
        ("publish → all received (s)", lambda r: r.get("deliverySeconds"), 2),
        ("deliveries/s", lambda r: r.get("deliveriesPerSecond"), 0),
        ("latency p50 (ms)", lambda r: latency(r, "p50"), 0),
        ("latency p99 (ms)", lambda r: latency(r, "p99"), 0),
        ("server RSS, all nodes (MiB)", lambda r: (r.get("serverIdle") or {}).get("rssKiB", 0) / 1024 or None, 0),
        ("RSS of all nodes / streams (bytes)", lambda r: r.get("rssPerStreamBytes"), 0),
        ("PSS of all nodes / streams (bytes)",
         lambda r: (r.get("serverIdle") or {}).get("pssKiB", 0) * 1024 / r["established"] if r.get("established") else None, 0),
        ("memory growth per stream (bytes, PSS)", lambda r: r.get("memoryPerStreamBytes"), 0),
        ("missed deliveries", lambda r: r.get("missed"), 0),
        ("duplicated deliveries", lambda r: r.get("duplicated"), 0),
    ],
}

cases = []
for (case, _target) in reports:
    if case not in cases:
        cases.append(case)
order = {"cluster-latency": 0, "cluster-throughput": 1, "cluster-capacity": 2}
cases.sort(key=lambda c: (order.get(c.split(" ")[0], 9), c.split(" ")[1:2], c.endswith("batch")))

print("| case | runs | metric | Herald (PostgreSQL) | Nchan (Redis) | Herald/Nchan |")
print("|---|---|---|---|---|---|")
for case in cases:
    h_runs, n_runs = reports.get((case, "herald"), []), reports.get((case, "nchan"), [])
    runs = f"{len(h_runs)}/{len(n_runs)}" if n_runs or not case.endswith("batch") else f"{len(h_runs)}/n/a"
    rows = ROWS["throughput"] if case.startswith("cluster-throughput") else ROWS.get(case, [])
    for name, key, digits in rows:
        h = median([key(r) for r in h_runs])
        n = median([key(r) for r in n_runs])
        if not n_runs and case.endswith("batch"):
            nchan, rat = "n/a (one message per POST)", "–"
        else:
            nchan, rat = fmt(n, digits), ratio(h, n)
        print(f"| {case} | {runs} | {name} | {fmt(h, digits)} | {nchan} | {rat} |")

# Every run's own figures, so outliers show.
print()
print("Per run:")
for case in cases:
    for target in ("herald", "nchan"):
        runs = reports.get((case, target), [])
        if not runs:
            continue
        if case.startswith("cluster-throughput"):
            values = [fmt(r.get("acknowledgedEventsPerSecond")) + " ev/s" for r in runs]
        elif case == "cluster-latency":
            values = [f"p50 {fmt(latency(r, 'p50'), 1)} / p99 {fmt(latency(r, 'p99'), 1)} / max {fmt(latency(r, 'max'), 1)} ms"
                      f", missed {r.get('missed')}" for r in runs]
        else:
            values = [f"{fmt(r.get('established'))} streams, {fmt(r.get('deliverySeconds'), 2)} s, "
                      f"{fmt(r.get('rssPerStreamBytes'))} B RSS/stream, missed {r.get('missed')}" for r in runs]
        print(f"- {case} / {target}: " + "; ".join(values))
