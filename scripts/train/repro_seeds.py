#!/usr/bin/env python3
"""FP8 against BF16 over several seeds (docs/reproductions.md): reads the summary.json that
scripts/train/repro_summary.py wrote for each seed's `fp8` stage (scripts/gpu/repro.sh fp8 with SEED=N STEPS=N) and
prints a markdown table of the relative differences, their mean and the mean's standard error.
  repro_seeds.py docs/repro/fp8-seeds/seed*.json"""
import json
import math
import sys


def main():
    rows = []
    for path in sys.argv[1:]:
        d = json.load(open(path))
        env = next(iter(d["env"].values()))
        c = d["comparisons"]["fp8"]
        b, f = d["runs"]["bf16"], d["runs"]["fp8"]
        rows.append((env["seed"], c["steps"], b["final_val"]["val_loss"], f["final_val"]["val_loss"], c["val_loss_rel"],
                     c["val_main_ce_rel"], c["train_loss_rel_last_5pct"], b["tokens_per_s_median"],
                     f["tokens_per_s_median"], env["date"]))
    print("| seed | steps | BF16 validation loss | FP8 validation loss | (FP8 - BF16) / BF16: validation loss "
          "| validation CE, main head | training loss, last 5 % | tokens/s BF16 / FP8 | date (UTC) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {100 * r[4]:+.3f} % | {100 * r[5]:+.3f} % "
              f"| {100 * r[6]:+.3f} % | {r[7]:,.0f} / {r[8]:,.0f} | {r[9]} |")
    for i, name in ((4, "validation loss"), (5, "validation CE, main head"), (6, "training loss, last 5 %")):
        v = [r[i] for r in rows]
        m = sum(v) / len(v)
        se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
        print(f"\n{name}: mean {100 * m:+.3f} %, standard error of the mean {100 * se:.3f} % over {len(v)} seeds", end="")
    print()


if __name__ == "__main__":
    main()
