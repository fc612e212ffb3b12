#!/usr/bin/env bash
# GPU stage of the epserve branch (issue 12, expert-parallel inference): after `scripts/gpu/run.sh build` built
# build-gpu, runs test_ep: the CPU thread-rank tests and ExpertParallelCuda (two ranks as threads, each its own
# CUDA context, rows staged through host memory) against one GPU. Writes $OUT/epserve/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/epserve
mkdir -p "$D"
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
bin=build-gpu/tests/ep/test_ep
if [ ! -x "$bin" ]; then echo "test_ep: not built" | tee "$D/summary.txt"; exit 1; fi
timeout 150 "$bin" --gtest_output=xml:"$D/test_ep.xml" >"$D/test_ep.log" 2>&1
r=$?
echo "test_ep: exit $r" | tee "$D/summary.txt"
grep -E "^\[ +(OK|FAILED|SKIPPED) |Failure" "$D/test_ep.log" | tail -40 | tee -a "$D/summary.txt"
exit $r
