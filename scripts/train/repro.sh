#!/usr/bin/env bash
# Small-scale reproductions of three DeepSeek-V3 claims (issue 11 item 4; docs/reproductions.md). Every run trains
# the same model (--config, default models/moe-tiny's) from the same seed on the same data in the same order, for
# the same steps; only the named knobs differ:
#
#   base     auxiliary-loss-free balancing (--bias-gamma 1e-3, V3's tiny --seq-aux-alpha 1e-4), MTP on (0.3)
#   auxloss  a sequence-wise auxiliary loss alone (--bias-gamma 0, --seq-aux-alpha 1e-2), MTP on
#   nomtp    base with MTP off (--mtp-lambda 0): the MTP module stays at its initialisation
#   bf16     base again (the FP8 run's twin, trained at the same commit in the same call)
#   fp8      base with --gemm fp8; skipped with a line saying so when `moe train --help` offers no fp8
#
#   scripts/train/repro.sh --out DIR [--runs base,auxloss,nomtp] [--steps N] [--moe build-gpu/src/cli/moe]
#       [--device cuda|cpu] [--bundle .corpus] [--model-dir models/moe-tiny] [--config CONFIG] [--seq-len 256]
#       [--batch 64] [--lr 2e-3] [--val-points 10] [--val-batches 8] [--seed 1] [--threads 0]
#       [--accept-prompts 32] [--accept-prompt-tokens 48] [--accept-new-tokens 48] [--accept-tf-tokens 128]
#       [--run-timeout S]
#       [--budget-s S [--max-steps N]]
#
# --budget-s S: instead of --steps, each run gets the steps that fit S seconds of training at the tokens/s that
# `moe train-bench` measures for this config first (times 0.85: validation, start-up), at most --max-steps, a
# multiple of --val-points. The measured rate and the steps chosen are printed and kept in DIR/train-bench.json.
#
# What the GPU call needs from the tree (besides the built build-gpu/src/cli/moe): this script and
# scripts/train/repro_summary.py, the bundle's corpus.jsonl.xz (--bundle; only the corpus, not sft.jsonl.xz), and
# --model-dir's tokenizer.json + tokenizer_config.json + config.json.
#
# Writes DIR/: data/ (the tokenized corpus, made once and reused by later calls with the same DIR), runs/NAME/
# (train.jsonl: every JSON line of `moe train`; accept.txt: the speculative-decoding counters; run.txt: the
# command, seconds), env.txt (date, commit, device), summary.json (repro_summary.py). Checkpoints are deleted once
# measured unless --keep-checkpoints.
#
# MTP acceptance: for each run, `moe generate --speculative` (greedy decoding, the MTP module drafting one token,
# the main model verifying it) on --accept-prompts prompts, each the first --accept-prompt-tokens tokens of a
# validation document (evenly spread over the held-out split), continued --accept-new-tokens tokens, on the CPU
# (the shipped decoding path; the counts are a property of the weights). Acceptance = accepted / drafted.
# And teacher-forced on the text (scripts/train/repro_accept_tf.py): `moe logits --mtp` of the first
# --accept-tf-tokens tokens of the same documents; at each position, is the MTP draft the main model's greedy
# next token (accept), and how often each is the text's token (runs/NAME/accept_tf.json).
#
# MOE_COMMIT, if set, is the commit recorded (a GPU machine given a copy of the tree may hold a stale .git).
set -euo pipefail
cd "$(dirname "$0")/../.."

