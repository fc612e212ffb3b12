// Operations: the access log (one line per request on stderr, prompts only with --log-prompts) and `moe serve`
// flags from environment variables (MOE_<FLAG>; the command line wins).
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startServer, readSse, waitFor } from "./server.js";

const json = { "Content-Type": "application/json" };
const chatBody = (content, extra = {}) =>
  JSON.stringify({ messages: [{ role: "user", content }], max_tokens: 3, ignore_eos: true, ...extra });

test("one access-log line per request: method, path, status, tokens, latency; no prompt text by default", async () => {
  const srv = await startServer([]);
  const quiet = await startServer(["--no-access-log"]);
  const mark = srv.stderr().length;  // startServer polled /health until ready: those lines come before
  try {
    const secret = "purple elephant seventeen";
    assert.equal((await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody(secret) })).status, 200);
    const s = await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody("hi", { stream: true }) });
    await readSse(s);
    assert.equal((await fetch(srv.url + "/health")).status, 200);
    assert.equal((await fetch(srv.url + "/nowhere")).status, 404);
    const lines = await waitFor(() => {
      const l = srv.stderr().slice(mark).split("\n").filter((x) => x.startsWith("moe serve: 127.0.0.1:"));
      return l.length >= 4 ? l : null;
    }, 5000, "four access-log lines");
    assert.equal(lines.length, 4, lines.join("\n"));
    const line = /^moe serve: 127\.0\.0\.1:\d+ "(\w+) ([^"]+)" (\d+) prompt_tokens=(\d+|-) completion_tokens=(\d+|-) (\d+\.\d) ms$/;
    const parsed = lines.map((l) => { const m = line.exec(l); assert.ok(m, `not an access-log line: ${l}`); return m.slice(1); });
    // A line is written once its answer has been sent, so two requests made one after the other may log in
    // either order (the second can finish on another thread first): compare them sorted.
    const key = (p) => [p[0], p[1], p[2], p[4]];
    assert.deepEqual(parsed.map(key).sort(), [["GET", "/health", "200", "-"], ["GET", "/nowhere", "404", "-"],
      ["POST", "/v1/chat/completions", "200", "3"], ["POST", "/v1/chat/completions", "200", "3"]]);
    const prompts = parsed.filter((q) => q[1] === "/v1/chat/completions").map((q) => Number(q[3]));
    assert.ok(prompts.every((n) => n > 0) && Math.max(...prompts) > 5, `prompt tokens of the chat requests: ${prompts}`);
    assert.equal(parsed.find((p) => p[1] === "/health")[3], "-");
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

test("the port answers at once: /health is 503 loading with progress until the model is ready, then 200 ok", async () => {
  const t0 = Date.now();
  const srv = await startServer(["--fault-load-delay-ms", "1500"], {}, { loading: true });
  try {
    const h = await fetch(srv.url + "/health");
    assert.equal(h.status, 503);
    const body = await h.json();
    assert.equal(body.status, "loading");
    assert.ok(typeof body.progress === "number" && body.progress >= 0 && body.progress < 1, JSON.stringify(body));
    // The API says so too; the chat page is served (it shows its own loading state).
    const m = await fetch(srv.url + "/v1/models");
    assert.equal(m.status, 503);
    assert.equal((await m.json()).error.code, "model_loading");
    const c = await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody("hi") });
    assert.equal(c.status, 503);
    assert.equal((await fetch(srv.url + "/")).status, 200);
    // New connections through the hand-over are never refused or dropped, and /health turns 200 with its shape.
    let refused = 0;
    const healthOnNewConnection = () => new Promise((resolve) => {
      http.get(srv.url + "/health", { agent: false }, (res) => {
        let data = "";
        res.on("data", (d) => { data += d; });
        res.on("end", () => resolve({ status: res.statusCode, body: data }));
      }).on("error", () => { refused++; resolve(null); });
    });
    const ok = await waitFor(async () => {
      const r = await healthOnNewConnection();
      return r?.status === 200 ? JSON.parse(r.body) : null;
    }, 30000, "/health 200");
    assert.equal(ok.status, "ok");
    assert.equal(typeof ok.model, "string");
    assert.equal(refused, 0);
    assert.ok(Date.now() - t0 >= 1500);
    const after = await fetch(srv.url + "/v1/chat/completions", { method: "POST", headers: json, body: chatBody("hi") });
    assert.equal(after.status, 200);
  } finally {
    await srv.stop();
  }
});

// A client that polls /health over a keep-alive connection (Node's fetch does) while the model loads: each loading
// answer says Connection: close, so no request is sent on a connection the hand-over closes. Before that, such a
// request could go unanswered and the poll waited forever (errors.test.js hung about 1 run in 5).
test("keep-alive polling of /health across the hand-over: every poll answered, loading answers close the connection", async () => {
  const srv = await startServer(["--fault-load-delay-ms", "800"], {}, { loading: true });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    let polls = 0, loading = 0, unanswered = 0;
    const poll = () => new Promise((resolve) => {
      const req = http.get(srv.url + "/health", { agent, timeout: 5000 }, (res) => {
        let data = "";
        res.on("data", (d) => { data += d; });
        res.on("end", () => resolve({ status: res.statusCode, connection: res.headers.connection }));
      });
      req.on("timeout", () => { unanswered++; req.destroy(); });
      req.on("error", () => resolve(null));
    });
    for (;;) {
      const r = await poll();
      polls++;
      if (r?.status === 503) {
        loading++;
        assert.equal(r.connection, "close", "a loading answer keeps the connection open");
      }
      if (r?.status === 200) break;
      assert.ok(polls < 3000, "the server never became ready");
      await new Promise((res) => setTimeout(res, 5));
    }
    assert.equal(unanswered, 0, `${unanswered} polls went unanswered for 5 s`);
    assert.ok(loading > 0, "no poll saw the loading state");
  } finally {
    agent.destroy();
    await srv.stop();
  }
});

test("SIGTERM while the model loads ends the process at once", async () => {
  const srv = await startServer(["--fault-load-delay-ms", "20000"], {}, { loading: true });
  const t = Date.now();
  const exit = await srv.stop("SIGTERM");
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(Date.now() - t < 3000, `exit took ${Date.now() - t} ms`);
});
