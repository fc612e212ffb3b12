#!/usr/bin/env python3
"""MTP acceptance on held-out text, teacher-forced (scripts/train/repro.sh's second acceptance measure).

    repro_accept_tf.py TOKENS_FILE LOGITS_DIR   -> one JSON object on stdout

TOKENS_FILE: one comma list of token ids a line (a held-out document's first tokens); LOGITS_DIR/N.safetensors:
`moe logits --mtp` of line N (0-based): logits [T, V] (row j: the main model's prediction of token j+1) and
mtp_logits [T-1, V] (row j: the MTP module's, from the main model's hidden state at j and token j+1, of token
j+2). For every j <= T-3:
  accept    argmax mtp_logits[j] == argmax logits[j+1]: the draft the main model would accept in greedy
            speculative decoding, with the text's token j+1 in place of the model's own (so the drafts are
            checked on the text's distribution, not on the model's repetitive greedy continuations);
  mtp_text  argmax mtp_logits[j] == token j+2 (the module's top-1 accuracy on the text);
  main_text argmax logits[j+1] == token j+2 (the main head's, at the same positions).
numpy when it is importable, else the standard library (slower).
"""
import json
import os
import struct
import sys
from array import array


def read_f32(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (path, name, t["dtype"])
        lo, hi = t["data_offsets"]
        out[name] = (t["shape"], b[8 + n + lo:8 + n + hi])
    return out


def argmax_rows(shape, raw):
    rows, v = shape
    try:
        import numpy as np
        return np.frombuffer(raw, dtype="<f4").reshape(rows, v).argmax(axis=1).tolist()
    except ImportError:
        a = array("f")
        a.frombytes(raw)
        res = []
        for r in range(rows):
            row = a[r * v:(r + 1) * v]
            res.append(max(range(v), key=row.__getitem__))
        return res


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: repro_accept_tf.py TOKENS_FILE LOGITS_DIR")
    lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
    pos = accept = mtp_text = main_text = seqs = 0
    for i, line in enumerate(lines):
        path = os.path.join(sys.argv[2], f"{i}.safetensors")
        if not os.path.exists(path):
            continue
        ids = [int(x) for x in line.split(",")]
        t = read_f32(path)
        main = argmax_rows(*t["logits"])
        draft = argmax_rows(*t["mtp_logits"])
        T = len(ids)
        assert len(main) == T and len(draft) == T - 1, (path, len(main), len(draft), T)
        for j in range(T - 2):
            pos += 1
            accept += draft[j] == main[j + 1]
            mtp_text += draft[j] == ids[j + 2]
            main_text += main[j + 1] == ids[j + 2]
        seqs += 1
    print(json.dumps({"sequences": seqs, "positions": pos, "accepted": accept,
                      "rate": accept / pos if pos else None,
                      "mtp_top1_on_text": mtp_text / pos if pos else None,
                      "main_top1_on_text": main_text / pos if pos else None}))


if __name__ == "__main__":
    main()
