#!/usr/bin/env bash
# Issue 14, decode kernels A/B on the GPU machine: this tree against an earlier commit's in .base (made with
# scripts/gpu/branch-tree.sh COMMIT .base and carried), both built here. Writes under $OUT/decode-ab:
#   tests.log       test_cuda's MoE, MLA, model and graph tests on this tree (TESTS overrides the filter)
#   ab.log          `moe bench` on the llama.cpp-peer checkpoint (bench/gpu/configs/llamacpp-peer-8layers.json,
#                   weights made in memory), decode at batch 1 and 8, context 512, 48 steps, BF16 and FP8 (W8A8),
#                   base and new alternating, REPS rounds, one process each
#   moonlight.log   the Moonlight shape at batch 1, contexts 512 and 4096, base and new
#   tl-*.txt        CUPTI timelines of batch-1 replays on the peer checkpoint (new, FP8 and BF16), summarised
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/decode-ab
mkdir -p "$D"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if [ "${BUILD:-1}" = 1 ]; then
  BUILD_TARGETS="moe test_cuda moe_kernel_timeline" JOBS=${JOBS:-16} scripts/gpu/run.sh build 2>&1 | tail -2
  [ -d .base ] && JOBS=${JOBS:-16} scripts/gpu/run.sh build-base 2>&1 | tail -2
fi
B=build-gpu
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
PY=/opt/torch/.venv/bin/python3
el built
{ date -u; echo "new: $(git rev-parse HEAD 2>/dev/null) + working tree"; echo "base: $(cat .base/TREE 2>/dev/null)";
  nvidia-smi --query-gpu=name,driver_version --format=csv; } >"$D/env.txt" 2>&1
cat "$D/env.txt"
if [ -n "${TESTS-x}" ]; then
  timeout "${TEST_TIMEOUT:-240}" $B/tests/cuda/test_cuda \
    --gtest_filter="${TESTS:-CudaMoe.*:CudaMla*:CudaModel.*:CudaGraph.*}" >"$D/tests.log" 2>&1
  echo "test_cuda exit $?"
  grep -E "^\[ +(FAILED|PASSED) |^\[=+\]|Failure|Expected|Which is" "$D/tests.log" | tail -30
  el tests
fi
PEER=bench/gpu/configs/llamacpp-peer-8layers.json
bench() {  # label binary dtype args...
  local label=$1 bin=$2 dt=$3; shift 3
  timeout 120 $bin bench --device cuda --random-weights --random-dtype $dt --cuda-prefill $dt "$@" 2>&1 \
    | grep -E "^(ceilings|decode)" | sed "s/^/[$label $dt] /"
}
for rep in ${REPS:-1 2}; do for dt in bf16 fp8; do for side in base new; do
  bin=$B/src/cli/moe; [ $side = base ] && bin=build-base/src/cli/moe
  bench "peer r$rep $side" $bin $dt --model $PEER --prompt-tokens 256 --batch ${BATCHES:-1,8} --context 512 --steps 48 \
    | tee -a "$D/ab.log"
done; done; done
el ab
if [ "${MOONLIGHT:-1}" = 1 ]; then
  for dt in bf16 fp8; do for side in base new; do
    bin=$B/src/cli/moe; [ $side = base ] && bin=build-base/src/cli/moe
    bench "moonlight $side" $bin $dt --model bench/gpu/configs/moonlight-16b-a3b.json --prompt-tokens 128 --batch 1 \
      --context ${MOON_CTX:-512,4096} --steps 48 | tee -a "$D/moonlight.log"
  done; done
  el moonlight
fi
for dt in ${TIMELINES:-fp8 bf16}; do
  CUDA_INJECTION64_PATH=$PWD/$B/tests/cuda/libmoe_kernel_timeline.so MOE_TIMELINE_OUT=$D/tl-$dt.csv timeout 120 \
    $B/src/cli/moe bench --device cuda --random-weights --random-dtype $dt --cuda-prefill $dt --model $PEER \
    --prompt-tokens 256 --batch 1 --context 512 --steps 32 >"$D/tl-$dt.log" 2>&1
  $PY bench/gpu/timeline_summary.py "$D/tl-$dt.csv" --top 30 >"$D/tl-$dt.txt" 2>&1
  head -20 "$D/tl-$dt.txt"
  gzip -f "$D/tl-$dt.csv"
done
el timelines
