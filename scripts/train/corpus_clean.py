"""Cleaning for the default model's corpus: markup to plain text, whitespace, what a document may not hold.

Every function maps str -> str and is pure, so tests/train/test_corpus_builder.py checks each on known input.
"""
import html
import html.parser
import re
import unicodedata

# Text that the tokenizer would read as a special token (DeepSeek's full-width-bar markers, <think>): a document
# holding it would teach the model to emit control tokens from plain text, so it is dropped whole.
SPECIAL_MARKERS = ("<｜", "｜>", "<think>", "</think>", "<|EOT|>", "<|endoftext|>", "<|im_start|>")


def has_special_text(text):
    return any(m in text for m in SPECIAL_MARKERS)


def normalize_whitespace(text, code=False):
    """NFC; CRLF/CR -> LF; trailing spaces dropped; at most two blank lines in a row (one for prose); prose
    also loses form feeds and turns tabs to spaces. Leading indentation is kept (it is meaning in code and rst)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    if not code:
        text = text.replace("\f", "\n").replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    out, blank = [], 0
    limit = 2 if code else 1
    for line in lines:
        blank = blank + 1 if not line else 0
        if blank <= limit:
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


_RST_DIRECTIVE_ONLY = re.compile(r"^\s*\.\. (_[^:]*:.*|\|[^|]*\|.*|(index|highlight|toctree|module|currentmodule|"
                                 r"sectionauthor|moduleauthor|testsetup|testcleanup|tabularcolumns|only|"
                                 r"kernel-doc|kernel-feat|kernel-abi|include|raw|SPDX-License-Identifier)::?.*)$")
_RST_OPTION = re.compile(r"^\s+:(maxdepth|glob|numbered|hidden|titlesonly|synopsis|platform|noindex|"
                         r"audit-event|caption|name|internal|export|identifiers|functions|no-identifiers|"
                         r"doc|man-sect|linenos|emphasize-lines|options|skipif|hide):.*$")
_RST_ROLE = re.compile(r":(?:[\w-]+:)?[\w-]+:`~?!?([^`<]*?)(?:\s*<[^`>]*>)?`")


def rst_to_text(text):
    """reStructuredText as a person reads it: roles (:func:`os.path.join`) become their text in backticks,
    directives that only steer Sphinx (.. index::, .. _label:, toctree options) go; content stays."""
    out = []
    for line in text.split("\n"):
        if _RST_DIRECTIVE_ONLY.match(line) or _RST_OPTION.match(line):
            continue
        out.append(_RST_ROLE.sub(lambda m: "`" + m.group(1).strip() + "`", line))
    return "\n".join(out)


_POD_CODES = re.compile(r"[BICFSLXZE]<(?!<)([^<>]*)>")
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_code(m):
    code, body = m.group(0)[0], m.group(1)
    if code == "E":
        return _POD_ENTITIES.get(body, html.unescape("&" + body + ";"))
    if code in "XZ":
        return ""
    if code == "L":
        if "|" in body:
            return body.split("|", 1)[0]
        name, _, section = body.partition("/")
        return f"{section.strip(chr(34))} in {name}" if section and name else (section or name).strip('"')
    return body


def pod_to_text(text):
    """Perl's POD: =head1 NAME -> NAME, =item x -> x, other commands (=pod, =over, =back, =cut, =begin) and
    =for blocks go; formatting codes B<x> I<x> C<x> L<x|y> E<lt> are resolved (innermost first)."""
    out, skipping = [], False
    for line in text.split("\n"):
        if line.startswith("="):
            word, _, rest = line[1:].partition(" ")
            skipping = word in ("begin", "for")
            if word.startswith("head") or word == "item":
                out.append(rest.strip())
            continue
        if skipping:
            if line.strip() == "":
                skipping = False
            continue
        out.append(line)
    text = "\n".join(out)
    for _ in range(6):  # nested codes, e.g. C<B<x>>
        new = _POD_CODES.sub(_pod_code, text)
        if new == text:
            break
        text = new
    return text


class _HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table",
             "section", "blockquote", "ul", "ol", "dl", "title"}
    SKIP = {"script", "style", "head", "nav"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.skip:
            return
        data = data.replace("\u00b6", "")  # Sphinx's headerlink pilcrow
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip(" ")
        self.parts.append(data)


def html_to_text(text):
    """Visible text of an HTML page: block elements become paragraph breaks, <pre> keeps its lines, scripts,
    styles, <head> and <nav> go, character references are decoded."""
    p = _HtmlText()
    p.feed(text)
    p.close()
    return "".join(p.parts)


def clean(text, kind):
    """kind: code | rst | pod | html | text -> normalized text."""
    if kind == "rst":
        text = rst_to_text(text)
    elif kind == "pod":
        text = pod_to_text(text)
    elif kind == "html":
        text = html_to_text(text)
    return normalize_whitespace(text, code=(kind == "code"))
