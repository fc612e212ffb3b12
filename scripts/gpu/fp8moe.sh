#!/usr/bin/env bash
# Slot run for the grouped FP8 x FP8 expert GEMM (moe_gemm_fp8.cu), after `scripts/gpu/run.sh build` has built
# build-gpu (test_cuda, test_cuda_moe_fp8, bench_moe_fp8 and the sandboxes in its default target list):
#  1. test_cuda_moe_fp8 (the kernel against a float64 host product), once more under compute-sanitizer memcheck
#     and synccheck (the warp-specialised kernel's mbarriers) on the tails case; the sandbox
#     bench/gpu/sandbox/moe_gemm_fp8.cu (every pipeline variant bit-identical to production, timed);
#  2. test_cuda's W8A8 checks on the FP8 fixture (logits vs HF with --cuda-prefill fp8, graph capture of batch-24
#     decode steps on the grouped kernel) and the other FP8 fixture / graph tests around them;
#  3. bench_moe_fp8: grouped FP8 vs per-expert cuBLASLt vs grouped BF16, Moonlight shape, 4096 / 8 / 64 / 256 tokens;
#  4. `moe bench` on random Moonlight-shaped weights made in memory (--random-weights: no checkpoint on disk),
#     decode batch 1/8/64/256 at context 512 and prefill 4096: FP8 weights with --cuda-prefill fp8 (grouped W8A8
#     experts) and bf16 (the FP8 GEMV decode / widened prefill), and BF16 weights (issue 14's FP8-vs-BF16 prefill).
# Everything goes to $OUT/fp8moe/ (summary.txt and one log per step).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/fp8moe
mkdir -p "$D"
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
B=$ROOT/build-gpu
S=$D/summary.txt
[ -x "$B/tests/cuda/test_cuda_moe_fp8" ] || { echo "no test_cuda_moe_fp8: run scripts/gpu/run.sh build first" | tee "$S"; exit 1; }

timeout 150 "$B/tests/cuda/test_cuda_moe_fp8" >"$D/test_moe_fp8.log" 2>&1
echo "test_cuda_moe_fp8 exit $?" | tee -a "$S"
grep -E "^\[ +(OK|FAILED|PASSED) |grouped FP8 GEMM|Failure" "$D/test_moe_fp8.log" | tee -a "$S"
timeout 90 compute-sanitizer --tool memcheck --leak-check no "$B/tests/cuda/test_cuda_moe_fp8" \
  --gtest_filter='*UnevenTails*' >"$D/memcheck.log" 2>&1
echo "memcheck exit $? ($(grep -c 'Invalid' "$D/memcheck.log") invalid accesses)" | tee -a "$S"
tail -2 "$D/memcheck.log" | tee -a "$S"
timeout 90 compute-sanitizer --tool synccheck "$B/tests/cuda/test_cuda_moe_fp8" --gtest_filter='*UnevenTails*' \
  >"$D/synccheck.log" 2>&1
echo "synccheck exit $?" | tee -a "$S"
tail -1 "$D/synccheck.log" | tee -a "$S"
timeout 150 stdbuf -oL "$B/bench/gpu/sandbox/sandbox_moe_gemm_fp8" --tokens 4096,8192,256,64 >"$D/sandbox.log" 2>&1
echo "sandbox_moe_gemm_fp8 exit $?" | tee -a "$S"
grep -E "production|ws|FAILED|match" "$D/sandbox.log" | tee -a "$S"

timeout 60 "$B/tests/cuda/test_cuda_fp8" >>"$D/test_moe_fp8.log" 2>&1
echo "test_cuda_fp8 exit $?" | tee -a "$S"
[ -f models/tiny-dsv3-fp8/model.safetensors ] ||
  echo "NOTE: models/tiny-dsv3-fp8 is missing from this tree: the fixture tests below cannot run" | tee -a "$S"
timeout 180 "$B/tests/cuda/test_cuda" --gtest_filter='CudaModel.Fp8*:CudaGraph.*Fp8*' >"$D/test_cuda_fp8.log" 2>&1
echo "test_cuda (FP8 fixture, graphs) exit $?" | tee -a "$S"
grep -E "^\[ +(OK|FAILED|PASSED) |Failure|rel L2|graphs:" "$D/test_cuda_fp8.log" | head -40 | tee -a "$S"

timeout 120 "$B/tests/cuda/bench_moe_fp8" >"$D/bench_moe_fp8.log" 2>&1
echo "bench_moe_fp8 exit $?" | tee -a "$S"
cat "$D/bench_moe_fp8.log" | tee -a "$S"

C=bench/gpu/configs/moonlight-16b-a3b.json
for run in "fp8 fp8 1,8,64,256" "fp8 bf16 8,64,256" "bf16 bf16 1,8,64,256"; do
  set -- $run
  timeout 180 "$B/src/cli/moe" bench --device cuda --model $C --random-weights --random-dtype $1 --cuda-prefill $2 \
    --prompt-tokens 4096 --batch ${3//,/ } --context 512 >"$D/moe-bench-$1-$2.log" 2>&1
  echo "moe bench, $1 weights, --cuda-prefill $2: exit $?" | tee -a "$S"
  grep -E "^(device|ceilings|prefill|decode)" "$D/moe-bench-$1-$2.log" | sed "s/^/[$1 $2] /" | tee -a "$S"
done
