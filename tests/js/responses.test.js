// The official OpenAI Node SDK's Responses API (client.responses) against `moe serve` with the bundled tiny model.
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

const tools = [{ type: "function", name: "get_weather", description: "The weather in a city",
                 parameters: { type: "object", properties: { city: { type: "string", maxLength: 24 } }, required: ["city"] } }];

test("a whole response from a string input with instructions", async () => {
  const r = await client.responses.create({ model: "tiny-dsv3", input: "Hello", instructions: "Be terse.",
                                            max_output_tokens: 8, temperature: 0 });
  assert.equal(r.object, "response");
  assert.match(r.id, /^resp_/);
  assert.ok(["completed", "incomplete"].includes(r.status));
  assert.equal(r.instructions, "Be terse.");
  assert.ok(r.usage.input_tokens > 3);
  assert.ok(r.usage.output_tokens >= 1 && r.usage.output_tokens <= 8);
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  if (r.status === "incomplete") assert.equal(r.incomplete_details.reason, "max_output_tokens");
  const msg = r.output.find((o) => o.type === "message");
  assert.equal(msg.content[0].type, "output_text");
  assert.equal(r.output_text, msg.content[0].text);  // the SDK's convenience field
});

test("streamed events come in order and add up to the whole response", async () => {
  const body = { model: "tiny-dsv3", input: [{ role: "user", content: "Count" }], max_output_tokens: 12, temperature: 0 };
  const whole = await client.responses.create(body);
  const stream = await client.responses.create({ ...body, stream: true });
  const types = [];
  let text = "", last = -1, final = null;
  for await (const ev of stream) {
    types.push(ev.type);
    assert.ok(ev.sequence_number > last);
    last = ev.sequence_number;
    if (ev.type === "response.output_text.delta") text += ev.delta;
    if (ev.type === "response.completed" || ev.type === "response.incomplete") final = ev.response;
  }
  assert.equal(types[0], "response.created");
  assert.equal(types[1], "response.in_progress");
  assert.match(types.at(-1), /^response\.(completed|incomplete)$/);
  const order = types.join(" ");
  assert.match(order, /response\.output_item\.added response\.content_part\.added( response\.output_text\.delta)+ response\.output_text\.done response\.content_part\.done response\.output_item\.done/);
  assert.equal(text, whole.output_text);
  assert.equal(final.output[0].content[0].text, whole.output_text);
});

test("function tools: a forced call is a function_call item; streamed arguments match the whole one", async () => {
  const body = { model: "tiny-dsv3", input: "Weather in Paris?", tools, tool_choice: "required",
                 max_output_tokens: 120, temperature: 0 };
  const whole = await client.responses.create(body);
  const call = whole.output.find((o) => o.type === "function_call");
  assert.ok(call, JSON.stringify(whole.output));
  assert.equal(call.name, "get_weather");
  assert.match(call.call_id, /^call_/);
  assert.equal(whole.status, "completed");
  assert.deepEqual(Object.keys(JSON.parse(call.arguments)), ["city"]);
  const stream = await client.responses.create({ ...body, stream: true });
  let args = "", done = null;
  for await (const ev of stream) {
    if (ev.type === "response.function_call_arguments.delta") args += ev.delta;
    if (ev.type === "response.function_call_arguments.done") done = ev.arguments;
  }
  assert.equal(args, call.arguments);
  assert.equal(done, call.arguments);
  // The call and its output sent back as input items.
  const next = await client.responses.create({
    model: "tiny-dsv3", max_output_tokens: 4, tools,
    input: [{ role: "user", content: "Weather in Paris?" }, call,
            { type: "function_call_output", call_id: call.call_id, output: "21 C" }],
  });
  assert.ok(next.usage.input_tokens > whole.usage.input_tokens);
});

test("bad input is a 400 naming what was wrong", async () => {
  for (const [body, param] of [
    [{ input: "x", previous_response_id: "resp_1" }, "previous_response_id"],
    [{ input: "x", frobnicate: 1 }, "frobnicate"],
    [{ input: "x", tools, tool_choice: { type: "function", name: "nope" } }, "tool_choice"],
    [{ input: "x", tools: [{ type: "function", name: "f", parameters: { type: "object", properties: { a: { type: "x" } } } }] },
     "tools[0].parameters.properties.a.type"],
    [{ input: [{ type: "input_image", image_url: "x" }] }, "input[0].type"],
  ]) {
    await assert.rejects(client.responses.create({ model: "tiny-dsv3", ...body }), (e) => {
      assert.equal(e.status, 400);
      assert.equal(e.error?.param ?? e.param, param, e.message);
      return true;
    });
  }
  const ok = await client.responses.create({ model: "tiny-dsv3", input: "hi", max_output_tokens: 2 });
  assert.equal(ok.object, "response");
});

test("usage details: cached_tokens from the prefix cache (whole 16-token pages) and reasoning_tokens", async () => {
  const instructions = Array.from({ length: 40 }, (_, i) => `Rule ${i}: speak of item ${i * 3}.`).join(" ");
  const body = { model: "tiny-dsv3", input: "What is item 9?", instructions, max_output_tokens: 4, temperature: 0 };
  const first = await client.responses.create(body);
  const P = first.usage.input_tokens;
  assert.ok(P > 100, `a long input (${P} tokens)`);
  assert.equal(first.usage.input_tokens_details.cached_tokens, 0);
  const second = await client.responses.create(body);
  assert.equal(second.usage.input_tokens, P);
  // Every whole page but the one holding the last prompt token (its logits are needed) comes from the cache.
  assert.equal(second.usage.input_tokens_details.cached_tokens, Math.floor((P - 1) / 16) * 16);
  assert.equal(second.output_text, first.output_text);
  // The tiny model's template opens no <think> and greedy output has no tags: no reasoning item, no reasoning tokens.
  for (const r of [first, second]) {
    assert.equal(r.output.some((o) => o.type === "reasoning"), false);
    assert.equal(r.usage.output_tokens_details.reasoning_tokens, 0);
  }
});
