#!/usr/bin/env bash
# FP8 mixed-precision training (issue 11 item 2, `--gemm fp8`), for the lead's GPU slots: run from the repository
# root on the GPU machine after `scripts/gpu/run.sh build` (which builds test_train_cuda and moe in build-gpu).
# Writes under $OUT/fp8t/ within about 90 s:
#   test_fp8.log            test_train_cuda's CudaTrainFp8.* tests: the quantiser bit for bit against the host, the three
#                           FP8 GEMMs against float64 host products, the cuBLASLt scale-mode probe, a whole FP8 step
#                           against the BF16 step (every gradient's relative L2, the losses)
#   bench-{bf16,fp8}.json   `moe train-bench --device cuda` on train-default (512 x 32, 3 steps), the step-time factor
#   memcheck.log            compute-sanitizer over the quantiser and GEMM tests
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/fp8t
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
TEST=$BUILD/tests/train_cuda/test_train_cuda
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total \
  --format=csv; } >"$D/env.txt" 2>&1

echo "== fp8t: test_train_cuda CudaTrainFp8.*"
timeout 60 "$TEST" --gtest_filter='CudaTrainFp8.*' >"$D/test_fp8.log" 2>&1
echo "exit $?" >>"$D/test_fp8.log"
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|^exit|rel L2 .* vs|VEC128|max step-1|loss .*fp8|seed" "$D/test_fp8.log" \
  | head -40

echo "== fp8t: train-bench train-default, bf16 vs fp8"
for g in bf16 fp8; do
  timeout 40 "$MOE" train-bench --device cuda --gemm $g --config bench/configs/train-default.json --seq-len 512 \
    --batch 32 --steps 3 >"$D/bench-$g.json" 2>"$D/bench-$g.err"
  echo "$g exit $?: $(cat "$D/bench-$g.json") $(tail -3 "$D/bench-$g.err")"
done
python3 - "$D" <<'PY' || true
import json, sys
d = sys.argv[1]
try:
    b, f = (json.load(open(f"{d}/bench-{g}.json")) for g in ("bf16", "fp8"))
    print(f"fp8t: train-default step {b['step_s']:.4f} s (bf16) vs {f['step_s']:.4f} s (fp8): fp8 is "
          f"{b['step_s'] / f['step_s']:.3f}x the bf16 speed")
except Exception as e:
    print("fp8t: no factor:", e)
PY

echo "== fp8t: compute-sanitizer memcheck (quantiser, GEMMs)"
timeout 40 compute-sanitizer --tool memcheck --error-exitcode 3 "$TEST" \
  --gtest_filter='CudaTrainFp8.Quantiser*:CudaTrainFp8.GemmsMatchHostWgradTileBlock' >"$D/memcheck.log" 2>&1
echo "memcheck exit $?: $(grep -E "ERROR SUMMARY|PASSED|FAILED" "$D/memcheck.log" | tr '\n' ' ')"
