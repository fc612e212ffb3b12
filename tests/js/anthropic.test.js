// The official Anthropic TypeScript SDK against `moe serve`'s Messages API (/v1/messages) with the bundled tiny model.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { startServer } from "./server.js";

let srv, client, keyed;
const KEY = "sk-test-" + Math.random().toString(36).slice(2);

before(async () => {
  srv = await startServer(["--max-context", "1024", "--cache-tokens", "8192"]);
  client = new Anthropic({ baseURL: srv.url, apiKey: "unused", maxRetries: 0 });
  keyed = await startServer(["--max-context", "1024", "--cache-tokens", "4096"], { MOE_API_KEY: KEY });
});
after(async () => {
  await srv?.stop();
  await keyed?.stop();
});

const tools = [{
  name: "get_weather", description: "The weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string", maxLength: 24 } }, required: ["city"] },
}];

test("a whole message: system prompt, content blocks, usage, max_tokens", async () => {
  const m = await client.messages.create({
    model: "tiny-dsv3", max_tokens: 8, system: "You are terse.", temperature: 0,
    messages: [{ role: "user", content: [{ type: "text", text: "Name three colours." }] }],
  });
  assert.equal(m.type, "message");
  assert.equal(m.role, "assistant");
  assert.match(m.id, /^msg_/);
  assert.ok(["max_tokens", "end_turn"].includes(m.stop_reason));
  assert.ok(m.usage.input_tokens > 5);
  assert.ok(m.usage.output_tokens >= 1 && m.usage.output_tokens <= 8);
  for (const b of m.content) assert.equal(b.type, "text");
});

test("streaming events arrive in the documented order and add up to the whole message", async () => {
  const body = { model: "tiny-dsv3", max_tokens: 16, temperature: 0, messages: [{ role: "user", content: "Hello" }] };
  const whole = await client.messages.create(body);
  const stream = await client.messages.create({ ...body, stream: true });
  const names = [];
  let text = "", stop = null, open = null;
  for await (const ev of stream) {
    if (ev.type === "ping") continue;
    names.push(ev.type);
    if (ev.type === "content_block_start") { assert.equal(open, null); open = ev.index; }
    if (ev.type === "content_block_delta") { assert.equal(ev.index, open); text += ev.delta.text ?? ""; }
    if (ev.type === "content_block_stop") { assert.equal(ev.index, open); open = null; }
    if (ev.type === "message_delta") stop = ev.delta.stop_reason;
  }
  // message_start, (content_block_start, content_block_delta+, content_block_stop)*, message_delta, message_stop
  const order = names.join(" ");
  assert.match(order, /^message_start( content_block_start( content_block_delta)+ content_block_stop)* message_delta message_stop$/);
  assert.equal(stop, whole.stop_reason);
  assert.equal(text, whole.content.map((b) => b.text).join(""));
});

test("a forced tool use (any and a named tool) returns a tool_use block whose input validates against input_schema", async () => {
  let uses = 0;
  for (const tool_choice of [{ type: "any" }, { type: "tool", name: "get_weather" }]) {
    const m = await client.messages.create({
      model: "tiny-dsv3", max_tokens: 200, tools, tool_choice, temperature: 0,
      messages: [{ role: "user", content: "Weather in Paris?" }],
    });
    assert.equal(m.stop_reason, "tool_use");  // forced and schema-bounded: even random weights finish the call
    const use = m.content.find((b) => b.type === "tool_use");
    assert.ok(use);
    assert.equal(use.name, "get_weather");
    assert.match(use.id, /^toolu_/);
    assert.deepEqual(Object.keys(use.input), ["city"]);  // validates against input_schema
    assert.equal(typeof use.input.city, "string");
    assert.ok([...use.input.city].length <= 24);
    uses++;
  }
  assert.equal(uses, 2);
});

