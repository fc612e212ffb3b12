#!/usr/bin/env bash
# Builds every libFuzzer target with clang (ASan + UBSan + coverage) in build-fuzz/ and runs each for a
# bounded time (default 20 s) on its seed corpus. Runs every target even after a failure, then names the ones
# that failed and exits non-zero. A failing target's last lines and its crashing input (base64, when it is under
# 4 KiB) are printed, so that a CI log alone reproduces it: base64 -d > crash; build-fuzz/fuzz/fuzz_X crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
LOG=$(mktemp)
# The build's own lines go to a file, shown only on failure: ctest prints the test's output, and the fuzzers'
# lines must not be cut from it by the build's.
if ! { CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_FUZZ=ON \
         -DMOE_CUDA=OFF -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF &&
       cmake --build "$BUILD" --target fuzz_all -j"$(nproc)"; } >"$LOG" 2>&1; then
  tail -n 60 "$LOG"
  echo "fuzz build failed"
  exit 1
fi
failed=()
for fuzzer in "$BUILD"/fuzz/fuzz_*; do
  [ -x "$fuzzer" ] || continue
  name=$(basename "$fuzzer")
  corpus="fuzz/corpus/${name#fuzz_}"
  work=$(mktemp -d)
  arts=$(mktemp -d)
  [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
  echo "== $name for ${SECONDS_EACH}s"
  if "$fuzzer" -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=0 -artifact_prefix="$arts/" \
       "$work" >"$LOG" 2>&1; then
    tail -n 1 "$LOG"
  else
    failed+=("$name")
    echo "!! $name FAILED; its last lines:"
    grep -v -E '^#[0-9]+|^INFO:|^\s*$' "$LOG" | tail -n 40
    for a in "$arts"/*; do
      [ -f "$a" ] || continue
      echo "!! $name input $(basename "$a") ($(stat -c %s "$a") bytes)"
      [ "$(stat -c %s "$a")" -lt 4096 ] && base64 -w 0 "$a" && echo
    done
  fi
  rm -rf "$work" "$arts"
done
rm -f "$LOG"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}"
  exit 1
fi
echo "every fuzz target ran ${SECONDS_EACH}s without a failure"
