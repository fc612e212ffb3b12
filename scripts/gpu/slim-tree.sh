#!/usr/bin/env bash
# The device tool sends the checkout (tracked and untracked-not-ignored files plus carried paths) up to 64 MiB;
# the tracked tree is about 80 MB. This untracks paths a GPU run does not read, keeping them on disk (ignored
# through .git/info/exclude), so the next `run` call leaves them out; `off` restores the index and the excludes.
#   scripts/gpu/slim-tree.sh on models/deepseek-v3-tokenizer models/moe-tiny/model-0000{1,2}-of-00002.safetensors
#   scripts/gpu/slim-tree.sh off
# Prints the tracked bytes that would travel. Nothing is committed; the working tree is unchanged throughout.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
EX=$(git rev-parse --git-path info/exclude)
SAVED=$(git rev-parse --git-path info/exclude.slim-saved)
case ${1:-} in
  on) shift; [ $# -gt 0 ] || { echo "slim-tree.sh on PATH..." >&2; exit 2; }
      git rm -r --cached -q "$@"; cp "$EX" "$SAVED"; for p in "$@"; do echo "/$p" >> "$EX"; done;;
  off) git reset -q; if [ -f "$SAVED" ]; then mv "$SAVED" "$EX"; fi;;
  *) echo "usage: slim-tree.sh on PATH... | off" >&2; exit 2;;
esac
git ls-files -z | xargs -0 du -cb | tail -1
