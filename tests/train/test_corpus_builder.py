"""The default model's data tools (scripts/train): cleaning, the corpus builder, the chat-set builder and the
safetensors sharder, each on small known input. Run: python3 -m unittest tests/train/test_corpus_builder.py"""
import gzip
import json
import os
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "train"))
import build_corpus  # noqa: E402
import build_sft  # noqa: E402
import corpus_clean as cc  # noqa: E402
import shard_safetensors  # noqa: E402


def write(path, text, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


class Clean(unittest.TestCase):
    def test_whitespace(self):
        self.assertEqual(cc.normalize_whitespace("a  \r\nb\t\n\n\n\n\nc\f", code=False), "a\nb\n\nc\n")
        self.assertEqual(cc.normalize_whitespace("if x:\n\tpass   \n\n\n\n\ny\n", code=True),
                         "if x:\n\tpass\n\n\ny\n")
        self.assertEqual(cc.normalize_whitespace("e\u0301"), "\u00e9\n")  # NFC

    def test_rst(self):
        src = (".. _label:\n\nTitle\n=====\n\n.. index:: single: x\n\nUse :func:`os.path.join` and "
               ":class:`~collections.OrderedDict`, see :ref:`the guide <guide>`.\n\n.. note::\n\n   Kept.\n"
               ".. toctree::\n   :maxdepth: 2\n")
        out = cc.rst_to_text(src)
        self.assertIn("Use `os.path.join` and `collections.OrderedDict`, see `the guide`.", out)
        self.assertIn(".. note::", out)
        self.assertIn("   Kept.", out)
        for gone in (".. _label:", ".. index::", ":maxdepth:", ".. toctree::"):
            self.assertNotIn(gone, out)

    def test_pod(self):
        src = ("=head1 NAME\n\nperlfaq - B<bold> and C<code> and L<perlfunc/open> and E<lt>tagE<gt> "
               "and C<B<nested>>\n\n=for html <b>x</b>\n\n=over 4\n\n=item first\n\nText.\n\n=back\n\n=cut\n")
        out = cc.pod_to_text(src)
        self.assertIn("NAME", out)
        self.assertIn("perlfaq - bold and code and open in perlfunc and <tag> and nested", out)
        self.assertIn("first", out)
        self.assertNotIn("=over", out)
        self.assertNotIn("<b>x</b>", out)

    def test_html(self):
        src = ("<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav><h1>Head&para;</h1>"
               "<p>One  <b>two</b>\nthree &amp; four</p><pre>  code\n    indented</pre><script>x()</script>"
               "</body></html>")
        out = cc.clean(src, "html")
        self.assertEqual(out, "Head\n\nOne two three & four\n\n  code\n    indented\n")

    def test_special(self):
        self.assertTrue(cc.has_special_text("a <｜end▁of▁sentence｜> b"))
        self.assertTrue(cc.has_special_text("<think>"))
        self.assertFalse(cc.has_special_text("a < b | c > d"))


class Corpus(unittest.TestCase):
    def test_split_long(self):
        text = "\n\n".join(["x" * 40] * 10) + "\n"
        pieces = build_corpus.split_long(text, 100)
        self.assertTrue(all(len(p) <= 100 for p in pieces))
        self.assertEqual("".join(p.replace("\n", "") for p in pieces), "x" * 400)
        self.assertEqual(build_corpus.split_long("short\n", 100), ["short\n"])

    def test_build(self):
        with tempfile.TemporaryDirectory() as d:
            py = os.path.join(d, "roots", "libpython3.11-stdlib", "usr", "lib", "python3.11")
            body = "def f(x):\n    return x + 1\n" * 10
            write(os.path.join(py, "a.py"), body)
            write(os.path.join(py, "b.py"), body)  # a duplicate
            write(os.path.join(py, "c.py"), "x = 1\n")  # too short
            write(os.path.join(py, "d.py"), body + "# <｜fim▁hole｜>\n")  # special-token text
            write(os.path.join(py, "site-packages", "e.py"), body + "# excluded\n")
            with open(os.path.join(py, "f.py"), "wb") as f:
                f.write(b"\xff\xfe not utf-8" * 30)
            doc = os.path.join(d, "roots", "linux-doc-6.1", "usr", "share", "doc", "linux-doc-6.1", "Documentation")
            write(os.path.join(doc, "x", "a.rst.gz"), "Title\n=====\n\nSee :c:func:`kmalloc` here. " * 10, gz=True)
            with open(os.path.join(d, "roots", "linux-doc-6.1.version"), "w") as f:
                f.write("6.1.1-1\n")
            m = build_corpus.build(os.path.join(d, "roots"), os.path.join(d, "out"), 100, 200000,
                                   only=["python-stdlib", "linux-docs"])
            rows = [json.loads(line) for line in open(os.path.join(d, "out", "corpus.jsonl"))]
            self.assertEqual([(r["source"], r["code"]) for r in rows], [("python-stdlib", True), ("linux-docs", False)])
            self.assertEqual(rows[0]["text"], body)
            self.assertIn("See `kmalloc` here.", rows[1]["text"])
            s = {x["name"]: x for x in m["sources"]}
            self.assertEqual(s["python-stdlib"]["dropped"], {"short": 1, "duplicate": 1, "special_tokens": 1,
                                                             "not_utf8": 1})
            self.assertEqual(s["python-stdlib"]["files"], 5)
            self.assertEqual(s["linux-docs"]["version"], "6.1.1-1")
            self.assertEqual(m["bytes"], sum(len(r["text"].encode()) for r in rows))
            self.assertEqual(m["code_bytes"], len(body.encode()))

    def test_missing_package_names_it(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(SystemExit) as e:
                build_corpus.build(os.path.join(d, "roots"), os.path.join(d, "out"), 100, 1000, only=["perl-docs"])
            self.assertIn("perl-doc", str(e.exception))
            self.assertIn("missing", str(e.exception))


class Sft(unittest.TestCase):
    def test_python_pairs(self):
        with tempfile.TemporaryDirectory() as d:
            write(os.path.join(d, "pkg", "mod.py"),
                  '"""A module.\n\nMore."""\n\ndef join(a, *p, sep=None, **kw):\n    """Join two paths.\n\n    '
                  'Details here.\n    """\n\ndef _private():\n    """Hidden."""\n\nclass Box:\n    """A box."""\n'
                  '    def open(self, how):\n        """Open it."""\n    def _x(self):\n        """No."""\n')
            write(os.path.join(d, "test", "t.py"), 'def f():\n    """Skipped: a test module."""\n')
            pairs = dict(build_sft.python_pairs(d, 600))
            qs = {q: a for q, a in pairs.items()}
            self.assertEqual(len(qs), 4)
            join_q = [q for q in qs if "`pkg.mod.join`" in q][0]
            self.assertEqual(qs[join_q], "`pkg.mod.join(a, *p, sep, **kw)`: Join two paths.\n\nDetails here.")
            self.assertTrue(any(a == "`pkg.mod.Box.open(how)`: Open it." for a in qs.values()))
            self.assertTrue(any(a.startswith("`pkg.mod.Box` is a class. A box.") for a in qs.values()))
            self.assertFalse(any("_private" in q or "Skipped" in a for q, a in qs.items()))

    def test_first_paragraphs(self):
        self.assertEqual(build_sft.first_paragraphs("a\n b\n\nc\n\n" + "d" * 50, 10), "a b\n\nc")
        self.assertEqual(build_sft.first_paragraphs("x" * 30, 10), "x" * 10)

    def test_perlfaq_and_debian_faq(self):
        with tempfile.TemporaryDirectory() as d:
            write(os.path.join(d, "pod", "perlfaq4.pod"),
                  "=head1 NAME\n\nperlfaq4\n\n=head2 How do I sort a hash by value?\n\nUse C<sort> with a block "
                  "comparing the values, as shown below.\n\n=head2 Not a question\n\nText that is long enough "
                  "to pass the length check.\n")
            write(os.path.join(d, "faq", "ch-x.en.html"),
                  "<h2>1.2 What is Debian?</h2><p>Debian is a free operating system for many computers.</p>"
                  "<p>Second.</p><h2>1.3 Next?</h2><p>Short</p>")
            self.assertEqual(build_sft.perlfaq_pairs(os.path.join(d, "pod"), 600),
                             [("How do I sort a hash by value?",
                               "Use sort with a block comparing the values, as shown below.")])
            self.assertEqual(build_sft.debian_faq_pairs(os.path.join(d, "faq"), 600),
                             [("What is Debian?", "Debian is a free operating system for many computers.\n\nSecond.")])


def write_safetensors(path, tensors):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blob)


def read_safetensors(path):
    header, base = shard_safetensors.read_header(path)
    header.pop("__metadata__", None)
    out = {}
    with open(path, "rb") as f:
        for name, e in header.items():
            f.seek(base + e["data_offsets"][0])
            out[name] = (e["dtype"], e["shape"], f.read(e["data_offsets"][1] - e["data_offsets"][0]))
    return out


class Shard(unittest.TestCase):
    def test_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            tensors = {f"t{k}": ("BF16", [k + 1, 1000], bytes((k * 7 + i) % 251 for i in range(2000 * (k + 1))))
                       for k in range(6)}
            write_safetensors(os.path.join(d, "in.safetensors"), tensors)
            files = shard_safetensors.shard(os.path.join(d, "in.safetensors"), os.path.join(d, "out"), 20000)
            self.assertGreater(len(files), 1)
            index = json.load(open(os.path.join(d, "out", "model.safetensors.index.json")))
            self.assertEqual(index["metadata"]["total_size"], sum(len(t[2]) for t in tensors.values()))
            back = {}
            for f in files:
                self.assertLessEqual(os.path.getsize(os.path.join(d, "out", f)), 20000)
                part = read_safetensors(os.path.join(d, "out", f))
                for name in part:
                    self.assertEqual(index["weight_map"][name], f)
                back.update(part)
            self.assertEqual(back, tensors)

    def test_too_large_names_the_tensor(self):
        with tempfile.TemporaryDirectory() as d:
            write_safetensors(os.path.join(d, "in.safetensors"), {"big": ("F32", [4000], b"\1" * 16000)})
            with self.assertRaises(SystemExit) as e:
                shard_safetensors.shard(os.path.join(d, "in.safetensors"), os.path.join(d, "out"), 10000)
            self.assertIn("big", str(e.exception))


if __name__ == "__main__":
    unittest.main()
