#!/usr/bin/env python3
"""A small English corpus from a Debian package: the license texts of base-files (/usr/share/common-licenses),
one JSONL document per paragraph (blank-line separated, whitespace joined), for `moe tokenize-corpus`.

  python3 scripts/train/license_corpus.py OUT.jsonl [DIR]
"""
import json
import os
import re
import sys

out = sys.argv[1]
src = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/common-licenses"
docs = 0
with open(out, "w") as f:
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue  # GPL -> GPL-3 and the like: each text once
        text = open(path, encoding="utf-8", errors="replace").read()
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(para) >= 20:
                f.write(json.dumps({"text": para}) + "\n")
                docs += 1
print(f"{docs} paragraphs from {src} -> {out}")
