#!/usr/bin/env bash
# Slot run for MTP speculative decoding in the scheduler (branch mtpspec), after `scripts/gpu/run.sh build`:
#  1. greedy identity on the GPU: the tiny fixture through the scheduler (`moe bench --speculative N
#     --print-tokens`) with 0, 1 and 2 drafts at batch 1 and 8; the token lists are compared (diff.txt);
#  2. decode tokens/s with --speculative 0 and 1 at batch 1, 8, 32 on a Moonlight-shaped MTP check model
#     (create-random --mtp-check: the MTP module drafts the main model's greedy token), with acceptance.
# Everything goes to $OUT/mtpspec/.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/mtpspec
mkdir -p "$D"
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
MOE=$ROOT/build-gpu/src/cli/moe
MODELS=${MODELS:-/tmp/moe-models}
[ -x "$MOE" ] || { echo "no $MOE: run scripts/gpu/run.sh build first" | tee "$D/error.txt"; exit 1; }

# 1. Greedy identity on the fixture.
for n in 0 1 2; do
  timeout 120 "$MOE" bench --device cuda --model models/tiny-dsv3 --speculative $n --batch 1,8 --prompt-tokens 20 \
    --gen-tokens 40 --print-tokens >"$D/fixture-spec$n.log" 2>&1
  echo "fixture speculative $n: exit $?" | tee -a "$D/summary.txt"
  grep '^tokens' "$D/fixture-spec$n.log" >"$D/fixture-tokens-spec$n.txt"
done
for n in 1 2; do
  if diff "$D/fixture-tokens-spec0.txt" "$D/fixture-tokens-spec$n.txt" >"$D/diff-spec$n.txt"; then
    echo "fixture greedy identical with speculative $n ($(wc -l <"$D/fixture-tokens-spec0.txt") requests)" | tee -a "$D/summary.txt"
  else
    echo "fixture greedy DIFFERS with speculative $n: see diff-spec$n.txt" | tee -a "$D/summary.txt"
  fi
done
grep -h "scheduler decode" "$D"/fixture-spec*.log | tee -a "$D/summary.txt"

# 2. Moonlight-shaped check model (its config with one MTP layer), BF16.
cfg=$D/moonlight-mtp.json
python3 - "$cfg" <<'PY'
import json, sys
c = json.load(open("bench/gpu/configs/moonlight-16b-a3b.json"))
c["num_nextn_predict_layers"] = 1
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
dir=$MODELS/moonlight-mtp-check
start=$(date +%s)
[ -d "$dir" ] || timeout 300 "$MOE" create-random --config "$cfg" --out "$dir" --dtype bf16 --mtp-check >"$D/create.log" 2>&1
echo "create-random --mtp-check: exit $? in $(( $(date +%s) - start )) s" | tee -a "$D/summary.txt"
for n in 0 1; do
  timeout 240 "$MOE" bench --device cuda --model "$dir" --speculative $n --batch 1,8,32 --prompt-tokens 128 \
    --gen-tokens 128 >"$D/moonlight-spec$n.log" 2>&1
  echo "moonlight speculative $n: exit $?" | tee -a "$D/summary.txt"
  grep -E "^(model|device|scheduler decode)" "$D/moonlight-spec$n.log" | tee -a "$D/summary.txt"
done
rm -rf "$dir"
