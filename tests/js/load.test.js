// Bounded load on loopback: 256 concurrent streaming clients against the bundled model; then 256 more of which
// half cancel mid-stream, whose cache pages must come back (checked through /metrics). Also `moe bench-serve`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { startServer, metrics, waitFor, readSse, MOE_BIN } from "./server.js";

const CLIENTS = 256;
let srv;

before(async () => {
  srv = await startServer(["--max-batch", "256", "--cache-tokens", "65536", "--step-tokens", "1024"]);
});
after(async () => { await srv?.stop(); });

// One streaming chat request; checks the stream is well formed. cancelAfter: abort after that many content chunks.
async function streamOne(i, maxTokens, cancelAfter = 0) {
  const controller = new AbortController();
  const t0 = performance.now();
  const res = await fetch(srv.url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
    body: JSON.stringify({
      model: "tiny-dsv3", messages: [{ role: "user", content: `Client ${i}: tell me a story.` }],
      max_tokens: maxTokens, temperature: 0.7, seed: i, ignore_eos: true, stream: true, stream_options: { include_usage: true },
    }),
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^text\/event-stream/);
  let id = null, role = null, finish = null, usage = null, done = false, contentChunks = 0, ttft = null;
  try {
    await readSse(res, (ev) => {
      assert.ok(!done, "event after [DONE]");
      if (ev === "[DONE]") { done = true; return; }
      assert.equal(ev.object, "chat.completion.chunk", JSON.stringify(ev));
      id ??= ev.id;
      assert.equal(ev.id, id);
      if (ev.usage) { assert.equal(ev.choices.length, 0); usage = ev.usage; return; }
      assert.equal(ev.choices.length, 1);
      const c = ev.choices[0];
      assert.ok(!finish, "chunk after finish_reason");
      if (c.delta.role) { assert.equal(role, null); role = c.delta.role; }
      if (c.delta.content) { contentChunks++; ttft ??= performance.now() - t0; }
      if (c.finish_reason) finish = c.finish_reason;
      if (cancelAfter && contentChunks >= cancelAfter) { controller.abort(); return false; }
    });
  } catch (e) {
    if (!(cancelAfter && e.name === "AbortError")) throw e;
  }
  if (cancelAfter) return { cancelled: true };
  assert.equal(role, "assistant");
  assert.equal(finish, "length");
  assert.ok(done, "stream ended without [DONE]");
  assert.equal(usage.completion_tokens, maxTokens);
  assert.ok(contentChunks > 0 && contentChunks <= maxTokens);
  return { ttft, total: performance.now() - t0 };
}

const pct = (v, q) => { const s = [...v].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]; };

test(`${CLIENTS} concurrent streaming clients all complete`, async () => {
  const m0 = await metrics(srv.url);
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => streamOne(i, 32)));
  const secs = (performance.now() - t0) / 1000;
  const m1 = await metrics(srv.url);
  const tokens = m1.moe_generation_tokens_total - m0.moe_generation_tokens_total;
  assert.equal(tokens, CLIENTS * 32);
  const ttfts = results.map((r) => r.ttft);
  console.log(`# load: ${CLIENTS} streams x 32 tokens in ${secs.toFixed(2)} s: ${(tokens / secs).toFixed(0)} tokens/s, ` +
    `TTFT p50 ${pct(ttfts, 0.5).toFixed(0)} ms p99 ${pct(ttfts, 0.99).toFixed(0)} ms, ` +
    `request p50 ${pct(results.map((r) => r.total), 0.5).toFixed(0)} ms, steps ${m1.moe_engine_steps_total - m0.moe_engine_steps_total}`);
  assert.equal(m1.moe_cache_pages_used, 0);
  assert.equal(m1.moe_requests_failed_total, 0);
});

test("cancelling half of the streams mid-way frees their cache pages", async () => {
  const m0 = await metrics(srv.url);
  let peak = 0;
  const poll = setInterval(async () => { try { peak = Math.max(peak, (await metrics(srv.url)).moe_cache_pages_used); } catch {} }, 100);
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => (i % 2 ? streamOne(i, 400, 2) : streamOne(i, 24))));
  clearInterval(poll);
  assert.equal(results.filter((r) => r.cancelled).length, CLIENTS / 2);
  const m1 = await waitFor(async () => {
    const m = await metrics(srv.url);
    return m.moe_cache_pages_used === 0 && m.moe_running_batch_size === 0 ? m : null;
  }, 20000, "all pages free");
  const cancelled = m1.moe_requests_cancelled_total - m0.moe_requests_cancelled_total;
  assert.equal(cancelled, CLIENTS / 2);
  // The cancelled requests stopped long before their 400 tokens.
  const generated = m1.moe_generation_tokens_total - m0.moe_generation_tokens_total;
  assert.ok(generated < (CLIENTS / 2) * 24 + (CLIENTS / 2) * 200, `generated ${generated}`);
  console.log(`# cancel: peak ${peak} pages in use, ${cancelled} cancelled, ${generated} tokens generated, pages used after: ${m1.moe_cache_pages_used}`);
  // No page leaked: each is free or held by the prefix cache alone (reclaimed on demand).
  assert.equal(m1.moe_cache_pages_free + m1.moe_cache_pages_evictable, m1.moe_cache_pages_total);
});

test("moe bench-serve reports throughput and latency percentiles", async () => {
  const { stdout } = await promisify(execFile)(MOE_BIN, ["bench-serve", "--url", srv.url, "--concurrency", "16", "--requests", "48", "--max-tokens", "16"]);
  console.log(stdout.trim().split("\n").map((l) => "# " + l).join("\n"));
  assert.match(stdout, /48 requests \(48 ok, 0 failed\)/);
  assert.match(stdout, /time to first token\s+p50/);
  assert.match(stdout, /inter-token latency\s+p50/);
});
