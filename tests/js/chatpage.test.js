// The chat page (web/) in headless Debian Chromium (playwright-core), beyond browser.test.js's streaming basics:
// Markdown tables, highlighted code with a label and a copy button, LaTeX and sanitised untrusted HTML from a canned
// conversation (fixtures/chat-conversations.json, injected into localStorage: the random model's text is not
// deterministic); at 1280x800 and 390x844, light and dark: nothing overflows the viewport, every control has an
// accessible name, and the page matches docs/screenshots/ within a pixel-difference tolerance; Escape stops a
// stream; edit and resend; settings (system prompt, top-p) reach the request; the length marker and tokens/s; a
// failed turn has no rating buttons; the loading state while /health answers 503.
// MOE_UPDATE_SCREENSHOTS=1 rewrites docs/screenshots/ from this machine's rendering.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { PNG } from "pngjs";
import pixelmatch from "pixelmatch";
import { startServer, waitFor } from "./server.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.MOE_TEST_OUT || "tests/js/out";
const SHOTS = "docs/screenshots";
const UPDATE = process.env.MOE_UPDATE_SCREENSHOTS === "1";
const haveChromium = existsSync(CHROMIUM);
const canned = readFileSync(new URL("./fixtures/chat-conversations.json", import.meta.url), "utf8");
// Fraction of pixels allowed to differ from the checked-in screenshot. pixelmatch already ignores pixels it
// classifies as anti-aliasing and colour differences below its threshold (0.1 of the YIQ range). Measured at
// 1280x800 (Debian Chromium, DejaVu fonts, 2026-12-01): repeated runs under load 17 differ by 0.000%; glyphs
// placed on whole pixels instead of subpixels (--disable-font-subpixel-positioning) by 0.29%; removing the
// table's header row (one line of layout) by 5.8%; light against dark by 70%. 1% lies between.
const MAX_DIFF_FRACTION = 0.01;
let srv, browser;

before(async () => {
  if (!haveChromium) return;
  srv = await startServer(["--ignore-eos", "--max-context", "8192", "--cache-tokens", "16384"]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--font-render-hinting=none"],
  });
});
after(async () => {
  await browser?.close();
  await srv?.stop();
});

// A page on a fresh context; with `conversations`, localStorage holds them (first one active) before the page runs.
async function openPage({ width = 1280, height = 800, colorScheme = "light", conversations } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, colorScheme, deviceScaleFactor: 1 });
  if (conversations) {
    await context.addInitScript((convs) => {
      if (sessionStorage.getItem("injected")) return;  // once per tab, so reloads keep the page's own changes
      sessionStorage.setItem("injected", "1");
      localStorage.setItem("moe.conversations", convs);
      localStorage.setItem("moe.active", JSON.stringify(JSON.parse(convs)[0].id));
    }, conversations);
  }
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(srv.url + "/");
  await page.waitForSelector("body[data-ready='1']");
  await page.evaluate(() => document.fonts.ready);
  return { context, page, errors };
}
const stored = (page) => page.evaluate(() => JSON.parse(localStorage.getItem("moe.conversations")));
const activeMessages = async (page) => {
  const id = await page.evaluate(() => JSON.parse(localStorage.getItem("moe.active")));
  return (await stored(page)).find((c) => c.id === id).messages;
};

