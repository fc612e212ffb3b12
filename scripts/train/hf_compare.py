#!/usr/bin/env python3
"""A checkpoint written by `moe train`, loaded by HF transformers (DeepseekV3ForCausalLM, float32), against the
logits `moe logits` computed for the same token ids (saved beside it by the trainer's demo: moe-logits/*.safetensors
with the ids in moe-logits/prompts.json). Prints the largest absolute difference per prompt and exits 1 if any
exceeds --tol (default 1e-3: both sides float32 with different summation orders over a few layers).

  python3 scripts/train/hf_compare.py CHECKPOINT_DIR [--tol 1e-3] [--device cuda]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--tol", type=float, default=1e-3)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
a = ap.parse_args()

try:  # transformers >= 4.56 calls it dtype; older ones torch_dtype
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32)
except TypeError:
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, torch_dtype=torch.float32)
model = model.to(a.device).eval()
prompts = json.load(open(os.path.join(a.checkpoint, "moe-logits", "prompts.json")))
worst = 0.0
for p in prompts:
    want = load_file(os.path.join(a.checkpoint, "moe-logits", p["file"]))["logits"].float()
    ids = torch.tensor([p["ids"]], device=a.device)
    with torch.no_grad():
        got = model(ids).logits[0].float().cpu()
    diff = (got - want).abs().max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    worst = max(worst, diff)
    print(f"{p['prompt']!r}: {len(p['ids'])} tokens, max |hf - moe| = {diff:.3g} "
          f"(logits up to {want.abs().max().item():.3g}), argmax agreement {agree:.3f}")
print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {a.device}: "
      f"worst {worst:.3g}, tolerance {a.tol}")
sys.exit(0 if worst <= a.tol else 1)
