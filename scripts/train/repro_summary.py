#!/usr/bin/env python3
"""The summary of scripts/train/repro.sh's runs (standard library only: it runs on the GPU machine too).

    repro_summary.py DIR > DIR/summary.json

DIR/runs/NAME/{train.jsonl, accept.txt, run.txt} -> one JSON object:
  runs.NAME: steps, tokens, median tokens/s, seconds; the last step's and the last 5 % of steps' mean losses; every
    validation point (val_loss, val_main_ce, val_mtp_ce, val_maxvio per layer over the summed loads of the held-out
    batches, val_maxvio_batch the mean of each batch's); MaxVio over training (mean over the steps, per layer);
    MTP acceptance (accepted / drafted of greedy speculative decoding; and teacher-forced on held-out text,
    repro_accept_tf.py's accept_tf.json).
    "Main layers" are the MoE layers of the main model (keys below num_hidden_layers); the MTP module's layer
    (key num_hidden_layers) is reported apart: with --mtp-lambda 0 it is untrained.
  comparisons: balance (base vs auxloss), mtp (base vs nomtp), fp8 (bf16 vs fp8), each only when both ran.
MaxVio is DeepSeek-V3's: max_i load_i / mean(load) - 1 over a batch.
"""
import glob
import json
import os
import re
import statistics
import sys


def read_jsonl(path):
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def main_keys(d, n_layers):
    return sorted((k for k in d if int(k) < n_layers), key=int)


