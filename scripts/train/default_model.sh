#!/usr/bin/env bash
# The default model's whole recipe: tokenize (with FIM on code) -> pre-train (MTP, aux-loss-free balancing) ->
# SFT on the chat set -> validation perplexity, samples -> BF16 shards + model card. Run from the repository root
# with a built moe and the data bundle of scripts/train/build_corpus.sh:
#
#   scripts/train/default_model.sh --out DIR [--device cuda|cpu] [--minutes M | --steps N] [--sft-steps K]
#       [--moe build-gpu/src/cli/moe] [--bundle .corpus] [--model-dir models/moe-tiny] [--config CONFIG]
#       [--seq-len 256] [--batch 64] [--lr 2e-3] [--threads 0] [--val-fraction 0.01] [--fim-rate 0.5]
#
# --minutes M: pre-training gets 85 % of M at the tokens/s `moe train-bench` measures for this config first (the
# rest is SFT, evaluation and packaging); --steps N fixes the step count instead. The tokenizer is the committed
# one in --model-dir (trained on the same corpus by `moe train-tokenizer`), so ids agree with the shipped model.
#
# MOE_COMMIT, if set, is the commit recorded in the card (a GPU machine given a copy of the tree may hold a stale
# .git).
# Writes DIR/ : model-0000k-of-0000n.safetensors (BF16 shards < 16 MB) and moe-tiny.tar (everything else of the
# model directory: config.json, model.safetensors.index.json, tokenizer files, README.md (the card), loss.csv,
# loss.svg, logs/ with every JSON line of every step, samples.txt, the corpus manifest). The lead unpacks both into
# models/moe-tiny/. DIR/work/ holds the run (checkpoints, shards); pass --keep-work to leave it.
set -euo pipefail
cd "$(dirname "$0")/../.."

MOE=build-gpu/src/cli/moe; DEVICE=cuda; OUT=; MINUTES=; STEPS=; SFT_STEPS=; BUNDLE=.corpus
MODEL_DIR=models/moe-tiny; CONFIG=; SEQ=256; BATCH=64; LR=2e-3; THREADS=0; VAL_FRACTION=0.01; FIM_RATE=0.5
SFT_BATCH=32; SAMPLE_TOKENS=60; KEEP_WORK=0; INIT_STD=0.02; SEED=1
while [ $# -gt 0 ]; do
  case "$1" in
    --moe) MOE=$2; shift 2;; --device) DEVICE=$2; shift 2;; --out) OUT=$2; shift 2;;
    --minutes) MINUTES=$2; shift 2;; --steps) STEPS=$2; shift 2;; --sft-steps) SFT_STEPS=$2; shift 2;;
    --bundle) BUNDLE=$2; shift 2;; --model-dir) MODEL_DIR=$2; shift 2;; --config) CONFIG=$2; shift 2;;
    --seq-len) SEQ=$2; shift 2;; --batch) BATCH=$2; shift 2;; --sft-batch) SFT_BATCH=$2; shift 2;;
    --lr) LR=$2; shift 2;; --threads) THREADS=$2; shift 2;;
    --val-fraction) VAL_FRACTION=$2; shift 2;; --fim-rate) FIM_RATE=$2; shift 2;; --seed) SEED=$2; shift 2;;
    --sample-tokens) SAMPLE_TOKENS=$2; shift 2;; --keep-work) KEEP_WORK=1; shift;;
    *) echo "default_model.sh: unknown argument $1" >&2; exit 2;;
  esac
done
[ -n "$OUT" ] || { echo "default_model.sh: --out DIR is required" >&2; exit 2; }
[ -n "$MINUTES$STEPS" ] || { echo "default_model.sh: give --minutes M or --steps N" >&2; exit 2; }
[ -x "$MOE" ] || { echo "default_model.sh: $MOE: not built" >&2; exit 1; }
CONFIG=${CONFIG:-$MODEL_DIR/config.json}
for f in "$BUNDLE/corpus.jsonl.xz" "$BUNDLE/sft.jsonl.xz" "$BUNDLE/manifest.json" "$MODEL_DIR/tokenizer.json" "$CONFIG"; do
  [ -f "$f" ] || { echo "default_model.sh: $f: missing (scripts/train/build_corpus.sh makes the bundle)" >&2; exit 1; }
