#!/usr/bin/env bash
# Slot run for the wgmma MLA decode kernel (branch mlaw, src/backend/cuda/mla_decode_wgmma.cu), after
# `scripts/gpu/run.sh build` has built build-gpu (test_cuda and bench_mla_attention are in its target list).
# About 60 s in all:
#  1. test_cuda's MLA tests: the wgmma kernel against the CPU and the mma.sync kernel (CudaMlaWgmma.*) and the
#     existing MLA cases and the V3.2 sparse case (CudaMla.*, CudaDsa.SparseAttentionTensorCoreKernel; with
#     CudaOptions::mla_decode's default, Mma until the wgmma kernel passes here, they check the old path);
#  2. compute-sanitizer memcheck on CudaMlaWgmma.Small;
#  3. bench_mla_attention at batch 64, context 4096, 128 and 16 heads (the A/B of both kernels at 128 heads
#     in the same run, against the copy bandwidth measured there), and 128 heads at batch 1 / context 4096.
# Everything goes to $OUT/mlaw/ (summary.txt and one log per step).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/mlaw
mkdir -p "$D"
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
B=$ROOT/build-gpu
S=$D/summary.txt
[ -x "$B/tests/cuda/test_cuda" ] || { echo "no test_cuda: run scripts/gpu/run.sh build first" | tee "$S"; exit 1; }
echo "mlaw slot run $(date -u +%FT%TZ)" | tee "$S"

timeout 18 "$B/tests/cuda/test_cuda" --gtest_filter='CudaMlaWgmma.*' >"$D/test_wgmma.log" 2>&1
echo "test_cuda CudaMlaWgmma.* exit $?" | tee -a "$S"
grep -E "^\[ +(OK|FAILED|PASSED) |seed|mla wgmma|mma.sync kernel vs|Failure" "$D/test_wgmma.log" | head -40 | tee -a "$S"
timeout 16 "$B/tests/cuda/test_cuda" --gtest_filter='CudaMla.*:CudaDsa.SparseAttentionTensorCoreKernel' >"$D/test_mla.log" 2>&1
echo "test_cuda CudaMla.* + CudaDsa sparse exit $?" | tee -a "$S"
grep -E "^\[ +(OK|FAILED|PASSED) |rel L2|sparse attention|Failure" "$D/test_mla.log" | head -30 | tee -a "$S"

timeout 14 compute-sanitizer --tool memcheck --leak-check no "$B/tests/cuda/test_cuda" \
  --gtest_filter='CudaMlaWgmma.Small' >"$D/memcheck.log" 2>&1
echo "memcheck exit $? ($(grep -c 'Invalid' "$D/memcheck.log") invalid accesses)" | tee -a "$S"
grep -E "ERROR SUMMARY|^\[ +(OK|FAILED) " "$D/memcheck.log" | tail -3 | tee -a "$S"

# The last run: 16 heads with one split (64 CTAs, no partials and no combine), data for the 16-head goal.
for args in "64 4096 128 20 0 auto" "64 4096 16 20" "1 4096 128 20 0 auto" "64 4096 16 20 1"; do
  timeout 6 "$B/tests/cuda/bench_mla_attention" $args >>"$D/bench.log" 2>&1
  echo "bench_mla_attention $args exit $?" | tee -a "$S"
done
grep -E "^device|^mla decode|kernels:|RESULT" "$D/bench.log" | tee -a "$S"
