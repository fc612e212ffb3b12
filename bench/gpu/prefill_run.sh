#!/usr/bin/env bash
# Prefill work on the device box (see bench/gpu/NOTES-prefill.md): build, the prefill tests, the Moonlight
# prefill benchmark in several configurations, and an Nsight Compute kernel summary, in one call; logs under
# $OUT, a short table last. Stages run in the order given:
#   bench/gpu/prefill_run.sh build tests model bench ncu
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
LOG=/tmp/prefill-logs  # everything here, packed into $OUT/logs.tgz at the end (few files come back)
mkdir -p "$OUT" "$LOG"
BUILD=$PWD/out/build-prefill  # out/ is left out of run.sh scratch copy of the tree
BUILD_DIR=$BUILD
MODEL=/tmp/moe-models/moonlight-bf16
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
export MOE_CUDA_PREFILL_KERNELS=1  # the opt-in prefill kernels; the bench's "old" variant turns them off
T0=$(date +%s)
stamp() { echo "=== $1 at +$(( $(date +%s) - T0 )) s" | tee -a "$LOG/summary.txt"; }

stage_build() {  # run.sh's build, into a build folder of its own: the shared build-gpu may hold objects newer
  # than this tree's sources (another session's build of HEAD), which ninja would not rebuild
  ( set --; source scripts/gpu/run.sh; BUILD=$BUILD_DIR; OUT=$LOG; stage_build ) || true
  PATH=/opt/torch/.venv/bin:$PATH cmake --build "$BUILD" -j16 --target moe test_cuda >"$LOG/build2.log" 2>&1 \
    || { grep -E "error|FAILED|undefined" "$LOG/build2.log" | head -20; return 1; }
  ls -l --time-style=+%T "$BUILD/src/cli/moe" "$BUILD/tests/cuda/test_cuda"
}
stage_locate() {  # one prefill with blocking launches: a failing kernel names itself
  checkpoint || return 1
  CUDA_LAUNCH_BLOCKING=1 "$BUILD/src/cli/moe" bench --device cuda --model "$MODEL" --prompt-tokens 4096 --batch 1 \
    --context 512 --steps 2 2>&1 | tail -3
}
stage_tests() {  # the new paths, then the op tests that share them
  "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaPrefill.*' 2>&1 | tee "$LOG/tests.log" \
    | grep -E "^\[  (FAILED|PASSED) |rel L2|expanded vs|Failure|error" | tail -40
  if grep -q "FAILED" "$LOG/tests.log"; then  # name the faulting kernel on the small cases
    compute-sanitizer --tool memcheck --print-limit 3 "$BUILD/tests/cuda/test_cuda" \
      --gtest_filter='CudaPrefill.ExpandedMlaFixtureHeads:CudaPrefill.DenseSwigluMatchesCpu' >"$LOG/memcheck.log" 2>&1
    grep -E "Invalid|at 0x|by thread|Address|ERROR SUMMARY|========= +(at|Host)" "$LOG/memcheck.log" | head -16
  fi
  "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaOps.*:CudaMla.*:CudaGraph.*' 2>&1 | tee -a "$LOG/tests.log" \
    | grep -E "^\[  (FAILED|PASSED) |Failure" | tail -8
  MOE_CUDA_PREFILL=split "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaMoe.*' 2>&1 | tee -a "$LOG/tests.log" \
    | grep -E "^\[  (FAILED|PASSED) |Failure" | tail -5
}
stage_model() {  # whole-model fixture tests in both prefill precisions, and the op-by-op trace
  for m in bf16 split; do
    MOE_CUDA_PREFILL=$m "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaModel.*' 2>&1 | tee "$LOG/model-$m.log" \
      | grep -E "^\[  (FAILED|PASSED) |NOT a near|rel L2 .* top-1|Failure" | sed "s/^/[$m] /" | tail -24
  done
  "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaTrace.*' > "$LOG/trace.log" 2>&1
  grep -E "logits: rel L2|^\[  (FAILED|PASSED) |first op above" "$LOG/trace.log" | tail -30
}
checkpoint() {
  if [ ! -d "$MODEL" ]; then
    local t=$(date +%s)
    "$BUILD/src/cli/moe" create-random --config bench/gpu/configs/moonlight-16b-a3b.json --out "$MODEL" --dtype bf16 >/dev/null || return 1
    echo "create-random: $(( $(date +%s) - t )) s" | tee -a "$LOG/summary.txt"
  fi
}
stage_bench() {
  checkpoint || return 1
  for v in "new:" "new,split:MOE_CUDA_PREFILL=split" "new,absorbed-mla:MOE_CUDA_MLA_PREFILL=0" \
           "new,cublas-experts:MOE_CUDA_MOE_GEMM=cublas" "old:MOE_CUDA_PREFILL_KERNELS=0" "new:"; do
    local name=${v%%:*} envs=${v#*:}
    env $envs "$BUILD/src/cli/moe" bench --device cuda --model "$MODEL" --prompt-tokens 4096 --batch 1 --context 512 --steps 2 \
      2>&1 | tee "$LOG/bench-$name.log" | grep -E "^(ceilings|prefill)" | sed "s/^/[$name] /" | tee -a "$LOG/summary.txt"
  done
}
stage_ncu() {  # kernel times of the timed prefills (4096 tokens), summed per kernel
  ncu --csv --metrics gpu__time_duration.sum --clock-control none --log-file "$LOG/ncu.csv" \
    "$BUILD/src/cli/moe" bench --device cuda --model "$MODEL" --prompt-tokens 4096 --batch 1 --context 512 --steps 1 >"$LOG/ncu-app.log" 2>&1
  echo "ncu exit $?"
  python3 bench/gpu/ncu_summary.py "$LOG/ncu.csv" --forward 1 > "$LOG/ncu-summary.txt" 2>&1
  head -45 "$LOG/ncu-summary.txt"
  rm -f "$LOG/ncu.csv"
}

pack() {  # after every stage, so a run stopped at its time limit still returns its logs
  tar czf "$OUT/logs.tgz" -C "$LOG" . 2>/dev/null
  cp "$LOG/summary.txt" "$OUT/" 2>/dev/null
  [ -f "$LOG/ncu-summary.txt" ] && cp "$LOG/ncu-summary.txt" "$OUT/"
  return 0
}
for s in "$@"; do
  stamp "$s"
  "stage_$s" || echo "stage $s FAILED"
  pack
done
stamp done
pack
echo "---- summary"; cat "$LOG/summary.txt"