test("streamed tool use: input_json_delta pieces assemble to the whole message's input", async () => {
  const body = { model: "tiny-dsv3", max_tokens: 120, tools, tool_choice: { type: "any" }, temperature: 0,
                 messages: [{ role: "user", content: "Weather in Paris?" }] };
  const whole = await client.messages.create(body);
  const stream = await client.messages.create({ ...body, stream: true });
  let json = "", name = null;
  for await (const ev of stream) {
    if (ev.type === "content_block_start" && ev.content_block.type === "tool_use") name = ev.content_block.name;
    if (ev.type === "content_block_delta" && ev.delta.type === "input_json_delta") json += ev.delta.partial_json;
  }
  const use = whole.content.find((b) => b.type === "tool_use");
  assert.equal(name, use?.name ?? null);
  assert.equal(whole.stop_reason, "tool_use");
  assert.deepEqual(JSON.parse(json), use.input);
});

test("tool_result and tool_use blocks in the history are accepted", async () => {
  const m = await client.messages.create({
    model: "tiny-dsv3", max_tokens: 4, tools,
    messages: [
      { role: "user", content: "Weather in Paris?" },
      { role: "assistant", content: [{ type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } }] },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "21 C" }] },
    ],
  });
  assert.ok(m.usage.input_tokens > 30);
});

test("x-api-key authenticates; bad input is a 400 in Anthropic's error shape and the server keeps serving", async () => {
  const good = new Anthropic({ baseURL: keyed.url, apiKey: KEY, maxRetries: 0 });
  const m = await good.messages.create({ model: "tiny-dsv3", max_tokens: 2, messages: [{ role: "user", content: "hi" }] });
  assert.equal(m.type, "message");
  const wrong = new Anthropic({ baseURL: keyed.url, apiKey: "sk-wrong", maxRetries: 0 });
  // The SDK's AuthenticationError carries the body: Anthropic's error shape, type authentication_error.
  await assert.rejects(wrong.messages.create({ model: "tiny-dsv3", max_tokens: 2, messages: [{ role: "user", content: "hi" }] }),
                       (e) => e instanceof Anthropic.AuthenticationError && e.status === 401 &&
                              e.error?.type === "error" && e.error?.error?.type === "authentication_error" &&
                              /Incorrect API key/.test(e.error.error.message));
  // No key at all (the SDK refuses to send that): the same shape, a message saying how to send one.
  const raw = await fetch(keyed.url + "/v1/messages", { method: "POST", headers: { "Content-Type": "application/json" },
                                                        body: JSON.stringify({ max_tokens: 2, messages: [] }) });
  assert.equal(raw.status, 401);
  const body = await raw.json();
  assert.deepEqual(Object.keys(body).sort(), ["error", "type"]);
  assert.equal(body.type, "error");
  assert.equal(body.error.type, "authentication_error");
  assert.match(body.error.message, /x-api-key/);
  // Elsewhere the 401 keeps OpenAI's shape.
  const models = await fetch(keyed.url + "/v1/models");
  assert.equal(models.status, 401);
  assert.equal((await models.json()).error.code, "invalid_api_key");
  const post = (body) => fetch(srv.url + "/v1/messages", { method: "POST", headers: { "Content-Type": "application/json" },
                                                           body: JSON.stringify(body) });
  const msgs = [{ role: "user", content: "hi" }];
  for (const [body, words] of [
    [{ messages: msgs }, "max_tokens"],
    [{ messages: msgs, max_tokens: 2, temprature: 1 }, "temprature"],
    [{ messages: msgs, max_tokens: 2, tools, tool_choice: { type: "tool", name: "missing" } }, "missing"],
    [{ messages: msgs, max_tokens: 2, tools: [{ name: "f", input_schema: { type: "object", properties: { a: { type: "nope" } } } }] },
     "tools[0].input_schema.properties.a.type"],
  ]) {
    const res = await post(body);
    assert.equal(res.status, 400, JSON.stringify(body));
    const e = await res.json();
    assert.equal(e.type, "error");
    assert.equal(e.error.type, "invalid_request_error");
    assert.ok(e.error.message.includes(words), e.error.message);
  }
  const after = await client.messages.create({ model: "tiny-dsv3", max_tokens: 2, messages: msgs });
  assert.equal(after.type, "message");
});
