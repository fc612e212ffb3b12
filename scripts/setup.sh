#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install dependencies, build, and generate with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "== moe info"
build/moe info --model models/tiny-dsv3
echo "== moe generate (greedy, 12 tokens)"
build/moe generate --model models/tiny-dsv3 --tokens 311,811,1336,101,151,1684,1100 --max-new-tokens 12
