// Hostile input at the HTTP level: each is refused with an error (or served) and the server keeps serving.
// Raw sockets where the framing itself is the attack.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
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
