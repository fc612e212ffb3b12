#!/usr/bin/env python3
"""HF tokenizers' single-thread encode throughput on the same corpora as bench_tokenizer.

Usage: hf_tokenizers_bench.py TOKENIZER_DIR CORPUS...   (needs `pip install tokenizers`, e.g. 0.23.2)

Chunks each corpus exactly as bench_tokenizer.cpp does (~16 KiB, cut after a newline), encodes chunk by chunk with
add_special_tokens=False on one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), and prints the first
pass and the best of three more, in MB/s (10^6 bytes per second). --dump-ids PREFIX writes the ids of each chunk
(one JSON array per line) to PREFIX.<corpus name>.jsonl; bench_tokenizer --dump-ids writes the same format, so
the two can be compared with cmp.
"""
import argparse
import json
import os
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402


def chunks_of(data: bytes, target: int):
    chunks, start = [], 0
    while start < len(data):
        end = min(len(data), start + target)
        if end < len(data):
            newline = data.find(b"\n", end)
            end = len(data) if newline < 0 else newline + 1
        chunks.append(data[start:end])
        start = end
    return chunks


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer_dir")
    parser.add_argument("corpora", nargs="+")
    parser.add_argument("--dump-ids", help="write the ids of each chunk, one JSON array per line")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))
    for path in args.corpora:
        data = open(path, "rb").read()
        # Chunks are cut on byte offsets after '\n', so each is valid UTF-8 when the file is.
        chunks = [c.decode("utf-8") for c in chunks_of(data, 16 * 1024)]
        megabytes = len(data) / 1e6
        times, tokens, ids = [], 0, []
        for _ in range(4):
            start = time.perf_counter()
            ids = [tokenizer.encode(c, add_special_tokens=False).ids for c in chunks]
            times.append(time.perf_counter() - start)
        tokens = sum(len(i) for i in ids)
        print(f"{path}: {megabytes:.2f} MB, {tokens} tokens ({len(data) / tokens:.2f} bytes/token)")
        print(f"  encode, 1 thread: {megabytes / times[0]:.2f} MB/s first pass, "
              f"{megabytes / min(times[1:]):.2f} MB/s best warm pass")
        if args.dump_ids:
            with open(args.dump_ids + "." + os.path.basename(path) + ".jsonl", "w") as f:
                for chunk_ids in ids:
                    f.write(json.dumps(chunk_ids) + "\n")


if __name__ == "__main__":
    main()
