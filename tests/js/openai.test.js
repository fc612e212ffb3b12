// The official OpenAI Node SDK against `moe serve` with the bundled tiny model.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer } from "./server.js";

let srv, client, keyed;
const KEY = "sk-test-" + Math.random().toString(36).slice(2);

before(async () => {
  srv = await startServer(["--max-context", "1024", "--cache-tokens", "8192"]);
  client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
  keyed = await startServer(["--max-context", "1024", "--cache-tokens", "4096"], { MOE_API_KEY: KEY });
});
after(async () => {
  await srv?.stop();
  await keyed?.stop();
});

const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Name three colours." },
];

test("models.list returns the served model", async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, "tiny-dsv3");
  assert.equal(models[0].object, "model");
  const one = await client.models.retrieve("tiny-dsv3");
  assert.equal(one.id, "tiny-dsv3");
});

test("whole chat completion: n choices, usage, logprobs, max_completion_tokens", async () => {
  const r = await client.chat.completions.create({
    model: "tiny-dsv3", messages, max_completion_tokens: 10, temperature: 0.8, seed: 7, n: 2,
    logprobs: true, top_logprobs: 3,
  });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices.length, 2);
  for (const [i, c] of r.choices.entries()) {
    assert.equal(c.index, i);
    assert.equal(c.message.role, "assistant");
    assert.equal(typeof c.message.content, "string");
    assert.equal(c.finish_reason, "length");
    assert.equal(c.logprobs.content.length, 10);
    for (const t of c.logprobs.content) {
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 3);
      assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[2].logprob);
    }
  }
  assert.equal(r.usage.completion_tokens, 20);
  assert.ok(r.usage.prompt_tokens > 5);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 20);
});

test("streamed chat equals the whole reply (greedy), with include_usage", async () => {
  const whole = await client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 24, temperature: 0 });
  const stream = await client.chat.completions.create({
    model: "tiny-dsv3", messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = "", role = null, finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    assert.equal(chunk.id, chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks > 3);
  assert.equal(role, "assistant");
  assert.equal(finish, "length");
  assert.equal(text, whole.choices[0].message.content);
  assert.deepEqual(usage, whole.usage);
});

test("seed makes sampling reproducible; stop strings end the reply before them", async () => {
  const req = { model: "tiny-dsv3", messages, max_tokens: 16, temperature: 1, seed: 1234 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  const full = a.choices[0].message.content;
  // A stop string from the middle of the sampled text.
  const chars = [...full];
  const stop = chars.slice(4, 7).join("");
  const c = await client.chat.completions.create({ ...req, stop: [stop] });
  assert.equal(c.choices[0].finish_reason, "stop");
  assert.equal(c.choices[0].message.content, full.slice(0, full.indexOf(stop)));
});

test("tool and assistant messages render through the chat template", async () => {
  const r = await client.chat.completions.create({
    model: "tiny-dsv3", max_tokens: 4,
    messages: [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } }] },
      { role: "tool", tool_call_id: "call_1", content: "18C, sunny" },
    ],
  });
  assert.equal(r.choices[0].message.role, "assistant");
  assert.ok(r.usage.prompt_tokens > 20);
});

test("completions: text prompt, token-id prompt, echo, logprobs, stream", async () => {
  const t = await client.completions.create({ model: "tiny-dsv3", prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
  assert.equal(t.object, "text_completion");
  assert.equal(t.choices[0].finish_reason, "length");
  assert.equal(t.usage.completion_tokens, 8);
  // The tiny model verified against HF: these ids continue greedily as `moe generate` does.
  const ids = await client.completions.create({ model: "tiny-dsv3", prompt: [311, 811, 1336, 101, 151, 1684, 1100], max_tokens: 12, temperature: 0, logprobs: 2 });
  assert.equal(ids.usage.prompt_tokens, 7);
  assert.equal(ids.choices[0].logprobs.tokens.length, 12);
  assert.equal(Object.keys(ids.choices[0].logprobs.top_logprobs[0]).length <= 2, true);
  const echo = await client.completions.create({ model: "tiny-dsv3", prompt: "Echo me", max_tokens: 3, echo: true, temperature: 0 });
  assert.ok(echo.choices[0].text.startsWith("Echo me"));
  const stream = await client.completions.create({ model: "tiny-dsv3", prompt: "Once upon a time", max_tokens: 8, temperature: 0, stream: true });
  let text = "";
  for await (const chunk of stream) for (const c of chunk.choices) text += c.text;
  assert.equal(text, t.choices[0].text);
});

test("API key: missing or wrong key is a 401 AuthenticationError, the right key works", async () => {
  const wrong = new OpenAI({ baseURL: keyed.url + "/v1", apiKey: KEY + "x", maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === "invalid_api_key");
  const res = await fetch(keyed.url + "/v1/models");
  assert.equal(res.status, 401);
  assert.equal((await res.json()).error.type, "invalid_request_error");
  const right = new OpenAI({ baseURL: keyed.url + "/v1", apiKey: KEY, maxRetries: 0 });
  const r = await right.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 2 });
  assert.equal(r.usage.completion_tokens, 2);
  // /health and the page need no key.
  assert.equal((await fetch(keyed.url + "/health")).status, 200);
  assert.equal((await fetch(keyed.url + "/")).status, 200);
});
