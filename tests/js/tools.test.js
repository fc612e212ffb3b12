// Tool calls, strict requests and sampling features through the official OpenAI Node SDK against `moe serve` with
// the bundled tiny model (random weights: forced calls are what make it call a tool at all).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer } from "./server.js";

let srv, client;

before(async () => {
  srv = await startServer(["--max-context", "1024", "--cache-tokens", "8192"]);
  client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await srv?.stop();
});

const tools = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", maxLength: 24 }, unit: { enum: ["celsius", "fahrenheit"] },
                      days: { type: "integer", minimum: 1, maximum: 7 } },
        required: ["city", "unit"],
      },
    },
  },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: {} } } },
];
const messages = [{ role: "user", content: "What is the weather in Paris?" }];

// The call's arguments against its tool's parameter schema (the forced call's grammar guarantees it): a
// hand-written check of exactly the keywords the schemas above use.
function validate(args, schema) {
  assert.equal(typeof args, "object");
  assert.ok(!Array.isArray(args) && args !== null);
  for (const r of schema.required ?? []) assert.ok(r in args, `required '${r}' missing: ${JSON.stringify(args)}`);
  for (const [k, v] of Object.entries(args)) {
    const p = schema.properties[k];
    assert.ok(p, `undeclared property '${k}'`);
    if (p.type === "string") assert.ok(typeof v === "string" && [...v].length <= p.maxLength, JSON.stringify(v));
    if (p.enum) assert.ok(p.enum.includes(v), JSON.stringify(v));
    if (p.type === "integer") assert.ok(Number.isInteger(v) && v >= p.minimum && v <= p.maximum, JSON.stringify(v));
  }
}

function checkCall(call, names) {
  assert.equal(call.type, "function");
  assert.match(call.id, /^call_/);
  assert.ok(names.includes(call.function.name), call.function.name);
  const args = JSON.parse(call.function.arguments);
  validate(args, tools.find((t) => t.function.name === call.function.name).function.parameters);
  return args;
}

for (const [label, tool_choice, names] of [
  ["named", { type: "function", function: { name: "get_weather" } }, ["get_weather"]],
  ["required", "required", ["get_weather", "get_time"]],
]) {
  test(`a forced tool call (${label}) returns a call whose arguments validate against the schema`, async () => {
    let calls = 0;
    for (const seed of [1, 2, 3, 4]) {
      const r = await client.chat.completions.create({
        model: "tiny-dsv3", messages, tools, tool_choice, max_tokens: 200, temperature: 1, seed,
      });
      const c = r.choices[0];
      assert.equal(c.finish_reason, "tool_calls");  // bounded strings: even random weights finish the call
      assert.equal(c.message.tool_calls.length, 1);
      checkCall(c.message.tool_calls[0], names);
      assert.equal(c.message.content, null);
      calls++;
    }
    assert.equal(calls, 4);
  });
}

test("a streamed tool call assembles to the same call as the whole response", async () => {
  const body = { model: "tiny-dsv3", messages, tools, tool_choice: "required", max_tokens: 120, temperature: 0 };
  const whole = await client.chat.completions.create(body);
  const stream = await client.chat.completions.create({ ...body, stream: true });
  const calls = [];
  let finish = null, content = "";
  for await (const chunk of stream) {
    const ch = chunk.choices[0];
    if (!ch) continue;
    content += ch.delta.content ?? "";
    for (const d of ch.delta.tool_calls ?? []) {
      if (d.id) calls[d.index] = { id: d.id, type: d.type, function: { name: d.function.name, arguments: "" } };
      calls[d.index].function.arguments += d.function.arguments ?? "";
    }
    finish = ch.finish_reason ?? finish;
  }
  const w = whole.choices[0];
  assert.equal(finish, w.finish_reason);
  assert.equal(content, w.message.content ?? "");
  assert.equal(calls.length, w.message.tool_calls.length);
  for (const [i, c] of calls.entries()) {
    assert.equal(c.function.name, w.message.tool_calls[i].function.name);
    assert.equal(c.function.arguments, w.message.tool_calls[i].function.arguments);
  }
  if (w.finish_reason === "tool_calls") checkCall(calls[0], ["get_weather", "get_time"]);
});

