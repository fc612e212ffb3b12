#!/usr/bin/env bash
# GPU stage of the epk branch (issue 12, expert parallelism over NCCL on one GPU), after `scripts/gpu/run.sh build`
# built build-gpu (test_dist_nccl and test_ep are in its target list). About 60 s; each command capped:
#   test_dist_nccl: the communicator's one-rank collectives and its staging of host buffers;
#   test_ep (CUDA parts): EpNccl (the fixture models through a one-rank NcclCommunicator against the CPU and one
#   GPU, incl. the shared expert routed in decode and FP8 dispatch), EpExchange (dispatch/combine steps at real
#   widths against the CPU), ExpertParallelCuda (2 thread ranks), and the CPU tests Fp8*, SharedRouted* in this build.
# Writes $OUT/epk/: a log and a gtest XML per binary, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/epk
mkdir -p "$D"
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
(date -u; nvidia-smi -L; git log -1 --format='%H %s' 2>/dev/null) >"$D/env.txt" 2>&1
rc=0
step() {  # name seconds binary args...
  local name=$1 secs=$2 bin=$3; shift 3
  echo "=== $name $(date -u +%H:%M:%S)" | tee -a "$D/summary.txt"
  if [ ! -x "$bin" ]; then echo "$name: $bin not built" | tee -a "$D/summary.txt"; rc=1; return; fi
  NCCL_DEBUG=WARN timeout "$secs" "$bin" --gtest_output=xml:"$D/$name.xml" "$@" >"$D/$name.log" 2>&1
  local r=$?
  echo "$name: exit $r" | tee -a "$D/summary.txt"
  grep -E "^\[ +(OK|FAILED|SKIPPED) |Failure|rel L2|of its bound|seed" "$D/$name.log" | tail -60 | tee -a "$D/summary.txt"
  [ $r = 0 ] || rc=1
}
step test_dist_nccl 30 build-gpu/tests/dist/test_dist_nccl
step test_ep_cuda 75 build-gpu/tests/ep/test_ep --gtest_filter='*EpNccl*:EpExchange*:ExpertParallelCuda*:Fp8*:*SharedRouted*:AllReduceMode*'
exit $rc
