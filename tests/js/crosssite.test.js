// Requests a web page in the user's browser could send: simple requests (text/plain, forms, no Content-Type)
// need no CORS preflight, and DNS rebinding makes a loopback server answer to an attacker's host name. Refused by
// default; --allowed-origins opts origins in (CORS).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startServer, metrics, tempDir } from "./server.js";
import path from "node:path";

let srv, cors, port;

before(async () => {
  srv = await startServer(["--feedback-db", path.join(tempDir(), "fb.sqlite")]);
  port = new URL(srv.url).port;
  cors = await startServer(["--allowed-origins", "http://app.example:3000, https://other.example"]);
});
after(async () => {
  await srv?.stop();
  await cors?.stop();
});

function request(url, method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url + p);
    const buf = body === undefined ? undefined : Buffer.from(body);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, agent: false,
      headers: { ...(buf ? { "Content-Length": buf.length } : {}), ...headers } }, (res) => {
      let data = "";
      res.on("data", (d) => { data += d; });
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on("error", reject);
    req.end(buf);
  });
}

const chat = JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
const feedback = JSON.stringify({ answer: "a", rating: 1, conversation: [{ role: "user", content: "q" }] });
const code = (r) => JSON.parse(r.body).error.code;

test("JSON endpoints refuse text/plain, form and untyped bodies (415) and run nothing", async () => {
  const before = await metrics(srv.url);
  for (const p of ["/v1/chat/completions", "/v1/completions", "/v1/feedback"]) {
    for (const type of ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", undefined]) {
      const r = await request(srv.url, "POST", p, p === "/v1/feedback" ? feedback : chat, type ? { "Content-Type": type } : {});
      assert.equal(r.status, 415, `${p} ${type}: ${r.body}`);
      assert.equal(code(r), "unsupported_media_type");
    }
  }
  const after = await metrics(srv.url);
  assert.equal(after.moe_requests_submitted_total, before.moe_requests_submitted_total);
  // JSON (with parameters, any case) is served.
  const ok = await request(srv.url, "POST", "/v1/chat/completions", chat, { "Content-Type": "Application/JSON; charset=utf-8" });
  assert.equal(ok.status, 200, ok.body);
  const fb = await request(srv.url, "POST", "/v1/feedback", feedback, { "Content-Type": "application/json" });
  assert.equal(fb.status, 200, fb.body);
});

test("bound to loopback, a Host that is not a loopback name is refused (DNS rebinding)", async () => {
  for (const host of [`evil.example:${port}`, "evil.example", `localhost.evil.example:${port}`, `127.0.0.1.evil.example`]) {
    for (const [method, p, body] of [["GET", "/health"], ["GET", "/"], ["POST", "/v1/chat/completions", chat]]) {
      const r = await request(srv.url, method, p, body, { Host: host, "Content-Type": "application/json" });
      assert.equal(r.status, 403, `${host} ${method} ${p}: ${r.body}`);
      assert.equal(code(r), "host_not_allowed");
    }
  }
  for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, "127.0.0.1", `app.localhost:${port}`, "LOCALHOST"]) {
    const r = await request(srv.url, "POST", "/v1/chat/completions", chat, { Host: host, "Content-Type": "application/json" });
    assert.equal(r.status, 200, `${host}: ${r.body}`);
  }
});

test("requests from another origin are refused unless --allowed-origins names it", async () => {
  for (const origin of ["http://evil.example", "null", `http://127.0.0.1:${Number(port) + 1}`]) {
    for (const [method, p, body] of [["POST", "/v1/chat/completions", chat], ["POST", "/v1/feedback", feedback],
      ["GET", "/v1/models"], ["OPTIONS", "/v1/chat/completions"]]) {
      const r = await request(srv.url, method, p, body, { Origin: origin, "Content-Type": "application/json" });
      assert.equal(r.status, 403, `${origin} ${method} ${p}: ${r.body}`);
      assert.equal(code(r), "origin_not_allowed");
      assert.equal(r.headers["access-control-allow-origin"], undefined);
    }
  }
  // The server's own page (same origin) is served.
  const same = await request(srv.url, "POST", "/v1/chat/completions", chat, { Origin: `http://127.0.0.1:${port}`, "Content-Type": "application/json" });
  assert.equal(same.status, 200, same.body);
});

