#!/usr/bin/env bash
# A commit's tree for a GPU call, beside the checkout: writes it (without the models, test data, docs' images and
# web/, which the GPU scripts do not read, plus tests/data/tiny-train, which test_train_cuda does) into DIR
# (default .fp8t, ignored through .git/info/exclude) with DIR/TREE naming the commit, so that a `run` call that
# carries DIR can build and time it:
#   scripts/gpu/branch-tree.sh fp8-shared-input [.fp8t]
#   (on the device) cd .fp8t && mkdir -p .deps && cp -r ../.deps/debs .deps/ && scripts/gpu/fp8speed.sh
# The fp8speed.sh of that tree records DIR/TREE in its env.txt.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
REV=${1:?usage: branch-tree.sh COMMIT [DIR]}
DIR=${2:-.fp8t}
case $DIR in /*|*..*) echo "branch-tree.sh: DIR must be a path inside the checkout" >&2; exit 2;; esac
git rev-parse --verify -q "$REV^{commit}" >/dev/null || { echo "branch-tree.sh: no commit $REV" >&2; exit 2; }
EX=$(git rev-parse --git-path info/exclude)
grep -qxF "/$DIR/" "$EX" 2>/dev/null || echo "/$DIR/" >> "$EX"
rm -rf "$DIR" && mkdir -p "$DIR"
git archive "$REV" -- . ':!models' ':!tests/data' ':!docs/repro' ':!docs/screenshots' ':!web' | tar -x -C "$DIR"
mkdir -p "$DIR/tests/data"
git archive "$REV" -- tests/data/tiny-train | tar -x -C "$DIR"
git rev-parse "$REV" > "$DIR/TREE"
echo "$DIR: $(cat "$DIR/TREE") ($(du -sh "$DIR" | cut -f1))"
