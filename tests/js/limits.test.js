// Hostile input at the HTTP level: each is refused with an error (or served) and the server keeps serving.
// Raw sockets where the framing itself is the attack.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { once } from "node:events";
import zlib from "node:zlib";
import { readFileSync } from "node:fs";
import { startServer } from "./server.js";

let srv;
const MAX_BODY = 1 << 20;

before(async () => {
  srv = await startServer(["--max-context", "256", "--cache-tokens", "2048", "--max-body-bytes", String(MAX_BODY)]);
});
after(async () => {
  await srv?.stop();
});

function post(path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(srv.url + path);
    const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST",
      headers: { "Content-Type": "application/json", "Content-Length": buf.length, ...headers } }, (res) => {
      let data = "";
      res.on("data", (d) => { data += d; });
      res.on("end", () => resolve({ status: res.statusCode, body: data }));
    });
    req.on("error", reject);
    req.end(buf);
  });
}

async function expectServing() {
  const health = await fetch(srv.url + "/health");
  assert.equal(health.status, 200);
  const ok = await post("/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 }));
  assert.equal(ok.status, 200, ok.body);
}

const deep = (n) => "[".repeat(n) + "]".repeat(n);
const hi = '[{"role": "user", "content": "hi"}]';

test("JSON nested deeper than the limit is a 400 naming it, and the server keeps serving", async () => {
  for (const n of [15000, 100000]) {
    const d = deep(n);
    const cases = [
      ["/v1/chat/completions", `{"messages": ${hi}, "tools": ${d}}`],
      ["/v1/chat/completions", `{"messages": ${hi}, "chat_template_kwargs": {"x": ${d}}}`],
      ["/v1/chat/completions", `{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", ` +
        `"function": {"name": "f", "arguments": "{}"}, "x": ${d}}]}, {"role": "user", "content": "hi"}]}`],
      ["/v1/completions", `{"prompt": "hi", "x": ${d}}`],
      ["/v1/feedback", `{"answer": "a", "rating": 1, "conversation": [{"role": "assistant", "content": null, ` +
        `"tool_calls": [{"function": {"name": "f", "arguments": "{}"}, "x": ${d}}]}]}`],
    ];
    for (const [path, body] of cases) {
      const r = await post(path, body);
      assert.equal(r.status, 400, `${path} ${n}: ${r.body.slice(0, 300)}`);
      assert.match(JSON.parse(r.body).error.message, /nesting deeper than 128 levels/);
      await expectServing();
    }
  }
});

// A raw connection: sends `head`, then body pieces from `pieces()` until the server answers or closes. Returns the
// response text, whether the server closed the connection, and how many body bytes were sent.
async function rawExchange(head, pieces = function* () {}, timeoutMs = 30000) {
  const u = new URL(srv.url);
  const sock = net.connect(Number(u.port), u.hostname);
  await once(sock, "connect");
  let response = "", closed = false, sent = 0;
  sock.on("data", (d) => { response += d; });
  sock.on("error", () => {});  // a reset after the server answered and closed
  const done = new Promise((resolve) => sock.on("close", () => { closed = true; resolve(); }));
  sock.write(head);
  for (const p of pieces()) {
    if (response || closed) break;
    sent += p.length;
    if (!sock.write(p)) await Promise.race([once(sock, "drain").catch(() => {}), done]);
  }
  const end = Date.now() + timeoutMs;
  while (!/\r\n\r\n/.test(response) && !closed && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  // Give a closing server a moment to close.
  await Promise.race([done, new Promise((r) => setTimeout(r, 500))]);
  sock.destroy();
  return { response, closed, sent, status: Number(/^HTTP\/1\.1 (\d+)/.exec(response)?.[1]) };
}

const postHead = (extra) => `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${extra}\r\n`;

// Peak resident memory of the server (kB).
const peakKb = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${srv.proc.pid}/status`, "utf8"))[1]);

test("a chunked body over --max-body-bytes is a 413 and is never held in memory", async () => {
  const before = peakKb();
  const chunk = Buffer.alloc(64 * 1024, 0x20);  // JSON whitespace
  const piece = Buffer.concat([Buffer.from(chunk.length.toString(16) + "\r\n"), chunk, Buffer.from("\r\n")]);
  const total = 50 * 1000 * 1000;
  const r = await rawExchange(postHead("Transfer-Encoding: chunked\r\n"), function* () {
    for (let n = 0; n < total; n += chunk.length) yield piece;
    yield Buffer.from("0\r\n\r\n");
  });
  assert.equal(r.status, 413, JSON.stringify({ ...r, response: r.response.slice(0, 300) }));
  assert.match(r.response, /request_too_large/);
  assert.ok(r.closed);
  const grew = peakKb() - before;
  assert.ok(grew < 20000, `the server's peak memory grew by ${grew} kB for a ${total}-byte body`);
  await expectServing();
});

