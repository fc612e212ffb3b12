#!/usr/bin/env bash
# The default model's recipe (scripts/train/default_model.sh), rehearsed on the GPU for about 2 minutes: run from
# the repository root on the GPU machine after `scripts/gpu/run.sh build` (moe in build-gpu). Uses the corpus
# bundle .corpus/ when it was carried (scripts/train/build_corpus.sh makes it), else the miniature bundle in
# tests/data/defmodel-mini. Writes $OUT/defmodel/:
#   defmodel.log     the recipe's console output (steps, timings, sizes) and the pass/fail of each check
#   moe-tiny.tar     the packaged model directory but the weights: card, loss.csv/svg, logs/ (every step's JSON
#                    line, train-bench, the HF transformers check), samples
# The BF16 shards are dropped in this rehearsal (their size is printed); the real run is
#   scripts/train/default_model.sh --out $OUT/defmodel --device cuda --minutes 8
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/defmodel
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
BUNDLE=.corpus
[ -f .corpus/corpus.jsonl.xz ] || BUNDLE=tests/data/defmodel-mini
TMP=$(mktemp -d /tmp/defmodel.XXXXXX)
{
  echo "bundle: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1))"
  timeout 230 scripts/train/default_model.sh --moe "$BUILD/src/cli/moe" --device cuda --out "$TMP/run" \
    --bundle "$BUNDLE" --minutes 1.5 --sft-steps 10 --threads 16 --keep-work
  echo "default_model.sh exit $?"
  ls -l "$TMP/run"
  # the shards' sizes are in the listing above; the rest of the package comes back (or, if the recipe stopped
  # early, whatever logs it had written)
  mv "$TMP/run/moe-tiny.tar" "$D/" 2>/dev/null || tar -C "$TMP/run/work/pkg" -cf "$D/partial-logs.tar" logs
} >"$D/defmodel.log" 2>&1
tail -25 "$D/defmodel.log"
rm -rf "$TMP"
