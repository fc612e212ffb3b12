#!/usr/bin/env bash
# Builds every libFuzzer target with clang (ASan + UBSan + coverage) in build-fuzz/ and runs each for a
# bounded time (default 20 s) on its seed corpus. Exits non-zero on the first crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_FUZZ=ON \
  -DMOE_CUDA=OFF -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" --target fuzz_all -j"$(nproc)"
for fuzzer in "$BUILD"/fuzz/fuzz_*; do
  [ -x "$fuzzer" ] || continue
  name=$(basename "$fuzzer")
  corpus="fuzz/corpus/${name#fuzz_}"
  work=$(mktemp -d)
  [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
  echo "== $name for ${SECONDS_EACH}s"
  "$fuzzer" -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=0 "$work" 2>&1 | tail -n 2
  rm -rf "$work"
done
