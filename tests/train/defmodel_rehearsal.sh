#!/usr/bin/env bash
# The default model's recipe end to end on the CPU with a tiny config and the miniature bundle (seconds), so the
# recipe cannot rot: tokenize with FIM, pre-train, SFT, evaluate, sample, shard, card; then check what it wrote.
#   tests/train/defmodel_rehearsal.sh MOE_BINARY
set -euo pipefail
MOE=$1
OUT=$(mktemp -d /tmp/defmodel-rehearsal.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
scripts/train/default_model.sh --moe "$MOE" --device cpu --out "$OUT/run" --bundle tests/data/defmodel-mini \
  --config tests/data/defmodel-mini/config.json --steps 10 --sft-steps 5 --seq-len 64 --batch 4 --sft-batch 4 \
  --threads 2 --val-fraction 0.1 --sample-tokens 8
mkdir "$OUT/model"
tar -C "$OUT/model" -xf "$OUT/run/moe-tiny.tar"
cp "$OUT"/run/model-*.safetensors "$OUT/model/"
python3 - "$OUT/model" <<'PY'
import json, math, os, re, sys
d = sys.argv[1]
for f in ["README.md", "loss.csv", "loss.svg", "config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors.index.json", "samples.json", "logs/pretrain.jsonl", "logs/sft.jsonl", "logs/run.txt"]:
    assert os.path.exists(os.path.join(d, f)), f"missing {f}"
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
for f in set(index["weight_map"].values()):
    assert os.path.getsize(os.path.join(d, f)) < 16_000_000, f
rows = [json.loads(l) for l in open(os.path.join(d, "logs/pretrain.jsonl")) if l.startswith("{")]
steps = [r for r in rows if "loss" in r and "val_loss" not in r]
vals = [r for r in rows if "val_main_ce" in r]
assert len(steps) == 10 and vals, (len(steps), len(vals))
card = open(os.path.join(d, "README.md")).read()
ppl = f"{math.exp(vals[-1]['val_main_ce']):.2f}"
assert f"**{ppl}**" in card, f"the card does not give the logged validation perplexity {ppl}"
assert "{" not in re.sub(r"```.*?```", "", card, flags=re.S), "an unfilled field in the card"
csv = open(os.path.join(d, "loss.csv")).read().splitlines()
sft = [json.loads(l) for l in open(os.path.join(d, "logs/sft.jsonl")) if l.startswith("{")]
assert len(csv) == 1 + sum(1 for r in rows + sft if "loss" in r or "val_loss" in r), len(csv)
samples = json.load(open(os.path.join(d, "samples.json")))
assert len(samples) >= 6 and all("output" in s for s in samples)
print(f"rehearsal: card ok (validation perplexity {ppl}), {len(set(index['weight_map'].values()))} shard(s)")
PY
"$MOE" generate --model "$OUT/model" --prompt "The kernel" --max-new-tokens 4 --threads 2
echo "defmodel_rehearsal: 1 passed, 0 failed"
