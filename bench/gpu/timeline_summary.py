#!/usr/bin/env python3
"""Where a replayed CUDA graph's time goes, from bench/gpu/kernel_timeline.cpp's CSV.

Each graph's launches are cut into replays (every node once, in start order). Per replay, the kernels are taken in
the order they finished, and kernel i is charged end_i - end_(i-1) (the first one end_1 - its start): the time the
step's finish line moved while that kernel was the next to finish. Under programmatic dependent launch a kernel that
overlapped its predecessor is charged only its exposed part, and the charges add up to the replay's span exactly.
"idle" is the part of the span in which no kernel of the replay ran.

Usage: timeline_summary.py timeline.csv [--min-replays 3] [--top 25] [--graphs N]
Graphs are listed in the order they first ran (moe bench captures one per batch size and context, in that order).
--eager instead sums the launches outside graphs per kernel (a program that runs no graph, such as `moe
train-bench`): launches, total and mean time, share of the summed time (busy time: overlapping kernels count twice).
"""
import argparse
import csv
import re
import sys
from collections import OrderedDict, defaultdict


def short_name(name):
    name = re.sub(r"^void ", "", name)
    name = name.replace("(anonymous namespace)::", "").replace("moe::cuda::", "").replace("moe::", "")
    # Keep the function name and its first template argument list, drop the parameter list.
    depth, out = 0, []
    for ch in name:
        if ch == "(" and depth == 0:
            break
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        out.append(ch)
    s = "".join(out)
    return s if len(s) <= 90 else s[:87] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--min-replays", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--graphs", type=int, default=0, help="only the first N graphs with enough replays")
    ap.add_argument("--eager", action="store_true", help="per-kernel totals of the launches outside graphs")
    a = ap.parse_args()

    by_graph = OrderedDict()
    eager = 0
    need = ["start_ns", "end_ns", "graph", "graph_node", "name"]
    with open(a.csv, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            print(f"{a.csv}: not a kernel_timeline CSV: no column {', '.join(missing)}", file=sys.stderr)
            return 2
        try:
            rows = sorted(reader, key=lambda r: int(r["start_ns"]))
            for r in rows:
                int(r["end_ns"]), int(r["graph"]), int(r["graph_node"])
        except (TypeError, ValueError) as e:
            print(f"{a.csv}: line {reader.line_num}: a time, graph or node that is not an integer ({e})", file=sys.stderr)
            return 2
    for r in rows:
        g = int(r["graph"])
        if g == 0:
            eager += 1
            continue
        by_graph.setdefault(g, []).append((int(r["start_ns"]), int(r["end_ns"]), int(r["graph_node"]), r["name"]))
    print(f"{len(rows)} kernels, {eager} outside graphs, {len(by_graph)} graphs")
    if a.eager:
        return eager_totals(rows, a.top)

    shown = 0
    for g, ks in by_graph.items():
        nodes = len({k[2] for k in ks})
        replays = [ks[i:i + nodes] for i in range(0, len(ks) - nodes + 1, nodes)]
        replays = [r for r in replays if len({k[2] for k in r}) == nodes]
        if len(replays) < a.min_replays:
            continue
        replays = replays[1:]  # the first replay after capture may still warm caches and clocks
        shown += 1
        if a.graphs and shown > a.graphs:
            break
        charge = defaultdict(float)
        busy = defaultdict(float)
        count = defaultdict(int)
        spans, idles = [], []
        for rep in replays:
            t0 = min(k[0] for k in rep)
            t1 = max(k[1] for k in rep)
            spans.append(t1 - t0)
            prev = None
            for s, e, _, n in sorted(rep, key=lambda k: k[1]):
                name = short_name(n)
                charge[name] += e - (s if prev is None else prev)
                busy[name] += e - s
                count[name] += 1
                prev = e
            # idle: the span minus the union of the kernels' intervals
            covered, cur_s, cur_e = 0, None, None
            for s, e, _, _ in sorted(rep):
                if cur_e is None or s > cur_e:
                    if cur_e is not None:
                        covered += cur_e - cur_s
                    cur_s, cur_e = s, e
                else:
                    cur_e = max(cur_e, e)
            covered += cur_e - cur_s
            idles.append(t1 - t0 - covered)
        n = len(replays)
        span = sum(spans) / n
        print(f"\ngraph {g}: {nodes} kernels a replay, {n} replays timed; span {span / 1e3:.1f} us "
              f"(min {min(spans) / 1e3:.1f}, max {max(spans) / 1e3:.1f}), idle {sum(idles) / n / 1e3:.1f} us")
        print(f"  {'kernel':<90} {'n':>4} {'busy us':>9} {'charged us':>10} {'share':>6}")
        for name in sorted(charge, key=lambda k: -charge[k])[:a.top]:
            print(f"  {name:<90} {count[name] / n:>4.0f} {busy[name] / n / 1e3:>9.1f} {charge[name] / n / 1e3:>10.1f} "
                  f"{100 * charge[name] / n / span:>5.1f}%")
    if shown == 0:
        print("no graph with enough replays", file=sys.stderr)
        return 1
    return 0


def eager_totals(rows, top):
    busy, count = defaultdict(int), defaultdict(int)
    for r in rows:
        if int(r["graph"]) == 0:
            name = short_name(r["name"])
            busy[name] += int(r["end_ns"]) - int(r["start_ns"])
            count[name] += 1
    total = sum(busy.values())
    if total == 0:
        print("no launch outside graphs", file=sys.stderr)
        return 1
    print(f"summed kernel time outside graphs: {total / 1e6:.2f} ms")
    print(f"  {'kernel':<90} {'n':>6} {'total ms':>9} {'mean us':>8} {'share':>6}")
    for name in sorted(busy, key=lambda k: -busy[k])[:top]:
        print(f"  {name:<90} {count[name]:>6} {busy[name] / 1e6:>9.2f} {busy[name] / count[name] / 1e3:>8.1f} "
              f"{100 * busy[name] / total:>5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
