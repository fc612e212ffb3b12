#!/usr/bin/env bash
# Several people edit one working tree; the device box gets a copy of it as it is. This writes the committed
# (HEAD) version of every tracked file that differs from HEAD into .snap/, so that a device command can build
# exactly HEAD with `cp -r .snap/. . && rm -rf .snap` first (new untracked files are not referenced by HEAD's
# CMake lists). Usage: scripts/gpu/snapshot-head.sh, then carry ".snap" along with ".deps".
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .snap
mkdir -p .snap
git diff --name-only HEAD | while read -r f; do
  if git cat-file -e "HEAD:$f" 2>/dev/null; then
    mkdir -p ".snap/$(dirname "$f")"
    git show "HEAD:$f" > ".snap/$f"
  fi
done
echo "snapshot of HEAD for $(git diff --name-only HEAD | wc -l) modified files in .snap"
