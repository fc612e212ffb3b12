#!/usr/bin/env python3
"""Sums per-kernel GPU time from `ncu --metrics gpu__time_duration.sum --csv` output (one row per launch).

Usage: kernel_times.py ncu.csv [top]. Launches up to the last `fill_kernel` among the first 100 (the BF16 GEMM
rate measurement that train-bench runs before the model: its operands are filled by that kernel) are left out.
Prints, per kernel name (templates cut at the first '<' or '('), the launches, total ms and share, largest first.
"""
import csv
import sys
from collections import defaultdict


def main():
    rows = []
    with open(sys.argv[1], newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own log lines come first
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "nsecond")
        v = float(r["Metric Value"].replace(",", ""))
        ns = v * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "ns": 1, "us": 1e3, "ms": 1e6}.get(unit, 1)
        rows.append((r["Kernel Name"], ns))
    start = 0
    for i, (name, _) in enumerate(rows[:100]):
        if "fill_kernel" in name:
            start = i + 1
    total = defaultdict(float)
    count = defaultdict(int)
    for name, ns in rows[start:]:
        key = name.split("(")[0].split("<")[0].strip()
        if "<" in name:
            key = name[: min(len(name), 90)]
        total[key] += ns
        count[key] += 1
    allns = sum(total.values())
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    print(f"{len(rows) - start} launches after the rate measurement ({start} before), {allns / 1e6:.2f} ms of kernels")
    for key in sorted(total, key=total.get, reverse=True)[:top]:
        print(f"{total[key] / 1e6:10.3f} ms {100 * total[key] / allns:5.1f} % {count[key]:7d}x  {key}")


if __name__ == "__main__":
    main()
