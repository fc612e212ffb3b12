#!/usr/bin/env bash
# The CUDA trainer's correctness and speed on one GPU (issue 11): run from the repository root on the GPU machine
# after `BUILD_TARGETS="moe test_train_cuda" JOBS=16 scripts/gpu/run.sh build`. Writes under $OUT/trainperf/ and
# re-packs $OUT/trainperf.tgz after every stage (the device tool returns a handful of files, and a call cut short
# by its time limit still returns what the finished stages wrote):
#   env.txt            date, commit, GPU
#   tests.log          flash and BF16 attention against the CPU, the router, the grouped expert GEMMs against
#                      per-expert cuBLAS (with their timings), whole steps
#   memcheck.log       compute-sanitizer memcheck of flash attention, the router and the grouped GEMMs
#   ncu-tn.txt         Nsight Compute's details of one grouped weight-gradient (tn) launch at train-mid's widths
#   kprof.txt          per-kernel GPU time of a train-bench step at train-mid's widths, 4 layers (stage kprof, not
#                      in the default list: ncu serialises ~5,000 launches)
#   bench-*.json/.err  `moe train-bench --device cuda --profile`: tokens/s, MFU against the BF16 GEMM rate measured
#                      in the same process, memory, time per op class
#   bench-mid-flash-mb2-b32.*  (stage midbig) train-mid with 32 sequences an optimizer step
#   dp-tests.log       data parallelism on the devices (stage dp, not in the default list): thread ranks against one
#                      GPU accumulating, NCCL with one rank; with 2+ GPUs bench-mid-flash-dpN.json
# STAGES (default "tests memcheck ncu mid default") picks parts; TEST_FILTER and MEMCHECK_FILTER override the
# filters; MID_BF16, DEF_BF16 (set) add the BF16-attention benches, MID_MB1=0 skips the 1 x 2048 one;
# MIDBIG_BATCHES lists midbig's sequences a step (default 32); KPROF_MB (default 1) is kprof's sequences a
# micro-batch.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu}
D=$OUT/trainperf
mkdir -p "$D"
BUILD=${BUILD:-$ROOT/build-gpu}
MOE=$BUILD/src/cli/moe
TEST=$BUILD/tests/train_cuda/test_train_cuda
export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
STAGES=${STAGES:-tests memcheck ncu mid default}
has() { [[ " $STAGES " == *" $1 "* ]]; }
pack() { tar czf "$OUT/trainperf.tgz" -C "$OUT" trainperf; }

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total \
  --format=csv; nproc; free -g | head -2; } >"$D/env.txt" 2>&1

if has tests; then
  echo "== tests $(date -u +%T)"
  timeout 200 "$TEST" --gtest_filter="${TEST_FILTER:-CudaTrainFlash.*:CudaTrainMoeOps.*:CudaDeviceStep.*:CudaTrainMfu.*:CudaTrainSplit.*:CudaTrainOps.*}" \
    >"$D/tests.log" 2>&1
  echo "exit $?" >>"$D/tests.log"
  grep -E "^\[ +(FAILED|PASSED) |Failure|Expected|^exit|flash|timing" "$D/tests.log" | cut -c1-300 | head -50
  pack
fi
if has memcheck; then
  echo "== memcheck $(date -u +%T)"
  timeout 150 compute-sanitizer --tool memcheck "$TEST" --gtest_filter="${MEMCHECK_FILTER:-CudaTrainFlash.ForwardBackward*:CudaTrainMoeOps.Router*:CudaTrainMfu.GroupedExpertGemmsMatchPerExpertAndDouble:CudaTrainSplit.*}" \
    >"$D/memcheck.log" 2>&1
  echo "exit $?" >>"$D/memcheck.log"
  grep -E "ERROR SUMMARY|^\[ +(PASSED|FAILED)|^exit" "$D/memcheck.log" | tail -4
  pack
fi
if has ncu; then
  # GroupedExpertGemmsTiming launches the grouped kernel 12 times per kind (2 warm-ups + 10 timed), nt, nn, tn at
  # k 2048 / m 1408 first: launch 25 is a timed tn.
  echo "== ncu $(date -u +%T)"
  timeout 120 ncu --set full -k regex:grouped_gemm_wgmma --launch-skip 24 --launch-count 1 -o "$D/ncu-tn" \
    "$TEST" --gtest_filter=CudaTrainMfu.GroupedExpertGemmsTiming >"$D/ncu.log" 2>&1
  echo "exit $?" >>"$D/ncu.log"
  ncu --import "$D/ncu-tn.ncu-rep" --page details >"$D/ncu-tn.txt" 2>&1
  grep -E "Duration|Memory Throughput|Compute \(SM\) Throughput|DRAM Throughput|Registers Per|Achieved Occupancy" \
    "$D/ncu-tn.txt" | head -12
  pack
