#!/usr/bin/env bash
# On a GPU machine (the device box: CUDA 13, nvcc, PyTorch's venv with cmake + ninja, no package registry):
# unpack the Debian packages fetched by scripts/gpu/fetch-debs.sh (.deps/debs), build the whole tree as it is
# with CUDA, and run stages, writing logs under $OUT (default ./out/gpu):
#   scripts/gpu/run.sh build test sanitize mla bench-moonlight bench-moonlight-fp8 bench-v3 hf-peer
# A/B against an earlier commit, both built in the same run: put that commit's tree in .base (e.g.
# `git archive <commit> -- . ':!models' ':!tests/data' | tar -x -C .base`, carried to the machine), then
#   scripts/gpu/run.sh build build-base ab-moonlight ab-moonlight-fp8
# Without building on the box: scripts/gpu/pack-bin.sh here, carry .bin, then `run.sh unpack [unpack-base] ...`.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
mkdir -p "$OUT"
PREFIX=/tmp/moe-deps
BUILD=$ROOT/build-gpu
MODELS=${MODELS:-/tmp/moe-models}
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH

deps() {
  [ -d "$PREFIX/usr" ] && return
  mkdir -p "$PREFIX"
  for f in .deps/debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
}
env_deps() {
  # (Unpacked builds, stage unpack: their libraries in lib/, CUDA's from the toolkit.)
  export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu:$BUILD/lib:$ROOT/build-base/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$PREFIX/usr/share/pkgconfig
  export PKG_CONFIG_SYSROOT_DIR=$PREFIX
  if ! command -v pkg-config >/dev/null; then export PKG_CONFIG=$PREFIX/usr/bin/pkgconf; fi
}

cmake_build() {  # source build-dir targets...
  local src=$1 build=$2; shift 2
  # A fresh build folder each time: a warm machine may hold objects built from another copy of the tree whose
  # times are newer than these sources (ninja would then skip them and link a mix of versions).
  [ "${MOE_KEEP_BUILD:-0}" = 1 ] || rm -rf "$build"
  local log=$OUT/build-$(basename "$build").log
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON -DMOE_WEB_BUNDLE=OFF \
    -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DPKG_CONFIG_EXECUTABLE="${PKG_CONFIG:-pkg-config}" >"$log" 2>&1 \
    || { tail -40 "$log"; return 1; }
  cmake --build "$build" -j"${JOBS:-16}" --target "$@" >>"$log" 2>&1 || { grep -E "error|FAILED" "$log" | head -40; return 1; }
}

