#!/usr/bin/env bash
# The GPU stages that waited for a machine on 2026-12-02 (no GPU could be started that session), two calls of at
# most 600 s on one warm H200, from the repository root. Logs under $OUT/lead/ and each area's $OUT/<area>/, all
# packed into $OUT/results.tgz.
#   a: the whole tree but models/deepseek-v3-tokenizer and the moe-tiny weights (scripts/gpu/slim-tree.sh on ...),
#      carrying .deps: scripts/gpu/run.sh build, then epk.sh (NCCL one rank, dispatch/combine vs CPU), mlaw.sh
#      (wgmma MLA decode), fp8t.sh (FP8 training), spec.sh (fused speculative step), each capped.
#   b: on the same warm machine (build-gpu kept), a tree without the test fixtures but with the moe-tiny weights,
#      carrying .deps and .corpus (scripts/train/build_corpus.sh): mfu.sh (train-mid), the fused speculative
#      bench on models/moe-tiny, repro.sh bf16 (the reproductions' three BF16 runs).
#   scripts/gpu/pending.sh a|b      (from branch session5-int, which has those scripts and the code they test)
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-$PWD/out/gpu}
L=$OUT/lead; mkdir -p "$L"
start=$(date +%s); BUDGET=${BUDGET:-560}
stamp() { echo "$1 at $(( $(date +%s) - start )) s" | tee -a "$L/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
capped() {  # name cap cmd...: the command's output in $L/name.txt, cut at cap seconds or what is left
  local name=$1 cap=$2; shift 2
  local l; l=$(left); [ "$l" -lt "$cap" ] && cap=$l
  [ "$cap" -lt 15 ] && { stamp "$name skipped (no time)"; return; }
  timeout "$cap" "$@" > "$L/$name.txt" 2>&1; stamp "$name exit $? (cap $cap)"
}
spectiny() {  # the fused speculative step against plain decoding on the project's default model
  export LD_LIBRARY_PATH=/tmp/moe-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  local M=build-gpu/src/cli/moe D=$OUT/spec-tiny; mkdir -p "$D"
  timeout 25 $M bench --device cuda --model models/moe-tiny --speculative 0 --batch 1,8,32 --prompt-tokens 64 \
    --gen-tokens 96 > "$D/spec0.log" 2>&1
  for f in true false; do
    timeout 25 $M bench --device cuda --model models/moe-tiny --speculative 1 --fused-speculation $f --batch 1,8,32 \
      --prompt-tokens 64 --gen-tokens 96 > "$D/spec1-$f.log" 2>&1
  done
  grep -H "scheduler decode" "$D"/*.log
}
git log -1 --format='%H %s' > "$L/commit.txt" 2>&1
case ${1:-} in
  a) JOBS=16 scripts/gpu/run.sh build > "$L/build.txt" 2>&1; stamp "build $(tail -1 "$L/build.txt")"
     capped epk 100 scripts/gpu/epk.sh
     capped mlaw 70 scripts/gpu/mlaw.sh
     capped fp8t 150 scripts/gpu/fp8t.sh
     capped spec 125 scripts/gpu/spec.sh;;
  b) [ -x build-gpu/src/cli/moe ] || { JOBS=16 scripts/gpu/run.sh build > "$L/build.txt" 2>&1; stamp "build"; }
     capped mfu 130 scripts/gpu/mfu.sh
     export -f spectiny; capped spectiny 80 bash -c spectiny
     capped repro 335 scripts/gpu/repro.sh bf16;;
  *) echo "usage: scripts/gpu/pending.sh a|b"; exit 2;;
esac
cd "$OUT" && tar czf /tmp/results.tgz --exclude=results.tgz . && find "$OUT" -mindepth 1 -delete && mv /tmp/results.tgz "$OUT/"
