#!/usr/bin/env bash
# Slot-1 GPU run of the fam17 branch (issue 17: INT4 experts resident on the GPU, forced-routing parity of the
# family fixtures, the V3.2 greedy-divergence diagnostic, INT4 vs BF16 vs FP8 expert decode). Run from the
# repository root after `scripts/gpu/run.sh build`; everything goes to $OUT/fam17/ (five files):
#   summary.txt  one line per stage, exit codes, the figures
#   tests.log    test_cuda's family, parity and V3.2 tests, test_cuda_w4a16
#   diag.log     CudaDsaDiagnostic.TinyV32GreedyDivergence (per-layer errors, top-k overlaps, routing flips)
#   bench.log    moe bench of a Kimi-K2-width random checkpoint as BF16, FP8 and INT4 experts, batch 1 and 8
#   env.txt      GPU, driver, commit
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
DST=$OUT/fam17
mkdir -p "$DST"
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
SUM=$DST/summary.txt
: >"$SUM"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; git log -1 --oneline 2>/dev/null; } \
  >"$DST/env.txt" 2>&1
BIN=build-gpu/tests/cuda
MOE=build-gpu/src/cli/moe

# 1. Tests (about a minute): INT4 experts against the CPU, forced-routing parity, V3.2 against HF, the V3 model
#    test whose routing helpers moved to route_report.h.
if [ -x "$BIN/test_cuda" ]; then
  start=$(date +%s)
  timeout 200 "$BIN/test_cuda" --gtest_filter='CudaFamily.*:CudaFamilyParity.*:CudaDsa.*:CudaModel.Bf16LogitsMatchHf:CudaModel.GreedyContinuationMatchesHf' \
    >"$DST/tests.log" 2>&1
  echo "test_cuda (family, parity, dsa, model) exit $? in $(( $(date +%s) - start )) s" >>"$SUM"
  grep -E "^\[ +(OK|FAILED) |^\[  PASSED|^\[  FAILED" "$DST/tests.log" >>"$SUM"
  grep -E "rel L2 .*top-1|flipped under free|as held|INT4 experts, T|every step picks|differs from HF" "$DST/tests.log" >>"$SUM"
  start=$(date +%s)
  timeout 120 "$BIN/test_cuda" --gtest_filter='CudaDsaDiagnostic.*' >"$DST/diag.log" 2>&1
  echo "CudaDsaDiagnostic exit $? in $(( $(date +%s) - start )) s" >>"$SUM"
  grep -E "first differing step|every step picks|differs from HF|^\[ +(OK|FAILED) " "$DST/diag.log" >>"$SUM"
else
  echo "no $BIN/test_cuda (build failed?)" >>"$SUM"
fi
if [ -x "$BIN/test_cuda_w4a16" ]; then
  timeout 60 "$BIN/test_cuda_w4a16" >>"$DST/tests.log" 2>&1
  echo "test_cuda_w4a16 exit $?" >>"$SUM"
fi

# 2. INT4 vs BF16 vs FP8 routed-expert decode at Kimi-K2's expert widths (hidden 7168, expert width 2048, top-8,
#    one shared expert; bench/gpu/configs/kimi-k2-experts.json): 48 experts in 2 MoE layers after one small dense
#    layer, 16 heads, vocabulary 8192, so that the routed experts dominate the bytes per token and each
#    checkpoint (8.5 GB of experts in BF16) is written and loaded within the slot.
if [ -x "$MOE" ]; then
  M=/tmp/fam17-models
  for v in int4:kimi-k2:bf16 fp8:kimi-k2:fp8 bf16:v3:bf16; do
    IFS=: read -r name fam dtype <<<"$v"
    rm -rf "$M"; mkdir -p "$M"
    start=$(date +%s)
    timeout 100 "$MOE" create-random --config bench/gpu/configs/kimi-k2-experts.json --family "$fam" --dtype "$dtype" \
      --out "$M/$name" >/dev/null 2>>"$DST/bench.log"
    echo "create-random $name exit $? in $(( $(date +%s) - start )) s, $(du -sh "$M/$name" 2>/dev/null | cut -f1)" >>"$SUM"
    echo "=== $name ($fam, $dtype)" >>"$DST/bench.log"
    timeout 100 "$MOE" bench --device cuda --model "$M/$name" --prompt-tokens 256 --batch 1,8 --context 512 --steps 32 \
      >>"$DST/bench.log" 2>&1
    echo "bench $name exit $?" >>"$SUM"
    sed -n "/^=== $name /,\$p" "$DST/bench.log" | grep -E "^weights:|^decode:|^prefill:" | sed "s/^/[$name] /" >>"$SUM"
  done
  rm -rf "$M"
fi
cat "$SUM"
