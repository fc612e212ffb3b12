// Slow and oversized request heads (slowloris): clients trickling header bytes must not make the server
// unreachable, their connections end after the header deadline, and huge header sets are refused. Bodies trickled
// or stalled after their headers end at the body deadline (--body-timeout) the same way.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { startServer } from "./server.js";

let srv, port;
const HEADER_TIMEOUT_MS = 10000;  // kHeaderTimeout in src/server/http_connection.h
const BODY_TIMEOUT_S = 3;  // --body-timeout below (the default is 60 s)

before(async () => {
  srv = await startServer(["--body-timeout", String(BODY_TIMEOUT_S)]);
  port = Number(new URL(srv.url).port);
});
after(async () => {
  await srv?.stop();
});

async function connect() {
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => {});
  sock.answer = "";
  sock.on("data", (d) => { sock.answer += d; });
  sock.ended = new Promise((resolve) => sock.on("close", () => resolve(Date.now())));
  await once(sock, "connect");
  return sock;
}

test("600 connections trickling header bytes do not keep a normal request from being answered", async () => {
  const N = 600;  // more than httplib's 512 workers held one each
  const slow = await Promise.all(Array.from({ length: N }, connect));
  const t0 = Date.now();
  for (const s of slow) s.write("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
  const timer = setInterval(() => { for (const s of slow) if (!s.destroyed) s.write("a"); }, 1000);
  try {
    await new Promise((r) => setTimeout(r, 1500));
    for (let i = 0; i < 3; i++) {
      const t = Date.now();
      const res = await fetch(srv.url + "/health", { signal: AbortSignal.timeout(5000) });
      assert.equal(res.status, 200);
      assert.ok(Date.now() - t < 2000, `a normal request took ${Date.now() - t} ms while ${N} clients were slow`);
    }
    // Each slow connection is answered 408 and closed once its headers are overdue.
    const ends = await Promise.race([Promise.all(slow.map((s) => s.ended)),
      new Promise((r) => setTimeout(() => r(null), HEADER_TIMEOUT_MS + 10000))]);
    assert.ok(ends, `slow connections still open ${HEADER_TIMEOUT_MS + 10000} ms after they started`);
    const latest = Math.max(...ends) - t0;
    assert.ok(latest < HEADER_TIMEOUT_MS + 5000, `the last slow connection ended after ${latest} ms`);
    assert.equal(slow.filter((s) => s.answer.startsWith("HTTP/1.1 408")).length, N);
  } finally {
    clearInterval(timer);
    slow.forEach((s) => s.destroy());
  }
  const res = await fetch(srv.url + "/health");
  assert.equal(res.status, 200);
});

test("a million headers, or a header block over 64 KiB, is a 431 at once", async () => {
  for (const [what, lines] of [["many", (i) => `X-${i}: b\r\n`], ["large", (i) => `X-${i}: ${"b".repeat(4000)}\r\n`]]) {
    const sock = await connect();
    sock.write("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n");
    const t0 = Date.now();
    let sent = 0;
    const total = what === "many" ? 1000000 : 1000;
    while (sent < total && !sock.answer && !sock.destroyed) {  // 100 lines a write, yielding to read the answer
      let chunk = "";
      for (let k = 0; k < 100; k++) chunk += lines(sent++);
      if (!sock.write(chunk)) await Promise.race([once(sock, "drain").catch(() => {}), sock.ended]);
      else await new Promise(setImmediate);
    }
    if (!sock.destroyed) sock.write("Content-Length: 2\r\n\r\n{}");
    await Promise.race([sock.ended, new Promise((r) => setTimeout(r, 10000))]);
    assert.match(sock.answer, /^HTTP\/1\.1 431/, `${what}: ${sent} header lines sent: ${sock.answer.slice(0, 200)}`);
    assert.match(sock.answer, /headers_too_large/);
    assert.ok(Date.now() - t0 < 10000);
    sock.destroy();
  }
  const res = await fetch(srv.url + "/health");
  assert.equal(res.status, 200);
});

test("bodies trickled a byte at a time, or stalled after their headers, end in 408 at the body deadline", async () => {
  // Before --body-timeout each body read waited up to 30 s per byte: these held a connection and a thread for ever.
  const head = (framing) => "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
    `Content-Type: application/json\r\n${framing}\r\n\r\n`;
  const kinds = [
    ["trickled", head("Content-Length: 100000"), "{"],
    ["chunked", head("Transfer-Encoding: chunked"), "1\r\n \r\n"],
    ["stalled", head("Content-Length: 100"), null],
  ];
  const N = 200;  // of each kind
  const conns = [];
  for (const [kind, h] of kinds)
    for (const s of await Promise.all(Array.from({ length: N }, connect))) { s.kind = kind; s.write(h); conns.push(s); }
  const t0 = Date.now();
  const timer = setInterval(() => {
    for (const s of conns) {
      const piece = kinds.find((k) => k[0] === s.kind)[2];
      if (piece && !s.destroyed) s.write(piece);
    }
  }, 500);
  try {
    for (let i = 0; i < 3; i++) {
      const t = Date.now();
      const res = await fetch(srv.url + "/health", { signal: AbortSignal.timeout(5000) });
      assert.equal(res.status, 200);
      assert.ok(Date.now() - t < 2000, `/health took ${Date.now() - t} ms while ${conns.length} bodies were slow`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const bound = BODY_TIMEOUT_S * 1000 + 4000;  // the deadline, the 2 s drain after the answer, scheduling
    const ends = await Promise.race([Promise.all(conns.map((s) => s.ended)),
      new Promise((r) => setTimeout(() => r(null), bound + 10000))]);
    assert.ok(ends, `slow bodies still open ${bound + 10000} ms after they started`);
    assert.ok(Math.max(...ends) - t0 < bound, `the last slow body ended after ${Math.max(...ends) - t0} ms`);
    for (const [kind] of kinds) {
      const mine = conns.filter((s) => s.kind === kind);
      const answered = mine.filter((s) => /^HTTP\/1\.1 408/.test(s.answer) && /request_timeout/.test(s.answer));
      assert.equal(answered.length, N, `${kind}: ${answered.length} of ${N} answered 408: ${mine[0].answer.slice(0, 300)}`);
    }
  } finally {
    clearInterval(timer);
    conns.forEach((s) => s.destroy());
  }
  // A body sent at once is read as before.
  const res = await fetch(srv.url + "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: "Hello", max_tokens: 2 }),
  });
  assert.equal(res.status, 200);
});
