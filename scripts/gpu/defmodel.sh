#!/usr/bin/env bash
# The default model's recipe (scripts/train/default_model.sh) on the GPU machine, from the repository root after
# `scripts/gpu/run.sh build` (moe in build-gpu). Uses the corpus bundle .corpus/ when it was carried
# (scripts/train/build_corpus.sh makes it), else the miniature bundle in tests/data/defmodel-mini.
#   scripts/gpu/defmodel.sh           a rehearsal of about 2 minutes (--minutes 1.5, 10 SFT steps); the shards are
#                                     dropped (their sizes are in the log)
#   scripts/gpu/defmodel.sh 8         the real run: --minutes 8 (the whole recipe takes about M + 1 minutes), full SFT,
#                                     the shards kept
# Writes $OUT/defmodel/:
#   defmodel.log                      the recipe's console output (steps, timings, sizes, each check)
#   moe-tiny.tar                      the model directory but the weights: card, loss.csv/svg, logs/ (every step's
#                                     JSON line, train-bench, the HF transformers check), samples
#   model-0000k-of-0000n.safetensors  (the real run) the BF16 shards, each < 16 MB
# Landing it: tar -C models/moe-tiny -xf moe-tiny.tar && cp model-*.safetensors models/moe-tiny/
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/defmodel
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
MINUTES=${1:-}
BUNDLE=.corpus
[ -f .corpus/corpus.jsonl.xz ] || BUNDLE=tests/data/defmodel-mini
TMP=$(mktemp -d /tmp/defmodel.XXXXXX)
if [ -n "$MINUTES" ]; then
  # stop (keeping the logs) before a 10-minute command limit would
  ARGS=(--minutes "$MINUTES"); LIMIT=$(( ${MINUTES%.*} * 60 + 90 )); [ "$LIMIT" -gt 560 ] && LIMIT=560
else
  ARGS=(--minutes 1.5 --sft-steps 10); LIMIT=230
fi
{
  echo "bundle: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1))"
  timeout "$LIMIT" scripts/train/default_model.sh --moe "$BUILD/src/cli/moe" --device cuda --out "$TMP/run" \
    --bundle "$BUNDLE" --threads 16 --keep-work "${ARGS[@]}"
  echo "default_model.sh exit $?"
  ls -l "$TMP/run"
  # the rest of the package comes back (or, if the recipe stopped early, whatever logs it had written)
  mv "$TMP/run/moe-tiny.tar" "$D/" 2>/dev/null || tar -C "$TMP/run/work/pkg" -cf "$D/partial-logs.tar" logs
  [ -n "$MINUTES" ] && mv "$TMP"/run/model-*.safetensors "$D/" 2>/dev/null
} >"$D/defmodel.log" 2>&1
tail -25 "$D/defmodel.log"
rm -rf "$TMP"
