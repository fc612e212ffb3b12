// Structured output (response_format) through the official OpenAI Node SDK on the random bundled model: the
// grammar engine must make even random weights produce JSON that parses and validates (Ajv, an independent
// JSON Schema validator); bad schemas are 400s naming the problem, and the server keeps serving.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import Ajv from "ajv";
import { startServer } from "./server.js";

let srv, client;
before(async () => {
  srv = await startServer(["--max-context", "2048", "--cache-tokens", "16384"]);
  client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  await srv?.stop();
});

const messages = [{ role: "user", content: "Describe a city as JSON." }];

// What agent frameworks send: required and optional properties, nested objects and arrays, enum, const,
// nullable (a type array), anyOf, string lengths, integer bounds, $ref into $defs.
const schema = {
  type: "object",
  properties: {
    name: { type: "string", minLength: 1, maxLength: 12 },
    country: { enum: ["CH", "FR", "JP"] },
    population: { type: "integer", minimum: 0, maximum: 40000000 },
    coastal: { type: "boolean" },
    mayor: { type: ["string", "null"], maxLength: 8 },
    districts: { type: "array", items: { $ref: "#/$defs/district" }, minItems: 1, maxItems: 2 },
    kind: { const: "city" },
    area: { anyOf: [{ type: "number" }, { type: "null" }] },
  },
  required: ["name", "country", "population", "districts", "kind"],
  additionalProperties: false,
  $defs: {
    district: {
      type: "object",
      properties: { id: { type: "integer", minimum: 1, maximum: 99 }, label: { type: "string", maxLength: 6 } },
      required: ["id"],
      additionalProperties: false,
    },
  },
};

test("json_schema: 20 seeded samples at temperature 1 parse and validate", async () => {
  const validate = new Ajv({ strict: false }).compile(schema);
  for (let seed = 0; seed < 20; ++seed) {
    const r = await client.chat.completions.create({
      model: "tiny-dsv3", messages, temperature: 1, seed, max_tokens: 600,
      response_format: { type: "json_schema", json_schema: { name: "city", schema, strict: true } },
    });
    const c = r.choices[0];
    assert.equal(c.finish_reason, "stop", `seed ${seed}: ${c.message.content}`);
    let value;
    assert.doesNotThrow(() => { value = JSON.parse(c.message.content); }, `seed ${seed}: ${c.message.content}`);
    assert.ok(validate(value), `seed ${seed}: ${c.message.content} ${JSON.stringify(validate.errors)}`);
  }
});

// Bounds on numbers and integers are enforced exactly (engine/grammar/number_bounds.h): 20 seeded random schemas
// with random bounds (inclusive, exclusive, or both, on one side or two), each sampled once at temperature 1,
// validate with Ajv (which compares as doubles).
test("json_schema: random number and integer bounds, sampled, validate", async () => {
  let state = 12345;  // a small seeded generator (LCG), so the schemas are the same every run
  const rand = () => ((state = (state * 1103515245 + 12345) % 2147483648) / 2147483648);
  const bound = () => {
    const digits = 1 + Math.floor(rand() * 5), shift = Math.floor(rand() * 9) - 4;
    const v = Math.floor(rand() * 10 ** digits) * 10 ** shift;
    return Number((rand() < 0.3 ? -v : v).toPrecision(digits + 1));
  };
  for (let i = 0; i < 20; ++i) {
    let [lo, hi] = [bound(), bound()].sort((x, y) => x - y);
    if (lo === hi) hi = lo + 1;
    const b = {};
    const lower = Math.floor(rand() * 3), upper = Math.floor(rand() * 3);
    if (lower === 0) b.minimum = lo;
    if (lower === 1) b.exclusiveMinimum = lo;
    if (upper === 0 || lower === 2) b.maximum = hi;
    if (upper === 1) b.exclusiveMaximum = hi;
    const type = i % 3 === 0 && hi - lo >= 2 ? "integer" : "number";
    const s = { type: "object", properties: { v: { type, ...b } }, required: ["v"], additionalProperties: false };
    const validate = new Ajv({ strict: false }).compile(s);
    const r = await client.chat.completions.create({
      model: "tiny-dsv3", messages, temperature: 1, seed: i, max_tokens: 60,
      response_format: { type: "json_schema", json_schema: { name: "bounded", schema: s, strict: true } },
    });
    const text = r.choices[0].message.content;
    assert.equal(r.choices[0].finish_reason, "stop", `${JSON.stringify(s)}: ${text}`);
    assert.ok(validate(JSON.parse(text)), `${JSON.stringify(s)}: ${text} ${JSON.stringify(validate.errors)}`);
  }
});

test("json_schema streamed: the deltas assemble to JSON that validates", async () => {
  const validate = new Ajv({ strict: false }).compile(schema);
  const stream = await client.chat.completions.create({
    model: "tiny-dsv3", messages, temperature: 1, seed: 99, max_tokens: 600, stream: true,
    response_format: { type: "json_schema", json_schema: { name: "city", schema } },
  });
  let text = "", finish = null;
  for await (const chunk of stream) {
    for (const ch of chunk.choices) {
      text += ch.delta?.content ?? "";
      finish = ch.finish_reason ?? finish;
    }
  }
  assert.equal(finish, "stop", text);
  assert.ok(validate(JSON.parse(text)), text);
});

test("json_object: the output parses as a JSON object", async () => {
  let finished = 0;
  for (let seed = 0; seed < 5; ++seed) {
    const r = await client.chat.completions.create({
      model: "tiny-dsv3", messages, temperature: 1, seed, max_tokens: 1500, response_format: { type: "json_object" },
    });
    const c = r.choices[0];
    // Free keys and strings have no length bound: random weights may run out of tokens inside one (on this model
    // 1 seed in 8 does at 1500 tokens); those that stop must parse.
    if (c.finish_reason !== "stop") continue;
    ++finished;
    const v = JSON.parse(c.message.content);
    assert.equal(typeof v, "object", c.message.content);
    assert.ok(v !== null && !Array.isArray(v), c.message.content);
  }
  assert.ok(finished >= 4, `only ${finished} of 5 json_object samples finished`);
});

test("bad response_format and schemas are 400s naming the problem; the server keeps serving", async () => {
  const cases = [
    [{ type: "bogus" }, "response_format.type", /bogus/],
    [{ type: "json_schema", json_schema: { name: "x", schema: { type: "string", pattern: "^a" } } },
      "response_format.json_schema.schema", /'pattern'/],
    [{ type: "json_schema", json_schema: { name: "x", schema: { type: "object", properties: { a: { type: 5 } } } } },
      "response_format.json_schema.schema", /#\/properties\/a/],
    [{ type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/$defs/missing" } } },
      "response_format.json_schema.schema", /does not resolve/],
    [{ type: "json_schema", json_schema: { schema: {} } }, "response_format.json_schema.name", /name/],
    // Bounds no 15-significant-digit number meets are refused, not relaxed.
    [{ type: "json_schema", json_schema: { name: "x", schema: { type: "number", minimum: 1e20 } } },
      "response_format.json_schema.schema", /minimum.*no number|no number.*minimum/],
  ];
  for (const [response_format, param, message] of cases) {
    await assert.rejects(
      client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 4, response_format }),
      (e) => {
        assert.equal(e.status, 400, JSON.stringify(response_format));
        assert.equal(e.param, param);
        assert.match(e.message, message);
        return true;
      });
  }
  const ok = await client.chat.completions.create({ model: "tiny-dsv3", messages, max_tokens: 3 });
  assert.equal(ok.choices[0].finish_reason, "length");
});
