#!/usr/bin/env python3
"""Per-kernel GPU time of one forward pass from an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum).

Usage: ncu_summary.py NCU_CSV [--forward N]...   Forward passes are split at the embedding kernel (the first
kernel of DeepseekV3::forward); N indexes them (negative from the end; default: the last, a decode step, and the
second, a timed prefill, as `moe bench` runs them). Prints, per kernel name, the launches and the summed time.
"""
import argparse
import csv
import re
from collections import defaultdict


def short(name: str) -> str:
    name = re.sub(r"\(.*$", "", name)           # drop the argument list
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"moe::cuda::(\(anonymous namespace\)::)?", "", name)
    return name[:90]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--forward", type=int, action="append")
    args = ap.parse_args()
    rows = []
    with open(args.csv) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "nsecond")
        v = float(r["Metric Value"].replace(",", ""))
        v *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
        rows.append((int(r["ID"]), r["Kernel Name"], v))
    rows.sort()
    forwards, cur = [], None
    for _, name, us in rows:
        if "embedding_kernel" in name:
            cur = []
            forwards.append(cur)
        if cur is not None:
            cur.append((name, us))
    print(f"{len(rows)} kernels, {len(forwards)} forward passes")
    for idx in args.forward or [1, -1]:
        if not forwards or not (-len(forwards) <= idx < len(forwards)):
            continue
        fw = forwards[idx]
        agg = defaultdict(lambda: [0, 0.0])
        for name, us in fw:
            agg[short(name)][0] += 1
            agg[short(name)][1] += us
        total = sum(us for _, us in fw)
        print(f"\nforward {idx}: {len(fw)} kernels, {total / 1e3:.3f} ms of kernel time")
        for name, (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:25]:
            print(f"  {us / 1e3:9.3f} ms {100 * us / total:5.1f}%  {n:5d}x  {name}")


if __name__ == "__main__":
    main()
