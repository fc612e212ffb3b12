// MTP speculative decoding through `moe serve --speculative N` and the official OpenAI Node SDK: greedy replies
// (plain, streamed, with logprobs, with a JSON schema) equal a server without speculation's; /metrics reports the
// drafts; MOE_SPECULATIVE sets the flag (CLI11 reads the environment). The bundled model's random MTP module is
// almost never right, so these check the verification path, not a speed-up (see docs/server.md).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer, metrics } from "./server.js";

let spec, plain, byEnv, specClient, plainClient;
const args = ["--max-context", "2048", "--cache-tokens", "8192", "--ignore-eos"];

before(async () => {
  spec = await startServer([...args, "--speculative", "2"]);
  plain = await startServer(args);
  byEnv = await startServer(args, { MOE_SPECULATIVE: "1" });
  specClient = new OpenAI({ baseURL: spec.url + "/v1", apiKey: "unused", maxRetries: 0 });
  plainClient = new OpenAI({ baseURL: plain.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await spec?.stop();
  await plain?.stop();
  await byEnv?.stop();
});

const ask = (q, extra = {}) => ({
  model: "tiny-dsv3", max_tokens: 24, temperature: 0, messages: [{ role: "user", content: q }], ...extra,
});

test("greedy replies equal those without speculation", async () => {
  for (const q of ["Name three rivers.", "Count to five.", "What is a prime?"]) {
    const [a, b] = await Promise.all([specClient.chat.completions.create(ask(q, { logprobs: true, top_logprobs: 2 })),
                                      plainClient.chat.completions.create(ask(q, { logprobs: true, top_logprobs: 2 }))]);
    assert.equal(a.choices[0].message.content, b.choices[0].message.content, q);
    assert.equal(a.usage.completion_tokens, b.usage.completion_tokens);
    const la = a.choices[0].logprobs.content, lb = b.choices[0].logprobs.content;
    assert.equal(la.length, lb.length);
    for (let i = 0; i < la.length; ++i) {
      assert.equal(la[i].token, lb[i].token);
      assert.ok(Math.abs(la[i].logprob - lb[i].logprob) < 1e-3, `${la[i].logprob} vs ${lb[i].logprob}`);
    }
  }
  // Streamed, and stopped by a stop string taken from the reply's middle.
  const full = (await plainClient.chat.completions.create(ask("Name three rivers."))).choices[0].message.content;
  const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 2);
  let text = "", finish = null;
  for await (const chunk of await specClient.chat.completions.create(ask("Name three rivers.", { stream: true, stop: [stop] }))) {
    text += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  const want = await plainClient.chat.completions.create(ask("Name three rivers.", { stop: [stop] }));
  assert.equal(text, want.choices[0].message.content);
  assert.equal(finish, want.choices[0].finish_reason);
});

test("a JSON schema constrains every verified token as without speculation", async () => {
  const schema = { type: "object", properties: { n: { type: "integer" }, s: { type: "string", maxLength: 5 } },
                   required: ["n", "s"], additionalProperties: false };
  const req = ask("Give JSON.", { max_tokens: 200, response_format: { type: "json_schema", json_schema: { name: "x", schema } } });
  const [a, b] = await Promise.all([specClient.chat.completions.create(req), plainClient.chat.completions.create(req)]);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.choices[0].finish_reason, "stop");
  JSON.parse(a.choices[0].message.content);
});

test("/metrics counts drafts; MOE_SPECULATIVE turns it on", async () => {
  const m = await metrics(spec.url);
  assert.ok(m.moe_spec_verifications_total > 0, JSON.stringify(m));
  assert.ok(m.moe_spec_draft_tokens_total >= m.moe_spec_verifications_total);
  assert.ok(m.moe_spec_accepted_tokens_total <= m.moe_spec_draft_tokens_total);
  assert.ok(m.moe_spec_tokens_per_step >= 1);
  assert.equal((await metrics(plain.url)).moe_spec_verifications_total, 0);
  // Two drafts a step: the streamed greedy request (no logprobs, no schema) runs fused, the drafts chained on
  // the device; the requests with logprobs or a schema are decided on the host.
  assert.ok(m.moe_spec_fused_steps_total > 0, JSON.stringify(m));
  assert.ok(m.moe_spec_fused_steps_total < m.moe_spec_verifications_total, JSON.stringify(m));
  const envClient = new OpenAI({ baseURL: byEnv.url + "/v1", apiKey: "unused", maxRetries: 0 });
  await envClient.chat.completions.create(ask("Count to five."));
  const e = await metrics(byEnv.url);
  assert.ok(e.moe_spec_verifications_total > 0);
  assert.equal(e.moe_spec_draft_tokens_total, e.moe_spec_verifications_total);  // one draft a step
  assert.ok(e.moe_spec_fused_steps_total > 0, JSON.stringify(e));  // one greedy request, one draft: fused (the default)
});
