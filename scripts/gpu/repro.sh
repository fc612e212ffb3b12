#!/usr/bin/env bash
# Issue 11 item 4, the reproductions (scripts/train/repro.sh; docs/reproductions.md), on the GPU machine from the
# repository root after `scripts/gpu/run.sh build` (moe in build-gpu). Stages:
#   bf16   slot 1, <= 330 s: runs base (aux-loss-free + MTP), auxloss (sequence-wise aux loss alone), nomtp (MTP off),
#          each ~80 s of training at the tokens/s train-bench measures first, then MTP acceptance on the CPU
#   fp8    slot 2, <= 200 s: runs bf16 (base again) and fp8 (--gemm fp8; skipped with a line if moe has no fp8)
#   scripts/gpu/repro.sh bf16 | fp8 | bf16 fp8        (SEED=N: the runs' seed, 1; STEPS=N: fixed steps, not a budget;
#                                                       OUT=DIR keeps stages of several seeds apart)
# Needs in the carried tree, besides the sources that `run.sh build` builds (4.4 MB without models/ and tests/data)
#   and .deps/debs: scripts/train/repro{.sh,_summary.py,_accept_tf.py}; .corpus/corpus.jsonl.xz (22,465,136 bytes,
#   made by scripts/train/build_corpus.sh; only this file of the bundle, not sft.jsonl.xz); and
#   models/moe-tiny/{config.json, tokenizer.json, tokenizer_config.json} (0.27 MB). No model weights, no tests/data.
# Writes $OUT/repro/STAGE/: console.log, summary.json, env-*.txt, tokenize.txt, train-bench.json,
#   accept_prompts.txt, accept_tf_seqs.txt, runs/NAME/{train.jsonl, accept.txt, accept_tf.json, run.txt}. The
#   tokenized data stays in /tmp (reused by a later stage on the same machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
BUILD=${BUILD:-$ROOT/build-gpu}
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
WORK=/tmp/repro-work  # tokenized data reused by a later stage on a warm machine
for stage in "${@:-bf16}"; do
  D=$OUT/repro/$stage
  mkdir -p "$D"
  case "$stage" in
    bf16) RUNS=base,auxloss,nomtp; BUDGET=80; MAXS=1600; RUN_LIMIT=110; LIMIT=320;;
    fp8) RUNS=bf16,fp8; BUDGET=75; MAXS=1500; RUN_LIMIT=105; LIMIT=195;;
    *) echo "scripts/gpu/repro.sh: unknown stage $stage (bf16, fp8)"; continue;;
  esac
  echo "=== repro $stage $(date -u +%H:%M:%S): runs $RUNS, $BUDGET s of training each, stage limit $LIMIT s"
  rm -rf "$WORK/runs" "$WORK"/env-*.txt "$WORK/summary.json" "$WORK/train-bench.json"
  # STEPS: a fixed step count instead of the time budget (the same runs on any machine); SEED: the runs' seed (1).
  if [ -n "${STEPS:-}" ]; then LEN=(--steps "$STEPS"); else LEN=(--budget-s "$BUDGET" --max-steps "$MAXS"); fi
  timeout "$LIMIT" scripts/train/repro.sh --moe "$BUILD/src/cli/moe" --device cuda --out "$WORK" --runs "$RUNS" \
    "${LEN[@]}" --seed "${SEED:-1}" --run-timeout "$RUN_LIMIT" --threads 16 2>&1 | tee "$D/console.log"
  echo "repro.sh exit ${PIPESTATUS[0]}" | tee -a "$D/console.log"
  # whatever was written comes back, also after a timeout (the summary is then remade from the logs)
  [ -f "$WORK/summary.json" ] || python3 scripts/train/repro_summary.py "$WORK" > "$WORK/summary.json" 2>>"$D/console.log" \
    || /opt/torch/.venv/bin/python scripts/train/repro_summary.py "$WORK" > "$WORK/summary.json"
  cp "$WORK"/summary.json "$WORK"/env-*.txt "$WORK"/tokenize.txt "$WORK"/train-bench.json "$WORK"/accept_*.txt "$D/" 2>/dev/null
  for r in "$WORK"/runs/*; do
    mkdir -p "$D/runs/$(basename "$r")"
    cp "$r"/*.jsonl "$r"/*.json "$r"/*.txt "$r"/SKIPPED "$D/runs/$(basename "$r")/" 2>/dev/null
  done
  du -sh "$D"
done
