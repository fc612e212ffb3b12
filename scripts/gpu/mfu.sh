#!/usr/bin/env bash
# issue 11 item 3 (the mid-size MoE on one H200): BF16 moments, the memory plan, grouped expert GEMMs and the
# step's profile, for the lead's GPU slot. Run from the repository root on the GPU machine after
# `scripts/gpu/run.sh build` (test_train_cuda and moe in build-gpu). Writes under $OUT/mfu/ within ~2 minutes (up to ~135 s when train-mid's first shape does not fit):
#   env.txt                 date, commit, GPU
#   test_train_cuda.log     CudaTrainMfu.* (BF16 moments vs the CPU emulation, grouped vs per-expert GEMMs,
#                           the memory plan vs measured) and the whole-step BF16 tests with BF16 moments
#   bench-*.json / .err     `moe train-bench --device cuda --profile`: tokens/s, MFU against the BF16 GEMM rate
#                           of the same run, the memory plan and the measured peak, time per op class
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/mfu
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total \
  --format=csv; nproc; free -g | head -2; } >"$D/env.txt" 2>&1

echo "== test_train_cuda (mfu) $(date -u +%T)"
timeout 30 "$BUILD/tests/train_cuda/test_train_cuda" \
  --gtest_filter='CudaTrainMfu.*:CudaDeviceStep.RandomSmallModelFiveStepsBf16MomentsMatchCpu:CudaDeviceStep.TinyTrainBf16MatchesCpuWithTheSameRounding' \
  >"$D/test_train_cuda.log" 2>&1
echo "exit $?" >>"$D/test_train_cuda.log"
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|^exit|adamw|grouped|memory plan|max relative|note" \
  "$D/test_train_cuda.log" | head -40

bench() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$MOE" train-bench --device cuda --profile "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  local rc=$?
  echo "$name exit $rc in $((SECONDS - t0)) s: $(cat "$D/bench-$name.json") $(tail -3 "$D/bench-$name.err")"
  return $rc
}
echo "== train-bench train-mid $(date -u +%T)"
t0=$SECONDS
# (~20 s of host initialisation of 10 B values on 16 threads and a 40 GB upload come before the first step; an
# allocation failure comes right after: then the shorter sequence.)
bench mid-2048x1 70 --config bench/configs/train-mid.json --seq-len 2048 --batch 1 --steps 2 --moments bf16 \
  --expert-gemm grouped \
  || { [ $((SECONDS - t0)) -lt 40 ] && bench mid-1024x1 40 --config bench/configs/train-mid.json --seq-len 1024 \
       --batch 1 --steps 2 --moments bf16 --expert-gemm grouped; }
echo "== train-bench train-default $(date -u +%T)"
bench default-grouped 12 --config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3 --expert-gemm grouped
bench default-loop 12 --config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3 --expert-gemm loop
bench default-tf32 12 --config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3 --attention tf32 --expert-gemm grouped
echo "== done $(date -u +%T)"
