#!/usr/bin/env python3
"""Writes the default model's card (README.md), loss.csv and loss.svg from what its recipe logged; no figure in
the card is typed by hand: each comes from a file of the run (named beside it).

  model_card.py --pkg DIR [--name moe-tiny]

DIR (default_model.sh's package folder) holds config.json, corpus-manifest.json, samples.json and logs/:
pretrain.jsonl, sft.jsonl, final-eval.jsonl (one JSON line per step / evaluation of `moe train`), tokenize.txt,
tokenize-sft.txt, run.txt (date, commit, device, arguments), train-bench.json (when --minutes set the budget).
"""
import argparse
import json
import sys
import math
import os
import re

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samples import SAMPLING  # noqa: E402

SECTION_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_text.md")


def jsonl(path):
    rows = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def params(cfg):
    """Parameter count of a DeepSeek-V3 config as the checkpoint stores it (MTP shares embedding and head)."""
    h, v, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh, dn, dr, dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    ql, kvl = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    attn = h * ql + ql + ql * nh * (dn + dr) + h * (kvl + dr) + kvl + kvl * nh * (dn + dv) + nh * dv * h + 2 * h
    dense = 3 * h * cfg["intermediate_size"]
    e, mi = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    moe = (e + cfg["n_shared_experts"]) * 3 * h * mi + e * h + e
    k = cfg["first_k_dense_replace"]
    mtp = cfg.get("num_nextn_predict_layers", 0) * (attn + moe + 2 * h * h + 3 * h)
    total = k * (attn + dense) + (L - k) * (attn + moe) + mtp + 2 * v * h + h
    active = total - (L - k + (1 if mtp else 0)) * (e - cfg["num_experts_per_tok"]) * 3 * h * mi
    return total, active, 2 * v * h


def svg(series, title):
    """A line chart (loss against step) as SVG: one polyline per (name, colour, [(x, y)])."""
    w, hgt, pad = 640, 360, 48
    pts = [p for _, _, s in series for p in s]
    if not pts:
        return "<svg xmlns='http://www.w3.org/2000/svg'/>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda x: pad + (x - x0) / (x1 - x0) * (w - 2 * pad)  # noqa: E731
    sy = lambda y: hgt - pad - (y - y0) / (y1 - y0) * (hgt - 2 * pad)  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{hgt}' font-family='sans-serif' font-size='12'>",
           f"<rect width='{w}' height='{hgt}' fill='white'/>",
           f"<text x='{w / 2}' y='18' text-anchor='middle'>{title}</text>",
           f"<line x1='{pad}' y1='{hgt - pad}' x2='{w - pad}' y2='{hgt - pad}' stroke='black'/>",
           f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{hgt - pad}' stroke='black'/>",
           f"<text x='{pad}' y='{hgt - pad + 16}'>{x0:g}</text>",
           f"<text x='{w - pad}' y='{hgt - pad + 16}' text-anchor='end'>{x1:g} steps</text>",
           f"<text x='{pad - 4}' y='{hgt - pad}' text-anchor='end'>{y0:.2f}</text>",
           f"<text x='{pad - 4}' y='{pad + 4}' text-anchor='end'>{y1:.2f}</text>"]
    for k, (name, colour, s) in enumerate(series):
        if s:
            p = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{p}'/>")
        out.append(f"<text x='{w - pad - 150}' y='{pad + 16 * k}' fill='{colour}'>{name}</text>")
    out.append("</svg>")
    return "\n".join(out)


def fmt_int(n):
    return f"{n:,}".replace(",", " ")


