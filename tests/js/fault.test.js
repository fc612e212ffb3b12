// Load and fault suite (issue 16): one server taken through bursts of connects, streams cancelled at random, slow
// clients, oversized and deeply nested bodies, a long prompt's prefill and kill -9 during feedback writes. After
// each fault: the service continues (/health and a small chat request answered within a bound), no cache page is
// leaked (/metrics), resident memory stays within a bound of where it started, and nothing acknowledged is lost.
// The single faults in detail are in load, slow, limits, lifecycle and feedback.test.js; this file mixes them on one
// server, repeatedly.
//
// CI runs one round (about 40 s). MOE_FAULT_ROUNDS=N runs N rounds (memory must stay within the bound over all of
// them); MOE_FAULT_LONG=1 makes the long prompt 60,000 tokens and MOE_FAULT_PROMPT_TOKENS=N N tokens (the cache
// holds twice the prompt). Each round prints its
// figures (bench/RESULTS.md). These variables are read by this script only.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { startServer, metrics, waitFor, readSse, tempDir, MOE_BIN } from "./server.js";

const LONG = process.env.MOE_FAULT_LONG === "1";
const ROUNDS = Number(process.env.MOE_FAULT_ROUNDS || 1);
const LONG_PROMPT = Number(process.env.MOE_FAULT_PROMPT_TOKENS || (LONG ? 60000 : 4000));
const BODY_TIMEOUT_S = 3;
const MAX_BODY = 1 << 20;
// Service continuity: bounds for a small request while faults go on (the tiny model answers one in ~50 ms alone;
// during a long prefill it waits for a few steps, each with up to --step-tokens 256 of the long prompt).
const HEALTH_MS = 2000, SMALL_MS = 10000;
// Resident memory may grow by at most this much over the run: the cache is allocated up front, so what grows is
// per-connection state and the allocator's arenas (one per thread, up to 2,048 connection threads).
const RSS_GROWTH_BOUND = 512 << 20;

let srv, db;
const figures = {};

