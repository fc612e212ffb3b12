#!/usr/bin/env bash
# The trainer on the GPU (issue 11), for the lead's GPU slots: run from the repository root on the GPU machine
# after `scripts/gpu/run.sh build` (which builds test_train_cuda and moe in build-gpu). Writes under
# $OUT/gputrain/ within about 3 minutes:
#   test_train_cuda.log      every CUDA op against its CPU twin, whole tiny-train steps against the reference
#   train-{cuda,cpu}.log     `moe train` for 30 steps on a corpus of the repository's docs, same seed and data
#   memcheck.log             compute-sanitizer over the op tests but the big GEMMs, and the whole steps
#   bench-*.json             `moe train-bench`: tokens/s and the fraction of the BF16 GEMM rate (cuda) or of
#                            the FP32 GEMM rate (cpu), measured in the same run
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/gputrain
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
TMP=$(mktemp -d /tmp/gputrain.XXXXXX)

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; } \
  >"$D/env.txt" 2>&1

echo "== test_train_cuda"
timeout 150 "$BUILD/tests/train_cuda/test_train_cuda" >"$D/test_train_cuda.log" 2>&1
echo "exit $?" >>"$D/test_train_cuda.log"
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|^exit|^(matmul|attention|cross|rmsnorm|swiglu|rope|adamw)|max step-1" \
  "$D/test_train_cuda.log" | head -60

echo "== moe train --device cuda vs cpu (train-small, 30 steps)"
# The repository's prose without the EOS token's text (tokenize-corpus rejects a document containing it).
grep -LF "end▁of▁sentence" README.md docs/*.md >"$TMP/files"
timeout 60 "$MOE" tokenize-corpus --tokenizer models/tiny-dsv3 --out "$TMP/data" --val-fraction 0.25 \
  $(cat "$TMP/files") >"$D/tokenize.log" 2>&1
echo "tokenize-corpus exit $?: $(tail -1 "$D/tokenize.log")"
for dev in cuda cpu; do
  timeout 90 "$MOE" train --device "$dev" --config bench/configs/train-small.json --data "$TMP/data" \
    --out "$TMP/run-$dev" --steps 30 --seq-len 128 --batch 8 --lr 3e-3 --warmup 5 --val-every 10 --seed 7 \
    >"$D/train-$dev.log" 2>&1
  echo "$dev exit $?: $(tail -1 "$D/train-$dev.log" | cut -c1-200)"
  ls "$TMP/run-$dev" >>"$D/train-$dev.log" 2>&1
done

echo "== train-bench"
bench() {  # name args...
  local name=$1; shift
  timeout 120 "$MOE" train-bench "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  echo "$name exit $?: $(cat "$D/bench-$name.json") $(tail -2 "$D/bench-$name.err")"
}
bench small-cuda --device cuda --config bench/configs/train-small.json --seq-len 256 --batch 16 --steps 3
bench small-cuda-fp32 --device cuda --gemm fp32 --config bench/configs/train-small.json --seq-len 256 --batch 16 --steps 3
bench small-cpu --device cpu --config bench/configs/train-small.json --seq-len 256 --batch 16 --steps 2

echo "== compute-sanitizer memcheck (the op tests but the big GEMMs, the whole steps)"
timeout 60 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/train_cuda/test_train_cuda" \
  --gtest_filter='CudaTrainOps.CrossEntropy*:CudaTrainOps.RmsNorm*:CudaTrainOps.Swiglu*:CudaTrainOps.Rope*:CudaTrainOps.Embedding*:CudaTrainOps.AdamW*:CudaTrainOps.MlaAttention*:CudaTrainStep.*' \
  >"$D/memcheck.log" 2>&1
echo "memcheck exit $?"; grep -E "^\[  (PASSED|FAILED)|ERROR SUMMARY" "$D/memcheck.log" | tail -4
rm -rf "$TMP"
