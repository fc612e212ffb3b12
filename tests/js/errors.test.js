// Bad input: each gets an OpenAI-style JSON error and the server keeps serving. Also client disconnects.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startServer, metrics, waitFor, readSse } from "./server.js";

let srv, keyed;
const KEY = "sk-errors-" + Math.random().toString(36).slice(2);

before(async () => {
  srv = await startServer(["--max-context", "256", "--cache-tokens", "4096", "--max-body-bytes", "65536"]);
  keyed = await startServer(["--max-context", "256", "--cache-tokens", "1024"], { MOE_API_KEY: KEY });
});
after(async () => {
  await srv?.stop();
  await keyed?.stop();
});

// Raw HTTP so any bytes can be sent (invalid UTF-8, oversized bodies).
function raw(url, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url + path);
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

async function expectError(res, status, { code, param } = {}) {
  assert.equal(res.status, status, res.body);
  const j = JSON.parse(res.body);
  assert.equal(typeof j.error, "object", res.body);
  assert.equal(typeof j.error.message, "string");
  assert.ok(j.error.message.length > 0);
  assert.ok(["invalid_request_error", "server_error"].includes(j.error.type));
  assert.ok("param" in j.error && "code" in j.error);
  if (code !== undefined) assert.equal(j.error.code, code);
  if (param !== undefined) assert.equal(j.error.param, param);
  // ... and the server still answers a good request.
  const ok = await raw(srv.url, "/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 }));
  assert.equal(ok.status, 200, ok.body);
  return j;
}

const chat = (obj) => raw(srv.url, "/v1/chat/completions", JSON.stringify(obj));
const hi = [{ role: "user", content: "hi" }];

test("malformed JSON", async () => {
  await expectError(await raw(srv.url, "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}'), 400, { code: "invalid_json" });
  await expectError(await raw(srv.url, "/v1/chat/completions", "[1,2,3]"), 400);
  await expectError(await raw(srv.url, "/v1/completions", ""), 400);
});

test("wrong types", async () => {
  await expectError(await chat({ messages: hi, temperature: "hot" }), 400, { param: "temperature" });
  await expectError(await chat({ messages: hi, max_tokens: 1.5 }), 400, { param: "max_tokens" });
  await expectError(await chat({ messages: "hi" }), 400, { param: "messages" });
  await expectError(await chat({ messages: [{ role: "user", content: 5 }] }), 400, { param: "messages[0].content" });
  await expectError(await chat({ messages: [{ role: "wizard", content: "x" }] }), 400, { param: "messages[0].role" });
  await expectError(await chat({ messages: hi, stream: "yes" }), 400, { param: "stream" });
  await expectError(await chat({ messages: hi, stop: [1, 2] }), 400, { param: "stop" });
  await expectError(await chat({ messages: hi, n: 0 }), 400, { param: "n" });
  await expectError(await raw(srv.url, "/v1/completions", JSON.stringify({ prompt: { a: 1 } })), 400, { param: "prompt" });
});

test("missing messages", async () => {
  await expectError(await chat({ model: "tiny-dsv3" }), 400, { param: "messages" });
  await expectError(await chat({ messages: [] }), 400, { param: "messages" });
  await expectError(await raw(srv.url, "/v1/completions", JSON.stringify({ max_tokens: 3 })), 400, { param: "prompt" });
});

test("prompt longer than the context", async () => {
  const long = "word ".repeat(400);
  const j = await expectError(await chat({ messages: [{ role: "user", content: long }] }), 400, { code: "context_length_exceeded" });
  assert.match(j.error.message, /maximum context length is 256 tokens/);
  await expectError(await raw(srv.url, "/v1/completions", JSON.stringify({ prompt: Array(300).fill(5) })), 400, { code: "context_length_exceeded" });
});

test("body over the size limit is a 413", async () => {
  const big = JSON.stringify({ messages: [{ role: "user", content: "x".repeat(100000) }] });
  await expectError(await raw(srv.url, "/v1/chat/completions", big), 413, { code: "request_too_large" });
});

test("invalid UTF-8", async () => {
  const body = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"bad '), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}]}')]);
  await expectError(await raw(srv.url, "/v1/chat/completions", body), 400, { code: "invalid_json" });
});

test("negative, zero or huge max_tokens", async () => {
  await expectError(await chat({ messages: hi, max_tokens: -5 }), 400, { param: "max_tokens" });
  await expectError(await chat({ messages: hi, max_tokens: 0 }), 400, { param: "max_tokens" });
  await expectError(await chat({ messages: hi, max_tokens: 1e12 }), 400, { param: "max_tokens" });
  await expectError(await chat({ messages: hi, max_tokens: 100000 }), 400, { code: "context_length_exceeded" });
  await expectError(await chat({ messages: hi, max_completion_tokens: -1 }), 400, { param: "max_completion_tokens" });
});

test("unknown model name is a 404 model_not_found", async () => {
  await expectError(await chat({ model: "gpt-9", messages: hi }), 404, { code: "model_not_found", param: "model" });
  await expectError(await raw(srv.url, "/v1/completions", JSON.stringify({ model: "nope", prompt: "x" })), 404, { code: "model_not_found" });
});

test("wrong or missing key is a 401", async () => {
  const body = JSON.stringify({ messages: hi, max_tokens: 2 });
  for (const headers of [{}, { Authorization: "Bearer wrong" }, { Authorization: KEY }, { Authorization: "Bearer " + KEY + "0" }]) {
    const r = await raw(keyed.url, "/v1/chat/completions", body, headers);
    assert.equal(r.status, 401, JSON.stringify(headers));
    assert.equal(JSON.parse(r.body).error.code, "invalid_api_key");
  }
  const ok = await raw(keyed.url, "/v1/chat/completions", body, { Authorization: "Bearer " + KEY });
  assert.equal(ok.status, 200);
});

test("client disconnecting mid-stream stops generation and frees its pages", async () => {
  const before = await metrics(srv.url);
  const controller = new AbortController();
  const res = await fetch(srv.url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
    body: JSON.stringify({ messages: hi, max_tokens: 200, ignore_eos: true, stream: true }),
  });
  assert.equal(res.status, 200);
  let seen = 0;
  await readSse(res, (ev) => {
    if (ev !== "[DONE]" && ev.choices?.[0]?.delta?.content !== undefined) seen++;
    if (seen === 3) { controller.abort(); return false; }
  }).catch((e) => { if (e.name !== "AbortError") throw e; });
  const m = await waitFor(async () => {
    const m = await metrics(srv.url);
    return m.moe_cache_pages_used === 0 && m.moe_requests_cancelled_total > before.moe_requests_cancelled_total ? m : null;
  }, 10000, "pages freed after the disconnect");
  // It stopped early: far fewer than 200 tokens were generated for it.
  assert.ok(m.moe_generation_tokens_total - before.moe_generation_tokens_total < 200);
  const ok = await chat({ messages: hi, max_tokens: 2 });
  assert.equal(ok.status, 200);
});
