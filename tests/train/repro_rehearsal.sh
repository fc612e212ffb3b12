#!/usr/bin/env bash
# The reproductions' driver (scripts/train/repro.sh) and its summary end to end on the CPU with the miniature
# bundle and config (seconds; the plotter needs matplotlib and is left out), so the driver cannot rot before its
# GPU slot: tokenize, five runs' recipes (fp8 is skipped on a moe without `--gemm fp8`), validation MaxVio, MTP
# acceptance; then check what the summary says against the JSON lines and invariants.
#   tests/train/repro_rehearsal.sh MOE_BINARY
set -euo pipefail
MOE=$1
OUT=$(mktemp -d /tmp/repro-rehearsal.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
scripts/train/repro.sh --moe "$MOE" --device cpu --out "$OUT" --runs base,auxloss,nomtp,bf16,fp8 \
  --bundle tests/data/defmodel-mini --config tests/data/defmodel-mini/config.json --steps 6 --seq-len 32 \
  --batch 4 --val-points 2 --val-batches 2 --val-fraction 0.1 --threads 2 --accept-prompts 3 \
  --accept-prompt-tokens 12 --accept-new-tokens 6 --accept-tf-tokens 16
python3 - "$OUT" <<'PY'
import json, os, sys
d = sys.argv[1]
s = json.load(open(os.path.join(d, "summary.json")))
runs = s["runs"]
assert set(runs) == {"base", "auxloss", "nomtp", "bf16"}, sorted(runs)
fp8_skipped = "fp8" in s["skipped"]
for name, r in runs.items():
    assert r["steps"] == 6, (name, r["steps"])
    assert [v["step"] for v in r["val"]] == [3, 6], (name, r["val"])
    for v in r["val"]:
        for k in ("val_maxvio", "val_maxvio_batch"):
            assert v[k] and all(0 <= x <= 4 - 1 for x in v[k].values()), (name, k, v[k])  # 4 experts: <= E - 1
        # Every validation batch has the same tokens, so the summed loads' MaxVio is at most the batches' mean.
        for layer, g in v["val_maxvio"].items():
            assert g <= v["val_maxvio_batch"][layer] + 1e-12, (name, layer, g, v["val_maxvio_batch"][layer])
    a = r["acceptance"]
    assert a["prompts"] == 3 and a["drafted"] > 0 and 0 <= a["accepted"] <= a["drafted"], (name, a)
    tf = r["acceptance_teacher_forced"]  # 3 sequences of 16 tokens: positions 0..13 have a draft and a verdict
    assert tf["sequences"] == 3 and tf["positions"] == 3 * 14 and 0 <= tf["accepted"] <= tf["positions"], (name, tf)
# Same seed, same data: base and its twin bf16 are the same run, bit for bit on the CPU.
assert [v["val_loss"] for v in runs["base"]["val"]] == [v["val_loss"] for v in runs["bf16"]["val"]]
# The knobs reached the trainer: the aux-loss run's balance term is 100x base's weight on its own loads, MTP off
# leaves loss = main CE + balance term.
lines = {n: [json.loads(l) for l in open(os.path.join(d, "runs", n, "train.jsonl")) if '"loss"' in l] for n in runs}
first = lines["base"][0], lines["auxloss"][0]
assert abs(first[1]["seq_aux"] / first[0]["seq_aux"] - 100) < 1e-6, first  # step 1: same weights, same batch
for x in lines["nomtp"]:
    assert abs(x["loss"] - x["main_ce"] - x["seq_aux"]) < 1e-9 * x["loss"], x
c = s["comparisons"]
assert c["balance"]["val_main_ce"]["aux_free"] == runs["base"]["final_val"]["val_main_ce"]
assert c["mtp"]["acceptance"]["mtp"]["drafted"] > 0
assert "fp8" not in c or not fp8_skipped
print("repro rehearsal: %d runs, fp8 %s" % (len(runs), "skipped" if fp8_skipped else "ran"))
PY
echo "repro_rehearsal: 1 passed, 0 failed"
