#!/usr/bin/env bash
# GPU run of the device sampler (Backend::sample, src/backend/cuda/sample.cu), after `scripts/gpu/run.sh build`
# has built build-gpu (test_cuda, bench_sample, moe). Writes under $OUT/gpusample/ (about 3 minutes):
#   test.log      the CudaSample tests (GPU vs the host sampler: greedy, 10k seeded draws, penalties, masks,
#                 logprobs, top-k ties)
#   memcheck.log  compute-sanitizer memcheck over two of them
#   bench.log     bench_sample: the op at batch 1, 64, 256 x vocabulary 129280 against the copy ceiling and the
#                 old path (rows copied to the host + host sampler)
#   decode-*.log  moe bench decode on a random Moonlight-shaped checkpoint (its widths and 163840-token
#                 vocabulary, 6 of its 27 layers, to fit the time): --sampler none / host / device
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/gpusample
mkdir -p "$D"
BUILD=$ROOT/build-gpu
MODELS=${MODELS:-/tmp/moe-models}
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
# The build stage may predate bench_sample in its target list: build what is missing.
if [ ! -x "$BUILD/tests/cuda/bench_sample" ] || [ ! -x "$BUILD/tests/cuda/test_cuda" ]; then
  cmake --build "$BUILD" -j16 --target test_cuda bench_sample moe >"$D/build.log" 2>&1 || { tail -40 "$D/build.log"; }
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv >"$D/gpu.txt" 2>&1
timeout 150 "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaSample.*' >"$D/test.log" 2>&1
echo "test exit $?" >>"$D/test.log"; tail -25 "$D/test.log"
timeout 120 "$BUILD/tests/cuda/bench_sample" 129280 20 >"$D/bench.log" 2>&1
echo "bench exit $?" >>"$D/bench.log"; cat "$D/bench.log"
timeout 120 compute-sanitizer --tool memcheck "$BUILD/tests/cuda/test_cuda" \
  --gtest_filter='CudaSample.TopKTiesGoToTheLowerIds:CudaSample.GreedyIsTheArgmax' >"$D/memcheck.log" 2>&1
echo "memcheck exit $?" >>"$D/memcheck.log"; tail -5 "$D/memcheck.log"
dir=$MODELS/moonlight6-bf16-gpusample
mkdir -p "$MODELS"
sed 's/"num_hidden_layers": 27/"num_hidden_layers": 6/' bench/gpu/configs/moonlight-16b-a3b.json >"$D/moonlight-6layers.json"
if [ -d "$dir" ] || timeout 120 "$BUILD/src/cli/moe" create-random --config "$D/moonlight-6layers.json" --out "$dir" --dtype bf16 >"$D/create.log" 2>&1; then
  for s in none host device; do
    timeout 150 "$BUILD/src/cli/moe" bench --device cuda --model "$dir" --prompt-tokens 128 --batch 1,64,256 --context 512 \
      --steps 16 --sampler $s >"$D/decode-$s.log" 2>&1
    echo "exit $?" >>"$D/decode-$s.log"; grep -E "decode|exit" "$D/decode-$s.log"
  done
  rm -rf "$dir"
fi