// Elements sticking out of the viewport horizontally (content of a horizontally scrolling box is measured by its box).
function overflowing(page) {
  return page.evaluate(() => {
    const W = document.documentElement.clientWidth;
    const bad = [];
    if (document.documentElement.scrollWidth > W) bad.push(`document is ${document.documentElement.scrollWidth}px wide`);
    const scrolls = (el) => { const o = getComputedStyle(el).overflowX; return o === "auto" || o === "scroll"; };
    for (const el of document.body.querySelectorAll("*")) {
      if (!el.checkVisibility({ visibilityProperty: true, opacityProperty: true })) continue;
      let p = el.parentElement, inScroller = false;
      for (; p && p !== document.body; p = p.parentElement) if (scrolls(p)) { inScroller = true; break; }
      if (inScroller) continue;
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      if (r.left < -0.5 || r.right > W + 0.5) bad.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} [${Math.round(r.left)}, ${Math.round(r.right)}]`);
    }
    return bad;
  });
}

// Controls without an accessible name: aria-label, aria-labelledby, a <label>, or (buttons) their text.
function unlabelled(page) {
  return page.evaluate(() => [...document.querySelectorAll("button, input, select, textarea")].filter((el) => {
    const byId = (el.getAttribute("aria-labelledby") || "").split(/\s+/).filter(Boolean)
      .map((id) => document.getElementById(id)?.textContent || "").join(" ");
    const labels = [...(el.labels || [])].map((l) => l.textContent).join(" ");
    const text = el.tagName === "BUTTON" ? el.textContent : "";
    return !((el.getAttribute("aria-label") || "") + byId + labels + text).trim();
  }).map((el) => el.outerHTML.slice(0, 120)));
}

// The screenshot shows the conversation from its top (table, code, formulas): the page itself scrolls to the end.
async function compareScreenshot(page, name) {
  mkdirSync(OUT, { recursive: true });
  await page.evaluate(() => { document.getElementById("messages").scrollTop = 0; });
  const png = await page.screenshot({ animations: "disabled", caret: "hide" });
  writeFileSync(path.join(OUT, name), png);
  const ref = path.join(SHOTS, name);
  if (UPDATE) { mkdirSync(SHOTS, { recursive: true }); writeFileSync(ref, png); return 0; }
  assert.ok(existsSync(ref), `${ref} is missing (MOE_UPDATE_SCREENSHOTS=1 writes it)`);
  const a = PNG.sync.read(png), b = PNG.sync.read(readFileSync(ref));
  assert.deepEqual([a.width, a.height], [b.width, b.height], `${name}: size differs from ${ref}`);
  const diff = new PNG({ width: a.width, height: a.height });
  const n = pixelmatch(a.data, b.data, diff.data, a.width, a.height, { threshold: 0.1 });
  const fraction = n / (a.width * a.height);
  if (fraction > 0) writeFileSync(path.join(OUT, "diff-" + name), PNG.sync.write(diff));
  assert.ok(fraction <= MAX_DIFF_FRACTION,
    `${name}: ${(fraction * 100).toFixed(2)}% of pixels differ from ${ref} (limit ${MAX_DIFF_FRACTION * 100}%); see ${OUT}/diff-${name}`);
  return fraction;
}

test("chat page renders Markdown tables, highlighted code, LaTeX; length marker, tokens/s; no rating on a failed turn",
  { skip: !haveChromium && "no chromium" }, async () => {
    const { context, page, errors } = await openPage({ conversations: canned });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: srv.url });
    const [answer, cut, failed] = await page.$$(".message.assistant");
    assert.deepEqual(await answer.$$eval("table th", (t) => t.map((x) => x.textContent)), ["Expert", "Tokens", "Share"]);
    assert.deepEqual(await answer.$$eval("table tbody td", (r) => r.map((x) => x.textContent)), ["0", "1,024", "25%", "1", "3,072", "75%"]);
    assert.equal(await answer.$eval(".code-block .code-lang", (e) => e.textContent), "python");
    const code = "def route(x, k=2):\n    scores = gate(x)  # one score per expert\n    return scores.topk(k)";
    assert.equal(await answer.$eval(".code-block pre code", (e) => e.textContent), code);
    assert.deepEqual(await answer.$$eval(".code-block .hljs-keyword", (k) => k.map((x) => x.textContent)), ["def", "return"]);
    assert.equal(await answer.$eval(".code-block .hljs-comment", (e) => e.textContent), "# one score per expert");
    await answer.$eval(".copy-code", (b) => b.click());  // the copy is asynchronous: wait for the clipboard
    await waitFor(async () => (await page.evaluate(() => navigator.clipboard.readText())) === code, 10000, "code on the clipboard");
    await answer.waitForSelector(".copy-code.done");
    // LaTeX: one inline formula and one display formula, typeset by KaTeX: the visible HTML, and MathML for screen
    // readers whose annotation keeps the TeX source.
    assert.equal(await answer.$$eval(".katex", (k) => k.length), 2);
    assert.equal(await answer.$eval(".math-display .katex-display semantics > mrow", (e) => e.textContent.replace(/\s/g, "")), "∑i=1Ngi=1");
    assert.equal(await answer.$eval(".math-display annotation[encoding='application/x-tex']", (e) => e.textContent), "\\sum_{i=1}^{N} g_i = 1");
    assert.equal(await answer.$eval("p .katex annotation", (e) => e.textContent), "g_i = \\sigma(u^\\top e_i)");
    assert.ok(await answer.$eval(".math-display .katex-html", (e) => e.getBoundingClientRect().height > 40));
    assert.equal(await answer.$eval(".speed", (e) => e.textContent), "96 tokens · 41.7 tokens/s");
    assert.equal(await answer.$$eval("[data-testid=thumbs-up], [data-testid=thumbs-down]", (b) => b.length), 2);
    assert.equal(await answer.$(".cut-off"), null);
    // finish_reason "length": the marker shows.
    assert.match(await cut.$eval(".cut-off", (e) => e.textContent), /Cut off by the length limit/);
    // A failed turn: the error shows, with Regenerate but no rating buttons.
    assert.equal(await failed.$eval(".message.error", (e) => e.textContent), "The server is overloaded (503)");
    assert.equal(await failed.$$eval("[data-testid=thumbs-up], [data-testid=thumbs-down]", (b) => b.length), 0);
    assert.ok(await failed.$("[data-testid=regenerate]"));

    // Untrusted HTML in an answer is shown as text; javascript: links lose their target; nothing runs.
    await page.click("[data-testid=open-conversation][aria-label='Open conversation: Untrusted HTML']");
    await page.waitForSelector(".message.assistant .answer a[href='https://example.com/']");
    const a = await page.$(".message.assistant .answer");
    assert.match(await a.textContent(), /<img src=x onerror="window.__xss = 1">/);
    assert.equal(await a.$$eval("img, script", (x) => x.length), 0);
    assert.deepEqual(await a.$$eval("a", (x) => x.map((l) => l.getAttribute("href"))).then((h) => h.filter((x) => x && /javascript/i.test(x))), []);
    await a.$$eval("a", (links) => links.forEach((l) => { if (!l.href.startsWith("https:")) l.click(); }));
    // Dollar amounts are not maths (the one formula is the \\href); KaTeX (trust off) makes no link of \\href.
    assert.match(await a.textContent(), /Prices: \$5 and \$10 stay text\./);
    assert.deepEqual(await a.$$eval(".katex annotation", (k) => k.map((x) => x.textContent)), ["\\href{javascript:window.__xss=5}{x}"]);
    assert.equal(await a.$$eval(".katex a", (k) => k.length), 0);
    await a.$$eval("a", (links) => links.forEach((l) => { if (!l.href.startsWith("https:")) l.click(); }));
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.equal(await page.textContent(".message.user .text"), "<b>not bold</b>");
    assert.deepEqual(errors, []);
    await context.close();
  });

// Random model text from Markdown, HTML and TeX fragments (seeded, so a failure reproduces): rendering never throws,
// and the page never gets a script, an event handler, a frame or a javascript: URL.
function randomAnswers(count, seed) {
  const parts = ["<", ">", "</", "<script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>", "<iframe src=x>",
    "javascript:", "[a](", ")", "](javascript:alert(1))", "![i](x)", "`", "```", "```js\n", "~~~", "$", "$$", "\\(",
    "\\)", "\\[", "\\]", "\\href{javascript:alert(1)}{x}", "\\frac{", "}", "{", "^", "_", "|", "|---|", "\n| a | b |\n|---|---|\n| 1 | 2 |\n", "\n",
    "\n\n", "# ", "- ", "1. ", "> ", "**", "*", "&amp;", "&#", "\"", "'", " onmouseover=", "style=", "x", "42", " "];
  let state = seed >>> 0;
  const next = () => { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state; };
  return Array.from({ length: count }, () => Array.from({ length: 1 + (next() % 60) }, () => parts[next() % parts.length]).join(""));
}

test("random model text renders without scripts, handlers or javascript: URLs", { skip: !haveChromium && "no chromium" }, async () => {
  const answers = randomAnswers(300, 20261201);
  const conv = [{ id: "fuzz", title: "fuzz", messages: answers.flatMap((content) => [{ role: "user", content: "q" }, { role: "assistant", content, finish: "stop" }]) }];
  const { context, page, errors } = await openPage({ conversations: JSON.stringify(conv) });
  assert.equal((await page.$$(".message.assistant")).length, answers.length);
  const bad = await page.evaluate(() => {
    const found = [];
    for (const el of document.querySelectorAll("#messages *")) {
      if (/^(script|iframe|object|embed|frame)$/i.test(el.tagName)) found.push(el.tagName);
      for (const attr of el.attributes) {
        if (/^on/i.test(attr.name)) found.push(`${el.tagName} ${attr.name}`);
        if (/^\s*javascript:/i.test(attr.value)) found.push(`${el.tagName} ${attr.name}=${attr.value}`);
      }
    }
    return found;
  });
  assert.deepEqual(bad, []);
  // The inputs reached every renderer: maths, code blocks, links, tables, and HTML shown as text.
  const seen = await page.evaluate(() => Object.fromEntries([".katex", ".code-block", "a[href]", "table", "blockquote"]
    .map((sel) => [sel, document.querySelectorAll("#messages " + sel).length])));
  for (const [sel, n] of Object.entries(seen)) assert.ok(n > 0, `no ${sel} rendered: ${JSON.stringify(seen)}`);
  assert.match(await page.textContent("#messages"), /<script>/);
  assert.deepEqual(errors, []);
  await context.close();
});

for (const [size, width, height] of [["desktop", 1280, 800], ["phone", 390, 844]]) {
  for (const colorScheme of ["light", "dark"]) {
    test(`chat page at ${width}x${height}, ${colorScheme}: no overflow, labelled controls, matches the screenshot`,
      { skip: !haveChromium && "no chromium" }, async () => {
        const { context, page, errors } = await openPage({ width, height, colorScheme, conversations: canned });
        const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
        assert.equal(bg, colorScheme === "dark" ? "rgb(20, 24, 31)" : "rgb(246, 247, 249)");
        assert.deepEqual(await overflowing(page), []);
        assert.deepEqual(await unlabelled(page), []);
        const fraction = await compareScreenshot(page, `chat-${size}-${colorScheme}.png`);
        console.log(`# chat-${size}-${colorScheme}.png: ${(fraction * 100).toFixed(3)}% of pixels differ`);
        if (size === "phone") {
          // The conversation list is off screen until the menu button opens it; Escape closes it again.
          assert.equal(await page.isVisible("#sidebar"), false);
          await page.click("#menu");
          await page.waitForFunction(() => document.getElementById("sidebar").getBoundingClientRect().left >= 0);
          assert.equal(await page.getAttribute("#menu", "aria-expanded"), "true");
          assert.ok(await page.isVisible("#system-prompt"));
          assert.deepEqual(await overflowing(page), []);
          await page.keyboard.press("Escape");
          await page.waitForSelector("#sidebar", { state: "hidden" });
        }
        assert.deepEqual(errors, []);
        await context.close();
      });
  }
}

test("Escape stops a streaming answer; the stopped turn has no rating buttons", { skip: !haveChromium && "no chromium" }, async () => {
  const { context, page, errors } = await openPage();
  await page.fill("#max-tokens", "8000");
  await page.fill("#prompt", "Go on forever");
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => document.body.dataset.streaming === "1" &&
    document.querySelector(".message.assistant .answer")?.textContent.length > 0);
  await page.keyboard.press("Escape");
  await page.waitForSelector("body[data-streaming='']");
  const [msg] = (await activeMessages(page)).slice(-1);
  assert.equal(msg.stopped, true, JSON.stringify(msg).slice(0, 300));
  assert.ok(msg.content.length > 0);
  assert.equal(await page.textContent(".message.assistant .note"), "(stopped)");
  assert.equal((await page.$$(".message.assistant [data-testid^=thumbs]")).length, 0);
  assert.deepEqual(errors, []);
  await context.close();
});

test("edit and resend; system prompt and top-p reach the request; length marker and tokens/s; failed request",
  { skip: !haveChromium && "no chromium" }, async () => {
    const { context, page, errors } = await openPage();
    const bodies = [];
    page.on("request", (r) => { if (r.url().endsWith("/v1/chat/completions")) bodies.push(JSON.parse(r.postData())); });
    await page.fill("#system-prompt", "You are terse.");
    await page.fill("#top-p", "0.9");
    await page.fill("#max-tokens", "8");
    const ask = async (text) => {
      const before = (await page.$$(".message.assistant")).length;
      await page.fill("#prompt", text);
      await page.press("#prompt", "Enter");
      await page.waitForFunction((n) => document.body.dataset.streaming === "" &&
        document.querySelectorAll(".message.assistant").length === n, before + 1);
    };
    await ask("first question");
    await ask("second question");
    let msgs = await activeMessages(page);
    assert.equal(msgs.length, 4);
    assert.deepEqual(bodies[0].messages, [{ role: "system", content: "You are terse." }, { role: "user", content: "first question" }]);
    assert.equal(bodies[0].top_p, 0.9);
    assert.equal(bodies[0].max_tokens, 8);
    // --ignore-eos: 8 tokens, cut off by max_tokens, with the speed shown.
    assert.equal(msgs[3].finish, "length");
    assert.equal(msgs[3].tokens, 8);
    assert.ok(msgs[3].tps > 0);
    assert.match(await page.textContent(".message.assistant:last-child .speed"), /^8 tokens · [\d.]+ tokens\/s$/);
    assert.ok(await page.isVisible(".message.assistant:last-child .cut-off"));

    // Edit the first question: the later turns go, and the edited text is answered afresh.
    await page.click(".message.user >> nth=0 >> [data-testid=edit]");
    await page.fill("[data-testid=edit-text]", "edited question");
    await page.click("[data-testid=edit-send]");
    await page.waitForFunction(() => document.body.dataset.streaming === "" && !document.querySelector("[data-testid=edit-text]") &&
      document.querySelectorAll(".message").length === 2);
    msgs = await activeMessages(page);
    assert.equal(msgs.length, 2);
    assert.equal(msgs[0].content, "edited question");
    assert.ok(msgs[1].content.length > 0 && !msgs[1].error);
    assert.deepEqual(bodies.at(-1).messages, [{ role: "system", content: "You are terse." }, { role: "user", content: "edited question" }]);
    assert.equal(await page.textContent(".message.user .text"), "edited question");

    // A request the server refuses (max_tokens beyond the context): the error shows, without rating buttons.
    await page.fill("#max-tokens", "100000");
    await ask("too long");
    msgs = await activeMessages(page);
    assert.ok(msgs.at(-1).error, JSON.stringify(msgs.at(-1)));
    assert.ok(await page.isVisible(".message.assistant:last-child .message.error"));
    assert.equal((await page.$$(".message.assistant:last-child [data-testid^=thumbs]")).length, 0);
    assert.deepEqual(errors, []);
    await context.close();
  });

test("loading state while /health answers 503 loading, then the page becomes ready", { skip: !haveChromium && "no chromium" }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Stands in for a server still loading its model (today's server loads before it listens).
  let loading = true, polls = 0;
  await page.route("**/health", (route) => {
    if (!loading) return route.continue();
    ++polls;
    return route.fulfill({ status: 503, contentType: "application/json", body: JSON.stringify({ status: "loading", progress: 0.42 }) });
  });
  await page.goto(srv.url + "/");
  await page.waitForSelector("#loading", { state: "visible" });
  assert.equal(await page.$eval("#loading-progress", (p) => p.value), 0.42);
  assert.match(await page.textContent("#loading-text"), /42%/);
  assert.equal(await page.$eval("#send", (b) => b.disabled), true);
  assert.equal(await page.$("body[data-ready='1']"), null);
  await waitFor(() => polls >= 2, 20000, "a second /health poll while loading");  // it keeps polling
  assert.equal(await page.isVisible("#loading"), true);
  loading = false;
  await page.waitForSelector("body[data-ready='1']");
  assert.equal(await page.isVisible("#loading"), false);
  assert.equal(await page.$eval("#send", (b) => b.disabled), false);
  await context.close();
});
