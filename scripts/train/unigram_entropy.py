#!/usr/bin/env python3
"""The unigram baseline of a tokenize-corpus directory: the cross-entropy (nats per token) on the validation split
of token frequencies counted on the training split (add-one smoothed over the manifest's vocabulary), and the
training split's own unigram entropy. A model that learned anything beyond token frequencies beats both.

  python3 scripts/train/unigram_entropy.py DATA_DIR
"""
import array
import collections
import json
import math
import os
import sys

d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))


def ids(split):
    for s in m[split]:
        raw = open(os.path.join(d, s["file"]), "rb").read()
        assert raw[:8] == b"MOETOK01", s["file"]
        a = array.array("i")
        a.frombytes(raw[16:])
        yield from a


train = collections.Counter(ids("train"))
n = sum(train.values())
V = m["vocab_size"]
h_train = -sum(c / n * math.log(c / n) for c in train.values())
val = list(ids("val"))
ce = -sum(math.log((train[t] + 1) / (n + V)) for t in val) / max(1, len(val))
print(json.dumps({"train_tokens": n, "val_tokens": len(val), "train_unigram_entropy_nats": h_train,
                  "val_unigram_cross_entropy_nats": ce}))
