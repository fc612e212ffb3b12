// The chat page in headless Debian Chromium (playwright-core): a streamed answer, copy, thumbs up (a row in
// SQLite), regenerate, the API-key prompt, and a screenshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { chromium } from "playwright-core";
import { startServer, tempDir, waitFor, MOE_BIN } from "./server.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.MOE_TEST_OUT || "tests/js/out";
const haveChromium = existsSync(CHROMIUM);
let srv, browser, db;

const launch = () => chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});

before(async () => {
  if (!haveChromium) return;
  db = path.join(tempDir(), "feedback.db");
  srv = await startServer(["--ignore-eos", "--feedback-db", db, "--max-context", "2048", "--cache-tokens", "8192"]);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await srv?.stop();
});

// The random tiny model can sample EOS at any point; the servers here run with --ignore-eos so answers have the
// length the page asks for.
function feedbackRows() {
  const out = execFileSync(MOE_BIN, ["feedback", "export", "--db", db], { encoding: "utf8" });
  return out.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.type === "rating");
}

test("chat page: streamed answer, copy, thumbs up, regenerate, screenshot", { skip: !haveChromium && "no chromium" }, async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: srv.url });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(srv.url + "/");
  await page.waitForSelector("body[data-ready='1']");
  assert.match(await page.textContent("#model-name"), /tiny-dsv3/);
  // Long enough that a loaded machine still renders several partial answers (200 tokens of the tiny model
  // stream in a fraction of a second; seen rendered only twice while other builds ran).
  await page.fill("#max-tokens", "1500");

  // Type a prompt; the answer streams in: count the renders of the answer while it arrives.
  // Record the answer's length at every DOM change while the stop button shows (i.e. while streaming).
  await page.evaluate(() => {
    window.__partial = new Set();
    new MutationObserver(() => {
      const a = document.querySelector(".message.assistant .answer");
      if (a && !document.getElementById("stop").hidden && a.textContent.length) window.__partial.add(a.textContent.length);
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
  });
  await page.fill("#prompt", "Write a haiku about **mixture of experts**.");
  await page.press("#prompt", "Enter");
  await page.waitForSelector(".message.user");
  await page.waitForFunction(() => document.getElementById("stop").hidden && document.querySelector(".message.assistant .answer")?.textContent.length > 0);
  const partial = await page.evaluate(() => window.__partial.size);
  assert.ok(partial >= 3, `only ${partial} partial answers were shown while streaming`);
  const stored = () => page.evaluate(() => JSON.parse(localStorage.getItem("moe.conversations"))[0].messages);
  let msgs = await stored();
  assert.equal(msgs.length, 2);
  const answer = msgs[1].content;
  assert.ok(answer.length > 0);
  assert.equal((await page.$$(".message.assistant")).length, 1);

  // Copy puts the answer on the clipboard.
  await page.click(".message.assistant [data-testid=copy]");
  await waitFor(async () => (await page.evaluate(() => navigator.clipboard.readText())) === answer, 5000, "clipboard");

  // Thumbs up stores a row in SQLite.
  await page.click(".message.assistant [data-testid=thumbs-up]");
  await page.waitForSelector(".message.assistant [data-testid=thumbs-up].done");
  const rows = feedbackRows();
  assert.equal(rows.length, 1);
  assert.equal(rows[0].rating, "up");
  assert.equal(rows[0].answer, answer);
  assert.deepEqual(rows[0].conversation, [{ role: "user", content: "Write a haiku about **mixture of experts**." }]);

  // Regenerate: a fresh answer replaces the old one.
  await page.click(".message.assistant [data-testid=regenerate]");
  await page.waitForFunction((old) => {
    const m = JSON.parse(localStorage.getItem("moe.conversations"))[0].messages;
    return document.getElementById("stop").hidden && m.length === 2 && m[1].content !== old;
  }, answer);
  msgs = await stored();
  assert.equal(msgs.length, 2);
  assert.equal((await page.$$(".message.assistant")).length, 1);
  assert.notEqual(msgs[1].content, answer);
  assert.equal(msgs[1].rating, undefined);

  // Markdown: a code block and a thinking section render (injected into the stored conversation and re-rendered).
  await page.evaluate(() => {
    const convs = JSON.parse(localStorage.getItem("moe.conversations"));
    convs[0].messages.push({ role: "user", content: "Show code" },
      { role: "assistant", reasoning: "The user wants code.", content: "Here:\n\n```js\nconst x = 1 < 2;\n```\n\n- **bold** item\n- `inline`" });
    localStorage.setItem("moe.conversations", JSON.stringify(convs));
  });
  await page.reload();
  await page.waitForSelector("body[data-ready='1']");
  assert.equal(await page.textContent(".message.assistant:last-child pre code.language-js"), "const x = 1 < 2;");
  assert.equal(await page.textContent(".message.assistant:last-child li strong"), "bold");
  assert.equal(await page.textContent(".message.assistant:last-child details.thinking .thinking-body"), "The user wants code.");
  await page.click(".message.assistant:last-child details.thinking summary");

  mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, "chat.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test("chat page: stop button ends a stream", { skip: !haveChromium && "no chromium" }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(srv.url + "/");
  await page.waitForSelector("body[data-ready='1']");
  await page.fill("#max-tokens", "1500");
  await page.fill("#prompt", "Go on forever");
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => document.querySelector(".message.assistant .answer")?.textContent.length > 0);
  const state = await page.evaluate(() => ({ stop: document.getElementById("stop").hidden, m: localStorage.getItem("moe.conversations") }));
  assert.equal(state.stop, false, "stream already over: " + state.m.slice(0, 400));
  await page.click("#stop");
  await page.waitForSelector("#stop", { state: "hidden" });
  await page.waitForSelector(".message.assistant .note");
  await context.close();
});

test("chat page asks for the API key once", { skip: !haveChromium && "no chromium" }, async () => {
  const key = "sk-page-" + Math.random().toString(36).slice(2);
  const keyed = await startServer(["--ignore-eos", "--max-context", "1024", "--cache-tokens", "2048"], { MOE_API_KEY: key });
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(keyed.url + "/");
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-input", key);
    await page.click("#key-save");
    await page.waitForSelector("body[data-ready='1']");
    await page.fill("#max-tokens", "8");
    await page.fill("#prompt", "hello");
    await page.press("#prompt", "Enter");
    await page.waitForSelector("#stop", { state: "hidden" });
    const msgs = await page.evaluate(() => JSON.parse(localStorage.getItem("moe.conversations"))[0].messages);
    assert.ok(msgs[1].content.length > 0 && !msgs[1].error);
    // Reloading does not ask again: the key is remembered.
    await page.reload();
    await page.waitForSelector("body[data-ready='1']");
    assert.equal(await page.$("#key-dialog[open]"), null);
    await context.close();
  } finally {
    await keyed.stop();
  }
});