const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${srv.proc.pid}/status`, "utf8"))[1]) * 1024;
const MiB = (b) => (b / (1 << 20)).toFixed(0) + " MiB";

async function start() {
  srv = await startServer(["--max-batch", "256", "--cache-tokens", String(Math.max(16384, 2 * LONG_PROMPT + 8192)), "--step-tokens", "256",
    "--max-body-bytes", String(MAX_BODY), "--body-timeout", String(BODY_TIMEOUT_S), "--feedback-db", db]);
}

before(async () => {
  db = path.join(tempDir(), "feedback.db");
  await start();
});
after(async () => { await srv?.stop(); });

function chat(content, extra = {}, timeoutMs = 60000) {
  return fetch(srv.url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal: AbortSignal.timeout(timeoutMs),
    body: JSON.stringify({ messages: [{ role: "user", content }], max_tokens: 2, ...extra }),
  });
}

// /health and a small chat request answered within their bounds; returns the small request's latency.
async function assertServing(what, smallBound = SMALL_MS) {
  let t = Date.now();
  const h = await fetch(srv.url + "/health", { signal: AbortSignal.timeout(HEALTH_MS * 3) });
  assert.equal(h.status, 200, `${what}: /health`);
  assert.ok(Date.now() - t < HEALTH_MS, `${what}: /health took ${Date.now() - t} ms`);
  t = Date.now();
  const r = await chat("hi", {}, Math.max(60000, smallBound));
  const text = await r.text();
  assert.equal(r.status, 200, `${what}: ${text}`);
  assert.equal(JSON.parse(text).object, "chat.completion");
  const ms = Date.now() - t;
  assert.ok(ms < smallBound, `${what}: a small request took ${ms} ms`);
  return ms;
}

// Every page back once nothing runs, and memory within the bound of the baseline.
async function assertNoLeaks(what) {
  const m = await waitFor(async () => {
    const m = await metrics(srv.url);
    return m.moe_cache_pages_used === 0 && m.moe_running_batch_size === 0 && m.moe_queue_depth === 0 ? m : null;
  }, 20000, `${what}: every cache page free`);
  // Pages the prefix cache keeps (evictable: held by no request) count as free for this check.
  assert.equal(m.moe_cache_pages_free + m.moe_cache_pages_evictable, m.moe_cache_pages_total, what);
  const grown = rss() - figures.rss_start;
  assert.ok(grown < RSS_GROWTH_BOUND, `${what}: resident memory grew by ${MiB(grown)}`);
}

function rawConnect() {
  const u = new URL(srv.url);
  const sock = net.connect(Number(u.port), u.hostname);
  sock.on("error", () => {});
  sock.answer = "";
  sock.on("data", (d) => { sock.answer += d; });
  sock.ended = new Promise((resolve) => sock.on("close", () => resolve(Date.now())));
  return sock;
}

async function burst(n) {
  const t0 = Date.now();
  const socks = Array.from({ length: n }, () => {
    const s = rawConnect();
    s.on("connect", () => s.write("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
    return s;
  });
  await Promise.race([Promise.all(socks.map((s) => s.ended)), new Promise((r) => setTimeout(r, 30000))]);
  socks.forEach((s) => s.destroy());
  const answered = socks.filter((s) => s.answer.startsWith("HTTP/1.1 200")).length;
  return { answered, ms: Date.now() - t0 };
}

// n streams; about half are cancelled after a random number of chunks. Returns [completed, cancelled].
async function streamsWithCancels(n, seed) {
  let x = seed;
  const rand = () => ((x = (x * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const one = async (i) => {
    const cancelAfter = rand() < 0.5 ? 1 + Math.floor(rand() * 8) : 0;
    const controller = new AbortController();
    const res = await fetch(srv.url + "/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({ messages: [{ role: "user", content: `stream ${i}` }], max_tokens: cancelAfter ? 400 : 16,
        ignore_eos: true, stream: true, seed: i }),
    });
    assert.equal(res.status, 200);
    let chunks = 0, finish = null, done = false;
    try {
      await readSse(res, (ev) => {
        if (ev === "[DONE]") { done = true; return; }
        if (ev.choices[0]?.delta?.content) chunks++;
        finish ??= ev.choices[0]?.finish_reason;
        if (cancelAfter && chunks >= cancelAfter) { controller.abort(); return false; }
      });
    } catch (e) {
      if (!(cancelAfter && e.name === "AbortError")) throw e;
    }
    if (cancelAfter) return "cancelled";
    assert.ok(done && finish === "length", `stream ${i}: finish ${finish}, [DONE] ${done}`);
    return "completed";
  };
  const r = await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  return [r.filter((v) => v === "completed").length, r.filter((v) => v === "cancelled").length];
}

// Slow clients: header bytes trickled, bodies trickled and bodies never sent; all end in a 408.
async function slowClients(n) {
  const post = (framing) => `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${framing}\r\n\r\n`;
  const kinds = [["GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", "a"], [post("Content-Length: 1000"), "{"],
    [post("Content-Length: 10"), null]];
  const socks = [];
  for (let i = 0; i < n; i++) {
    const [head, piece] = kinds[i % kinds.length];
    const s = rawConnect();
    s.piece = piece;
    s.on("connect", () => s.write(head));
    socks.push(s);
  }
  const timer = setInterval(() => { for (const s of socks) if (s.piece && !s.destroyed) s.write(s.piece); }, 1000);
  try {
    const lat = [];
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 500));
      lat.push(await assertServing(`${n} slow clients`));
    }
    await Promise.race([Promise.all(socks.map((s) => s.ended)), new Promise((r) => setTimeout(r, 25000))]);
    const timedOut = socks.filter((s) => /^HTTP\/1\.1 408/.test(s.answer)).length;
    assert.equal(timedOut, n, `slow clients answered 408: ${timedOut} of ${n}`);
    return Math.max(...lat);
  } finally {
    clearInterval(timer);
    socks.forEach((s) => s.destroy());
  }
}

async function hostileBodies() {
  const post = (p, body, headers = {}) => fetch(srv.url + p, {
    method: "POST", headers: { "Content-Type": "application/json", ...headers }, body, duplex: "half" });
  const deep = (k) => "[".repeat(k) + "]".repeat(k);
  const big = await post("/v1/chat/completions", "x".repeat(2 * MAX_BODY));
  assert.equal(big.status, 413);
  const chunked = await post("/v1/completions", new ReadableStream({
    start(c) { for (let i = 0; i < 32; i++) c.enqueue(new TextEncoder().encode("y".repeat(128 << 10))); c.close(); },
  })).catch((e) => ({ status: "reset: " + e.message }));
  assert.ok(chunked.status === 413 || String(chunked.status).startsWith("reset"), `chunked: ${chunked.status}`);
  const tools = await post("/v1/chat/completions",
    `{"messages":[{"role":"user","content":"x"}],"tools":${deep(100000)}}`);
  assert.equal(tools.status, 400);
  assert.match(await tools.text(), /nest/i);
  const fb = await post("/v1/feedback", `{"answer":"a","rating":1,"conversation":${deep(100000)}}`);
  assert.equal(fb.status, 400);
}

// A long prompt prefilled while small requests keep coming: the worst small-request latency.
async function longPrefill(tokens) {
  const prompt = Array.from({ length: tokens }, (_, i) => 2 + ((i * 7919) % 2000));
  const t0 = Date.now();
  const long = fetch(srv.url + "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal: AbortSignal.timeout(600000),
    // Streamed: the headers come at once (a non-streamed answer's would come after the whole prefill, past
    // undici's 300 s headers timeout on a slow machine); keep-alive comments flow while it is prefilled.
    body: JSON.stringify({ prompt, max_tokens: 1, stream: true }),
  }).then(async (r) => {
    assert.equal(r.status, 200);
    const events = await readSse(r);
    assert.equal(events.at(-1), "[DONE]");
    return Date.now() - t0;
  });
  let finished = null;
  long.then((ms) => { finished = ms; }, () => { finished = -1; });
  const lat = [];
  await new Promise((r) => setTimeout(r, 200));
  // Each is bounded by the prefill itself here (checked below), not SMALL_MS: its steps are long on a slow machine.
  while (finished === null) lat.push(await assertServing(`during a ${tokens}-token prefill`, 600000));
  const prefillMs = await long;
  // A small request waits for a few steps of the long prompt's prefill, never for the whole of it (before the
  // prefill budget was shared, it waited for all of it: issue 16 finding 5).
  assert.ok(Math.max(...lat) < Math.max(SMALL_MS, prefillMs / 2),
    `a small request took ${Math.max(...lat)} ms during a ${prefillMs} ms prefill`);
  return { prefillMs, worst: Math.max(0, ...lat), small: lat.length };
}

test("the server keeps serving, frees every page and stays within its memory bound through every fault", async (t) => {
  t.after(() => {  // on a failure: whether the server died, and its last words
    if (srv.proc.exitCode !== null || srv.proc.signalCode !== null)
      console.log(`# moe serve ended: code ${srv.proc.exitCode} signal ${srv.proc.signalCode}\n` +
        srv.stderr().split("\n").filter((l) => !l.includes('" 200 ')).slice(-20).map((l) => "# " + l).join("\n"));
  });
  await assertServing("start");
  figures.rss_start = rss();
  for (let round = 1; round <= ROUNDS; round++) {
    const b = await burst(512);
    assert.equal(b.answered, 512, `burst: ${b.answered} of 512 connects answered`);
    figures.burst = `${b.answered} of 512 answered in ${b.ms} ms`;
    await assertServing("after a burst of 512 connects");
    await assertNoLeaks("after a burst of 512 connects");

    const [completed, cancelled] = await streamsWithCancels(256, round);
    assert.equal(completed + cancelled, 256);
    figures.streams = `${completed} completed, ${cancelled} cancelled`;
    await assertServing("after 256 streams with random cancels");
    await assertNoLeaks("after 256 streams with random cancels");

    figures.slow_worst_small_ms = await slowClients(150);
    await assertNoLeaks("after slow clients");

    await hostileBodies();
    await assertServing("after oversized and deeply nested bodies");
    await assertNoLeaks("after oversized and deeply nested bodies");

    const p = await longPrefill(LONG_PROMPT);
    figures.prefill = `${LONG_PROMPT}-token prefill ${p.prefillMs} ms; worst small request ${p.worst} ms of ${p.small}`;
    await assertNoLeaks("after a long prefill");
    figures[`rss_round_${round}`] = rss();
    console.log(`# fault round ${round}: burst ${figures.burst}; streams ${figures.streams}; worst small request ` +
      `during slow clients ${figures.slow_worst_small_ms} ms; ${figures.prefill}; RSS ${MiB(figures.rss_start)} -> ` +
      `${MiB(rss())}`);
  }
});

