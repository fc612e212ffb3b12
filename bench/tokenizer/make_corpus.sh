#!/usr/bin/env bash
# Builds two benchmark corpora from text already on a Debian machine (no network):
#   OUT/english.txt  license texts, package copyright files and Debian changelogs (~4 MB of English prose)
#   OUT/python.txt   the Python standard library's sources (~4 MB of code)
# Usage: bench/tokenizer/make_corpus.sh [OUT_DIR] [MEGABYTES]. The files are sorted by name, so the same
# machine image gives the same corpora; to compare with HF tokenizers elsewhere, copy OUT_DIR there.
set -euo pipefail
OUT=${1:-build/bench-corpus}
MB=${2:-4}
LIMIT=$((MB * 1024 * 1024))
mkdir -p "$OUT"

append_until_full() {  # reads file names on stdin, appends their text to $1 until it holds LIMIT bytes
  local target=$1
  : > "$target"
  while IFS= read -r file; do
    case "$file" in
      *.gz) zcat -- "$file" >> "$target" 2>/dev/null || true ;;
      *) cat -- "$file" >> "$target" ;;
    esac
    [ "$(stat -c %s "$target")" -ge "$LIMIT" ] && break
  done
  truncate -s "$LIMIT" "$target" 2>/dev/null || true
  # Cutting at a byte count may split a UTF-8 character; drop a partial one at the end.
  python3 - "$target" <<'PY'
import sys
p = sys.argv[1]
data = open(p, 'rb').read()
open(p, 'wb').write(data.decode('utf-8', errors='ignore').encode('utf-8'))
PY
}

{
  find /usr/share/common-licenses -type f | LC_ALL=C sort
  find /usr/share/doc -name copyright -type f | LC_ALL=C sort
  find /usr/share/doc -name 'changelog*.gz' -type f | LC_ALL=C sort
} | append_until_full "$OUT/english.txt" || true  # find may die of SIGPIPE once the corpus is full

find /usr/lib/python3.11 -maxdepth 2 -name '*.py' -type f | LC_ALL=C sort | append_until_full "$OUT/python.txt" || true

for f in english python; do [ -s "$OUT/$f.txt" ] || { echo "could not build $OUT/$f.txt" >&2; exit 1; }; done
ls -l "$OUT"/english.txt "$OUT"/python.txt
