// Prefix caching through the official OpenAI Node SDK: a repeated long prompt reports the prompt tokens it
// reused in usage.prompt_tokens_details.cached_tokens (whole 16-token pages, never the last prompt token),
// the same greedy reply as the first time, and /metrics counts the hits; --no-prefix-cache reports none.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer, metrics } from "./server.js";

const PAGE = 16;
let srv, plain, client, plainClient;

before(async () => {
  const args = ["--max-context", "2048", "--cache-tokens", "8192", "--page-size", String(PAGE), "--ignore-eos"];
  srv = await startServer(args);
  plain = await startServer([...args, "--no-prefix-cache"]);
  client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
  plainClient = new OpenAI({ baseURL: plain.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await srv?.stop();
  await plain?.stop();
});

// A long system prompt shared by every turn (a few hundred tokens), then the question.
const system = Array.from({ length: 60 }, (_, i) => `Rule ${i}: answer about item ${i * 7} in plain words.`).join(" ");
const ask = (q) => ({
  model: "tiny-dsv3", max_tokens: 8, temperature: 0,
  messages: [{ role: "system", content: system }, { role: "user", content: q }],
});

test("a repeated long prompt reports cached tokens and the same reply", async () => {
  const first = await client.chat.completions.create(ask("What is item 42?"));
  const P = first.usage.prompt_tokens;
  assert.ok(P > 300, `a long prompt (${P} tokens)`);
  assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
  const second = await client.chat.completions.create(ask("What is item 42?"));
  assert.equal(second.usage.prompt_tokens, P);
  assert.equal(second.usage.prompt_tokens_details.cached_tokens, Math.floor((P - 1) / PAGE) * PAGE);
  assert.equal(second.choices[0].message.content, first.choices[0].message.content);

  // Another question after the same system prompt reuses the shared part; streamed usage says so too.
  const stream = await client.chat.completions.create({ ...ask("And item 43?"), stream: true,
                                                        stream_options: { include_usage: true } });
  let usage = null, text = "";
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.ok(usage.prompt_tokens_details.cached_tokens >= PAGE, JSON.stringify(usage));
  assert.ok(usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens);
  assert.equal(usage.prompt_tokens_details.cached_tokens % PAGE, 0);

  // Completions report it as well.
  const c1 = await client.completions.create({ model: "tiny-dsv3", prompt: system, max_tokens: 4, temperature: 0 });
  const c2 = await client.completions.create({ model: "tiny-dsv3", prompt: system, max_tokens: 4, temperature: 0 });
  assert.equal(c2.usage.prompt_tokens_details.cached_tokens, Math.floor((c2.usage.prompt_tokens - 1) / PAGE) * PAGE);
  assert.equal(c2.choices[0].text, c1.choices[0].text);

  const m = await metrics(srv.url);
  assert.equal(m.moe_prefix_cache_lookups_total, 5);
  assert.ok(m.moe_prefix_cache_hits_total >= 3, JSON.stringify(m));
  assert.ok(m.moe_prefix_cache_hit_tokens_total >= second.usage.prompt_tokens_details.cached_tokens);
  assert.ok(m.moe_prefix_cache_hit_rate > 0 && m.moe_prefix_cache_hit_rate < 1);
  assert.ok(m.moe_cache_pages_cached > 0);
  assert.equal(m.moe_prefix_cache_evicted_pages_total, 0);  // 8192 tokens of cache: room for everything
  assert.equal(m.moe_cache_pages_used, 0);
});

test("--no-prefix-cache: nothing is reused, the reply is the same", async () => {
  const a = await plainClient.chat.completions.create(ask("What is item 42?"));
  const b = await plainClient.chat.completions.create(ask("What is item 42?"));
  assert.equal(a.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(b.usage.prompt_tokens_details.cached_tokens, 0);
  const cached = await client.chat.completions.create(ask("What is item 42?"));
  assert.ok(cached.usage.prompt_tokens_details.cached_tokens > 0);
  assert.equal(b.choices[0].message.content, cached.choices[0].message.content);
  const m = await metrics(plain.url);
  assert.equal(m.moe_prefix_cache_lookups_total, 0);
  assert.equal(m.moe_cache_pages_cached, 0);
});
