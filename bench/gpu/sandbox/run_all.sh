#!/usr/bin/env bash
# Runs every kernel sandbox (bench/gpu/sandbox/README.md) at its default sizes on the one GPU and prints a
# pass/fail line per program; exit status 1 when any check fails or a program does not run.
#   bench/gpu/sandbox/run_all.sh [build folder, default build-cuda]
# Build them first: cmake --build <build folder> --target sandboxes
set -uo pipefail
BUILD=${1:-build-cuda}
DIR=$BUILD/bench/gpu/sandbox
status=0
summary=()
for p in rms_norm moe_combine pdl_chain moe_experts_prefill swiglu_prefill gemv_mma train_fp8_quant moe_decode_experts; do
  echo "==== sandbox_$p"
  if [ ! -x "$DIR/sandbox_$p" ]; then
    summary+=("sandbox_$p: not built ($DIR)"); status=1; continue
  fi
  start=$(date +%s)
  "$DIR/sandbox_$p"
  rc=$?
  [ $rc = 0 ] && r=pass || { r="FAIL (rc $rc)"; status=1; }
  summary+=("sandbox_$p: $r, $(( $(date +%s) - start )) s")
  echo
done
echo "==== summary"
printf '%s\n' "${summary[@]}"
exit $status
