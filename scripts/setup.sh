#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install dependencies, build, and generate with the default model
# (models/moe-tiny, trained by the project: its README.md is the model card) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "== moe info"
build/moe info --model models/tiny-dsv3
if [ -f models/moe-tiny/model.safetensors.index.json ] || [ -f models/moe-tiny/model.safetensors ]; then
  echo "== moe generate with the default model (models/moe-tiny; no --model needed)"
  build/moe generate --device cpu --prompt "The Linux kernel" --max-new-tokens 48 --temperature 0.7 --top-p 0.9 \
    --repetition-penalty 1.2 --seed 1
  echo "== moe chat, moe serve: the same model when --model is absent"
else
  # models/moe-tiny is committed with its weights once trained (scripts/train/default_model.sh); before that,
  # the random test model shows that the build runs.
  echo "== moe generate (models/moe-tiny has no weights yet: the random test model, greedy, 12 tokens)"
  build/moe generate --model models/tiny-dsv3 --tokens 311,811,1336,101,151,1684,1100 --max-new-tokens 12
fi
