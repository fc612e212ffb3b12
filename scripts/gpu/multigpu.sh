#!/usr/bin/env bash
# Issue 13's runs on a machine with several H200s (kinds nvidia-h200-x2 / -x4 / -x8), one command a stage, from the
# repository root after `scripts/gpu/run.sh build` (its default targets include moe, test_ep, test_dist_nccl and
# test_launcher_gpu; add test_train_cuda for the train stage). Logs under $OUT/multigpu/<stage>/, packed into
# $OUT/multigpu.tgz after every stage (the device tool returns a handful of files).
#   scripts/gpu/multigpu.sh STAGE...     stages below; N = the visible GPUs (nvidia-smi -L) unless GPUS=N
#   ep2        (2+ GPUs) the communicator's and expert parallelism's multi-GPU tests (test_dist_nccl's two-rank
#              rendezvous, test_launcher_gpu, test_ep's EpNccl), then the fixture models' logits with --gpus 2
#              against one GPU (relative L2 and top-1 per row, scripts/gpu/compare_logits.py)
#   moonlight  (2+ GPUs) Moonlight-16B-A3B's shape, random BF16 and FP8 checkpoints (create-random, ~30 GB each):
#              decode at batch 1, 64, 256 (context 512) and prefill of 4096 tokens with --gpus 2 (replicated,
#              --dp-attention, --dp-attention --two-micro-batch), each point with its exchange time per step; the
#              same on one GPU for the scaling at batch 256
#   dsv3       (8 GPUs) DeepSeek-V3 at full size (61 layers, 256 experts) with random FP8 weights made on the
#              ranks (--random-weights: no files), --gpus 8: decode at batch 1, 32, 128, 512 (context 2048) and
#              prefill of 4096; again with two-micro-batch overlap, and with 32 redundant expert slots
#   train      (2+ GPUs) data-parallel training on the GPUs: train-mid's speed with --dp N against one GPU, and
#              `moe train --device cuda --dp N` against one GPU on the same data (step lines side by side)
#   serve      (8 GPUs) the OpenAI-API load test: `moe serve --gpus 8` on DeepSeek-V3 at full size with random FP8
#              weights (--random-weights, DeepSeek-V3's tokenizer), `moe bench-serve` at 64 concurrent streams: time
#              to first token and inter-token latency percentiles
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
BASE=$OUT/multigpu
MOE=${MOE:-$ROOT/build-gpu/src/cli/moe}
MODELS=${MODELS:-/tmp/moe-models}
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
NG=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
mkdir -p "$BASE" "$MODELS"
pack() { tar czf "$OUT/multigpu.tgz" -C "$OUT" multigpu; }
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  nvidia-smi topo -m; nproc; free -g | head -2; } >"$BASE/env.txt" 2>&1
need() {  # stage gpus
  if [ "$NG" -lt "$2" ]; then echo "$1: needs $2 GPUs, $NG visible: skipped" | tee -a "$BASE/summary.txt"; return 1; fi
}
run() {  # dir name seconds command...: the command's output in dir/name.log, its exit code in the summary
  local d=$1 name=$2 secs=$3; shift 3
  local t0=$SECONDS
  NCCL_DEBUG=WARN timeout "$secs" "$@" >"$d/$name.log" 2>&1
  local rc=$?
  echo "$(basename "$d")/$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$BASE/summary.txt"
  grep -E "^(model|device|ceilings|expert parallelism|prefill|decode|  expert)|FAILED|PASSED|Failure|error" \
    "$d/$name.log" | cut -c1-400 | head -40
  pack
  return $rc
}
random_ckpt() {  # config dtype -> prints the checkpoint directory (made once per machine)
  local dir=$MODELS/$(basename "$1" .json)-$2
  [ -f "$dir/config.json" ] || "$MOE" create-random --config "$1" --out "$dir" --dtype "$2" >&2 || return 1
  echo "$dir"
}