done
NAME=$(basename "$MODEL_DIR")
PY=python3  # the GPU machine may have only PyTorch's venv
command -v python3 >/dev/null || PY=/opt/torch/.venv/bin/python
WORK=$OUT/work; LOGS=$WORK/pkg/logs
rm -rf "$WORK"; mkdir -p "$WORK/pkg" "$LOGS"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOGS/recipe.log"; }
{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: ${MOE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "device: $DEVICE"; echo "host: $(nproc) cores"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^/gpu: /'
  echo "val_fraction: $VAL_FRACTION"
  echo "args:${MINUTES:+ --minutes $MINUTES}${STEPS:+ --steps $STEPS}${SFT_STEPS:+ --sft-steps $SFT_STEPS} --seq-len $SEQ --batch $BATCH --lr $LR --fim-rate $FIM_RATE --seed $SEED"
} > "$LOGS/run.txt"

log "tokenize (FIM rate $FIM_RATE on code, validation $VAL_FRACTION)"
xz -dc "$BUNDLE/corpus.jsonl.xz" > "$WORK/corpus.jsonl"
xz -dc "$BUNDLE/sft.jsonl.xz" > "$WORK/sft.jsonl"
"$MOE" tokenize-corpus --tokenizer "$MODEL_DIR" --out "$WORK/pt-data" --val-fraction "$VAL_FRACTION" \
  --fim-rate "$FIM_RATE" --fim-seed "$SEED" --threads "$THREADS" "$WORK/corpus.jsonl" | tee "$LOGS/tokenize.txt"
"$MOE" tokenize-corpus --sft --tokenizer "$MODEL_DIR" --out "$WORK/sft-data" --val-fraction 0.05 \
  --threads "$THREADS" "$WORK/sft.jsonl" | tee "$LOGS/tokenize-sft.txt"
"$PY" -c "import json,sys; print(sum(len(json.loads(l)['text'].encode()) for l in open(sys.argv[1]) if l.strip()))" \
  "$WORK/corpus.jsonl" > "$LOGS/corpus_text_bytes.txt"
rm -f "$WORK/corpus.jsonl"

if [ -z "$STEPS" ]; then
  log "measuring tokens/s (train-bench) for a $MINUTES-minute budget"
  "$MOE" train-bench --device "$DEVICE" --config "$CONFIG" --seq-len "$SEQ" --batch "$BATCH" --steps 3 \
    --threads "$THREADS" | tail -1 | tee "$LOGS/train-bench.json"
  STEPS=$("$PY" -c "import json,sys; b=json.load(open(sys.argv[1])); print(max(10, int(float(sys.argv[2])*60*0.85*b['tokens_per_s']/(int(sys.argv[3])*int(sys.argv[4])))))" \
    "$LOGS/train-bench.json" "$MINUTES" "$BATCH" "$SEQ")
fi
VAL_EVERY=$(( STEPS / 10 > 0 ? STEPS / 10 : 1 )); STEPS=$(( VAL_EVERY * 10 ))  # the last step is evaluated
WARMUP=$(( STEPS / 20 > 1 ? STEPS / 20 : 1 )); DECAY_START=$(( STEPS * 8 / 10 ))
log "pre-train: $STEPS steps of $BATCH x $SEQ tokens (warm-up $WARMUP, constant to $DECAY_START, then cosine)"
"$MOE" train --device "$DEVICE" --config "$CONFIG" --data "$WORK/pt-data" --out "$WORK/pt-run" --steps "$STEPS" \
  --seq-len "$SEQ" --batch "$BATCH" --lr "$LR" --warmup "$WARMUP" --decay-start "$DECAY_START" \
  --min-lr "$("$PY" -c "print($LR/10)")" --init-std "$INIT_STD" --seed "$SEED" --val-every "$VAL_EVERY" \
  --val-batches 8 --mtp-lambda 0.3 --seq-aux-alpha 1e-4 --bias-gamma 1e-3 --threads "$THREADS" \
  > "$LOGS/pretrain.jsonl"
PT=$WORK/pt-run/$(cat "$WORK/pt-run/latest")

if [ -z "$SFT_STEPS" ]; then  # two epochs of the chat set
  SFT_STEPS=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); t=sum(s['tokens'] for s in m['train']); print(max(10, 2*t//(int(sys.argv[2])*int(sys.argv[3]))))" \
    "$WORK/sft-data/manifest.json" "$SFT_BATCH" "$SEQ")
fi
SFT_VAL=$(( SFT_STEPS / 5 > 0 ? SFT_STEPS / 5 : 1 )); SFT_STEPS=$(( SFT_VAL * 5 ))
log "SFT: $SFT_STEPS steps of $SFT_BATCH x $SEQ tokens from $PT"
"$MOE" train --device "$DEVICE" --init "$PT" --data "$WORK/sft-data" --out "$WORK/sft-run" --steps "$SFT_STEPS" \
  --seq-len "$SEQ" --batch "$SFT_BATCH" --lr "$("$PY" -c "print($LR/4)")" --warmup "$(( SFT_STEPS / 10 + 1 ))" \
  --min-lr "$("$PY" -c "print($LR/40)")" --seed "$SEED" --val-every "$SFT_VAL" --val-batches 4 \
  --save-dtype bf16 --threads "$THREADS" > "$LOGS/sft.jsonl"
FINAL=$WORK/sft-run/$(cat "$WORK/sft-run/latest")

# `moe train` evaluates; one step at a rate of 1e-30 (the trainer wants a positive rate; the update is below every
# weight's float32 ulp), no weight decay and no bias update leaves the model as it is.
log "validation of the final model on the pre-training text (its own held-out split)"
"$MOE" train --device "$DEVICE" --init "$FINAL" --data "$WORK/pt-data" --out "$WORK/eval-run" --steps 1 \
  --seq-len "$SEQ" --batch "$BATCH" --lr 1e-30 --weight-decay 0 --bias-gamma 0 --val-every 1 --val-batches 8 \
  --threads "$THREADS" \
  > "$LOGS/final-eval.jsonl"

log "package: BF16 shards under 16 MB"
"$PY" scripts/train/shard_safetensors.py "$FINAL/model.safetensors" "$WORK/pkg" --max-bytes 15000000
cp "$FINAL/config.json" "$FINAL/tokenizer.json" "$FINAL/tokenizer_config.json" "$WORK/pkg/"
cp "$BUNDLE/manifest.json" "$WORK/pkg/corpus-manifest.json"
# The sampling the card recommends (greedy decoding of a model this small repeats itself), as HF's
# generation_config.json: `moe generate/chat/serve` and transformers' generate() default to it.
cat > "$WORK/pkg/generation_config.json" <<'JSON'
{"do_sample": true, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2}
JSON

log "samples (seeded sampling, on the CPU build's decoder: the shipped path)"
"$PY" scripts/train/samples.py --moe "$MOE" --model "$WORK/pkg" --out "$WORK/pkg/samples.json" --threads "$THREADS" \
  --max-new-tokens "$SAMPLE_TOKENS"

if [ -x /opt/torch/.venv/bin/python ]; then
  log "HF transformers loads it (DeepseekV3ForCausalLM) and agrees with moe's logits"
  rm -rf "$WORK/hf"; cp -r "$WORK/pkg" "$WORK/hf"
  ("$PY" scripts/train/reference_logits.py "$WORK/hf" --moe "$MOE" && \
   /opt/torch/.venv/bin/python scripts/train/hf_compare.py "$WORK/hf" --tol 2e-2) > "$LOGS/hf_check.txt" 2>&1 \
    && echo "hf_check: pass" >> "$LOGS/run.txt" || echo "hf_check: FAIL (logs/hf_check.txt)" >> "$LOGS/run.txt"
fi
log "model card"
echo "seconds: $(( $(date +%s) - T0 ))" >> "$LOGS/run.txt"
"$PY" scripts/train/model_card.py --pkg "$WORK/pkg" --name "$NAME"
log "done: $OUT"
mkdir -p "$OUT"
mv "$WORK"/pkg/model-*.safetensors "$OUT/"
tar -C "$WORK/pkg" -cf "$OUT/$NAME.tar" .
[ "$KEEP_WORK" = 1 ] || rm -rf "$WORK"
ls -l "$OUT"
