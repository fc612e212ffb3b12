#!/usr/bin/env python3
"""Worst latency of small requests while `moe serve` prefills one long prompt (issue 16, finding 5).

Starts `MOE serve` with the given extra flags, sends one streamed completion whose prompt is N token ids
(max_tokens 1), and meanwhile sends small chat requests one after another (max_tokens 4); prints the long
prompt's time, and the count, median and worst latency of the small requests sent while it was prefilled.
Python standard library only (runs where the GPU machine has no registry).

  python3 bench/server/long_prefill_latency.py --moe build/src/cli/moe --model models/tiny-dsv3 --tokens 60000 \
      -- --device cuda --cache-tokens 128192
"""
import argparse
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--moe", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--tokens", type=int, default=60000)
ap.add_argument("serve_args", nargs="*")
a = ap.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}"
server = subprocess.Popen([a.moe, "serve", "--model", a.model, "--port", str(port), *a.serve_args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def post(path, body, timeout=900):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


try:
    deadline = time.time() + 300
    while True:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                break
        except Exception:
            pass
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)

    small = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    post("/v1/chat/completions", small).read()  # warm-up (graphs, first-use allocations)

    done = {}

    def long_request():
        prompt = [2 + (i * 7919) % 2000 for i in range(a.tokens)]
        t0 = time.time()
        with post("/v1/completions", {"prompt": prompt, "max_tokens": 1, "stream": True}) as r:
            for line in r:
                if line.strip() == b"data: [DONE]":
                    break
        done["s"] = time.time() - t0

    th = threading.Thread(target=long_request)
    th.start()
    time.sleep(0.2)
    lat = []
    while "s" not in done:
        t0 = time.time()
        post("/v1/chat/completions", small).read()
        if "s" not in done:
            lat.append(time.time() - t0)
    th.join()
    print(f"long prompt: {a.tokens} tokens, prefill + 1 token in {done['s']:.2f} s")
    if lat:
        print(f"small requests during it: {len(lat)}, median {statistics.median(lat) * 1e3:.0f} ms, "
              f"worst {max(lat) * 1e3:.0f} ms")
    else:
        print("small requests during it: none finished before the long prompt")
finally:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
