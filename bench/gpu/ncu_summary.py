#!/usr/bin/env python3
"""Per-kernel GPU time of one forward pass from an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum,
optionally with dram__bytes_read.sum: then each kernel's DRAM read rate is printed too).

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
    times, names, dram = {}, {}, {}
    with open(args.csv) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        metric, unit = r.get("Metric Name"), r.get("Metric Unit", "")
        v = float(r["Metric Value"].replace(",", ""))
        kid = int(r["ID"])
        if metric == "gpu__time_duration.sum":
            times[kid] = v * {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
            names[kid] = r["Kernel Name"]
        elif metric == "dram__bytes_read.sum":
            dram[kid] = v * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
    rows = sorted((kid, names[kid], times[kid], dram.get(kid, 0.0)) for kid in times)
    forwards, cur = [], None
    for _, name, us, b in rows:
        if "embedding_kernel" in name:
            cur = []
            forwards.append(cur)
        if cur is not None:
            cur.append((name, us, b))
    print(f"{len(rows)} kernels, {len(forwards)} forward passes")
    for idx in args.forward or [1, -1]:
        if not forwards or not (-len(forwards) <= idx < len(forwards)):
            continue
        fw = forwards[idx]
        agg = defaultdict(lambda: [0, 0.0, 0.0])
        for name, us, b in fw:
            a = agg[short(name)]
            a[0] += 1
            a[1] += us
            a[2] += b
        total = sum(us for _, us, _ in fw)
        total_b = sum(b for _, _, b in fw)
        print(f"\nforward {idx}: {len(fw)} kernels, {total / 1e3:.3f} ms of kernel time, {total_b / 1e9:.3f} GB read from DRAM")
        for name, (n, us, b) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:30]:
            rate = f"  {b / 1e6:8.2f} MB {b / (us * 1e6):6.2f} TB/s  {us / n:7.2f} us each" if dram else ""
            print(f"  {us / 1e3:9.3f} ms {100 * us / total:5.1f}%  {n:5d}x{rate}  {name}")


if __name__ == "__main__":
    main()
