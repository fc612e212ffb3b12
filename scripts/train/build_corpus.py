#!/usr/bin/env python3
"""Builds the default model's corpus from unpacked Debian packages (scripts/train/build_corpus.sh fetches them).

  build_corpus.py --roots DIR --out DIR [--min-chars 200] [--max-doc-chars 200000]

DIR/roots holds one directory per package (dpkg-deb -x of its .deb, named by package). Writes
  OUT/corpus.jsonl      one {"text", "source", "code"} per document, sources in SOURCES order, files sorted
  OUT/manifest.json     per source: package, version, licence, kind, files read, documents and bytes kept, and
                        what was dropped and why (too short, duplicate, special-token text, not UTF-8)
A document is one file (code, a manual page of prose) cleaned by corpus_clean; a longer one is cut at blank
lines into pieces of at most --max-doc-chars. Duplicates (the same cleaned text, e.g. a file shipped twice or
a symlinked directory) are kept once, the first in order.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus_clean import clean, has_special_text  # noqa: E402
from corpus_sources import SOURCES  # noqa: E402


def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def split_long(text, limit):
    """Pieces of at most `limit` characters, cut at blank lines (or, for a paragraph longer than the limit,
    at the limit)."""
    if len(text) <= limit:
        return [text]
    pieces, cur = [], []
    size = 0
    for para in text.split("\n\n"):
        while len(para) > limit:
            pieces.append(para[:limit])
            para = para[limit:]
        if size + len(para) + 2 > limit and cur:
            pieces.append("\n\n".join(cur) + "\n")
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        pieces.append("\n\n".join(cur).rstrip("\n") + "\n")
    return [p for p in pieces if p.strip()]


def source_files(root, globs, excludes):
    files = set()
    for g in globs:
        pattern = g if g.startswith("/") else os.path.join(root, g)
        files.update(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    return sorted(p for p in files if not any(e in p for e in excludes))


def package_version(roots, package):
    path = os.path.join(roots, package + ".version")
    return open(path).read().strip() if os.path.exists(path) else "installed"


def build(roots, out_dir, min_chars, max_doc_chars, only=None):
    os.makedirs(out_dir, exist_ok=True)
    seen = set()
    manifest = {"format": "moe-corpus-1", "sources": []}
    with open(os.path.join(out_dir, "corpus.jsonl"), "w", encoding="utf-8") as out:
        for name, package, licence, kind, globs, excludes in SOURCES:
            if only and name not in only:
                continue
            root = os.path.join(roots, package)
            if not any(g.startswith("/") for g in globs) and not os.path.isdir(root):
                raise SystemExit(f"build_corpus: {root}: missing (unpack the {package} package there first)")
            files = source_files(root, globs, excludes)
            if not files:
                raise SystemExit(f"build_corpus: source {name}: no file matches {globs} under {root}")
            st = {"name": name, "package": package, "version": package_version(roots, package),
                  "licence": licence, "kind": kind, "code": kind == "code", "files": len(files),
                  "documents": 0, "bytes": 0, "dropped": {"short": 0, "duplicate": 0, "special_tokens": 0,
                                                         "not_utf8": 0}}
            for path in files:
                try:
                    raw = read_bytes(path).decode("utf-8")
                except (UnicodeDecodeError, OSError, EOFError):
                    st["dropped"]["not_utf8"] += 1
                    continue
                text = clean(raw, kind)
                if has_special_text(text):
                    st["dropped"]["special_tokens"] += 1
                    continue
                for piece in split_long(text, max_doc_chars):
                    if len(piece.strip()) < min_chars:
                        st["dropped"]["short"] += 1
                        continue
                    digest = hashlib.sha1(piece.encode("utf-8")).digest()
                    if digest in seen:
                        st["dropped"]["duplicate"] += 1
                        continue
                    seen.add(digest)
                    out.write(json.dumps({"text": piece, "source": name, "code": kind == "code"},
                                         ensure_ascii=False) + "\n")
                    st["documents"] += 1
                    st["bytes"] += len(piece.encode("utf-8"))
            manifest["sources"].append(st)
            print(f"{name:18s} {st['files']:6d} files {st['documents']:7d} docs {st['bytes'] / 1e6:8.2f} MB "
                  f"dropped {st['dropped']}", flush=True)
    manifest["documents"] = sum(s["documents"] for s in manifest["sources"])
    manifest["bytes"] = sum(s["bytes"] for s in manifest["sources"])
    manifest["code_bytes"] = sum(s["bytes"] for s in manifest["sources"] if s["code"])
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"total {manifest['documents']} documents, {manifest['bytes'] / 1e6:.1f} MB "
          f"({manifest['code_bytes'] / 1e6:.1f} MB code)")
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-chars", type=int, default=200)
    ap.add_argument("--max-doc-chars", type=int, default=200000)
    ap.add_argument("--only", nargs="*", help="build only these sources (tests)")
    a = ap.parse_args()
    build(a.roots, a.out, a.min_chars, a.max_doc_chars, a.only)


if __name__ == "__main__":
    main()
