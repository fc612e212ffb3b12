#!/usr/bin/env python3
"""A tokenizer written by `moe train-tokenizer`, loaded by HF tokenizers and by transformers, against moe's ids.

usage: check_tokenizer_hf.py TOKENIZER_DIR TEXTS.jsonl MOE_IDS.jsonl
TEXTS.jsonl holds one JSON string per line; MOE_IDS.jsonl the ids `moe tokenize --tokenizer DIR` wrote for them.
Prints the number of texts whose ids agree with tokenizers.Tokenizer.from_file and with
transformers.AutoTokenizer (add_special_tokens=False), and the first disagreement; exits 1 on any.
"""
import json
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

tok_dir, texts_path, ids_path = sys.argv[1:4]
texts = [json.loads(l) for l in open(texts_path, encoding="utf-8") if l.strip()]
ours = [json.loads(l) for l in open(ids_path, encoding="utf-8") if l.strip()]
assert len(texts) == len(ours), (len(texts), len(ours))
hf = Tokenizer.from_file(f"{tok_dir}/tokenizer.json")
auto = AutoTokenizer.from_pretrained(tok_dir)
bad = 0
for name, enc in (("tokenizers", lambda t: hf.encode(t, add_special_tokens=False).ids),
                  ("transformers", lambda t: auto(t, add_special_tokens=False)["input_ids"])):
    agree = 0
    for t, o in zip(texts, ours):
        ids = enc(t)
        if ids == o:
            agree += 1
        elif bad < 3:
            bad += 1
            print(f"{name} differs on {t[:60]!r}: hf {ids[:20]} moe {o[:20]}")
    print(f"{name}: {agree}/{len(texts)} texts with identical ids")
    if agree != len(texts):
        bad += 1
print(f"bos {auto.bos_token!r} -> {auto.bos_token_id}, eos {auto.eos_token!r} -> {auto.eos_token_id}")
sys.exit(1 if bad else 0)
