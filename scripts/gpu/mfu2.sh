#!/usr/bin/env bash
# issue 11 item 3, second round: the trainer's own grouped wgmma expert GEMMs, BF16 attention and head GEMMs, and
# gradient accumulation, on train-mid (the mid-size MoE) and train-default. Run from the repository root on the GPU
# machine after `BUILD_TARGETS="moe test_train_cuda" scripts/gpu/run.sh build`. Writes under $OUT/mfu2/:
#   env.txt            date, commit, GPU
#   tests.log          the grouped GEMM against per-expert cuBLAS and double (with its timings), BF16 attention
#                      against the CPU, the grouped step against the per-expert loop, the whole-step BF16 tests
#   memcheck.log       compute-sanitizer memcheck of the grouped GEMM tests
#   bench-*.json/.err  `moe train-bench --device cuda --profile`: tokens/s, MFU against the BF16 GEMM rate measured
#                      in the same process, memory, time per op class
# STAGES (default "tests memcheck mid default") picks parts.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/mfu2
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
TEST=$BUILD/tests/train_cuda/test_train_cuda
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
STAGES=${STAGES:-tests memcheck mid default}
has() { [[ " $STAGES " == *" $1 "* ]]; }

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total \
  --format=csv; nproc; free -g | head -2; } >"$D/env.txt" 2>&1

if has tests; then
  echo "== tests $(date -u +%T)"
  timeout 150 "$TEST" --gtest_filter='CudaTrainMfu.*:CudaTrainMoeOps.GemmAttentionMatchesCpu:CudaDeviceStep.*' \
    >"$D/tests.log" 2>&1
  echo "exit $?" >>"$D/tests.log"
  grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|^exit|grouped|attention|TFLOP|relative" "$D/tests.log" | head -60
fi
if has memcheck; then
  echo "== memcheck $(date -u +%T)"
  timeout 120 compute-sanitizer --tool memcheck "$TEST" --gtest_filter='CudaTrainMfu.Grouped*' >"$D/memcheck.log" 2>&1
  echo "exit $?" >>"$D/memcheck.log"
  grep -E "ERROR SUMMARY|^\[ +(PASSED|FAILED)|^exit" "$D/memcheck.log" | tail -5
fi

bench() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$MOE" train-bench --device cuda --profile "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  local rc=$?
  echo "$name exit $rc in $((SECONDS - t0)) s: $(cat "$D/bench-$name.json") $(tail -4 "$D/bench-$name.err")"
  return $rc
}
MID="--config bench/configs/train-mid.json --seq-len 2048 --moments bf16"
if has mid; then
  # (~20 s of host initialisation of 10 B values and a 40 GB upload come before the first step.)
  echo "== train-mid $(date -u +%T)"
  [ -n "${MID_ALL:-}" ] && bench mid-grouped 80 $MID --batch 1 --steps 2 --expert-gemm grouped
  bench mid-bf16 80 $MID --batch 1 --steps 2 --expert-gemm grouped --attention bf16 --head bf16
  bench mid-bf16-acc8 110 $MID --batch 8 --micro-batch 1 --steps 2 --expert-gemm grouped --attention bf16 --head bf16
fi
DEF="--config bench/configs/train-default.json --seq-len 512 --steps 3"
if has default; then
  echo "== train-default $(date -u +%T)"
  [ -n "${DEF_ALL:-}" ] && bench default-loop 25 $DEF --batch 64 --expert-gemm loop
  bench default-grouped 25 $DEF --batch 64 --expert-gemm grouped
  bench default-bf16 25 $DEF --batch 64 --expert-gemm grouped --attention bf16 --head bf16
  bench default-fp8 25 $DEF --batch 64 --gemm fp8 --attention bf16 --head bf16
fi
echo "== done $(date -u +%T)"
# The device tool returns a handful of files: one archive of everything.
tar czf "$OUT/mfu2.tgz" -C "$OUT" mfu2
