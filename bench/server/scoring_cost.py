#!/usr/bin/env python3
"""The cost of scoring a prompt (every position's logprobs) against generating one token from it (issue 15).

Starts `moe serve --no-prefix-cache` (so every request computes its whole prompt) with the given extra flags and
sends, one at a time, /v1/completions requests on an N-token prompt of random token ids:
  generate 1  max_tokens 1, no logprobs                 (prefill, the last position's logits row, one sample)
  score       max_tokens 0, echo, logprobs K            (prefill with every row's logits, log-softmax and top K)
  score + 1   max_tokens 1, echo, logprobs K
Prints the median and range of the wall time of each over R rounds (after one warm-up round), interleaved so that
a change in the machine's load hits all three alike. Python standard library only.

  python3 bench/server/scoring_cost.py --moe build-cpu/src/cli/moe --model models/tiny-dsv3 --tokens 512
"""
import argparse
import json
import random
import socket
import statistics
import subprocess
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--moe", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--tokens", type=int, default=512)
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--top", type=int, default=5)
ap.add_argument("serve_args", nargs="*")
a = ap.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}"
server = subprocess.Popen([a.moe, "serve", "--model", a.model, "--port", str(port), "--no-prefix-cache",
                           *a.serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def post(body):
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    r = json.load(urllib.request.urlopen(req, timeout=900))
    return time.perf_counter() - t, r


try:
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                break
        except Exception:
            time.sleep(0.1)
    rng = random.Random(1)
    prompt = [rng.randrange(100, 2000) for _ in range(a.tokens)]
    kinds = {
        "generate 1": {"max_tokens": 1},
        "score": {"max_tokens": 0, "echo": True, "logprobs": a.top},
        "score + 1": {"max_tokens": 1, "echo": True, "logprobs": a.top},
    }
    times = {k: [] for k in kinds}
    for round_ in range(a.rounds + 1):
        for k, extra in kinds.items():
            dt, r = post({"prompt": prompt, "temperature": 0, **extra})
            if k.startswith("score"):
                lp = r["choices"][0]["logprobs"]
                assert len(lp["token_logprobs"]) == a.tokens + extra["max_tokens"] and lp["token_logprobs"][0] is None
            if round_ > 0:
                times[k].append(dt)
    base = statistics.median(times["generate 1"])
    print(f"{a.tokens}-token prompt, {a.rounds} rounds, logprobs {a.top}:")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"  {k:10s} median {m * 1000:8.1f} ms  ({min(v) * 1000:.1f}-{max(v) * 1000:.1f})  x{m / base:.2f}")
finally:
    server.terminate()
    server.wait()