stage_build() {
  deps
  (nvidia-smi; nvcc --version | tail -2; cmake --version | head -1; g++ --version | head -1) 2>&1 | tee "$OUT/env.txt"
  env_deps
  # BUILD_TARGETS: a shorter list for a call that needs only some (the trainer's: "moe test_train_cuda").
  # shellcheck disable=SC2086
  cmake_build "$ROOT" "$BUILD" ${BUILD_TARGETS:-moe test_cuda bench_mla_attention bench_dsa sandboxes test_train_cuda bench_sample test_dist test_dist_nccl test_ep test_cuda_w4a16 test_cuda_fp8 test_cuda_moe_fp8 bench_moe_fp8 test_launcher_gpu} && echo "build ok"
}
# Binaries built on the development machine instead (scripts/gpu/pack-bin.sh, carry ".bin"): .bin/binpk.tar.xz
# into build-gpu, .bin/basepk.tar.xz into build-base; then the stages as after build / build-base.
stage_unpack() { unpack_to .bin/binpk.tar.xz "$BUILD"; }
stage_unpack-base() { unpack_to .bin/basepk.tar.xz "$ROOT/build-base"; }
unpack_to() {
  [ -f "$1" ] || { echo "no $1 (scripts/gpu/pack-bin.sh, carry .bin)"; return 1; }
  rm -rf "$2" && mkdir -p "$2" && tar -xJf "$1" -C "$2" && echo "unpacked $1 (built at $(cat "$2/BUILT")) into $2"
  (nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true) 2>&1 | tee -a "$OUT/env.txt"
}
# The tree in .base (an earlier commit), for A/B runs in the same session: build-base/src/cli/moe.
stage_build-base() {
  deps
  env_deps
  [ -d "$ROOT/.base" ] || { echo "no .base tree"; return 1; }
  cmake_build "$ROOT/.base" "$ROOT/build-base" moe && echo "base build ok"
}
stage_test() {
  env_deps
  "$BUILD/tests/cuda/test_cuda" --gtest_filter="${TEST_FILTER:-*}" 2>&1 | tee "$OUT/test_cuda.log" | grep -E "^\[ +(OK|FAILED|PASSED) |^\[=+\]|Failure" | tail -60
}
stage_sanitize() {
  env_deps
  compute-sanitizer --tool memcheck --leak-check no "$BUILD/src/cli/moe" generate --device cuda --model models/tiny-dsv3 \
    --tokens 311,811,1336,101,151,1684,1100 --max-new-tokens 12 >"$OUT/memcheck.log" 2>&1
  echo "memcheck exit $?"; tail -5 "$OUT/memcheck.log"
  compute-sanitizer --tool memcheck --leak-check no "$BUILD/src/cli/moe" generate --device cuda --model models/tiny-dsv3-fp8 \
    --tokens 311,811,1336,101,151,1684,1100 --max-new-tokens 12 >"$OUT/memcheck-fp8.log" 2>&1
  echo "memcheck fp8 exit $?"; tail -3 "$OUT/memcheck-fp8.log"
  # The whole-model fixture tests (prompts up to 100 tokens: expanded-form MLA prefill, graphs) and the small
  # prefill-kernel cases under memcheck too.
  compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/cuda/test_cuda" \
    --gtest_filter='CudaModel.*:CudaGraph.*:CudaPrefill.ExpandedMlaFixtureHeads:CudaPrefill.DenseSwigluMatchesCpu' \
    >"$OUT/memcheck-tests.log" 2>&1
  echo "memcheck tests exit $?"; grep -E "^\[  (PASSED|FAILED)|ERROR SUMMARY" "$OUT/memcheck-tests.log" | tail -4
}
stage_mla() {
  env_deps
  for h in 16 128; do for b in 1 64; do for c in 512 4096; do "$BUILD/tests/cuda/bench_mla_attention" $b $c $h 20; done; done; done 2>&1 | tee "$OUT/mla.log"
}
# DeepSeek-V3.2's sparse decode attention (DSA) against dense MLA at long contexts (bench/gpu/dsa_bench.cpp).
stage_dsa() {
  env_deps
  for b in 1 8; do for c in 32768 131072; do "$BUILD/tests/cuda/bench_dsa" $b $c 10; done; done 2>&1 | tee "$OUT/dsa.log"
}
bench_model() {  # name config dtype batches contexts
  env_deps
  local dir=$MODELS/$1
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config "$2" --out "$dir" --dtype "$3" >/dev/null || return 1
  "$BUILD/src/cli/moe" bench --device cuda --model "$dir" --prompt-tokens 4096 --batch "$4" --context "$5" 2>&1 | tee "$OUT/bench-$1.log"
  rm -rf "$dir"
}
# Decode at batch 1 and 64 (contexts 512 and 4096) and prefill 4096, then prefill again with the other
# prefill GEMM precision (--cuda-prefill split), on one random checkpoint.
quick_model() {  # name config dtype
  env_deps
  local dir=$MODELS/$1
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config "$2" --out "$dir" --dtype "$3" >/dev/null || return 1
  "$BUILD/src/cli/moe" bench --device cuda --model "$dir" --prompt-tokens 4096 --batch 1,64 --context 512,4096 2>&1 | tee "$OUT/quick-$1.log"
  "$BUILD/src/cli/moe" bench --device cuda --cuda-prefill split --model "$dir" --prompt-tokens 4096 --batch 1 --context 512 2>&1 | grep -E "prefill|decode" | sed 's/^/[prefill split] /' | tee -a "$OUT/quick-$1.log"
  rm -rf "$dir"
}
stage_quick-moonlight() { quick_model moonlight-bf16 bench/gpu/configs/moonlight-16b-a3b.json bf16; }
stage_quick-moonlight-fp8() { quick_model moonlight-fp8 bench/gpu/configs/moonlight-16b-a3b.json fp8; }
# Batch-1 decode of the Moonlight shape, A/B in one process tree on one checkpoint: decode steps replayed from
# CUDA graphs (the default) and without graphs. (Launches without programmatic dependent launch: the sandbox.)
decode_ab() {  # name config dtype
  env_deps
  local dir=$MODELS/$1
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config "$2" --out "$dir" --dtype "$3" >/dev/null || return 1
  for v in "graph:true" "no-graph:false" "graph:true"; do
    local name=${v%%:*} graphs=${v#*:}
    "$BUILD/src/cli/moe" bench --device cuda --cuda-graphs "$graphs" --model "$dir" --prompt-tokens 128 --batch 1 --context 512,4096 --steps 48 2>&1 \
      | grep -E "^(device|ceilings|decode)" | sed "s/^/[$name] /" | tee -a "$OUT/decode-$1.log"
  done
}
stage_decode-moonlight() { decode_ab moonlight-bf16 bench/gpu/configs/moonlight-16b-a3b.json bf16; }
stage_decode-moonlight-fp8() { decode_ab moonlight-fp8 bench/gpu/configs/moonlight-16b-a3b.json fp8; }
# Kernel times of one prefill and one decode step (batch 1, context 512; a graph replay) of the Moonlight
# shape under Nsight Compute (one metric, clocks as found), summed per kernel by bench/gpu/ncu_summary.py.
profile() {  # name config dtype prompt_tokens
  env_deps
  local dir=$MODELS/$1
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config "$2" --out "$dir" --dtype "$3" >/dev/null || return 1
  ncu --csv --metrics gpu__time_duration.sum --clock-control none --log-file "$OUT/ncu.csv" \
    "$BUILD/src/cli/moe" bench --device cuda --model "$dir" --prompt-tokens "$4" --batch 1 --context 512 --steps 1 >"$OUT/ncu-app.log" 2>&1
  echo "ncu exit $?"; tail -3 "$OUT/ncu-app.log"
  python3 bench/gpu/ncu_summary.py "$OUT/ncu.csv" --forward 1 --forward -1 | tee "$OUT/ncu-summary-$1.txt"
  rm -f "$OUT/ncu.csv"
}
# Kernel times of one 4096-token prefill of the Moonlight shape on weights made in memory (no checkpoint on
# disk), FP8 W8A8 and BF16, caches as found (issue 14's FP8-vs-BF16 prefill ratio, op by op).
profile_random() {  # name dtype prefill-mode
  env_deps
  ncu --csv --metrics gpu__time_duration.sum --clock-control none --cache-control none --log-file "$OUT/ncu-$1.csv" \
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json --random-weights \
    --random-dtype "$2" --cuda-prefill "$3" --prompt-tokens 4096 --batch 1 --context 512 --steps 1 >"$OUT/ncu-app-$1.log" 2>&1
  echo "ncu exit $?"; grep -E "^prefill" "$OUT/ncu-app-$1.log"
  python3 bench/gpu/ncu_summary.py "$OUT/ncu-$1.csv" --forward 1 | tee "$OUT/ncu-summary-$1.txt"
  rm -f "$OUT/ncu-$1.csv"
}
# Kernel times and DRAM bytes read of one decode step (context 512) of the Moonlight shape on weights made in
# memory, caches flushed before each kernel (weights come from HBM as in a real step): which kernels stream
# their bytes at what rate. DECODE_BATCH (default 1); DECODE_CONFIG (default the Moonlight shape).
profile_decode_random() {  # name dtype
  env_deps
  local b=${DECODE_BATCH:-1}
  ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum --clock-control none --cache-control all \
    --log-file "$OUT/ncu-$1-b$b.csv" "$BUILD/src/cli/moe" bench --device cuda --model "${DECODE_CONFIG:-bench/gpu/configs/moonlight-16b-a3b.json}" \
    --random-weights --random-dtype "$2" --prompt-tokens 16 --batch "$b" --context 512 --steps 1 >"$OUT/ncu-app-$1-b$b.log" 2>&1
  echo "ncu exit $?"; grep -E "^decode" "$OUT/ncu-app-$1-b$b.log"
  python3 bench/gpu/ncu_summary.py "$OUT/ncu-$1-b$b.csv" --forward -1 | tee "$OUT/ncu-summary-$1-b$b.txt"
  rm -f "$OUT/ncu-$1-b$b.csv"
}
stage_profile-decode-bf16() { profile_decode_random decode-bf16 bf16; }
stage_profile-decode-fp8() { profile_decode_random decode-fp8 fp8; }
# Issue 14's llama.cpp comparison: the checkpoint of ../shared/PERF.md's table (8 layers at Moonlight's widths,
# q_lora 1536, DeepSeek-V3's vocabulary; bench/gpu/configs/llamacpp-peer-8layers.json), weights made in memory,
# BF16 and FP8 (W8A8 prefill), decode at batch 1, 8, 64 and 256 (context 512) and prefill 4096.
stage_llama-peer() {
  env_deps
  for v in "bf16:bf16" "fp8:fp8"; do
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights \
      --random-dtype "${v%%:*}" --cuda-prefill "${v#*:}" --prompt-tokens 4096 --batch 1,8,64,256 --context 512 2>&1 \
      | grep -E "^(device|ceilings|weights|prefill|decode)" | sed "s/^/[${v%%:*}] /" | tee -a "$OUT/llama-peer.log"
  done
}
# Issue 14's decode after a change to its kernels: the MoE, GEMV, graph, model and speculative tests, then the
# llama.cpp-peer checkpoint (with GEMV_EXPERTS_AB=1, BF16 also with the routed experts' GEMV for every decode
# batch: the A/B of --cuda-grouped-experts-tokens) and batch-1 decode of the Moonlight shape, BF16 and FP8 (W8A8);
# with MOE_FUSION_AB=1 also the A/B of --cuda-moe-decode-fusion (below).
stage_decode-check() {
  env_deps
  timeout "${TEST_TIMEOUT:-300}" "$BUILD/tests/cuda/test_cuda" \
    --gtest_filter="${DECODE_TESTS:-CudaMoe.*:CudaPrimitives.*:CudaOps.*:CudaModel.*:CudaGraph.*:CudaSpec.*:CudaMla.*}" 2>&1 \
    | tee "$OUT/test_cuda_decode.log" | grep -E "^\[ +(OK|FAILED|PASSED) |^\[=+\]|Failure|rel L2" | tail -70
  stage_llama-peer
  if [ -n "${GEMV_EXPERTS_AB:-}" ]; then
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights \
      --random-dtype bf16 --cuda-grouped-experts-tokens 100000 --prompt-tokens 256 --batch 8,64,256 --context 512 2>&1 \
      | grep -E "^(decode)" | sed "s/^/[bf16 gemv experts] /" | tee -a "$OUT/llama-peer.log"
  fi
  for v in "bf16:bf16" "fp8:fp8"; do
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json --random-weights \
      --random-dtype "${v%%:*}" --cuda-prefill "${v#*:}" --prompt-tokens 128 --batch 1 --context 512,4096 --steps 48 2>&1 \
      | grep -E "^(ceilings|decode)" | sed "s/^/[moonlight ${v%%:*}] /" | tee -a "$OUT/moonlight-decode.log"
  done
  # MOE_FUSION_AB=1: the MoE decode fusions' checks and A/B timings too (stage fusion-ab).
  if [ -n "${MOE_FUSION_AB:-}" ]; then stage_fusion-ab; fi
}
# The MoE decode fusions (--cuda-moe-decode-fusion): their GPU tests, the new kernels under memcheck (their op
# tests, and greedy generation on both fixtures with them on), then Moonlight at batch 1 (context 512) and the
# 8-layer checkpoint at batches 1 and 4 with the fusions off and on, alternating (FUSION_REPS rounds).
stage_fusion-ab() {
  env_deps
  timeout 300 "$BUILD/tests/cuda/test_cuda" --gtest_filter="${FUSION_TESTS:-CudaMoe.*:CudaGraph.*}" \
    >"$OUT/test_cuda_fusion.log" 2>&1
  echo "fusion tests exit $?"
  grep -E "^\[ +(OK|FAILED|PASSED) |^\[=+\]|Failure|Expected|Which is|rel L2" "$OUT/test_cuda_fusion.log" | tail -60
  compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/cuda/test_cuda" \
    --gtest_filter="${MEMCHECK_TESTS:-CudaMoe.SharedExpertsAsRoutedOnes:CudaMoe.RouterAndRoutingInOneLaunch}" \
    >"$OUT/memcheck-fusion.log" 2>&1
  echo "memcheck fusion tests exit $?"; grep -E "^\[  (PASSED|FAILED)|ERROR SUMMARY" "$OUT/memcheck-fusion.log" | tail -3
  for m in models/tiny-dsv3 models/tiny-dsv3-fp8; do
    compute-sanitizer --tool memcheck --leak-check no "$BUILD/src/cli/moe" generate --device cuda --model $m \
      --cuda-moe-decode-fusion true --tokens 311,811,1336,101,151,1684,1100 --max-new-tokens 12 \
      >"$OUT/memcheck-fusion-$(basename $m).log" 2>&1
    echo "memcheck fusion $m exit $?"; tail -2 "$OUT/memcheck-fusion-$(basename $m).log"
  done
  for rep in ${FUSION_REPS:-1 2}; do for v in "bf16:bf16" "fp8:fp8"; do for fused in false true; do
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json --random-weights \
      --random-dtype "${v%%:*}" --cuda-prefill "${v#*:}" --cuda-moe-decode-fusion $fused --prompt-tokens 128 \
      --batch 1 --context 512 --steps 48 2>&1 \
      | grep -E "^(ceilings|decode)" | sed "s/^/[moonlight ${v%%:*} fusion=$fused $rep] /" | tee -a "$OUT/moe-fusion.log"
    "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights \
      --random-dtype "${v%%:*}" --cuda-prefill "${v#*:}" --cuda-moe-decode-fusion $fused --prompt-tokens 256 \
      --batch 1,4 --context 512 2>&1 \
      | grep -E "^(decode)" | sed "s/^/[8-layer ${v%%:*} fusion=$fused $rep] /" | tee -a "$OUT/moe-fusion.log"
  done; done; done
}
# Which kernel takes the routed experts at decode batches (--cuda-bf16-grouped-experts-tokens, default 9, and
# --cuda-grouped-experts-tokens for FP8, default 8): the MoE tests, then BF16 decode of the llama.cpp-peer
# checkpoint at batches 8-32 with the default (GEMV below 9, grouped GEMM from 9) against the GEMV up to 32
# tokens, alternating twice, and FP8 at batches 1 and 8 with the defaults.
stage_experts-threshold() {
  env_deps
  timeout 120 "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaMoe.*:CudaPrimitives.*' 2>&1 \
    | tee "$OUT/test_cuda_experts.log" | grep -E "^\[ +(OK|FAILED|PASSED) |Failure" | tail -20
  for g in 9 33 9 33; do
    timeout 90 "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json \
      --random-weights --random-dtype bf16 --cuda-prefill bf16 --cuda-bf16-grouped-experts-tokens $g \
      --prompt-tokens 256 --batch 8,12,16,24,32 --context 512 --steps 48 2>&1 \
      | grep -E "^(ceilings|decode)" | sed "s/^/[bf16 g$g] /" | tee -a "$OUT/experts-threshold.log"
  done
  timeout 90 "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json \
    --random-weights --random-dtype fp8 --cuda-prefill fp8 --prompt-tokens 256 --batch 1,8 --context 512 --steps 48 \
    2>&1 | grep -E "^(decode)" | sed "s/^/[fp8 default] /" | tee -a "$OUT/experts-threshold.log"
}
# Issue 14's prefill after a change to its kernels: the prefill and FP8 fixture tests, then one 4096-token prefill
# and batch-1 decode of the Moonlight shape on weights made in memory, FP8 W8A8 and BF16, alternating twice.
stage_prefill-check() {
  env_deps
  timeout ${TEST_TIMEOUT:-240} "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaPrefill.*:CudaModel.*:CudaGraph.*Fp8*:CudaMla*' \
    >"$OUT/test_cuda_prefill.log" 2>&1
  echo "test_cuda exit $?"
  grep -E "^\[ +(OK|FAILED|PASSED) |^\[=+\]|Failure|rel L2 vs CPU" "$OUT/test_cuda_prefill.log" | tail -60
  for rep in ${PREFILL_REPS:-1 2}; do for dt in fp8 bf16; do
    timeout 150 "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json --random-weights \
      --random-dtype $dt --cuda-prefill $dt --prompt-tokens 4096 --batch 1 --context 512 --steps ${DECODE_STEPS:-24} 2>&1 |
      grep -E "^(device|ceilings|prefill|decode)" | sed "s/^/[$dt $rep] /" | tee -a "$OUT/prefill-check.log"
  done; done
}
stage_profile-prefill-fp8() { profile_random prefill-fp8 fp8 fp8; }
stage_profile-prefill-bf16() { profile_random prefill-bf16 bf16 bf16; }
stage_profile-moonlight() { profile moonlight-bf16 bench/gpu/configs/moonlight-16b-a3b.json bf16 1024; }
stage_bench-moonlight() { bench_model moonlight-bf16 bench/gpu/configs/moonlight-16b-a3b.json bf16 1,8,64,256 512,4096; }
stage_bench-moonlight-fp8() { bench_model moonlight-fp8 bench/gpu/configs/moonlight-16b-a3b.json fp8 1,8,64,256 512,4096; }
stage_bench-v3() { bench_model v3-4layers-fp8 bench/gpu/configs/deepseek-v3-4layers.json fp8 1,8,64 512,4096; }
# `moe serve --device cuda` on the bundled tiny model: a chat completion, a streamed one and the metrics,
# through curl.
stage_serve() {
  env_deps
  local log=$OUT/serve.log port=18431
  "$BUILD/src/cli/moe" serve --device cuda --model models/tiny-dsv3 --port $port --ignore-eos >"$log" 2>&1 &
  local pid=$!
  for i in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
  curl -sS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"tiny-dsv3","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"temperature":0}' | tee -a "$log"; echo
  curl -sSN "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"tiny-dsv3","messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"stream":true}' | tail -3 | tee -a "$log"
  curl -sS "http://127.0.0.1:$port/metrics" | grep -E "^moe_" | head -12 | tee -a "$log"
  kill $pid; wait $pid; echo "serve exit $?"
}
# The kernel sandboxes of bench/gpu/sandbox (A/B variants kept out of production), each self-checking.
stage_sandbox() {
  env_deps
  bench/gpu/sandbox/run_all.sh "$BUILD" 2>&1 | tee "$OUT/sandbox.log" | grep -E "^(====|sandbox_)|FAIL|TFLOP|GB/s" | tail -40
}
# Decode's routed experts alone (bench/gpu/sandbox/moe_decode_experts.cu, build target
# sandbox_moe_decode_experts): production's grouped GEMVs against gemv_mma_block and other shapes, FP8 and BF16, 1-64 tokens.
stage_decode-experts() {
  env_deps
  "$BUILD/bench/gpu/sandbox/sandbox_moe_decode_experts" 2>&1 | tee "$OUT/decode-experts.log" | tail -45
  # The model's own shape from 2 tokens (routed experts only, the shared MLP apart).
  "$BUILD/bench/gpu/sandbox/sandbox_moe_decode_experts" --shared-routed 0 --tokens 2,4,8 2>&1 \
    | tee "$OUT/decode-experts-routed.log" | tail -40
}
# A/B of this tree against .base on one random checkpoint, both built in this run (build, build-base):
# decode at batch 1, 8 and 64 (context 512) and prefill 4096, alternating base and new twice (run-to-run noise).
ab_model() {  # name config dtype
  env_deps
  local dir=$MODELS/$1
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config "$2" --out "$dir" --dtype "$3" >/dev/null || return 1
  for rep in 1 2; do
    for which in base new; do
      local bin=$BUILD/src/cli/moe
      [ $which = base ] && bin=$ROOT/build-base/src/cli/moe
      "$bin" bench --device cuda --model "$dir" --prompt-tokens 4096 --batch 1,8,64 --context 512 --steps 24 2>&1 \
        | grep -E "^(device|ceilings|prefill|decode)" | sed "s/^/[$1 $which $rep] /" | tee -a "$OUT/ab-$1.log"
    done
  done
  rm -rf "$dir"
}
# Batch-1 decode against the .base build in the same run (weights made in memory; .base from
# scripts/gpu/branch-tree.sh COMMIT .base): Moonlight BF16 and FP8 at batch 1 (context AB_MOON_CTX, default 512;
# AB_MOONLIGHT=0 skips it) and the 8-layer llama.cpp checkpoint at batches AB_BATCHES (default 1,4,8), base and new
# alternating, rounds AB_REPS (default "1 2"; even rounds run new before base, so that a drift over the run
# does not favour either); AB_DTYPES (default "bf16 fp8"). After `build build-base` (e.g. BUILD_TARGETS=moe).
stage_ab-decode1() {
  env_deps
  local order
  for rep in ${AB_REPS:-1 2}; do for v in ${AB_DTYPES:-bf16 fp8}; do
    order="base new"; [ $((rep % 2)) = 0 ] && order="new base"
    for which in $order; do
    local bin=$BUILD/src/cli/moe
    [ $which = base ] && bin=$ROOT/build-base/src/cli/moe
    [ "${AB_MOONLIGHT:-1}" = 1 ] && "$bin" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json \
      --random-weights --random-dtype $v --cuda-prefill $v --prompt-tokens 128 --batch 1 --context "${AB_MOON_CTX:-512}" \
      --steps 48 2>&1 | grep -E "^(ceilings|decode)" | sed "s/^/[moonlight $v $which $rep] /" | tee -a "$OUT/ab-decode1.log"
    "$bin" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights --random-dtype $v \
      --cuda-prefill $v --prompt-tokens 256 --batch "${AB_BATCHES:-1,4,8}" --context 512 2>&1 | grep -E "^(ceilings|decode)" \
      | sed "s/^/[8-layer $v $which $rep] /" | tee -a "$OUT/ab-decode1.log"
  done; done; done
}
# Where a replayed batch-1 decode step's time goes: CUPTI timelines (bench/gpu/kernel_timeline.cpp; build target
# moe_kernel_timeline) of the 8-layer llama.cpp checkpoint, BF16 and FP8, summarised per kernel by
# bench/gpu/timeline_summary.py into $OUT/timeline-decode-{bf16,fp8}.txt.
stage_timeline-decode() {
  env_deps
  for v in ${TIMELINE_DTYPES:-fp8 bf16}; do
    CUDA_INJECTION64_PATH=$BUILD/tests/cuda/libmoe_kernel_timeline.so MOE_TIMELINE_OUT=$OUT/timeline-decode-$v.csv \
      "$BUILD/src/cli/moe" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights \
      --random-dtype $v --cuda-prefill $v --prompt-tokens 256 --batch 1 --context 512 --steps 32 \
      >"$OUT/timeline-decode-$v.log" 2>&1
    python3 bench/gpu/timeline_summary.py "$OUT/timeline-decode-$v.csv" --top 30 | tee "$OUT/timeline-decode-$v.txt" | head -20
    gzip -f "$OUT/timeline-decode-$v.csv"
  done
}
stage_ab-moonlight() { ab_model moonlight-bf16 bench/gpu/configs/moonlight-16b-a3b.json bf16; }
stage_ab-moonlight-fp8() { ab_model moonlight-fp8 bench/gpu/configs/moonlight-16b-a3b.json fp8; }
# FP8 x FP8 prefill (issue 14): build only what these stages need, the kernel tests and the prefill tests in
# fp8 mode, the GEMM alone against BF16 (and torch._scaled_mm's block-scaled FP8 as the peer), and Moonlight
# FP8 prefill at 4096 tokens with --cuda-prefill bf16 (before) and fp8 (after), alternating twice.
stage_build-fp8() {
  deps
  (nvidia-smi; nvcc --version | tail -2) 2>&1 | tee "$OUT/env.txt" | grep -E "H200|H100|release" | head -3
  env_deps
  cmake_build "$ROOT" "$BUILD" moe test_cuda test_cuda_fp8 bench_fp8_gemm && echo "build ok"
}
stage_fp8-tests() {
  env_deps
  "$BUILD/tests/cuda/test_cuda_fp8" 2>&1 | tee "$OUT/test_fp8.log" | grep -E "^\[  (FAILED|PASSED) |FP8 GEMM|Failure|error" | tail -20
  "$BUILD/tests/cuda/test_cuda" --gtest_filter='CudaPrefill.GroupedExpertsMatchCpu:CudaPrefill.DenseSwigluMatchesCpu:CudaModel.Fp8*:CudaModel.Bf16LogitsMatchHf' \
    2>&1 | tee "$OUT/test_cuda_fp8_modes.log" | grep -E "^\[  (FAILED|PASSED) |rel L2 vs CPU|fp8_logits .*rel L2|Failure" | tail -40
}
stage_fp8-gemm() {
  env_deps
  "$BUILD/tests/cuda/bench_fp8_gemm" 2>&1 | tee "$OUT/fp8_gemm.log"
  PYTHONUNBUFFERED=1 python3 bench/gpu/scaled_mm_peer.py 2>&1 | tee "$OUT/scaled_mm_peer.log"
}
stage_fp8-prefill() {
  env_deps
  local dir=$MODELS/moonlight-fp8
  [ -d "$dir" ] || "$BUILD/src/cli/moe" create-random --config bench/gpu/configs/moonlight-16b-a3b.json --out "$dir" --dtype fp8 >/dev/null || return 1
  for rep in 1 2; do for mode in bf16 fp8; do
    "$BUILD/src/cli/moe" bench --device cuda --cuda-prefill $mode --model "$dir" --prompt-tokens 4096 --batch 1 --context 512 --steps 4 2>&1 \
      | grep -E "^(device|ceilings|prefill)" | sed "s/^/[$mode $rep] /" | tee -a "$OUT/fp8-prefill.log"
  done; done
}
# Issue 16 finding 5 on the GPU: the worst latency of small chat requests while a 60,000-token prompt is prefilled
# (moe serve's default step budget), bench/server/long_prefill_latency.py.
stage_long-prefill() {
  env_deps
  python3 bench/server/long_prefill_latency.py --moe "$BUILD/src/cli/moe" --model models/tiny-dsv3 --tokens 60000 \
    -- --device cuda --cache-tokens 128192 2>&1 | tee "$OUT/long-prefill.log"
}
# Issue 14's bars in one call (about 6 minutes; each step capped, so a slow one cannot eat the call), on main's
# binaries built here and carried:
#   cmake --build build --target moe bench_mla_attention bench_fp8_gemm
#   scripts/gpu/pack-bin.sh build .bin/binpk.tar.xz src/cli/moe tests/cuda/bench_mla_attention tests/cuda/bench_fp8_gemm
#   scripts/gpu/run.sh unpack bars        (carry .bin/binpk.tar.xz; logs in $OUT/bars/)
# MLA decode at batch 64, context 4096, 16 and 128 heads; the 8-layer llama.cpp-peer checkpoint, BF16 and FP8
# (W8A8) at batches 1, 8, 64 and 256 and prefill 4096, twice each; Moonlight's shape at batch 1 (contexts 512 and
# 4096) with its prefill of 4096 tokens, BF16 and FP8; the FP8 dense GEMM against torch._scaled_mm. The bars are
# for an H200: env.txt says which card ran.
stage_bars() {
  env_deps
  local D=$OUT/bars M=$BUILD/src/cli/moe
  mkdir -p "$D"
  (nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; cat "$BUILD/BUILT" 2>/dev/null) | tee "$D/env.txt"
  for h in 16 128; do timeout 30 "$BUILD/tests/cuda/bench_mla_attention" 64 4096 $h 20; done >"$D/mla.log" 2>&1
  grep -E "^RESULT " "$D/mla.log"
  for rep in 1 2; do for v in bf16 fp8; do
    timeout 90 "$M" bench --device cuda --model bench/gpu/configs/llamacpp-peer-8layers.json --random-weights \
      --random-dtype $v --cuda-prefill $v --prompt-tokens 4096 --batch 1,8,64,256 --context 512 --steps 48 2>&1 \
      | grep -E "^(ceilings|prefill|decode)" | sed "s/^/[peer $v $rep] /" | tee -a "$D/peer.log"
  done; done
  for v in bf16 fp8; do
    timeout 150 "$M" bench --device cuda --model bench/gpu/configs/moonlight-16b-a3b.json --random-weights \
      --random-dtype $v --cuda-prefill $v --prompt-tokens 4096 --batch 1 --context 512,4096 --steps 48 2>&1 \
      | grep -E "^(ceilings|prefill|decode)" | sed "s/^/[moonlight $v] /" | tee -a "$D/moonlight.log"
  done
  timeout 60 "$BUILD/tests/cuda/bench_fp8_gemm" >"$D/fp8_gemm.log" 2>&1; tail -9 "$D/fp8_gemm.log"
  PYTHONUNBUFFERED=1 timeout 90 python3 bench/gpu/scaled_mm_peer.py 2>&1 | tee "$D/scaled_mm_peer.log" | tail -7
}
stage_hf-peer() { PYTHONUNBUFFERED=1 python3 bench/gpu/hf_peer.py 2>&1 | tee "$OUT/hf_peer.log" | tail -5; }

for s in "$@"; do
  echo "=== $s $(date -u +%H:%M:%S)"
  "stage_$s" || echo "stage $s FAILED"
done
