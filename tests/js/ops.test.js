// Operations: the access log (one line per request on stderr, prompts only with --log-prompts) and `moe serve`
// flags from environment variables (MOE_<FLAG>; the command line wins).
import { test } from "node:test";
import assert from "node:assert/strict";
import { startServer, readSse, waitFor } from "./server.js";

const json = { "Content-Type": "application/json" };
const chatBody = (content, extra = {}) =>
  JSON.stringify({ messages: [{ role: "user", content }], max_tokens: 3, ignore_eos: true, ...extra });

test("one access-log line per request: method, path, status, tokens, latency; no prompt text by default", async () => {
  const srv = await startServer([]);
  const quiet = await startServer(["--no-access-log"]);
  try {
    const secret = "purple elephant seventeen";
    assert.equal((await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody(secret) })).status, 200);
    const s = await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody("hi", { stream: true }) });
    await readSse(s);
    assert.equal((await fetch(srv.url + "/health")).status, 200);
    assert.equal((await fetch(srv.url + "/nowhere")).status, 404);
    const lines = await waitFor(() => {
      const l = srv.stderr().split("\n").filter((x) => x.startsWith("moe serve: 127.0.0.1:"));
      return l.length >= 4 ? l : null;
    }, 5000, "four access-log lines");
    assert.equal(lines.length, 4, lines.join("\n"));
    const line = /^moe serve: 127\.0\.0\.1:\d+ "(\w+) ([^"]+)" (\d+) prompt_tokens=(\d+|-) completion_tokens=(\d+|-) (\d+\.\d) ms$/;
    const parsed = lines.map((l) => { const m = line.exec(l); assert.ok(m, `not an access-log line: ${l}`); return m.slice(1); });
    assert.deepEqual(parsed.map((p) => [p[0], p[1], p[2], p[4]]), [["POST", "/v1/chat/completions", "200", "3"],
      ["POST", "/v1/chat/completions", "200", "3"], ["GET", "/health", "200", "-"], ["GET", "/nowhere", "404", "-"]]);
    assert.ok(Number(parsed[0][3]) > 5, "prompt tokens of the chat request");
    assert.equal(parsed[2][3], "-");
    assert.ok(!srv.stderr().includes("elephant"), "the prompt text was logged without --log-prompts");

    assert.equal((await fetch(quiet.url + "/health")).status, 200);
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(!quiet.stderr().includes('"GET /health"'), quiet.stderr());
  } finally {
    await srv.stop();
    await quiet.stop();
  }
  const logged = await startServer(["--log-prompts"]);
  try {
    await fetch(logged.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody("purple elephant") });
    const l = await waitFor(() => logged.stderr().split("\n").find((x) => x.includes("/v1/chat/completions")), 5000, "a line");
    assert.match(l, / prompt=".*purple elephant.*"$/);
  } finally {
    await logged.stop();
  }
});

test("every serve flag can come from MOE_<FLAG>; the command line wins", async () => {
  const big = JSON.stringify({ prompt: "x".repeat(2000), max_tokens: 1 });
  const env = { MOE_MAX_BODY_BYTES: "1000", MOE_ALLOWED_HOSTS: "chat.example.com", MOE_SERVED_MODEL_NAME: "from-env" };
  const srv = await startServer([], env);
  const flag = await startServer(["--max-body-bytes", "100000"], env);
  try {
    assert.equal((await fetch(srv.url + "/v1/completions", { method: "POST", headers: json, body: big })).status, 413);
    const models = await (await fetch(srv.url + "/v1/models")).json();
    assert.equal(models.data[0].id, "from-env");
    const r = await fetch(flag.url + "/v1/completions", { method: "POST", headers: json, body: big });
    assert.notEqual(r.status, 413, await r.text());
  } finally {
    await srv.stop();
    await flag.stop();
  }
});
