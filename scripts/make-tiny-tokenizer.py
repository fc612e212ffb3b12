#!/usr/bin/env python3
"""Derives models/tiny-dsv3/tokenizer.json + tokenizer_config.json from models/deepseek-v3-tokenizer/.

The bundled tiny model has a vocabulary of 2048 ids, so it gets a cut-down DeepSeek-V3 tokenizer: the byte-level
BPE tokens with id < KEEP (the 256 byte tokens are among them), only the merges whose two parts and result are all
kept, and the special/chat tokens that DeepSeek's chat template uses re-added at ids KEEP.. < 2048 (<think> and
</think> included, as in R1's tokenizer). The chat template is DeepSeek-V3's. Python standard library only.

Usage: python3 scripts/make-tiny-tokenizer.py [SRC_DIR] [DST_DIR]
"""
import json
import os
import sys

KEEP = 2031
VOCAB = 2048
SRC = sys.argv[1] if len(sys.argv) > 1 else "models/deepseek-v3-tokenizer"
DST = sys.argv[2] if len(sys.argv) > 2 else "models/tiny-dsv3"

# (content, special) in the order they get ids KEEP, KEEP+1, ...
EXTRA = [
    ("<｜fim▁hole｜>", False), ("<｜fim▁begin｜>", False), ("<｜fim▁end｜>", False),
    ("<｜User｜>", False), ("<｜Assistant｜>", False), ("<|EOT|>", True),
    ("<｜tool▁calls▁begin｜>", False), ("<｜tool▁calls▁end｜>", False),
    ("<｜tool▁call▁begin｜>", False), ("<｜tool▁call▁end｜>", False),
    ("<｜tool▁outputs▁begin｜>", False), ("<｜tool▁outputs▁end｜>", False),
    ("<｜tool▁output▁begin｜>", False), ("<｜tool▁output▁end｜>", False),
    ("<｜tool▁sep｜>", False), ("<think>", False), ("</think>", False),
]


def main():
    with open(os.path.join(SRC, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    with open(os.path.join(SRC, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)

    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < KEEP}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(m)

    src_added = {a["content"]: a for a in tok["added_tokens"]}
    added = [a for a in tok["added_tokens"] if a["id"] < 3]  # BOS 0, EOS 1, pad 2 keep their ids
    next_id = KEEP
    for content, special in EXTRA:
        base = dict(src_added.get(content, {"single_word": False, "lstrip": False, "rstrip": False,
                                            "normalized": False}))
        base.update({"id": next_id, "content": content, "special": special})
        vocab[content] = next_id
        added.append(base)
        next_id += 1
    assert next_id <= VOCAB, next_id
    byte_tokens = [t for t, i in vocab.items() if len(t) == 1]
    assert len(byte_tokens) >= 256, "every byte token must be kept"

    tok["added_tokens"] = added
    tok["model"]["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    tok["model"]["merges"] = merges

    cfg["added_tokens_decoder"] = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                    "single_word", "special")} for a in added}
    cfg["model_max_length"] = 4096
    os.makedirs(DST, exist_ok=True)
    with open(os.path.join(DST, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(DST, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"{DST}: {len(vocab)} tokens (ids < {next_id}), {len(merges)} merges, {len(added)} added tokens")


if __name__ == "__main__":
    main()
