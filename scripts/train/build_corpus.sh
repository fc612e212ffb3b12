#!/usr/bin/env bash
# Builds the default model's data bundle from Debian packages (the list and licences: scripts/train/corpus_sources.py):
#   scripts/train/build_corpus.sh [WORK]      (WORK default .corpus-work; the bundle goes to .corpus/)
# 1. `apt-get download` each package (no install; run `apt-get update` once first) and `dpkg-deb -x` it into
#    WORK/roots/<package>, its version beside it;
# 2. build_corpus.py -> WORK/corpus.jsonl + manifest.json (per source: licence, files, documents, bytes, drops);
#    build_sft.py -> WORK/sft.jsonl (the chat set);
# 3. .corpus/{corpus.jsonl.xz, sft.jsonl.xz, manifest.json}: the bundle default_model.sh reads on the GPU machine
#    (<= 35 MiB, so that it travels beside the repository). Both folders are ignored by git.
# Needs: apt-get, dpkg-deb, python3, xz. About 2-4 minutes on a 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-.corpus-work}
BUNDLE=.corpus
mkdir -p "$WORK/debs" "$WORK/roots" "$BUNDLE"
PKGS=$(python3 -c 'import sys; sys.path.insert(0, "scripts/train"); from corpus_sources import PACKAGES; print(" ".join(PACKAGES))')
echo "== downloading: $PKGS"
(cd "$WORK/debs" && apt-get download $PKGS 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
for pkg in $PKGS; do
  deb=$(ls "$WORK"/debs/"${pkg}"_*.deb 2>/dev/null | sort | tail -1)
  [ -n "$deb" ] || { echo "build_corpus.sh: $pkg was not downloaded (run apt-get update?)" >&2; exit 1; }
  if [ ! -d "$WORK/roots/$pkg" ]; then
    dpkg-deb -x "$deb" "$WORK/roots/$pkg.tmp" && mv "$WORK/roots/$pkg.tmp" "$WORK/roots/$pkg"
  fi
  dpkg-deb -f "$deb" Version > "$WORK/roots/$pkg.version"
done
echo "== corpus"
python3 scripts/train/build_corpus.py --roots "$WORK/roots" --out "$WORK"
echo "== chat set"
python3 scripts/train/build_sft.py --roots "$WORK/roots" --out "$WORK/sft.jsonl"
echo "== bundle"
xz -T2 -6 -c "$WORK/corpus.jsonl" > "$BUNDLE/corpus.jsonl.xz"
xz -T2 -6 -c "$WORK/sft.jsonl" > "$BUNDLE/sft.jsonl.xz"
cp "$WORK/manifest.json" "$BUNDLE/manifest.json"
size=$(du -cb "$BUNDLE"/* | tail -1 | cut -f1)
echo "$BUNDLE: $size bytes"; ls -l "$BUNDLE"
if [ "$size" -gt $((35 * 1024 * 1024)) ]; then echo "build_corpus.sh: the bundle is over 35 MiB" >&2; exit 1; fi
