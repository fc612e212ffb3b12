// Model text (untrusted) -> safe HTML: Markdown (GFM tables, lists, code) by marked, $...$ / $$...$$ / \(..\) /
// \[..\] by KaTeX, code blocks highlighted by highlight.js with a language label and a copy button, and the whole
// result sanitised by DOMPurify. Raw HTML in the text is shown as text, never interpreted.
import { Marked } from "marked";
import DOMPurify from "dompurify";
import katex from "katex";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import plaintext from "highlight.js/lib/languages/plaintext";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import shell from "highlight.js/lib/languages/shell";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

// The languages a chat about code mostly shows; others render as escaped plain text with their label.
const languages = { bash, c, cpp, css, diff, go, java, javascript, json, markdown, plaintext, python, rust, shell, sql,
  typescript, xml, yaml };
for (const [name, def] of Object.entries(languages)) hljs.registerLanguage(name, def);
hljs.registerAliases(["cuda", "cu"], { languageName: "cpp" });

export function escapeHtml(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function tex(text, displayMode) {
  // throwOnError false: a malformed formula shows as red source text instead of breaking the answer.
  return katex.renderToString(text, { displayMode, throwOnError: false, output: "htmlAndMathml" });
}

// Block math: $$ ... $$ or \[ ... \] starting a block (may span lines).
const mathBlock = {
  name: "mathBlock",
  level: "block",
  start(src) { const i = src.search(/\$\$|\\\[/); return i < 0 ? undefined : i; },
  tokenizer(src) {
    const m = /^(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/.exec(src);
    if (m) return { type: "mathBlock", raw: m[0], text: (m[1] ?? m[2]).trim() };
  },
  renderer(token) { return `<div class="math-display">${tex(token.text, true)}</div>\n`; },
};
// Inline math: $$..$$ (display), \(..\), or $..$ where the opening $ is not followed by a space and the closing
// one neither follows a space nor precedes a digit (so "$5 and $10" stays text).
const mathInline = {
  name: "mathInline",
  level: "inline",
  start(src) { const i = src.search(/\$|\\\(/); return i < 0 ? undefined : i; },
  tokenizer(src) {
    let m = /^\$\$([^$]+?)\$\$/.exec(src);
    if (m) return { type: "mathInline", raw: m[0], text: m[1].trim(), display: true };
    m = /^\\\(([\s\S]+?)\\\)/.exec(src) || /^\$(?![\s$])((?:\\.|[^\\$\n])+?)(?<!\s)\$(?!\d)/.exec(src);
    if (m) return { type: "mathInline", raw: m[0], text: m[1], display: false };
  },
  renderer(token) { return tex(token.text, token.display); },
};

const marked = new Marked({
  gfm: true,
  extensions: [mathBlock, mathInline],
  renderer: {
    code({ text, lang }) {
      const name = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      const known = name && hljs.getLanguage(name);
      const body = known ? hljs.highlight(text, { language: name, ignoreIllegals: true }).value : escapeHtml(text);
      const label = escapeHtml(name || "text");
      return `<div class="code-block"><div class="code-head"><span class="code-lang">${label}</span>` +
        `<button type="button" class="copy-code" aria-label="Copy the ${label} code">Copy</button></div>` +
        `<pre><code class="hljs language-${label}">${body}</code></pre></div>\n`;
    },
    html({ text }) { return escapeHtml(text); },
  },
});

// Links open in a new tab without access to this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// KaTeX's MathML wraps the formula in <semantics> with its TeX source in an <annotation> (plain text, what screen
// readers and copy use); DOMPurify drops both by default and would leave the source as stray text. <annotation-xml>
// (which may hold HTML) stays forbidden.
const purifyOptions = { ADD_TAGS: ["semantics", "annotation"], ADD_ATTR: ["target", "encoding"] };

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), purifyOptions);
}
