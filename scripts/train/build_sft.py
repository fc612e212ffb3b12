#!/usr/bin/env python3
"""The default model's chat set (supervised fine-tuning), built from the same Debian packages as its corpus.

  build_sft.py --roots DIR --out sft.jsonl [--seed 1] [--max-answer-chars 600]

Three kinds of question/answer pair, each answer taken verbatim (whitespace joined) from the documentation:
- Python's standard library (libpython3.11-minimal, libpython3.11-stdlib; PSF): for each public module, class,
  function and method with a docstring, found with `ast` (nothing is imported), "What does `os.path.join` do?"
  (one of a few phrasings, chosen from the name's hash) -> the call's signature and the docstring's first
  paragraph.
- Perl's FAQ (perl-doc, perlfaq1-9; GPL-1+ or Artistic): each "=head2 How do I ...?" -> its first paragraphs.
- The Debian FAQ (debian-faq; GPL-2+): each question heading -> its first paragraphs.
Writes one {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "source": ...} per line (the format
`moe tokenize-corpus --sft` reads), deduplicated by question, shuffled with --seed, and prints counts per source.
"""
import argparse
import ast
import glob
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus_clean import has_special_text, pod_to_text  # noqa: E402

PY_QUESTIONS = ["What does `{name}` do?", "Explain `{name}` in Python.", "What is `{name}` for?",
                "Describe the Python function `{name}`."]
PY_CLASS_QUESTIONS = ["What is `{name}`?", "What is the Python class `{name}` for?"]
PY_MODULE_QUESTIONS = ["What is the Python module `{name}` for?", "What does the `{name}` module do?"]


def first_paragraphs(text, limit):
    """The text's first paragraph, plus the following ones while the answer stays under `limit` characters;
    each paragraph's whitespace joined."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    paras = [p for p in paras if p]
    if not paras:
        return ""
    out = paras[0]
    for p in paras[1:]:
        if len(out) + 2 + len(p) > limit:
            break
        out += "\n\n" + p
    return out[:limit].rstrip() if len(out) > limit else out


def pick(templates, name):
    return templates[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(templates)]


def signature(node):
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return "(" + ", ".join(names) + ")"


def module_name(root, path):
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[:-9] if rel.endswith(".__init__") else rel


def python_pairs(root, limit):
    """(question, answer) from every public definition with a docstring under root (a python3.11 directory)."""
    pairs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        mod = module_name(root, path)
        if any(part.startswith("_") or part in ("test", "tests", "idlelib", "lib2to3", "turtledemo")
               for part in mod.split(".")):
            continue
        try:
            tree = ast.parse(open(path, encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            pairs.append((pick(PY_MODULE_QUESTIONS, mod).format(name=mod), first_paragraphs(doc, limit)))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                name = f"{mod}.{node.name}"
                doc = ast.get_docstring(node)
                if isinstance(node, ast.ClassDef):
                    if doc:
                        pairs.append((pick(PY_CLASS_QUESTIONS, name).format(name=name),
                                      f"`{name}` is a class. " + first_paragraphs(doc, limit)))
                    for sub in node.body:
                        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                            sdoc = ast.get_docstring(sub)
                            if sdoc:
                                mname = f"{name}.{sub.name}"
                                pairs.append((pick(PY_QUESTIONS, mname).format(name=mname),
                                              f"`{mname}{signature(sub)}`: " + first_paragraphs(sdoc, limit)))
                elif doc:
                    pairs.append((pick(PY_QUESTIONS, name).format(name=name),
                                  f"`{name}{signature(node)}`: " + first_paragraphs(doc, limit)))
    return pairs


def perlfaq_pairs(pod_dir, limit):
    pairs = []
    for path in sorted(glob.glob(os.path.join(pod_dir, "perlfaq[1-9].pod*"))):
        raw = open(path, "rb").read()
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8", "replace")
        for section in re.split(r"^=head2 ", text, flags=re.M)[1:]:
            question, _, body = section.partition("\n")
            question = pod_to_text(question).strip()
            answer = first_paragraphs(pod_to_text(body), limit)
            if question.endswith("?") and len(answer) >= 40:
                pairs.append((question, answer))
    return pairs


class _Blocks(html.parser.HTMLParser):
    """The page as a list of (tag, text): headings h1-h4 and paragraphs p/pre/li."""
    KEEP = {"h1", "h2", "h3", "h4", "p", "pre", "li"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.KEEP:
            self.stack.append([tag, ""])

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1][0] == tag:
            t, text = self.stack.pop()
            if self.stack:
                self.stack[-1][1] += text
            else:
                self.blocks.append((t, " ".join(text.split())))

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][1] += data


def debian_faq_pairs(faq_dir, limit):
    pairs = []
    for path in sorted(glob.glob(os.path.join(faq_dir, "*.en.html"))):
        p = _Blocks()
        p.feed(open(path, encoding="utf-8", errors="replace").read())
        blocks = p.blocks
        for k, (tag, text) in enumerate(blocks):
            if tag[0] == "h" and text.endswith("?"):
                question = re.sub(r"^[\d.]+\s*", "", text)
                body = []
                for tag2, text2 in blocks[k + 1:]:
                    if tag2[0] == "h":
                        break
                    body.append(text2)
                answer = first_paragraphs("\n\n".join(body), limit)
                if len(answer) >= 40:
                    pairs.append((question, answer))
    return pairs


def build(roots, limit, seed):
    sources = [
        ("python-stdlib", python_pairs(os.path.join(roots, "libpython3.11-minimal/usr/lib/python3.11"), limit)
         + python_pairs(os.path.join(roots, "libpython3.11-stdlib/usr/lib/python3.11"), limit)),
        ("perlfaq", perlfaq_pairs(os.path.join(roots, "perl-doc/usr/share/perl/5.36.0/pod"), limit)),
        ("debian-faq", debian_faq_pairs(os.path.join(roots, "debian-faq/usr/share/doc/debian/FAQ"), limit)),
    ]
    seen, rows, counts = set(), [], {}
    for name, pairs in sources:
        counts[name] = 0
        for q, a in pairs:
            if q in seen or len(a) < 20 or has_special_text(q + a):
                continue
            seen.add(q)
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                         "source": name})
            counts[name] += 1
    random.Random(seed).shuffle(rows)
    return rows, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-answer-chars", type=int, default=600)
    a = ap.parse_args()
    rows, counts = build(a.roots, a.max_answer_chars, a.seed)
    if not rows:
        raise SystemExit(f"build_sft: no pairs found under {a.roots}")
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} conversations -> {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
