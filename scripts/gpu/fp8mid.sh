#!/usr/bin/env bash
# FP8 against BF16 training on the whole train-mid (issue 11's bar), from binaries built on the development machine
# and carried, so no device time goes to a build. Here:
#   cmake --build build --target moe test_train_cuda
#   scripts/gpu/pack-bin.sh build .bin/binpk.tar.xz src/cli/moe tests/train_cuda/test_train_cuda
#   (optionally an earlier build's moe as the base: cp it to build/src/cli/moe-base and name it in the pack too)
# then on the GPU machine, carrying .bin/binpk.tar.xz: scripts/gpu/fp8mid.sh. Writes under $OUT/fp8mid/:
#   env.txt              the card and what the binaries were built from
#   tests.log            test_train_cuda's FP8 tests (TESTS=0 skips them; TEST_FILTER picks others)
#   <run>.json / .err    `moe train-bench --profile`: the whole train-mid (16 layers + MTP), 16 sequences of 2048 a
#                        step in micro-batches of 1, flash attention, BF16 heads and moments (a later call's runs
#                        overwrite an earlier's: OUT apart)
# RUNS (default "fp8-4 bf16 fp8-fwd"): which runs, in order: bf16; fp8-N (--fp8-expert-weights N); fp8-fwd
# (forward); fp8-both (both); base-fp8-fwd, base-fp8-both (moe-base: the build before). Each is capped (CAP
# seconds, default 150).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/fp8mid
mkdir -p "$D" /tmp/r
tar -xJf .bin/binpk.tar.xz -C /tmp/r || exit 1
export LD_LIBRARY_PATH=/tmp/r/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
T0=$(date +%s)
el() { echo "[$(($(date +%s) - T0)) s] $*"; }
{ date -u; cat /tmp/r/BUILT; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } \
  | tee "$D/env.txt"
if [ "${TESTS:-1}" = 1 ]; then
  timeout 240 /tmp/r/tests/train_cuda/test_train_cuda --gtest_filter="${TEST_FILTER:-CudaTrainFp8.*}" \
    >"$D/tests.log" 2>&1
  echo "test_train_cuda exit $?"
  grep -E "^\[ +(FAILED|PASSED) |Failure" "$D/tests.log" | head -20
  el tests
fi
# LAYERS cuts train-mid to that many layers (an H100 holds 6 at 2 x 2048 under FP8); MICRO and BATCH: the micro-batch
# and the sequences a step (default 1 and 16).
cfg=bench/configs/train-mid.json
if [ -n "${LAYERS:-}" ]; then
  python3 -c "import json; c = json.load(open('$cfg')); c['num_hidden_layers'] = $LAYERS; \
json.dump(c, open('/tmp/mid$LAYERS.json', 'w'))" && cfg=/tmp/mid$LAYERS.json
fi
common="--device cuda --config $cfg --seq-len 2048 --moments bf16 --head bf16 --attention flash \
--batch ${BATCH:-16} --micro-batch ${MICRO:-1} --steps 2 --profile"
for run in ${RUNS:-fp8-4 bf16 fp8-fwd}; do
  bin=/tmp/r/src/cli/moe
  case $run in
    bf16) args="--gemm bf16" ;;
    fp8-fwd) args="--gemm fp8 --fp8-expert-weights forward" ;;
    fp8-both) args="--gemm fp8 --fp8-expert-weights both" ;;
    base-fp8-fwd) bin=/tmp/r/src/cli/moe-base; args="--gemm fp8 --fp8-expert-weights forward" ;;
    base-fp8-both) bin=/tmp/r/src/cli/moe-base; args="--gemm fp8 --fp8-expert-weights both" ;;
    fp8-*) args="--gemm fp8 --fp8-expert-weights ${run#fp8-}" ;;
    *) echo "unknown run $run"; continue ;;
  esac
  # shellcheck disable=SC2086
  timeout "${CAP:-150}" "$bin" train-bench $common $args >"$D/$run.json" 2>"$D/$run.err"
  echo "[$run] exit $?: $(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print({k: j.get(k) for k in \
('step_s', 'tokens_per_s', 'fraction_of_gemm', 'gemm_gflops', 'memory_plan_gib', 'memory_peak_used_gib', \
'memory_free_before_gib')}, j.get('profile_ms_per_step'))" "$D/$run.json" 2>&1 | cut -c1-700)"
  grep -E "memory plan|fp8 GEMMs" "$D/$run.err" | cut -c1-300
  el "$run"
done