MOE=build-gpu/src/cli/moe; DEVICE=cuda; OUT=; RUNS=base,auxloss,nomtp; STEPS=1200; BUNDLE=.corpus
MODEL_DIR=models/moe-tiny; CONFIG=; SEQ=256; BATCH=64; LR=2e-3; VAL_POINTS=10; VAL_BATCHES=8; SEED=1; THREADS=0
ACCEPT_PROMPTS=32; ACCEPT_PROMPT_TOKENS=48; ACCEPT_NEW=48; RUN_TIMEOUT=0; KEEP_CKPT=0; VAL_FRACTION=0.01
FIM_RATE=0.5; INIT_STD=0.02; BUDGET_S=; MAX_STEPS=3000; ACCEPT_TF_TOKENS=128
while [ $# -gt 0 ]; do
  case "$1" in
    --moe) MOE=$2; shift 2;; --device) DEVICE=$2; shift 2;; --out) OUT=$2; shift 2;; --runs) RUNS=$2; shift 2;;
    --steps) STEPS=$2; shift 2;; --bundle) BUNDLE=$2; shift 2;; --model-dir) MODEL_DIR=$2; shift 2;;
    --config) CONFIG=$2; shift 2;; --seq-len) SEQ=$2; shift 2;; --batch) BATCH=$2; shift 2;; --lr) LR=$2; shift 2;;
    --val-points) VAL_POINTS=$2; shift 2;; --val-batches) VAL_BATCHES=$2; shift 2;; --seed) SEED=$2; shift 2;;
    --threads) THREADS=$2; shift 2;; --accept-prompts) ACCEPT_PROMPTS=$2; shift 2;;
    --accept-prompt-tokens) ACCEPT_PROMPT_TOKENS=$2; shift 2;; --accept-tf-tokens) ACCEPT_TF_TOKENS=$2; shift 2;; --accept-new-tokens) ACCEPT_NEW=$2; shift 2;;
    --run-timeout) RUN_TIMEOUT=$2; shift 2;; --keep-checkpoints) KEEP_CKPT=1; shift;;
    --val-fraction) VAL_FRACTION=$2; shift 2;; --budget-s) BUDGET_S=$2; shift 2;; --max-steps) MAX_STEPS=$2; shift 2;;
    *) echo "repro.sh: unknown argument $1" >&2; exit 2;;
  esac
done
[ -n "$OUT" ] || { echo "repro.sh: --out DIR is required" >&2; exit 2; }
[ -x "$MOE" ] || { echo "repro.sh: $MOE: not built" >&2; exit 1; }
CONFIG=${CONFIG:-$MODEL_DIR/config.json}
for f in "$BUNDLE/corpus.jsonl.xz" "$MODEL_DIR/tokenizer.json" "$CONFIG"; do
  [ -f "$f" ] || { echo "repro.sh: $f: missing (scripts/train/build_corpus.sh makes the bundle)" >&2; exit 1; }
done
PY=python3  # the GPU machine may have only PyTorch's venv
command -v python3 >/dev/null || PY=/opt/torch/.venv/bin/python
mkdir -p "$OUT/runs"
T0=$(date +%s)
log() { echo "[repro $(( $(date +%s) - T0 ))s] $*"; }