def build(pkg, name):
    logs = os.path.join(pkg, "logs")
    cfg = json.load(open(os.path.join(pkg, "config.json")))
    corpus = json.load(open(os.path.join(pkg, "corpus-manifest.json")))
    samples = json.load(open(os.path.join(pkg, "samples.json"))) if os.path.exists(os.path.join(pkg, "samples.json")) else []
    pt, sft, ev = (jsonl(os.path.join(logs, f)) for f in ("pretrain.jsonl", "sft.jsonl", "final-eval.jsonl"))
    run = dict(line.split(": ", 1) for line in open(os.path.join(logs, "run.txt")).read().splitlines() if ": " in line)
    tok_txt = open(os.path.join(logs, "tokenize.txt")).read()
    pt_steps = [r for r in pt if "loss" in r and "val_loss" not in r]
    pt_val = [r for r in pt if "val_loss" in r]
    sft_steps = [r for r in sft if "loss" in r and "val_loss" not in r]
    sft_val = [r for r in sft if "val_loss" in r]
    if not pt_steps or not pt_val:
        raise SystemExit(f"model_card: {logs}/pretrain.jsonl has no training or validation lines")

    # loss.csv: every step of both phases
    with open(os.path.join(pkg, "loss.csv"), "w") as f:
        f.write("phase,step,tokens,loss,main_ce,mtp_ce,val_loss,val_main_ce,lr,grad_norm\n")
        for phase, rows in (("pretrain", pt), ("sft", sft)):
            for r in rows:
                if "loss" in r or "val_loss" in r:
                    f.write(",".join(str(r.get(k, "")) for k in ("step", "tokens", "loss", "main_ce", "mtp_ce", "val_loss",
                                                                  "val_main_ce", "lr", "grad_norm")).join([phase + ",", "\n"]))
    with open(os.path.join(pkg, "loss.svg"), "w") as f:
        f.write(svg([("train main CE", "#1f77b4", [(r["step"], r["main_ce"]) for r in pt_steps]),
                     ("validation main CE", "#d62728", [(r["step"], r["val_main_ce"]) for r in pt_val]),
                     ("train MTP CE", "#aaaaaa", [(r["step"], r["mtp_ce"]) for r in pt_steps])],
                    f"{name}: pre-training cross-entropy (nats/token)"))

    total, active, emb = params(cfg)
    pt_tokens = pt_steps[-1]["tokens"]
    sft_tokens = sft_steps[-1].get("tokens", 0) if sft_steps else 0
    m = re.search(r"train: (\d+) documents, (\d+) tokens.*?val: (\d+) documents, (\d+) tokens", tok_txt)
    if not m:
        raise SystemExit(f"model_card: {logs}/tokenize.txt has no document and token counts")
    corpus_train_tokens, corpus_val_tokens = int(m.group(2)), int(m.group(4))
    corpus_docs_tokenized = int(m.group(1)) + int(m.group(3))
    fim = re.search(r"fim: (\d+) of (\d+) training code documents in PSM form \(rate ([\d.e-]+)", tok_txt)
    val_pt = pt_val[-1]["val_main_ce"]
    val_final = [r for r in ev if "val_main_ce" in r]
    val_final = val_final[-1]["val_main_ce"] if val_final else float("nan")
    bench = {}
    if os.path.exists(os.path.join(logs, "train-bench.json")):
        bench = json.loads(open(os.path.join(logs, "train-bench.json")).read().strip().splitlines()[-1])
    tps = [r["tokens_per_s"] for r in pt_steps if "tokens_per_s" in r]
    text_bytes = int(open(os.path.join(logs, "corpus_text_bytes.txt")).read().split()[0])
    # the text's own tokens: less one EOS per document and FIM's three markers per rearranged one
    text_tokens = corpus_train_tokens + corpus_val_tokens - corpus_docs_tokenized - 3 * int(fim.group(1) if fim else 0)
    bytes_per_token = text_bytes / max(1, text_tokens)
    last_vio = pt_steps[-1].get("maxvio", {})

    src_rows = "\n".join(
        f"| {s['name']} | `{s['package']}` {s['version']} | {s['licence']} | {'code' if s['code'] else 'text'} | "
        f"{s['files']} | {s['documents']} | {s['bytes'] / 1e6:.2f} |" for s in corpus["sources"])
    sample_md = "\n\n".join(
        f"**{s['kind']}** — prompt:\n\n```\n{s['prompt']}\n```\n\noutput:\n\n```\n{s['output']}\n```" for s in samples)
    text = open(SECTION_TEXT).read()
    fields = {
        "name": name, "date": run.get("date", "?"), "commit": run.get("commit", "?"), "device": run.get("device", "?"),
        "gpu": run.get("gpu", "none"), "args": run.get("args", ""), "seconds": run.get("seconds", "?"),
        "params": fmt_int(total), "params_m": f"{total / 1e6:.2f}", "active_m": f"{active / 1e6:.2f}",
        "emb_m": f"{emb / 1e6:.2f}", "hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
        "dense": cfg["first_k_dense_replace"], "experts": cfg["n_routed_experts"], "topk": cfg["num_experts_per_tok"],
        "shared": cfg["n_shared_experts"], "heads": cfg["num_attention_heads"], "vocab": cfg["vocab_size"],
        "kv_lora": cfg["kv_lora_rank"], "q_lora": cfg["q_lora_rank"], "mtp": cfg.get("num_nextn_predict_layers", 0),
        "corpus_mb": f"{corpus['bytes'] / 1e6:.1f}", "code_mb": f"{corpus['code_bytes'] / 1e6:.1f}",
        "corpus_docs": fmt_int(corpus["documents"]), "source_rows": src_rows,
        "corpus_tokens": fmt_int(corpus_train_tokens), "val_tokens": fmt_int(corpus_val_tokens),
        "bytes_per_token": f"{bytes_per_token:.2f}",
        "fim_docs": fim.group(1) if fim else "0", "code_docs": fim.group(2) if fim else "?",
        "fim_rate": fim.group(3) if fim else "0",
        "pt_steps": pt_steps[-1]["step"], "pt_tokens": fmt_int(pt_tokens),
        "epochs": f"{pt_tokens / max(1, corpus_train_tokens):.2f}",
        "tokens_per_param": f"{pt_tokens / total:.3g}", "val_pct": f"{100 * float(run.get('val_fraction', 0)):g}",
        "maxvio": ", ".join(f"layer {k}: {v:.3f}" for k, v in last_vio.items()) or "n/a", "sft_steps": sft_steps[-1]["step"] if sft_steps else 0,
        "sft_tokens": fmt_int(sft_tokens),
        "pt_first": f"{pt_steps[0]['main_ce']:.3f}", "pt_last": f"{pt_steps[-1]['main_ce']:.3f}",
        "val_pt": f"{val_pt:.4f}", "ppl_pt": f"{math.exp(val_pt):.2f}",
        "val_final": f"{val_final:.4f}", "ppl_final": f"{math.exp(val_final):.2f}" if val_final == val_final else "n/a",
        "val_sft": f"{sft_val[-1]['val_main_ce']:.4f}" if sft_val else "n/a",
        "ppl_sft": f"{math.exp(sft_val[-1]['val_main_ce']):.2f}" if sft_val else "n/a",
        "bits_per_byte": f"{val_pt / math.log(2) / bytes_per_token:.3f}",
        "tokens_per_s": f"{sorted(tps)[len(tps) // 2]:.0f}" if tps else "?",
        "bench_tps": f"{bench['tokens_per_s']:.0f}" if bench else "not measured (--steps given)",
        "hf_check": run.get("hf_check", "not run (no transformers on the machine that trained it)"),
        "samples": sample_md,
        "sampling": " ".join(SAMPLING),
    }
    with open(os.path.join(pkg, "README.md"), "w") as f:
        f.write(text.format(**fields))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pkg", required=True)
    ap.add_argument("--name", default="moe-tiny")
    a = ap.parse_args()
    build(a.pkg, a.name)


if __name__ == "__main__":
    main()
