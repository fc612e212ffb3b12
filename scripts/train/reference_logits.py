#!/usr/bin/env python3
"""Writes what hf_compare.py checks: `moe logits` of a few prompts for a checkpoint, into CHECKPOINT/moe-logits/
(prompts.json with the prompts and their token ids from `moe tokenize`, one safetensors file per prompt).

  python3 scripts/train/reference_logits.py CHECKPOINT [--moe build/moe]
"""
import argparse
import json
import os
import subprocess

PROMPTS = [
    "This program is free software; you can redistribute it",
    "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND",
    "Licensor hereby grants You a worldwide, royalty-free, non-exclusive license",
    "You may not use this file except in compliance with the License.",
]

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--moe", default="build-cpu/src/cli/moe")
a = ap.parse_args()
out = os.path.join(a.checkpoint, "moe-logits")
os.makedirs(out, exist_ok=True)
entries = []
for i, prompt in enumerate(PROMPTS):
    ids = json.loads(subprocess.run([a.moe, "tokenize", "--tokenizer", a.checkpoint], input=json.dumps(prompt) + "\n",
                                    capture_output=True, text=True, check=True).stdout)
    name = f"prompt-{i}.safetensors"
    subprocess.run([a.moe, "logits", "--model", a.checkpoint, "--tokens", ",".join(map(str, ids)),
                    "--out", os.path.join(out, name)], check=True, capture_output=True)
    entries.append({"prompt": prompt, "ids": ids, "file": name})
json.dump(entries, open(os.path.join(out, "prompts.json"), "w"), indent=1)
print(f"{len(entries)} prompts -> {out}")