fi

if has kprof; then
  # Per-kernel GPU time of one train-bench step (and its warm-up step) at train-mid's widths with 4 layers (a
  # quarter of the launches; the per-layer kernels are the same), flash attention and BF16 heads.
  echo "== kprof $(date -u +%T)"
  /opt/torch/.venv/bin/python3 -c "import json; c = json.load(open('bench/configs/train-mid.json')); \
c['num_hidden_layers'] = 4; json.dump(c, open('/tmp/mid4.json', 'w'))"
  timeout 240 ncu --metrics gpu__time_duration.sum --csv --print-units base "$MOE" train-bench --device cuda \
    --config /tmp/mid4.json --seq-len 2048 --moments bf16 --head bf16 --attention flash --batch "${KPROF_MB:-1}" \
    --micro-batch "${KPROF_MB:-1}" --steps 1 \
    >"$D/kprof.csv" 2>"$D/kprof.err"
  echo "exit $?" >>"$D/kprof.err"
  /opt/torch/.venv/bin/python3 scripts/gpu/kernel_times.py "$D/kprof.csv" 45 >"$D/kprof.txt" 2>&1
  head -30 "$D/kprof.txt"
  pack
fi

bench() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$MOE" train-bench --device cuda --profile "$@" >"$D/bench-$name.json" 2>"$D/bench-$name.err"
  local rc=$?
  echo "$name exit $rc in $((SECONDS - t0)) s: $(cut -c1-600 "$D/bench-$name.json") $(tail -3 "$D/bench-$name.err")"
  pack
  return $rc
}
# (~20 s of host initialisation of 10 B values and a 40 GB upload come before train-mid's first step.)
MID="--config bench/configs/train-mid.json --seq-len 2048 --moments bf16 --head bf16 --batch 8 --micro-batch 1 --steps 2"
if has mid; then
  echo "== train-mid $(date -u +%T)"
  [ -n "${MID_BF16:-}" ] && bench mid-bf16 110 $MID --attention bf16
  [ "${MID_MB1:-1}" = 1 ] && bench mid-flash 110 $MID --attention flash
  # Two sequences a micro-batch (4 micro-batches a step): the fastest setting that fits an H200 (137.6 of its
  # 138.7 free GiB); the memory plan refuses it on a device with less.
  bench mid-flash-mb2 110 ${MID/--micro-batch 1/--micro-batch 2} --attention flash
fi
# Larger optimizer steps (stage midbig): the same 2 x 2048 micro-batches, 32 sequences (65,536 tokens) a step, so
# the once-a-step work (AdamW over 10.1 B values, the gradient norm, zero_grad) is shared by 16 micro-batches.
# MIDBIG_BATCHES (default 32): the sequences a step of each run, e.g. "32 64".
if has midbig; then
  for nb in ${MIDBIG_BATCHES:-32}; do
    echo "== train-mid, $nb sequences a step $(date -u +%T)"
    bench "mid-flash-mb2-b$nb" 250 ${MID/--batch 8 --micro-batch 1/--batch $nb --micro-batch 2} --attention flash
  done
fi
DEF="--config bench/configs/train-default.json --seq-len 512 --batch 64 --steps 3 --head bf16"
if has default; then
  echo "== train-default $(date -u +%T)"
  [ -n "${DEF_BF16:-}" ] && bench default-bf16 30 $DEF --attention bf16
  bench default-flash 30 $DEF --attention flash
fi
# Data parallelism on the devices (ZeRO-0, gradients all-reduced): the thread-rank and NCCL one-rank tests, then
# with N >= 2 visible GPUs `moe train --dp N`'s speed: train-mid's 1 x 2048 micro-batches (8 a rank) on N GPUs
# through the launcher (NCCL) against one GPU (the mid-flash bench above).
if has dp; then
  echo "== dp $(date -u +%T)"
  timeout 200 "$TEST" --gtest_filter='CudaDataParallel.*' >"$D/dp-tests.log" 2>&1
  echo "exit $?" >>"$D/dp-tests.log"
  grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure|Expected|^exit|^step|gradients|weights|seed" "$D/dp-tests.log" | head -30
  pack
  NG=$(nvidia-smi -L | wc -l)
  if [ "$NG" -ge 2 ]; then
    bench "mid-flash-dp$NG" 200 $MID --attention flash --dp "$NG"
  else
    echo "dp: one GPU; train-bench --dp N needs N GPUs"
  fi
fi
echo "== done $(date -u +%T)"
