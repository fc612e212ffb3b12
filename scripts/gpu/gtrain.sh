#!/usr/bin/env bash
# The device-resident GPU training step (issue 11, DeviceTrainer), for the lead's GPU slots: run from the repository
# root on the GPU machine after `scripts/gpu/run.sh build` (which builds test_train_cuda and moe in build-gpu).
# Writes under $OUT/gtrain/ within about 4 minutes:
#   test_train_cuda.log     every CUDA op against its CPU twin, the device step against the CPU trainer
#   train-{cuda,cpu}.log    `moe train` for 30 steps on train-small, same seed and data; losses.txt side by side
#   memcheck.log            compute-sanitizer over the new ops and the fixture steps
#   bench-*.json            `moe train-bench --device cuda`: tokens/s and the fraction of the BF16 GEMM rate
#                           measured in the same run (train-small, train-default, train-mid)
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/gtrain
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
TMP=$(mktemp -d /tmp/gtrain.XXXXXX)

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total \
  --format=csv; } >"$D/env.txt" 2>&1

echo "== test_train_cuda"
timeout 150 "$BUILD/tests/train_cuda/test_train_cuda" >"$D/test_train_cuda.log" 2>&1
echo "exit $?" >>"$D/test_train_cuda.log"
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|^exit|max step-1|max relative|seed|balance loss" \
  "$D/test_train_cuda.log" | head -80

echo "== train-bench --device cuda"
bench() {  # name args...
  local name=$1; shift
  timeout 45 "$MOE" train-bench "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  echo "$name exit $?: $(cat "$D/bench-$name.json") $(tail -2 "$D/bench-$name.err")"
}
bench default-cuda --device cuda --config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3
bench small-cuda --device cuda --config bench/configs/train-small.json --seq-len 512 --batch 64 --steps 3
bench small-cuda-256x16 --device cuda --config bench/configs/train-small.json --seq-len 256 --batch 16 --steps 3
bench default-cuda-fp32 --device cuda --gemm fp32 --config bench/configs/train-default.json --seq-len 512 --batch 16 --steps 2
bench mid-cuda --device cuda --config bench/configs/train-mid.json --seq-len 512 --batch 8 --steps 2

echo "== moe train --device cuda vs cpu (train-small, 30 steps)"
grep -LF "end▁of▁sentence" README.md docs/*.md >"$TMP/files"
timeout 60 "$MOE" tokenize-corpus --tokenizer models/tiny-dsv3 --out "$TMP/data" --val-fraction 0.25 \
  $(cat "$TMP/files") >"$D/tokenize.log" 2>&1
echo "tokenize-corpus exit $?: $(tail -1 "$D/tokenize.log")"
for dev in cuda cpu; do
  timeout 90 "$MOE" train --device "$dev" --config bench/configs/train-small.json --data "$TMP/data" \
    --out "$TMP/run-$dev" --steps 30 --seq-len 128 --batch 8 --lr 3e-3 --warmup 5 --val-every 10 --save-every 15 \
    --seed 7 >"$D/train-$dev.log" 2>&1
  echo "$dev exit $?: $(tail -1 "$D/train-$dev.log" | cut -c1-200)"
  ls "$TMP/run-$dev" >>"$D/train-$dev.log" 2>&1
done
# Resume on the device from the step-15 checkpoint: steps 16-30 must repeat the uninterrupted run's losses.
timeout 60 "$MOE" train --device cuda --resume "$TMP/run-cuda/step-00000015" --out "$TMP/run-cuda-resume" \
  --data "$TMP/data" >"$D/train-cuda-resume.log" 2>&1
echo "resume exit $?: $(tail -1 "$D/train-cuda-resume.log" | cut -c1-200)"
loss() { grep -o '"step":[0-9]*,[^}]*"loss":[-0-9.e+naif]*' "$1" | sed -E 's/"step":([0-9]*),.*"loss":(.*)/\1 \2/' \
  | sort -k1,1; }
join -a1 <(loss "$D/train-cuda.log") <(loss "$D/train-cpu.log") | join -a1 - <(loss "$D/train-cuda-resume.log") \
  | sort -n >"$D/losses.txt"
echo "step cuda cpu cuda-resumed"; cat "$D/losses.txt"

echo "== compute-sanitizer memcheck (the new ops, the fixture steps)"
timeout 90 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/train_cuda/test_train_cuda" \
  --gtest_filter='CudaTrainMoeOps.*:CudaDeviceStep.TinyTrain*' >"$D/memcheck.log" 2>&1
echo "memcheck exit $?"; grep -E "^\[  (PASSED|FAILED)|ERROR SUMMARY" "$D/memcheck.log" | tail -4
rm -rf "$TMP"