stage_ep2() {
  need ep2 2 || return 0
  local D=$BASE/ep2; mkdir -p "$D"
  run "$D" test_dist_nccl 180 build-gpu/tests/dist/test_dist_nccl
  run "$D" test_launcher_gpu 180 build-gpu/tests/dist/test_launcher_gpu
  run "$D" test_ep 300 build-gpu/tests/ep/test_ep --gtest_filter='EpNccl.*:ExpertParallelCuda.*:EpExchange.*:AllReduceMode.*'
  local ids="0,100,2000,31,7,1096,555,12,901,64,3,77"
  for m in models/tiny-dsv3 models/tiny-dsv3-fp8; do
    local n; n=$(basename "$m")
    run "$D" "logits-$n-1gpu" 120 "$MOE" logits --device cuda --model "$m" --tokens "$ids" --out "$D/$n-1.safetensors"
    run "$D" "logits-$n-ep2" 120 "$MOE" logits --device cuda --gpus 2 --model "$m" --tokens "$ids" \
      --out "$D/$n-ep2.safetensors"
    python3 scripts/gpu/compare_logits.py "$D/$n-ep2.safetensors" "$D/$n-1.safetensors" 2>&1 | tee "$D/compare-$n.txt"
    run "$D" "logits-$n-ep2-allreduce" 120 "$MOE" logits --device cuda --gpus 2 --ep-all-reduce --model "$m" \
      --tokens "$ids" --out "$D/$n-ep2-ar.safetensors"
    python3 scripts/gpu/compare_logits.py "$D/$n-ep2-ar.safetensors" "$D/$n-1.safetensors" 2>&1 \
      | tee "$D/compare-$n-allreduce.txt"
  done
  pack
}

stage_moonlight() {
  need moonlight 2 || return 0
  local D=$BASE/moonlight; mkdir -p "$D"
  for dt in bf16 fp8; do
    local ck; ck=$(random_ckpt bench/gpu/configs/moonlight-16b-a3b.json "$dt") || { echo "create-random failed"; continue; }
    local pre=(); [ "$dt" = fp8 ] && pre=(--cuda-prefill fp8)
    # MOONLIGHT_EP_MODES: replicated (every rank the whole batch), dpattn (--dp-attention: each rank its own
    # sequences), dpattn-tbo (and two-micro-batch overlap), allreduce (--ep-all-reduce: replicated, the experts'
    # partial sums all-reduced, decode steps replayed from graphs), dpattn-allreduce (--dp-attention
    # --ep-all-reduce: rows all-gathered, sums reduce-scattered, graphs); MOONLIGHT_1GPU=0 skips the one-GPU baseline.
    for mode in ${MOONLIGHT_EP_MODES:-allreduce dpattn-allreduce replicated dpattn dpattn-tbo}; do
      local flags=()
      case $mode in
        dpattn) flags=(--dp-attention) ;;
        dpattn-tbo) flags=(--dp-attention --two-micro-batch) ;;
        allreduce) flags=(--ep-all-reduce) ;;
        dpattn-allreduce) flags=(--dp-attention --ep-all-reduce) ;;
      esac
      run "$D" "$dt-ep2-$mode" 600 "$MOE" bench --device cuda --gpus 2 --model "$ck" --batch 1,64,256 --context 512 \
        --prompt-tokens 4096 "${pre[@]}" "${flags[@]}"
    done
    [ "${MOONLIGHT_1GPU:-1}" = 0 ] || run "$D" "$dt-1gpu" 300 "$MOE" bench --device cuda --model "$ck" \
      --batch 1,64,256 --context 512 --prompt-tokens 4096 "${pre[@]}"
  done
}

stage_dsv3() {
  need dsv3 8 || return 0
  local D=$BASE/dsv3; mkdir -p "$D"
  stage_dsv3_config
  local common=(bench --device cuda --gpus 8 --model "$D/deepseek-v3.json" --random-weights --random-dtype fp8
                --cuda-prefill fp8 --batch 1,32,128,512 --context 2048 --prompt-tokens 4096)
  run "$D" plain 600 "$MOE" "${common[@]}"
  run "$D" allreduce 600 "$MOE" "${common[@]}" --ep-all-reduce
  run "$D" tbo 600 "$MOE" "${common[@]}" --two-micro-batch
  run "$D" redundant 600 "$MOE" "${common[@]}" --redundant-experts 32
}

