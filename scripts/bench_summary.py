#!/usr/bin/env python3
"""Medians of herald-bench JSON reports, Herald against Nchan, as a Markdown table."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench-results"
reports = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path) as f:
        r = json.load(f)
    reports.setdefault((r["label"], r["target"]), []).append(r)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def metric(case, target, key):
    return median([key(r) for r in reports.get((case, target), [])])


def fmt(value, digits=0):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}×"


cases = []
for (case, _target) in reports:
    if case not in cases:
        cases.append(case)

print("| case | runs | metric | Herald | Nchan | Herald/Nchan |")
print("|---|---|---|---|---|---|")
for case in cases:
    runs = f"{len(reports.get((case, 'herald'), []))}/{len(reports.get((case, 'nchan'), []))}"
    scenario = (reports.get((case, "herald")) or reports.get((case, "nchan")))[0]["scenario"]
    rows = []
    if scenario == "idle":
        rows.append(("memory per idle stream (bytes, PSS)", lambda r: r.get("memoryPerStreamBytes"), 0))
        rows.append(("streams established", lambda r: r.get("established"), 0))
    else:
        rows.append(("deliveries/s", lambda r: r.get("deliveriesPerSecond"), 0))
        rows.append(("latency p50 (ms)", lambda r: (r.get("latency") or {}).get("p50", 0) / 1000, 1))
        rows.append(("latency p99 (ms)", lambda r: (r.get("latency") or {}).get("p99", 0) / 1000, 1))
        rows.append(("latency p99.9 (ms)", lambda r: (r.get("latency") or {}).get("p999", 0) / 1000, 1))
        rows.append(("server CPU µs per delivery",
                     lambda r: (r.get("serverCPUSeconds") or 0) * 1e6 / r["deliveries"] if r.get("deliveries") else None, 2))
        rows.append(("missed events", lambda r: r.get("missed"), 0))
        rows.append(("duplicated events", lambda r: r.get("duplicated"), 0))
        rows.append(("publishes not acknowledged", lambda r: r.get("published", 0) - r.get("acknowledged", 0), 0))
        if scenario == "reconnect":
            rows.append(("catch-up after storm (s)", lambda r: r.get("catchUpSeconds"), 2))
    for name, key, digits in rows:
        h = metric(case, "herald", key)
        n = metric(case, "nchan", key)
        print(f"| {case} | {runs} | {name} | {fmt(h, digits)} | {fmt(n, digits)} | {ratio(h, n)} |")
