// Builds the chat page that `moe serve` embeds: node web/build.mjs OUT_DIR writes OUT_DIR/{index.html,app.js,style.css}.
// app.js: src/main.js and the libraries it imports (node_modules, pinned by package-lock.json), bundled and
// minified by esbuild into one script. style.css: KaTeX's styles with its fonts inlined (woff2 only: every browser
// this page supports reads it, so the woff/ttf copies are dropped), the highlight.js theme, then style.css.
// The server serves just these three files, so nothing else needs a route.
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error("usage: node build.mjs OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const modules = path.join(here, "node_modules");

await build({
  entryPoints: [path.join(here, "src/main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome100", "firefox100", "safari15"],
  legalComments: "eof",
  outfile: path.join(out, "app.js"),
  logLevel: "warning",
});

const katexDir = path.join(modules, "katex/dist");
const katexCss = readFileSync(path.join(katexDir, "katex.min.css"), "utf8").replace(
  /src:url\((fonts\/[\w-]+\.woff2)\) format\("woff2"\)(?:,url\([^)]*\) format\("[\w]+"\))*/g,
  (_, file) => `src:url(data:font/woff2;base64,${readFileSync(path.join(katexDir, file)).toString("base64")}) format("woff2")`);
if (/url\(fonts\//.test(katexCss)) throw new Error("build.mjs: a KaTeX font reference was not inlined (katex.min.css changed?)");
const hljsCss = readFileSync(path.join(modules, "highlight.js/styles/github-dark.min.css"), "utf8");
const ownCss = readFileSync(path.join(here, "style.css"), "utf8");
writeFileSync(path.join(out, "style.css"), `${katexCss}\n${hljsCss}\n${ownCss}`);
writeFileSync(path.join(out, "index.html"), readFileSync(path.join(here, "index.html")));