stage_train() {
  need train 2 || return 0
  local D=$BASE/train; mkdir -p "$D"
  local mid=(train-bench --device cuda --config bench/configs/train-mid.json --seq-len 2048 --moments bf16 --head bf16
             --attention flash --batch 8 --micro-batch 1 --steps 2 --profile)
  run "$D" "mid-1gpu" 300 "$MOE" "${mid[@]}"
  run "$D" "mid-dp$NG" 400 "$MOE" "${mid[@]}" --dp "$NG"
  # Losses: the default model's shape on the project's corpus sample (tokenized here), N ranks against one GPU.
  local data=$D/data
  if [ ! -f "$data/manifest.json" ]; then
    "$MOE" tokenize-corpus --tokenizer models/moe-tiny --out "$data" $(ls docs/*.md | grep -v training.md) README.md \
      src/model/*.cpp >"$D/tokenize.log" 2>&1
  fi
  local tr=(train --device cuda --config models/moe-tiny/config.json --data "$data" --steps 20 --seq-len 256
            --batch $((8 * NG)) --lr 2e-3 --seed 3 --head bf16 --attention flash)
  rm -rf "$D/run-1gpu" "$D/run-dp"
  run "$D" loss-1gpu 300 "$MOE" "${tr[@]}" --micro-batch 1 --out "$D/run-1gpu"
  run "$D" "loss-dp$NG" 300 "$MOE" "${tr[@]}" --micro-batch "$NG" --out "$D/run-dp" --dp "$NG"
  python3 - "$D/loss-1gpu.log" "$D/loss-dp$NG.log" <<'EOF' 2>&1 | tee "$D/loss-compare.txt"
import json, sys
def steps(p):
    return [json.loads(l) for l in open(p) if l.startswith('{"step"') and '"loss"' in l]
a, b = steps(sys.argv[1]), steps(sys.argv[2])
worst = 0.0
for x, y in zip(a, b):
    rel = abs(x["loss"] - y["loss"]) / abs(x["loss"])
    worst = max(worst, rel)
    print(f'step {x["step"]}: 1 GPU {x["loss"]:.9f}  dp {y["loss"]:.9f}  rel {rel:.2e}  tokens/s {x["tokens_per_s"]:.0f} / {y["tokens_per_s"]:.0f}')
print(f"{len(a)} and {len(b)} steps, worst relative loss difference {worst:.3e}")
EOF
  pack
}

stage_serve() {
  need serve 8 || return 0
  local D=$BASE/serve; mkdir -p "$D"
  [ -f "$BASE/dsv3/deepseek-v3.json" ] || stage_dsv3_config
  local port=18300
  "$MOE" serve --device cuda --gpus 8 --model "$BASE/dsv3/deepseek-v3.json" --random-weights --random-dtype fp8 \
    --tokenizer models/deepseek-v3-tokenizer --port $port --max-batch 128 --cache-tokens 262144 --ignore-eos \
    --no-access-log >"$D/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do grep -q "ready:" "$D/serve.log" && break; sleep 1; done
  run "$D" bench-serve-64 600 "$MOE" bench-serve --url http://127.0.0.1:$port --concurrency 64 --requests 256 \
    --max-tokens 256
  kill "$pid"; wait "$pid"
  tail -5 "$D/serve.log"
  pack
}
stage_dsv3_config() {
  mkdir -p "$BASE/dsv3"
  python3 -c "import json; c = json.load(open('bench/gpu/configs/deepseek-v3-4layers.json')); \
c['num_hidden_layers'] = 61; c['num_nextn_predict_layers'] = 0; json.dump(c, open('$BASE/dsv3/deepseek-v3.json', 'w'), indent=1)"
}

[ $# -gt 0 ] || { sed -n 2,24p "$0"; exit 2; }
for s in "$@"; do
  echo "== $s $(date -u +%T) on $NG GPUs" | tee -a "$BASE/summary.txt"
  "stage_$s"
done
pack
