#!/usr/bin/env bash
# GPU stage of the dist branch (issue 12): the communicator's tests on the GPU machine, after
# `scripts/gpu/run.sh build` built build-gpu. NcclCommunicator with one rank (every collective on device buffers
# against host-computed values); the two-rank test and the launcher's GPU path (test_launcher_gpu) skip visibly with
# fewer than two GPUs. Writes $OUT/dist/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/dist
mkdir -p "$D"
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
(nvidia-smi -L; ls -l /usr/local/cuda/lib64/libnccl* ) >"$D/env.txt" 2>&1
grep -E "NCCL|MPI" build-gpu/CMakeCache.txt >"$D/cmake-dist.txt" 2>&1
rc=0
for t in test_dist_nccl test_dist test_launcher_gpu; do
  bin=build-gpu/tests/dist/$t
  if [ ! -x "$bin" ]; then echo "$t: not built" | tee -a "$D/summary.txt"; rc=1; continue; fi
  NCCL_DEBUG=WARN timeout 120 "$bin" --gtest_output=xml:"$D/$t.xml" >"$D/$t.log" 2>&1
  r=$?
  echo "$t: exit $r" | tee -a "$D/summary.txt"
  [ $r = 0 ] || rc=1
done
exit $rc