{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: ${MOE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "device: $DEVICE"; echo "host: $(nproc) cores"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/^/gpu: /'
  echo "config: $CONFIG"; echo "seq_len: $SEQ"; echo "batch: $BATCH"; echo "lr: $LR"
  echo "seed: $SEED"; echo "bundle: $BUNDLE ($(stat -c %s "$BUNDLE/corpus.jsonl.xz") bytes corpus.jsonl.xz)"
} > "$OUT/env-$(date -u +%H%M%S).txt"

# The data: the default model's corpus with its tokenizer, FIM on code at the recipe's rate, 1 % held out.
if [ ! -f "$OUT/data/manifest.json" ]; then
  log "tokenize $BUNDLE/corpus.jsonl.xz (FIM rate $FIM_RATE, validation $VAL_FRACTION)"
  rm -rf "$OUT/data"
  xz -dc "$BUNDLE/corpus.jsonl.xz" > "$OUT/corpus.jsonl"
  "$MOE" tokenize-corpus --tokenizer "$MODEL_DIR" --out "$OUT/data" --val-fraction "$VAL_FRACTION" \
    --fim-rate "$FIM_RATE" --fim-seed "$SEED" --threads "$THREADS" "$OUT/corpus.jsonl" | tee "$OUT/tokenize.txt"
  rm -f "$OUT/corpus.jsonl"
fi

# The acceptance prompts: the first ACCEPT_PROMPT_TOKENS ids of ACCEPT_PROMPTS validation documents (the val
# shards: 8-byte magic, uint64 count, int32 ids; documents end with EOS), evenly spread, one comma list a line.
write_prompts() {  # file tokens
"$PY" - "$OUT/data" "$ACCEPT_PROMPTS" "$2" > "$1" <<'EOF'
import json, struct, sys, os
d, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = json.load(open(os.path.join(d, "manifest.json")))
docs, cur = [], []
for s in m["val"]:
    b = open(os.path.join(d, s["file"]), "rb").read()
    count = struct.unpack("<Q", b[8:16])[0]
    for t in struct.unpack("<%di" % count, b[16:16 + 4 * count]):
        if t == m["eos_id"]:
            docs.append(cur); cur = []
        else:
            cur.append(t)
docs = [x for x in docs if len(x) >= n]
if not docs: sys.exit("repro.sh: no validation document has %d tokens" % n)
for i in range(min(k, len(docs))):
    print(",".join(map(str, docs[i * len(docs) // min(k, len(docs))][:n])))
EOF
}
write_prompts "$OUT/accept_prompts.txt" "$ACCEPT_PROMPT_TOKENS"
write_prompts "$OUT/accept_tf_seqs.txt" "$ACCEPT_TF_TOKENS"

if [ -n "$BUDGET_S" ]; then
  log "measuring tokens/s (train-bench, 3 steps) for $BUDGET_S s of training per run"
  "$MOE" train-bench --device "$DEVICE" --config "$CONFIG" --seq-len "$SEQ" --batch "$BATCH" --steps 3 \
    --threads "$THREADS" | tail -1 > "$OUT/train-bench.json"
  STEPS=$("$PY" -c "import json,sys; b=json.load(open(sys.argv[1])); n=int(float(sys.argv[2])*0.85*b['tokens_per_s']/(int(sys.argv[3])*int(sys.argv[4]))); p=int(sys.argv[6]); print(max(p, min(int(sys.argv[5]), n)//p*p))" \
    "$OUT/train-bench.json" "$BUDGET_S" "$BATCH" "$SEQ" "$MAX_STEPS" "$VAL_POINTS")
  log "train-bench: $("$PY" -c "import json,sys; print('%.0f tokens/s' % json.load(open(sys.argv[1]))['tokens_per_s'])" "$OUT/train-bench.json") -> $STEPS steps per run"
fi
VAL_EVERY=$(( STEPS / VAL_POINTS > 0 ? STEPS / VAL_POINTS : 1 ))
WARMUP=$(( STEPS / 20 > 1 ? STEPS / 20 : 1 )); DECAY_START=$(( STEPS * 8 / 10 ))
MIN_LR=$("$PY" -c "print($LR/10)")
FP8_OK=0
"$MOE" train --help 2>/dev/null | grep -- '--gemm' | grep -qi fp8 && FP8_OK=1

for RUN in ${RUNS//,/ }; do
  DEVFLAGS=()
  case "$RUN" in
    base|bf16) KNOBS=(--bias-gamma 1e-3 --seq-aux-alpha 1e-4 --mtp-lambda 0.3);;
    auxloss) KNOBS=(--bias-gamma 0 --seq-aux-alpha 1e-2 --mtp-lambda 0.3);;
    nomtp) KNOBS=(--bias-gamma 1e-3 --seq-aux-alpha 1e-4 --mtp-lambda 0);;
    fp8)
      WHY=
      [ "$FP8_OK" = 1 ] || WHY="this moe's \`train --gemm\` offers no fp8 (helper fp8t's branch not merged yet)"
      [ "$DEVICE" = cuda ] || WHY="FP8 GEMMs are a --device cuda mode"
      if [ -n "$WHY" ]; then
        log "fp8: SKIPPED: $WHY"
        mkdir -p "$OUT/runs/fp8"; echo "skipped: $WHY" > "$OUT/runs/fp8/SKIPPED"
        continue
      fi
      KNOBS=(--bias-gamma 1e-3 --seq-aux-alpha 1e-4 --mtp-lambda 0.3); DEVFLAGS=(--gemm fp8);;
    *) echo "repro.sh: unknown run '$RUN' (base, auxloss, nomtp, bf16, fp8)" >&2; exit 2;;
  esac
  [ "$DEVICE" = cuda ] && [ ${#DEVFLAGS[@]} = 0 ] && DEVFLAGS=(--gemm bf16)
  [ "$DEVICE" = cuda ] && DEVFLAGS+=(--val-maxvio)  # the device's validation MaxVio is opt-in
  R=$OUT/runs/$RUN
  rm -rf "$R"; mkdir -p "$R"
  CMD=("$MOE" train --device "$DEVICE" "${DEVFLAGS[@]}" --config "$CONFIG" --data "$OUT/data" --out "$R/ckpt"
       --steps "$STEPS" --seq-len "$SEQ" --batch "$BATCH" --lr "$LR" --warmup "$WARMUP" --decay-start "$DECAY_START"
       --min-lr "$MIN_LR" --init-std "$INIT_STD" --seed "$SEED" --val-every "$VAL_EVERY" --val-batches "$VAL_BATCHES"
       --threads "$THREADS" "${KNOBS[@]}")
  echo "${CMD[*]}" > "$R/run.txt"
  log "$RUN: $STEPS steps of $BATCH x $SEQ tokens: ${KNOBS[*]} ${DEVFLAGS[*]}"
  t=$(date +%s); rc=0
  if [ "$RUN_TIMEOUT" -gt 0 ]; then timeout "$RUN_TIMEOUT" "${CMD[@]}" > "$R/train.jsonl" || rc=$?
  else "${CMD[@]}" > "$R/train.jsonl" || rc=$?; fi
  echo "seconds: $(( $(date +%s) - t ))" >> "$R/run.txt"; echo "rc: $rc" >> "$R/run.txt"
  "$PY" -c "
import json,sys,statistics as st
L=[json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
s=[x for x in L if 'loss' in x]; v=[x for x in L if 'val_loss' in x]
tps=st.median(x['tokens_per_s'] for x in s) if s else 0
print('  %d steps, median %.0f tokens/s, last loss %s, last val_main_ce %s' % (len(s), tps, s[-1]['loss'] if s else '-', v[-1]['val_main_ce'] if v else '-'))
" "$R/train.jsonl"
  if [ "$rc" != 0 ] || [ ! -f "$R/ckpt/latest" ]; then log "$RUN: FAILED (rc $rc)"; continue; fi
  CK=$R/ckpt/$(cat "$R/ckpt/latest")
  # Acceptance of the trained MTP module: greedy speculative decoding on the CPU, prompts in parallel.
  : > "$R/accept.txt"
  PAR=$(( $(nproc) > 1 ? $(nproc) : 1 ))
  while read -r ids; do echo "$ids"; done < "$OUT/accept_prompts.txt" | \
    xargs -P "$PAR" -I{} sh -c '"$1" generate --model "$2" --device cpu --threads 1 --speculative --tokens "$3" \
      --max-new-tokens "$4" 2>&1 >/dev/null | grep "^speculative:"' _ "$MOE" "$CK" {} "$ACCEPT_NEW" >> "$R/accept.txt" || true
  awk '{a+=$5; d+=$7} END {if (d>0) printf "  acceptance %d of %d drafts = %.4f\n", a, d, a/d; else print "  acceptance: no drafts"}' \
    "$R/accept.txt"
  # The same, teacher-forced on held-out text (repro_accept_tf.py): `moe logits --mtp` of each sequence.
  mkdir -p "$R/tf"
  nl -v0 -ba "$OUT/accept_tf_seqs.txt" | \
    xargs -P "$PAR" -L1 sh -c '"$1" logits --model "$2" --device cpu --threads 1 --mtp --tokens "$5" \
      --out "$3/$4.safetensors" >/dev/null 2>&1' _ "$MOE" "$CK" "$R/tf" || true
  TFPY=$PY; [ -x /opt/torch/.venv/bin/python ] && TFPY=/opt/torch/.venv/bin/python  # numpy
  "$TFPY" scripts/train/repro_accept_tf.py "$OUT/accept_tf_seqs.txt" "$R/tf" > "$R/accept_tf.json" || true
  echo "  teacher-forced on held-out text: $(cat "$R/accept_tf.json")"
  rm -rf "$R/tf"
  [ "$KEEP_CKPT" = 1 ] || rm -rf "$R/ckpt"
done

"$PY" scripts/train/repro_summary.py "$OUT" > "$OUT/summary.json"
log "done: $OUT/summary.json"
