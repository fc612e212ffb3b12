#!/usr/bin/env python3
"""Compare two `moe logits` outputs (F32 `logits` [T, vocab] in safetensors): per row the relative L2 of got
against want and whether their top-1 tokens agree; near-ties (want's top two within 1e-3 of each other) are
named, since a rounding can swap them. Standard library only (the GPU machine has no registry).
  compare_logits.py GOT.safetensors WANT.safetensors
Exit 0 when every row is within 1e-2 relative L2 (the GPU tolerances) and top-1 agrees or is a near-tie."""
import json
import math
import struct
import sys


def read_f32(path, name="logits"):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        e = header[name]
        assert e["dtype"] == "F32", f"{path}: {name} is {e['dtype']}, not F32"
        a, b = e["data_offsets"]
        f.seek(8 + n + a)
        data = f.read(b - a)
    rows, cols = e["shape"]
    vals = struct.unpack(f"<{rows * cols}f", data)
    return [vals[r * cols:(r + 1) * cols] for r in range(rows)]


def main():
    got, want = read_f32(sys.argv[1]), read_f32(sys.argv[2])
    assert len(got) == len(want), f"{len(got)} rows against {len(want)}"
    ok = True
    for r, (g, w) in enumerate(zip(got, want)):
        num = sum((x - y) ** 2 for x, y in zip(g, w))
        den = sum(y * y for y in w)
        rel = math.sqrt(num / den) if den else math.sqrt(num)
        tg, tw = max(range(len(g)), key=g.__getitem__), max(range(len(w)), key=w.__getitem__)
        second = sorted(w, reverse=True)[1]
        tie = w[tw] - second < 1e-3
        same = tg == tw
        print(f"row {r}: relative L2 {rel:.3e}, top-1 {tg} vs {tw}"
              + ("" if same else (" (near-tie)" if tie else " DIFFERENT")))
        ok = ok and rel <= 1e-2 and (same or tie)
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
