#!/usr/bin/env python3
"""Sample outputs of a model for its card: continuations of a few prompts (prose, Python, a fill-in-the-middle
prompt in PSM form) and chat replies to a few questions (the prompt rendered with the model's chat template by
`moe chat-template`), each through `moe generate` on the CPU, sampled with SAMPLING (a fixed seed: the same
output on every run; greedy decoding makes a model this small repeat itself within a few words).

  samples.py --moe build/moe --model DIR --out samples.json [--max-new-tokens 60] [--threads 0]
"""
import argparse
import json
import subprocess

PROMPTS = [
    ("text", "The kernel"),
    ("text", "Debian is"),
    ("code", "def fibonacci(n):\n"),
    ("code", "import os\n\n\ndef list_files(path):\n    \"\"\""),
    ("fim", "<｜fim▁begin｜>def add(a, b):\n    <｜fim▁hole｜>\n\n\nprint(add(2, 3))\n<｜fim▁end｜>"),
]
SAMPLING = ["--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "1"]
QUESTIONS = [
    "What does `os.path.join` do?",
    "How do I remove duplicate elements from a list or array?",
    "What is Debian?",
]


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    gen = [a.moe, "generate", "--model", a.model, "--device", "cpu", "--max-new-tokens", str(a.max_new_tokens)]
    gen += SAMPLING
    if a.threads:
        gen += ["--threads", str(a.threads)]
    out = []
    for kind, prompt in PROMPTS:
        out.append({"kind": kind, "prompt": prompt, "output": run(gen + ["--prompt", prompt]).rstrip("\n")})
    for q in QUESTIONS:
        rendered = subprocess.run([a.moe, "chat-template", "--model", a.model, "--add-generation-prompt"],
                                  input=json.dumps([{"role": "user", "content": q}]), check=True,
                                  capture_output=True, text=True).stdout.rstrip("\n")
        out.append({"kind": "chat", "prompt": q, "output": run(gen + ["--prompt", rendered]).rstrip("\n")})
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