test("tool results and assistant tool_calls in the history are rendered back", async () => {
  const r = await client.chat.completions.create({
    model: "tiny-dsv3", max_tokens: 4, tools,
    messages: [
      ...messages,
      { role: "assistant", content: null, tool_calls: [
        { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
      { role: "tool", tool_call_id: "call_1", content: '{"temperature": 21}' },
    ],
  });
  assert.ok(r.usage.prompt_tokens > 40);
  assert.ok(["stop", "length", "tool_calls"].includes(r.choices[0].finish_reason));
});

test("tool_choice none and auto are accepted; parallel_tool_calls false reports one call at most", async () => {
  for (const tool_choice of ["none", "auto"]) {
    const r = await client.chat.completions.create({ model: "tiny-dsv3", messages, tools, tool_choice, max_tokens: 8 });
    assert.equal(r.choices.length, 1);
  }
  const r = await client.chat.completions.create({
    model: "tiny-dsv3", messages, tools, tool_choice: "required", parallel_tool_calls: false, max_tokens: 120,
  });
  assert.ok((r.choices[0].message.tool_calls ?? []).length <= 1);
});

test("logit_bias of +100 on one token makes it the greedy choice", async () => {
  // 2046 is "<think>" in the tiny model's tokenizer (an added, non-special token: it appears in the text).
  const r = await client.completions.create({ model: "tiny-dsv3", prompt: "Hello", max_tokens: 3, temperature: 0,
                                              logit_bias: { 2046: 100 } });
  assert.equal(r.choices[0].text, "<think><think><think>");
  const c = await client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 2, temperature: 0,
                                                   logit_bias: { 2046: 100 } });
  assert.equal(c.choices[0].message.content, "<think><think>");
});

test("bad input is a 400 naming what was wrong, and the server keeps serving", async () => {
  const cases = [
    [{ messages, max_tokens: 2, best_of: 2 }, "best_of", "completions"],
    [{ messages, max_tokens: 2, temprature: 0.5 }, "temprature"],
    [{ messages, tools, tool_choice: { type: "function", function: { name: "missing" } } }, "tool_choice"],
    [{ messages, tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "nope" } } } } }] },
     "tools[0].function.parameters.properties.a.type"],
    [{ messages, logit_bias: { 999999: 5 } }, "logit_bias"],
  ];
  for (const [body, param, api] of cases) {
    const path = api === "completions" ? "/v1/completions" : "/v1/chat/completions";
    const b = api === "completions" ? { prompt: "x", best_of: 2 } : body;
    const res = await fetch(srv.url + path, { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(b) });
    assert.equal(res.status, 400, JSON.stringify(b));
    const e = (await res.json()).error;
    assert.equal(e.param, param);
    assert.ok(e.message.length > 10);
  }
  const ok = await client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 2 });
  assert.equal(ok.choices.length, 1);
});

test("suffix renders DeepSeek's fill-in-the-middle prompt", async () => {
  const prefix = "def add(a, b):\n    ", suffix = "\n    return c\n";
  const fim = await client.completions.create({ model: "tiny-dsv3", prompt: prefix, suffix, max_tokens: 4, temperature: 0 });
  const manual = await client.completions.create({
    model: "tiny-dsv3", prompt: "<｜fim▁begin｜>" + prefix + "<｜fim▁hole｜>" + suffix + "<｜fim▁end｜>", max_tokens: 4, temperature: 0,
  });
  assert.equal(fim.usage.prompt_tokens, manual.usage.prompt_tokens);
  assert.equal(fim.choices[0].text, manual.choices[0].text);
  const plain = await client.completions.create({ model: "tiny-dsv3", prompt: prefix + suffix, max_tokens: 1 });
  assert.ok(fim.usage.prompt_tokens >= plain.usage.prompt_tokens + 3);
});

test("assistant prefill (prefix: true) continues the assistant's text", async () => {
  const base = await client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 6, temperature: 0,
                                                      logprobs: true, ignore_eos: true });
  const prefill = await client.chat.completions.create({
    model: "tiny-dsv3", max_tokens: 3, temperature: 0, logprobs: true, ignore_eos: true,
    messages: [...messages, { role: "assistant", content: "", prefix: true }],
  });
  // An empty prefix continues exactly where a fresh answer starts: the same first tokens.
  const bytes = (r) => r.choices[0].logprobs.content.map((t) => t.bytes.join(","));
  assert.deepEqual(bytes(prefill), bytes(base).slice(0, 3));
  // A non-empty prefix is part of the prompt, not of the reply.
  const longer = await client.chat.completions.create({
    model: "tiny-dsv3", max_tokens: 3, temperature: 0,
    messages: [...messages, { role: "assistant", content: "The weather in Paris is", prefix: true }],
  });
  assert.ok(longer.usage.prompt_tokens > base.usage.prompt_tokens + 3);
});

test("/tokenize and /detokenize round-trip, and bad ids are a 400", async () => {
  const post = (path, body) => fetch(srv.url + path, { method: "POST", headers: { "Content-Type": "application/json" },
                                                       body: JSON.stringify(body) });
  const t = await (await post("/tokenize", { prompt: "Hello<think>world" })).json();
  assert.equal(t.count, t.tokens.length);
  assert.equal(t.tokens[0], 0);  // BOS with add_special_tokens (the default)
  assert.ok(t.tokens.includes(2046));
  assert.equal(t.max_model_len, 1024);
  const bare = await (await post("/tokenize", { prompt: "Hello<think>world", add_special_tokens: false })).json();
  assert.deepEqual(bare.tokens, t.tokens.slice(1));
  const d = await (await post("/detokenize", { tokens: bare.tokens })).json();
  assert.equal(d.prompt, "Hello<think>world");
  for (const [path, body, param] of [["/detokenize", { tokens: [1e6] }, "tokens"], ["/tokenize", { text: "x" }, "text"],
                                     ["/tokenize", { prompt: 5 }, "prompt"]]) {
    const res = await post(path, body);
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.param, param);
  }
});
