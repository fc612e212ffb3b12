// Slow and oversized request heads (slowloris): clients trickling header bytes must not make the server
// unreachable, their connections end after the header deadline, and huge header sets are refused.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { startServer } from "./server.js";

let srv, port;
const HEADER_TIMEOUT_MS = 10000;  // kHeaderTimeout in src/server/http_connection.h

before(async () => {
  srv = await startServer([]);
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
