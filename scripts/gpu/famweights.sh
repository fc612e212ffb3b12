#!/usr/bin/env bash
# Slot-1 GPU run of the famweights branch (issue 17: V3.1 ue8m0 FP8, Kimi-K2 384 experts with INT4 experts).
# Run from the repository root after `scripts/gpu/run.sh build`: makes the two HF float64 fixtures with
# /opt/torch/.venv/bin/python and runs the branch's CUDA tests, everything under $OUT/famweights/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
DST=$OUT/famweights
mkdir -p "$DST"
PY=/opt/torch/.venv/bin/python
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}

{ $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  >"$DST/versions.txt" 2>&1
for f in v31 kimi; do
  start=$(date +%s)
  timeout 150 $PY scripts/fixtures/gen_${f}_fixture.py "$DST/$f" >"$DST/gen_$f.log" 2>&1
  echo "gen_$f exit $? in $(( $(date +%s) - start )) s" | tee -a "$DST/summary.txt"
  tail -3 "$DST/gen_$f.log"
done

BIN=build-gpu/tests/cuda/test_cuda
if [ -x "$BIN" ]; then
  timeout 120 "$BIN" --gtest_filter='CudaFamily*:CudaMoe.Routing*' >"$DST/test_cuda_family.log" 2>&1
  echo "test_cuda family exit $?" | tee -a "$DST/summary.txt"
  grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |^\[=+\]|Failure|error" "$DST/test_cuda_family.log" | tail -40
else
  echo "no $BIN (build failed?)" | tee -a "$DST/summary.txt"
fi
if [ -x build-gpu/tests/cuda/test_cuda_w4a16 ]; then
  timeout 60 build-gpu/tests/cuda/test_cuda_w4a16 >"$DST/test_cuda_w4a16.log" 2>&1
  echo "test_cuda_w4a16 exit $?" | tee -a "$DST/summary.txt"
  grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |w4a16|Failure" "$DST/test_cuda_w4a16.log" | tail -12
else
  echo "no test_cuda_w4a16 (build failed, or built without it: scripts/gpu/run.sh build lists it)" | tee -a "$DST/summary.txt"
fi
if [ -x build-gpu/tests/cuda/test_cuda_fp8 ]; then
  timeout 60 build-gpu/tests/cuda/test_cuda_fp8 --gtest_filter='CudaFp8.Quantiser*' >"$DST/test_cuda_fp8_quantiser.log" 2>&1
  echo "test_cuda_fp8 quantiser (ue8m0 scales) exit $?" | tee -a "$DST/summary.txt"
fi
# The CPU-side fixture check on the GPU machine's build too, when the fixtures were made.
MOE=build-gpu/src/cli/moe
for f in v31 kimi; do
  if [ -x "$MOE" ] && [ -d "$DST/$f/model" ]; then
    timeout 60 "$MOE" info --model "$DST/$f/model" >"$DST/info_$f.txt" 2>&1
    timeout 60 "$MOE" generate --model "$DST/$f/model" --tokens 5,17,300 --max-new-tokens 12 >"$DST/generate_cpu_$f.txt" 2>&1
    timeout 60 "$MOE" generate --device cuda --model "$DST/$f/model" --tokens 5,17,300 --max-new-tokens 12 \
      >"$DST/generate_cuda_$f.txt" 2>&1
    echo "$f: cpu $(tail -1 "$DST/generate_cpu_$f.txt") | cuda $(tail -1 "$DST/generate_cuda_$f.txt")" | tee -a "$DST/summary.txt"
  fi
done
