#!/usr/bin/env bash
# FP8 training speed against BF16 at the mid-size model's widths (issue 11), for a GPU call: run from the
# repository root on the GPU machine. Builds what it needs in build-gpu (scripts/gpu/run.sh build), then writes
# under $OUT/fp8speed/ (one tarball, fp8speed.tgz, so the machine's file return takes it whole), in about 7 min:
#   sandbox.log          bench/gpu/sandbox/train_fp8_quant: the trainer's quantiser against the kernel it replaced,
#                        byte for byte, GB/s against a cudaMemcpy in the same process
#   tests.log            test_train_cuda CudaTrainFp8.* (the quantiser bit for bit against the host, the FP8 GEMMs
#                        and grouped experts against float64 products, a whole FP8 step against BF16) and
#                        CudaDeviceStep.*; test_cuda_fp8 and test_cuda_moe_fp8 (the inference quantiser)
#   tl-{fp8,bf16}.txt    per-kernel GPU time of a train-bench warm-up and step (train-mid cut to 4 layers, 4
#                        sequences a step) from the CUPTI timeline library (timeline_summary.py --eager)
#   mid6-{fp8,bf16}-b{8,32}.json  `moe train-bench --profile`: train-mid cut to 6 layers, 2 x 2048-token
#                        micro-batches, 8 and 32 sequences a step: step time, MFU, time per op class
#   mid-{fp8,bf16}-b16.json  the whole train-mid, 1 x 2048-token micro-batches, 16 a step (FP8 with
#                        --fp8-expert-weights forward: both layouts do not fit one H200); MIDFULL=0 skips it
# TIMELINES=0 skips the timelines; MID6_BATCHES (default "8 32") picks the cut model's batches.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/gpu}
D=$OUT/fp8speed
mkdir -p "$D"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
BUILD_TARGETS="moe test_train_cuda test_cuda_fp8 test_cuda_moe_fp8 moe_kernel_timeline sandbox_train_fp8_quant" \
  JOBS=${JOBS:-16} MOE_KEEP_BUILD=1 scripts/gpu/run.sh build 2>&1 | tail -2
el built
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-gpu
PY=/opt/torch/.venv/bin/python3
# The tree's commit: TREE where scripts/gpu/branch-tree.sh made this tree beside a checkout, else git's HEAD.
{ date -u; cat TREE 2>/dev/null || git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv; } \
  >"$D/env.txt" 2>&1
timeout 60 $B/bench/gpu/sandbox/sandbox_train_fp8_quant >"$D/sandbox.log" 2>&1; echo "sandbox exit $?"
cat "$D/sandbox.log"
timeout 200 $B/tests/train_cuda/test_train_cuda --gtest_filter='CudaTrainFp8.*:CudaDeviceStep.*' >"$D/tests.log" 2>&1
echo "test_train_cuda exit $?"
for t in test_cuda_fp8 test_cuda_moe_fp8; do
  timeout 120 "$(find $B/tests -name $t -type f | head -1)" >>"$D/tests.log" 2>&1; echo "$t exit $?"
done
grep -E "^\[ +(FAILED|PASSED) |Failure|fp8 experts" "$D/tests.log" | head -30
el tests
for n in 4 6; do
  $PY -c "import json; c = json.load(open('bench/configs/train-mid.json')); c['num_hidden_layers'] = $n; \
json.dump(c, open('/tmp/mid$n.json', 'w'))"
done
for g in $([ "${TIMELINES:-1}" = 1 ] && echo fp8 bf16); do
  CUDA_INJECTION64_PATH=$PWD/$B/tests/cuda/libmoe_kernel_timeline.so MOE_TIMELINE_OUT=$D/tl-$g.csv timeout 120 \
    $B/src/cli/moe train-bench --device cuda --gemm $g --config /tmp/mid4.json --seq-len 2048 --moments bf16 \
    --head bf16 --attention flash --batch 4 --micro-batch 2 --steps 1 >"$D/tl-$g.json" 2>"$D/tl-$g.err"
  $PY bench/gpu/timeline_summary.py "$D/tl-$g.csv" --eager --top 60 >"$D/tl-$g.txt" 2>&1
  head -14 "$D/tl-$g.txt"
  gzip -f "$D/tl-$g.csv"
done
el timelines
for b in ${MID6_BATCHES:-8 32}; do for g in fp8 bf16; do
  timeout 150 $B/src/cli/moe train-bench --device cuda --gemm $g --config /tmp/mid6.json --seq-len 2048 --moments bf16 \
    --head bf16 --attention flash --batch $b --micro-batch 2 --steps 2 --profile >"$D/mid6-$g-b$b.json" 2>"$D/mid6-$g-b$b.err"
  echo "[$g b$b] exit $?: $(cut -c1-400 "$D/mid6-$g-b$b.json")"
done; done
el benches
# The whole train-mid (16 layers + MTP): FP8 needs --fp8-expert-weights forward to fit one H200 (the memory plan:
# 142.7 GiB with both layouts at 1 x 2048, 134.9 with the forward one). 16 sequences a step of 1 x 2048.
if [ "${MIDFULL:-1}" = 1 ]; then
  for g in fp8 bf16; do
    extra=""; [ $g = fp8 ] && extra="--fp8-expert-weights forward"
    timeout 240 $B/src/cli/moe train-bench --device cuda --gemm $g $extra --config bench/configs/train-mid.json \
      --seq-len 2048 --moments bf16 --head bf16 --attention flash --batch 16 --micro-batch 1 --steps 2 --profile \
      >"$D/mid-$g-b16.json" 2>"$D/mid-$g-b16.err"
    echo "[mid $g b16] exit $?: $(cut -c1-600 "$D/mid-$g-b16.json")"; grep -E "memory plan" "$D/mid-$g-b16.err"
  done
  el "train-mid"
fi
tar czf "$OUT/fp8speed.tgz" -C "$OUT" fp8speed && rm -rf "$D"