def summarize_run(rdir):
    run_txt = open(os.path.join(rdir, "run.txt")).read() if os.path.exists(os.path.join(rdir, "run.txt")) else ""
    cfg = re.search(r"--config (\S+)", run_txt)
    n_layers = json.load(open(cfg.group(1)))["num_hidden_layers"] if cfg and os.path.exists(cfg.group(1)) else None
    secs = re.search(r"seconds: (\d+)", run_txt)
    lines = read_jsonl(os.path.join(rdir, "train.jsonl")) if os.path.exists(os.path.join(rdir, "train.jsonl")) else []
    steps = [x for x in lines if "loss" in x]
    vals = [x for x in lines if "val_loss" in x]
    r = {"command": run_txt.splitlines()[0] if run_txt else None, "seconds": int(secs.group(1)) if secs else None,
         "num_hidden_layers": n_layers, "steps": len(steps)}
    if not steps:
        return r
    if n_layers is None:  # the MTP layer is the highest key
        n_layers = max(int(k) for k in steps[0]["maxvio"])
        r["num_hidden_layers"] = n_layers
    tail = steps[-max(1, len(steps) // 20):]
    r["tokens"] = steps[-1].get("tokens")
    r["tokens_per_s_median"] = statistics.median(x["tokens_per_s"] for x in steps[1:] or steps)
    r["last_step"] = {k: steps[-1][k] for k in ("step", "loss", "main_ce", "mtp_ce", "seq_aux")}
    r["last_5pct_mean"] = {k: mean(x[k] for x in tail) for k in ("loss", "main_ce", "mtp_ce", "seq_aux")}
    layers = sorted(steps[0]["maxvio"], key=int)
    r["train_maxvio_mean"] = {k: mean(x["maxvio"][k] for x in steps) for k in layers}
    r["train_maxvio_last_5pct"] = {k: mean(x["maxvio"][k] for x in tail) for k in layers}
    mk = main_keys(layers, n_layers)
    r["train_maxvio_mean_main"] = mean(r["train_maxvio_mean"][k] for k in mk)
    r["train_maxvio_last_5pct_main"] = mean(r["train_maxvio_last_5pct"][k] for k in mk)
    r["val"] = vals
    if vals:
        v = vals[-1]
        r["final_val"] = {k: v[k] for k in ("step", "val_loss", "val_main_ce", "val_mtp_ce")}
        if "val_maxvio" in v:
            r["final_val"]["val_maxvio"] = v["val_maxvio"]
            r["final_val"]["val_maxvio_batch"] = v["val_maxvio_batch"]
            r["final_val"]["val_maxvio_main"] = mean(v["val_maxvio"][k] for k in main_keys(v["val_maxvio"], n_layers))
            r["final_val"]["val_maxvio_batch_main"] = mean(
                v["val_maxvio_batch"][k] for k in main_keys(v["val_maxvio_batch"], n_layers))
    acc = os.path.join(rdir, "accept.txt")
    if os.path.exists(acc):
        a = d = n = 0
        for line in open(acc):
            m = re.match(r"speculative: (\d+) main-model passes, (\d+) of (\d+) drafts accepted", line)
            if m:
                a, d, n = a + int(m.group(2)), d + int(m.group(3)), n + 1
        r["acceptance"] = {"prompts": n, "accepted": a, "drafted": d, "rate": a / d if d else None}
    tf = os.path.join(rdir, "accept_tf.json")
    if os.path.exists(tf) and os.path.getsize(tf) > 0:
        r["acceptance_teacher_forced"] = json.load(open(tf))
    return r


def rel(a, b):
    return (a - b) / b if a is not None and b else None


def compare(runs):
    c = {}
    if runs.get("base", {}).get("final_val") and runs.get("auxloss", {}).get("final_val"):
        b, x = runs["base"], runs["auxloss"]
        c["balance"] = {
            "val_main_ce": {"aux_free": b["final_val"]["val_main_ce"], "aux_loss": x["final_val"]["val_main_ce"]},
            "val_maxvio_main": {"aux_free": b["final_val"].get("val_maxvio_main"),
                                "aux_loss": x["final_val"].get("val_maxvio_main")},
            "val_maxvio_batch_main": {"aux_free": b["final_val"].get("val_maxvio_batch_main"),
                                      "aux_loss": x["final_val"].get("val_maxvio_batch_main")},
            "train_maxvio_mean_main": {"aux_free": b["train_maxvio_mean_main"], "aux_loss": x["train_maxvio_mean_main"]},
            "train_maxvio_last_5pct_main": {"aux_free": b["train_maxvio_last_5pct_main"],
                                            "aux_loss": x["train_maxvio_last_5pct_main"]},
        }
    if runs.get("base", {}).get("final_val") and runs.get("nomtp", {}).get("final_val"):
        b, x = runs["base"], runs["nomtp"]
        c["mtp"] = {
            "val_main_ce": {"mtp": b["final_val"]["val_main_ce"], "no_mtp": x["final_val"]["val_main_ce"]},
            "val_main_ce_rel_mtp_vs_no_mtp": rel(b["final_val"]["val_main_ce"], x["final_val"]["val_main_ce"]),
            "acceptance": {"mtp": b.get("acceptance"), "no_mtp": x.get("acceptance")},
            "acceptance_teacher_forced": {"mtp": b.get("acceptance_teacher_forced"),
                                          "no_mtp": x.get("acceptance_teacher_forced")},
        }
    if runs.get("bf16", {}).get("steps") and runs.get("fp8", {}).get("steps"):
        b, x = runs["bf16"], runs["fp8"]
        # The per-step relative difference of the training loss (same data in the same order: step k sees the same
        # batch in both runs), and over windows of 1 % of the steps (a step's loss is noisy at the 1e-3 level).
        lb, lx = ([s["loss"] for s in read_jsonl(os.path.join(r, "train.jsonl")) if "loss" in s]
                  for r in (b["dir"], x["dir"]))
        n = min(len(lb), len(lx))
        d = [rel(lx[i], lb[i]) for i in range(n)]
        w = max(1, n // 100)
        win = [rel(mean(lx[i:i + w]), mean(lb[i:i + w])) for i in range(0, n - w + 1, w)]
        c["fp8"] = {
            "steps": n,
            "train_loss_rel_last_5pct": rel(x["last_5pct_mean"]["loss"], b["last_5pct_mean"]["loss"]),
            "train_loss_rel_max_abs_window_second_half": max(abs(v) for v in win[len(win) // 2:]) if win else None,
            "train_loss_rel_max_abs_step_second_half": max(abs(v) for v in d[n // 2:]) if d else None,
            "window_steps": w,
        }
        if b.get("final_val") and x.get("final_val"):
            c["fp8"]["val_loss_rel"] = rel(x["final_val"]["val_loss"], b["final_val"]["val_loss"])
            c["fp8"]["val_main_ce_rel"] = rel(x["final_val"]["val_main_ce"], b["final_val"]["val_main_ce"])
            c["fp8"]["within_0_25pct"] = abs(c["fp8"]["val_loss_rel"]) <= 0.0025 and \
                abs(c["fp8"]["train_loss_rel_last_5pct"]) <= 0.0025
    return c


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: repro_summary.py DIR")
    d = sys.argv[1]
    runs, skipped = {}, {}
    for rdir in sorted(glob.glob(os.path.join(d, "runs", "*"))):
        name = os.path.basename(rdir)
        if os.path.exists(os.path.join(rdir, "SKIPPED")):
            skipped[name] = open(os.path.join(rdir, "SKIPPED")).read().strip()
            continue
        runs[name] = summarize_run(rdir)
        runs[name]["dir"] = rdir
    env = {}
    for f in sorted(glob.glob(os.path.join(d, "env-*.txt"))):
        env[os.path.basename(f)] = dict(line.split(": ", 1) for line in open(f).read().splitlines() if ": " in line)
    out = {"env": env, "runs": runs, "skipped": skipped, "comparisons": compare(runs)}
    for r in runs.values():
        r["dir"] = os.path.relpath(r["dir"], d)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