test("an endless chunked body is cut off soon after the limit", async () => {
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  const piece = Buffer.concat([Buffer.from(chunk.length.toString(16) + "\r\n"), chunk, Buffer.from("\r\n")]);
  const t0 = Date.now();
  const r = await rawExchange(postHead("Transfer-Encoding: chunked\r\n"), function* () { for (;;) yield piece; });
  assert.ok(r.closed && Date.now() - t0 < 15000, `closed: ${r.closed} after ${Date.now() - t0} ms, ${r.sent} bytes`);
  await expectServing();
});

test("a gzip body that inflates past --max-body-bytes is a 413", async () => {
  const body = zlib.gzipSync(Buffer.from(`{"messages": ${hi}, "x": "${"a".repeat(50 * 1000 * 1000)}"}`));
  assert.ok(body.length < MAX_BODY);
  const r = await rawExchange(postHead(`Content-Encoding: gzip\r\nContent-Length: ${body.length}\r\n`), function* () { yield body; });
  assert.equal(r.status, 413, r.response.slice(0, 300));
  await expectServing();
});

test("a Content-Length body over --max-body-bytes is a 413; one that never ends is cut off", async () => {
  const big = Buffer.alloc(MAX_BODY + 1, 0x20);
  const r = await rawExchange(postHead(`Content-Length: ${big.length}\r\n`), function* () { yield big; });
  assert.equal(r.status, 413, r.response.slice(0, 300));
  const t0 = Date.now();
  const piece = Buffer.alloc(64 * 1024, 0x20);
  const endless = await rawExchange(postHead("Content-Length: 1000000000000\r\n"), function* () { for (;;) yield piece; });
  assert.ok(endless.closed && Date.now() - t0 < 15000, `closed: ${endless.closed} after ${Date.now() - t0} ms`);
  // Within the limit, chunked and fixed bodies are served as before.
  const ok = JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
  const c = await rawExchange(postHead("Transfer-Encoding: chunked\r\nConnection: close\r\n"), function* () {
    yield Buffer.from(ok.length.toString(16) + "\r\n" + ok + "\r\n0\r\n\r\n");
  });
  assert.equal(c.status, 200, c.response.slice(0, 300));
  await expectServing();
});

test("a body sent where the server does not read it itself must have a Content-Length within the limit", async () => {
  for (const [head, status] of [
    ["POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413],
    [`POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${MAX_BODY + 1}\r\n\r\n`, 413],
    ["POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 411],  // no framing: would be read to EOF
  ]) {
    const r = await rawExchange(head, undefined, 5000);
    assert.equal(r.status, status, head + r.response.slice(0, 300));
    assert.ok(r.closed);
  }
  await expectServing();
});

test("256 simultaneous connects are all accepted and answered", async () => {
  // While the server is stopped nothing is accept()ed: the kernel completes only as many handshakes as the
  // listen backlog holds (httplib's default is 5); the rest wait for SYN retransmits, seconds apart.
  const u = new URL(srv.url);
  srv.proc.kill("SIGSTOP");
  const socks = [];
  let connected = 0;
  try {
    for (let i = 0; i < 256; i++) {
      const s = net.connect(Number(u.port), u.hostname);
      s.on("error", () => {});
      s.on("connect", () => { connected++; });
      socks.push(s);
    }
    const end = Date.now() + 2000;
    while (connected < 256 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  } finally {
    srv.proc.kill("SIGCONT");
  }
  assert.equal(connected, 256, "connections the backlog held");
  const answers = await Promise.all(socks.map((s) => new Promise((resolve) => {
    let data = "";
    const timer = setTimeout(() => resolve(data), 20000);
    s.on("data", (d) => { data += d; if (/\r\n\r\n[\s\S]*\}/.test(data)) { clearTimeout(timer); resolve(data); } });
    s.write("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  })));
  socks.forEach((s) => s.destroy());
  assert.equal(answers.filter((a) => a.startsWith("HTTP/1.1 200")).length, 256);
  await expectServing();
});

test("a duplicate, negative or malformed Content-Length is a 400 at once", async () => {
  const body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}';
  for (const lengths of [[body.length, body.length + 10], [body.length + 10, body.length], [-5], ["12abc"], ["+12"]]) {
    const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
      lengths.map((n) => `Content-Length: ${n}\r\n`).join("") + "\r\n";
    const t0 = Date.now();
    const r = await rawExchange(head, function* () { yield Buffer.from(body); }, 10000);
    assert.equal(r.status, 400, `${JSON.stringify(lengths)}: ${r.response.slice(0, 300)}`);
    assert.ok(Date.now() - t0 < 5000, `${lengths}: answered after ${Date.now() - t0} ms`);
    assert.ok(r.closed);
  }
  // An empty value is no length at all (httplib drops the header): 411, as without one.
  const empty = await rawExchange(postHead("Content-Length: \r\n"), function* () { yield Buffer.from(body); }, 10000);
  assert.equal(empty.status, 411, empty.response.slice(0, 300));
  // Content-Length with Transfer-Encoding (a smuggling pattern) is refused too.
  const r = await rawExchange(postHead(`Content-Length: 5\r\nTransfer-Encoding: chunked\r\n`), function* () { yield Buffer.from("0\r\n\r\n"); }, 10000);
  assert.equal(r.status, 400, r.response.slice(0, 300));
  await expectServing();
});
