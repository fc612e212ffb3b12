// Scoring through the official OpenAI Node SDK: completions with echo and logprobs return the prompt's logprobs
// (the first token's null), max_tokens 0 returns only the prompt, and each prompt token's logprob equals the one
// the same model reports when it generates that token after the same prefix (a second, independent path: plain
// generation forced onto the token with logit_bias, whose logprobs are the model's before the bias).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer } from "./server.js";

let srv, client;

before(async () => {
  // Small steps: the prompt is scored over several chunks, next to other requests' decodes.
  srv = await startServer(["--max-context", "1024", "--cache-tokens", "8192", "--step-tokens", "16"]);
  client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await srv?.stop();
});

const TEXT = "The quick brown fox jumps over the lazy dog, and then it naps in the warm sun café.";
const chars = (s) => [...s].length;  // text_offset counts characters (code points)

async function tokenize(prompt) {
  const r = await fetch(srv.url + "/tokenize", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).tokens;
}

// float32 logprobs of the same rows through two schedules: the sums differ only in order (a few ulps of the
// logits, which stay below ~20 in magnitude on the tiny model), far below 1e-4.
const TOL = 1e-4;

test("echo + logprobs + max_tokens 0: the prompt and its logprobs only", async () => {
  const ids = await tokenize(TEXT);
  const r = await client.completions.create({ model: "tiny-dsv3", prompt: TEXT, echo: true, logprobs: 2, max_tokens: 0 });
  const c = r.choices[0];
  assert.equal(c.text, TEXT);
  assert.equal(c.finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 0);
  assert.equal(r.usage.prompt_tokens, ids.length);
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0);
  const lp = c.logprobs;
  for (const k of ["tokens", "token_logprobs", "top_logprobs", "text_offset"]) assert.equal(lp[k].length, ids.length, k);
  assert.equal(lp.token_logprobs[0], null);  // nothing precedes the first token
  assert.equal(lp.top_logprobs[0], null);
  assert.equal(lp.text_offset[0], 0);
  for (let i = 1; i < ids.length; i++) {
    assert.ok(lp.token_logprobs[i] <= 0 && Number.isFinite(lp.token_logprobs[i]), `token ${i}`);
    const alts = Object.values(lp.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 2, `top ${i}`);
    assert.ok(Math.max(...alts) >= lp.token_logprobs[i] - TOL, `the best alternative is at least the token's (${i})`);
    assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1] && lp.text_offset[i] <= chars(TEXT), `offset ${i}`);
  }
  // The tokens' text sits at their offsets (the first is BOS, which the echo does not contain).
  for (let i = 1; i < ids.length; i++) {
    const t = lp.tokens[i];
    if (!t.includes("\uFFFD")) assert.equal([...TEXT].slice(lp.text_offset[i], lp.text_offset[i] + chars(t)).join(""), t, `token ${i}`);
  }

  // A second request scores the same text the same way, although the prefix cache now holds its pages: a scoring
  // request computes every position.
  const again = await client.completions.create({ model: "tiny-dsv3", prompt: TEXT, echo: true, logprobs: 2, max_tokens: 0 });
  assert.equal(again.usage.prompt_tokens_details.cached_tokens, 0);
  assert.deepEqual(again.choices[0].logprobs.tokens, lp.tokens);
  for (let i = 1; i < ids.length; i++)
    assert.ok(Math.abs(again.choices[0].logprobs.token_logprobs[i] - lp.token_logprobs[i]) <= TOL, `token ${i}`);

  // The same logprobs through generation: the prefix as token ids, the next prompt token forced by logit_bias;
  // the reported logprob is the model's distribution before the bias.
  for (const i of [1, 2, Math.floor(ids.length / 2), ids.length - 1]) {
    const g = await client.completions.create({
      model: "tiny-dsv3", prompt: ids.slice(0, i), max_tokens: 1, temperature: 0, logprobs: 1,
      logit_bias: { [ids[i]]: 100 },
    });
    const glp = g.choices[0].logprobs;
    assert.equal(glp.tokens.length, 1);
    assert.equal(glp.tokens[0], lp.tokens[i], `position ${i}`);
    assert.ok(Math.abs(glp.token_logprobs[0] - lp.token_logprobs[i]) <= TOL,
              `position ${i}: generated ${glp.token_logprobs[0]} vs scored ${lp.token_logprobs[i]}`);
  }
});

test("max_tokens 0 without echo is an empty text; echo without logprobs is the prompt", async () => {
  const r = await client.completions.create({ model: "tiny-dsv3", prompt: TEXT, max_tokens: 0 });
  assert.equal(r.choices[0].text, "");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 0);
  const e = await client.completions.create({ model: "tiny-dsv3", prompt: TEXT, max_tokens: 0, echo: true });
  assert.equal(e.choices[0].text, TEXT);
  assert.equal(e.choices[0].logprobs, null);
});

test("echo + logprobs while generating, whole and streamed", async () => {
  const req = { model: "tiny-dsv3", prompt: TEXT, echo: true, logprobs: 1, max_tokens: 4, temperature: 0 };
  const whole = await client.completions.create(req);
  const n = whole.usage.prompt_tokens;
  const lp = whole.choices[0].logprobs;
  assert.ok(whole.choices[0].text.startsWith(TEXT));
  assert.equal(lp.tokens.length, n + whole.usage.completion_tokens);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.text_offset[n], chars(TEXT));  // the completion's first token starts after the echo
  const chunks = [];
  for await (const chunk of await client.completions.create({ ...req, stream: true })) chunks.push(chunk);
  const first = chunks[0].choices[0];
  assert.ok(first.text.startsWith(TEXT), "the first chunk carries the prompt");
  assert.ok(first.logprobs.tokens.length >= n, "and its logprobs");
  assert.equal(first.logprobs.token_logprobs[0], null);
  const text = chunks.map((c) => c.choices[0]?.text ?? "").join("");
  const tokens = chunks.flatMap((c) => c.choices[0]?.logprobs?.tokens ?? []);
  const lps = chunks.flatMap((c) => c.choices[0]?.logprobs?.token_logprobs ?? []);
  assert.equal(text, whole.choices[0].text);
  assert.deepEqual(tokens, lp.tokens);
  for (let i = 1; i < lps.length; i++) assert.ok(Math.abs(lps[i] - lp.token_logprobs[i]) <= TOL, `token ${i}`);
});

test("bad input: negative max_tokens, max_tokens 0 on chat, too many logprobs", async () => {
  const bad = async (fn, param) => {
    await assert.rejects(fn, (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.param, param);
      assert.ok(e.message.includes(param), e.message);
      return true;
    });
  };
  await bad(() => client.completions.create({ model: "tiny-dsv3", prompt: TEXT, max_tokens: -1 }), "max_tokens");
  await bad(() => client.completions.create({ model: "tiny-dsv3", prompt: TEXT, echo: true, logprobs: 21, max_tokens: 0 }), "logprobs");
  await bad(() => client.chat.completions.create({ model: "tiny-dsv3", messages: [{ role: "user", content: "hi" }], max_tokens: 0 }), "max_tokens");
  await bad(() => client.chat.completions.create({ model: "tiny-dsv3", messages: [{ role: "user", content: "hi" }], max_completion_tokens: 0 }), "max_completion_tokens");
  // The server keeps serving.
  const ok = await client.completions.create({ model: "tiny-dsv3", prompt: "Hi", max_tokens: 1 });
  assert.equal(ok.choices.length, 1);
});
