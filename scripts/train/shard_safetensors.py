#!/usr/bin/env python3
"""Splits one safetensors file into shards of at most --max-bytes each plus model.safetensors.index.json (the HF
layout `moe` and transformers both load), without torch: a safetensors file is an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the bytes.

  shard_safetensors.py IN.safetensors OUT_DIR [--max-bytes 15000000]

Tensors keep the input's order; a shard closes before the tensor that would take it over the limit (a single
tensor larger than the limit is an error naming it). Writes OUT_DIR/model-0000k-of-0000n.safetensors.
"""
import argparse
import json
import os
import struct
import sys


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SystemExit(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    return header, 8 + n


def write_shard(path, src, base, names, header, metadata):
    entries, offset = {}, 0
    for name in names:
        b, e = header[name]["data_offsets"]
        entries[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"],
                         "data_offsets": [offset, offset + (e - b)]}
        offset += e - b
    if metadata:
        entries = {"__metadata__": metadata, **entries}
    blob = json.dumps(entries, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # 8-byte alignment of the data, as the format recommends
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name in names:
            b, e = header[name]["data_offsets"]
            src.seek(base + b)
            out.write(src.read(e - b))


def shard(inp, out_dir, max_bytes):
    header, base = read_header(inp)
    metadata = header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    groups, cur, size = [], [], 0
    for name in names:
        b, e = header[name]["data_offsets"]
        if e - b + 4096 > max_bytes:
            raise SystemExit(f"{inp}: tensor {name} ({e - b} bytes) is larger than a shard ({max_bytes})")
        if cur and size + (e - b) + 4096 + 200 * len(cur) > max_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += e - b
    if cur:
        groups.append(cur)
    os.makedirs(out_dir, exist_ok=True)
    weight_map, total = {}, 0
    with open(inp, "rb") as src:
        for k, g in enumerate(groups):
            fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            write_shard(os.path.join(out_dir, fname), src, base, g, header, metadata)
            assert os.path.getsize(os.path.join(out_dir, fname)) <= max_bytes, fname
            for name in g:
                weight_map[name] = fname
                b, e = header[name]["data_offsets"]
                total += e - b
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("out_dir")
    ap.add_argument("--max-bytes", type=int, default=15_000_000)
    a = ap.parse_args()
    files = shard(a.input, a.out_dir, a.max_bytes)
    print(f"{a.input} -> {len(files)} shards in {a.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
