#!/usr/bin/env bash
# Slot run for MTP speculative decoding's fused greedy step (branch spec, issue 14 item 5), after
# `scripts/gpu/run.sh build` (which builds moe and test_cuda). Budget ~240 s; every command is capped.
#  1. GPU tests: test_cuda's CudaSpec.* (argmax_rows vs the host; the fused step vs the host-decided path and vs
#     no speculation on the fixture and on a tiny MTP check model).
#  2. Greedy identity through `moe bench --speculative N --print-tokens` on the tiny fixture, batch 1 and 8:
#     speculative 0, 1 (fused) and 1 with --fused-speculation false; token lists diffed.
#  3. Decode tokens/s at batch 1, 2, 8, 16, 32 without speculation (2-row and 2B-row step costs) and at 1, 8, 32
#     with one draft (fused and host-decided) and with 2 and 3 drafts (fused, chained on the device), on
#     models/moe-tiny when its weights were carried (models/moe-tiny/*.safetensors, 17.5 MB; skipped otherwise),
#     on a check model of moe-tiny's shape, and on a Moonlight-shaped MTP check model with FEWER LAYERS (6 of 27,
#     to fit the slot: creating all 27 takes minutes).
# Everything goes to $OUT/spec/.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/spec
mkdir -p "$D"
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
MOE=$ROOT/build-gpu/src/cli/moe
TEST=$ROOT/build-gpu/tests/cuda/test_cuda
MODELS=${MODELS:-/tmp/moe-models}
S=$D/summary.txt
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$S"; }
late() { [ "$SECONDS" -gt "$1" ] && log "skipping $2: ${SECONDS}s used of the slot's ~240"; }
[ -x "$MOE" ] || { log "no $MOE: run scripts/gpu/run.sh build first"; exit 1; }

# 1. GPU tests.
timeout 40 "$TEST" --gtest_filter='CudaSpec.*' >"$D/test_cuda_spec.log" 2>&1
log "CudaSpec tests: exit $?"
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |fused steps|Failure|Expected|Which is|actual" "$D/test_cuda_spec.log" | head -30 | tee -a "$S"

# 2. Greedy identity on the fixture.
for v in "0:true" "1:true" "1:false"; do
  n=${v%%:*} f=${v#*:}
  timeout 20 "$MOE" bench --device cuda --model models/tiny-dsv3 --speculative $n --fused-speculation $f --batch 1,8 \
    --prompt-tokens 20 --gen-tokens 40 --print-tokens >"$D/fixture-spec$n-$f.log" 2>&1
  log "fixture speculative $n fused $f: exit $?"
  grep '^tokens' "$D/fixture-spec$n-$f.log" >"$D/fixture-tokens-spec$n-$f.txt"
  grep "scheduler decode:" "$D/fixture-spec$n-$f.log" | tee -a "$S"
done
for f in true false; do
  if diff "$D/fixture-tokens-spec0-true.txt" "$D/fixture-tokens-spec1-$f.txt" >"$D/diff-spec1-$f.txt"; then
    log "fixture greedy identical with speculative 1 fused $f ($(wc -l <"$D/fixture-tokens-spec0-true.txt") requests)"
  else
    log "fixture greedy DIFFERS with speculative 1 fused $f: $(grep -c '^<' "$D/diff-spec1-$f.txt") requests, diff-spec1-$f.txt"
  fi
done

bench() {  # name dir [seconds a run]
  local cap=${3:-25}
  late 200 "$1" && return
  timeout "$cap" "$MOE" bench --device cuda --model "$2" --speculative 0 --batch 1,2,8,16,32 --prompt-tokens 64 \
    --gen-tokens 96 >"$D/$1-spec0.log" 2>&1
  log "$1 speculative 0: exit $?"
  grep -E "^(model|device|scheduler decode)" "$D/$1-spec0.log" | tee -a "$S"
  # 1 draft fused and host-decided (the A/B), then 2 and 3 drafts fused (chained on the device).
  for v in "1:true" "1:false" "2:true" "3:true"; do
    n=${v%%:*} f=${v#*:}
    late 220 "$1 speculative $n fused $f" && continue
    timeout "$cap" "$MOE" bench --device cuda --model "$2" --speculative $n --fused-speculation $f --batch 1,8,32 \
      --prompt-tokens 64 --gen-tokens 96 >"$D/$1-spec$n-$f.log" 2>&1
    log "$1 speculative $n fused $f: exit $?"
    grep -E "^scheduler decode" "$D/$1-spec$n-$f.log" | tee -a "$S"
  done
}

# 3a. The project's default model (trained MTP module), when carried, and a check model of its shape (its MTP
# module drafts the main model's token: a launch-bound model whose drafts are right, issue 14's "check model").
if ls models/moe-tiny/*.safetensors >/dev/null 2>&1; then bench moe-tiny models/moe-tiny 15; else log "models/moe-tiny has no weights here: skipped"; fi
tiny_check=$MODELS/moe-tiny-mtp-check
[ -d "$tiny_check" ] || timeout 30 "$MOE" create-random --config models/moe-tiny/config.json --out "$tiny_check" \
  --dtype bf16 --mtp-check >"$D/create-tiny.log" 2>&1
log "create-random --mtp-check (moe-tiny's shape): exit $?"
bench moe-tiny-check "$tiny_check" 15

# 3b. Moonlight-shaped check model, 6 layers (1 dense + 5 MoE) plus the MTP layer, BF16.
cfg=$D/moonlight-mtp-6l.json
python3 - "$cfg" <<'PY'
import json, sys
c = json.load(open("bench/gpu/configs/moonlight-16b-a3b.json"))
c["num_nextn_predict_layers"] = 1
c["num_hidden_layers"] = 6
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
dir=$MODELS/moonlight-mtp-check-6l
late 150 "the Moonlight-shaped check model" && exit 0
start=$(date +%s)
[ -d "$dir" ] || timeout 45 "$MOE" create-random --config "$cfg" --out "$dir" --dtype bf16 --mtp-check >"$D/create.log" 2>&1
log "create-random --mtp-check (6 layers): exit $? in $(( $(date +%s) - start )) s"
bench moonlight-6l "$dir"
rm -rf "$dir"
log "done"
