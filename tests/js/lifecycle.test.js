// The server's life cycle: clients that go away mid-request, shutdown by signal, the port it binds.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { spawn } from "node:child_process";
import { startServer, metrics, waitFor, MOE_BIN, MODEL } from "./server.js";

// A long request: the tiny model takes tens of seconds for 60,000 tokens.
const LONG = ["--cache-tokens", "65536", "--ignore-eos"];
const longBody = (extra = {}) => JSON.stringify({ prompt: "Once upon a time", max_tokens: 60000, ...extra });

// Sends a POST on a raw socket and returns it (the answer accumulates in sock.answer).
async function rawPost(url, path, body) {
  const u = new URL(url);
  const sock = net.connect(Number(u.port), u.hostname);
  await once(sock, "connect");
  sock.answer = "";
  sock.on("data", (d) => { sock.answer += d; });
  sock.on("error", () => {});
  sock.ended = new Promise((resolve) => sock.on("close", resolve));
  sock.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  return sock;
}

const pagesUsed = async (url) => (await metrics(url)).moe_cache_pages_used;

test("a non-streamed request whose client closed its socket is cancelled and its pages freed", async () => {
  const srv = await startServer(LONG);
  try {
    const sock = await rawPost(srv.url, "/v1/completions", longBody());
    await waitFor(async () => (await pagesUsed(srv.url)) > 0, 20000, "the request to hold pages");
    await new Promise((r) => setTimeout(r, 300));
    sock.destroy();
    const t0 = Date.now();
    await waitFor(async () => (await pagesUsed(srv.url)) === 0, 3000, "the pages of the abandoned request to be freed");
    const m = await metrics(srv.url);
    assert.equal(m.moe_requests_cancelled_total, 1);
    assert.equal(m.moe_running_batch_size, 0);
    assert.ok(Date.now() - t0 < 3000);
    // Chat requests too, and n > 1 (every choice is cancelled).
    const chat = await rawPost(srv.url, "/v1/chat/completions",
      JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 30000, n: 2 }));
    await waitFor(async () => (await pagesUsed(srv.url)) > 0, 20000, "the chat request to hold pages");
    chat.destroy();
    await waitFor(async () => (await pagesUsed(srv.url)) === 0, 3000, "the chat request's pages to be freed");
    assert.equal((await metrics(srv.url)).moe_requests_cancelled_total, 3);
    // A client that stays gets its whole answer.
    const ok = await fetch(srv.url + "/v1/completions", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: "hi", max_tokens: 5 }) });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).usage.completion_tokens, 5);
  } finally {
    await srv.stop("SIGKILL");
  }
});

test("SIGTERM during long requests ends the process within the shutdown bound", async (t) => {
  const srv = await startServer(LONG);
  t.after(() => srv.proc.kill("SIGKILL"));
  const whole = await rawPost(srv.url, "/v1/completions", longBody({ max_tokens: 30000 }));
  const streamed = await rawPost(srv.url, "/v1/completions", longBody({ max_tokens: 30000, stream: true }));
  const idle = net.connect(Number(new URL(srv.url).port), "127.0.0.1");  // a connection that sends nothing
  idle.on("error", () => {});
  await waitFor(async () => (await metrics(srv.url)).moe_running_batch_size === 2, 20000, "both requests running");
  const t0 = Date.now();
  const exit = await Promise.race([srv.stop("SIGTERM"), new Promise((r) => setTimeout(() => r("timeout"), 10000))]);
  const took = Date.now() - t0;
  if (exit === "timeout") srv.proc.kill("SIGKILL");
  assert.notEqual(exit, "timeout", "moe serve still running 10 s after SIGTERM");
  assert.ok(took < 5500, `exited ${took} ms after SIGTERM (bound: 5 s)`);
  assert.deepEqual(exit, { code: 0, signal: null }, srv.stderr());
  // The client waiting for a whole answer was told why.
  await whole.ended;
  assert.match(whole.answer, /^HTTP\/1\.1 503/);
  assert.match(whole.answer, /server_shutting_down/);
  await streamed.ended;
  idle.destroy();
});

test("a second server on a busy port fails with a clear error instead of sharing it", async () => {
  const srv = await startServer([]);
  try {
    const port = new URL(srv.url).port;
    const second = spawn(MOE_BIN, ["serve", "--model", MODEL, "--host", "127.0.0.1", "--port", port, "--threads", "1"],
      { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    second.stdout.on("data", (d) => { out += d; });
    second.stderr.on("data", (d) => { out += d; });
    const code = await Promise.race([new Promise((r) => second.on("exit", r)),
      new Promise((r) => setTimeout(() => r("timeout"), 30000))]);
    if (code === "timeout") second.kill("SIGKILL");
    assert.notEqual(code, "timeout", "the second server started on the busy port:\n" + out);
    assert.notEqual(code, 0);
    assert.match(out, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`));
    assert.doesNotMatch(out, /listening on/);
    // The first one still answers every connection.
    for (let i = 0; i < 8; i++) assert.equal((await fetch(srv.url + "/health")).status, 200);
  } finally {
    await srv.stop();
  }
});
