#!/usr/bin/env bash
# The first GPU run of branch s7-next (s7-flash's flash attention for the trainer + s7-router's router launch
# shapes, neither run on a GPU when written, 2026-12-02). From the repository root on the GPU machine:
#   BUILD_TARGETS="moe test_train_cuda" JOBS=16 scripts/gpu/run.sh build && scripts/gpu/s7next.sh
# Writes $OUT/s7next.tgz (the device tool returns few files): tests.log (flash against the CPU, router, whole
# steps, grouped GEMMs), memcheck.log, bench-*.json/.err (train-bench with --profile).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/s7next
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
TEST=$BUILD/tests/train_cuda/test_train_cuda
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } >"$D/env.txt" 2>&1

echo "== tests $(date -u +%T)"
timeout 200 "$TEST" --gtest_filter='CudaTrainFlash.*:CudaTrainMoeOps.*:CudaDeviceStep.*:CudaTrainMfu.*' >"$D/tests.log" 2>&1
echo "exit $?" >>"$D/tests.log"
grep -E "^\[ +(FAILED|PASSED) |Failure|Expected|^exit|flash|timing" "$D/tests.log" | cut -c1-300 | head -50
echo "== memcheck $(date -u +%T)"
timeout 150 compute-sanitizer --tool memcheck "$TEST" --gtest_filter='CudaTrainFlash.ForwardBackward*:CudaTrainMoeOps.Router*' \
  >"$D/memcheck.log" 2>&1
echo "exit $?" >>"$D/memcheck.log"
grep -E "ERROR SUMMARY|^\[ +(PASSED|FAILED)|^exit" "$D/memcheck.log" | tail -4

bench() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  timeout "$secs" "$MOE" train-bench --device cuda --profile "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  echo "$name exit $?: $(cut -c1-400 "$D/bench-$name.json")"
}
MID="--config bench/configs/train-mid.json --seq-len 2048 --moments bf16 --head bf16 --batch 8 --micro-batch 1 --steps 2"
bench mid-bf16 120 $MID --attention bf16
bench mid-flash 120 $MID --attention flash
DEF="--config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3 --head bf16"
bench default-bf16 30 $DEF --attention bf16
bench default-flash 30 $DEF --attention flash
tar czf "$OUT/s7next.tgz" -C "$OUT" s7next
echo "== done $(date -u +%T)"