test("kill -9 during feedback writes loses nothing acknowledged, and a restarted server serves on", async () => {
  const acked = new Set();
  let stop = false;
  const conv = [{ role: "user", content: "q" }];
  const clients = Array.from({ length: 8 }, async (_, c) => {
    for (let i = 0; !stop; i++) {
      const answer = `a ${c}-${i}`;
      try {
        const r = await fetch(srv.url + "/v1/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ conversation: conv, answer, rating: i % 2 ? "down" : "up" }) });
        if (r.status === 200 && (await r.json()).stored) acked.add(answer);
      } catch { return; }
    }
  });
  // Generation goes on too, so the kill lands mid-step as well as mid-commit.
  const streams = streamsWithCancels(32, 99).catch(() => {});
  await new Promise((r) => setTimeout(r, 1500));
  srv.proc.kill("SIGKILL");
  stop = true;
  await Promise.all([...clients, streams]);
  await srv.stop();
  assert.ok(acked.size > 10, `only ${acked.size} ratings acknowledged`);
  await start();
  await assertServing("after a restart from kill -9");
  await srv.stop();
  const rows = execFileSync(MOE_BIN, ["feedback", "export", "--db", db], { encoding: "utf8", maxBuffer: 1 << 28 })
    .trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  const stored = new Set(rows.filter((r) => r.type === "rating").map((r) => r.answer));
  const lost = [...acked].filter((a) => !stored.has(a));
  assert.deepEqual(lost, [], `${lost.length} of ${acked.size} acknowledged ratings lost`);
  console.log(`# kill -9: ${acked.size} ratings acknowledged, none lost`);
});