test("--allowed-origins: preflight and requests from a listed origin get CORS headers; others are refused", async () => {
  const pre = await request(cors.url, "OPTIONS", "/v1/chat/completions", undefined, {
    Origin: "http://app.example:3000", "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type" });
  assert.equal(pre.status, 204, pre.body);
  assert.equal(pre.headers["access-control-allow-origin"], "http://app.example:3000");
  assert.match(pre.headers["access-control-allow-methods"], /POST/);
  assert.match(pre.headers["access-control-allow-headers"], /Authorization/);
  for (const origin of ["http://app.example:3000", "https://other.example"]) {
    const r = await request(cors.url, "POST", "/v1/chat/completions", chat, { Origin: origin, "Content-Type": "application/json" });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers["access-control-allow-origin"], origin);
  }
  const other = await request(cors.url, "POST", "/v1/chat/completions", chat, { Origin: "http://app.example:3001", "Content-Type": "application/json" });
  assert.equal(other.status, 403);
  // Even from an allowed origin, a text/plain body is refused.
  const plain = await request(cors.url, "POST", "/v1/chat/completions", chat, { Origin: "http://app.example:3000", "Content-Type": "text/plain" });
  assert.equal(plain.status, 415);
});

test("bound to another address, IP literals and --allowed-hosts are answered, other names only on /v1/ with a key", async () => {
  // 0.0.0.0 for a few seconds (reached here through 127.0.0.1): rebinding to it would reach the whole network's view.
  const open = await startServer(["--host", "0.0.0.0", "--allowed-hosts", "chat.example.com"]);
  const keyDir = tempDir();
  const keyFile = path.join(keyDir, "key");
  (await import("node:fs")).writeFileSync(keyFile, "sk-test\n");
  const keyed = await startServer(["--host", "0.0.0.0", "--api-key-file", keyFile]);
  try {
    const local = (s) => s.url.replace("0.0.0.0", "127.0.0.1");
    const p = new URL(open.url).port;
    for (const host of [`192.168.7.20:${p}`, `[2001:db8::1]:${p}`, `chat.example.com:${p}`, `localhost:${p}`]) {
      const r = await request(local(open), "POST", "/v1/chat/completions", chat, { Host: host, "Content-Type": "application/json" });
      assert.equal(r.status, 200, `${host}: ${r.body}`);
    }
    for (const host of [`evil.example:${p}`, `192.168.7.20.evil.example`, `sub.chat.example.com`]) {
      for (const [method, pth, body] of [["GET", "/health"], ["POST", "/v1/chat/completions", chat]]) {
        const r = await request(local(open), method, pth, body, { Host: host, "Content-Type": "application/json" });
        assert.equal(r.status, 403, `${host} ${pth}: ${r.body}`);
        assert.equal(code(r), "host_not_allowed");
      }
    }
    // With a key: any name reaches the API with the key (a rebinding page has none), the pages still refuse it.
    const auth = { Host: "gpu-box.corp", "Content-Type": "application/json", Authorization: "Bearer sk-test" };
    assert.equal((await request(local(keyed), "POST", "/v1/chat/completions", chat, auth)).status, 200);
    const noKey = await request(local(keyed), "POST", "/v1/chat/completions", chat, { Host: auth.Host, "Content-Type": "application/json" });
    assert.equal(noKey.status, 401, noKey.body);
    const page = await request(local(keyed), "GET", "/health", undefined, { Host: "gpu-box.corp" });
    assert.equal(page.status, 403, page.body);
  } finally {
    await open.stop();
    await keyed.stop();
  }
});
