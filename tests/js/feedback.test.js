// Feedback is acknowledged only after its SQLite commit: kill -9 of the server loses no acknowledged rating.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { startServer, tempDir, MOE_BIN } from "./server.js";

function exportRows(db) {
  const out = execFileSync(MOE_BIN, ["feedback", "export", "--db", db], { encoding: "utf8", maxBuffer: 1 << 28 });
  return out.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

test("ratings survive kill -9; export gives chosen/rejected pairs", async () => {
  const db = path.join(tempDir(), "feedback.db");
  const srv = await startServer(["--feedback-db", db]);
  const conv = [{ role: "user", content: "What is 2+2?" }];
  const acked = new Set();
  let stop = false;
  // Clients rate as fast as they can; the server is killed while ratings are in flight.
  const clients = Array.from({ length: 8 }, async (_, c) => {
    for (let i = 0; !stop; i++) {
      const answer = `answer ${c}-${i}`;
      try {
        const r = await fetch(srv.url + "/v1/feedback", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ conversation: conv, answer, rating: i % 2 ? "down" : "up" }),
        });
        if (r.status === 200) {
          const j = await r.json();
          assert.equal(j.stored, true);
          acked.add(answer);
        }
      } catch { return; }  // connection refused/reset once the server is gone
    }
  });
  await new Promise((r) => setTimeout(r, 1500));
  srv.proc.kill("SIGKILL");
  stop = true;
  await Promise.all(clients);
  await srv.stop();
  assert.ok(acked.size > 10, `only ${acked.size} ratings acknowledged`);
  console.log(`# ${acked.size} ratings acknowledged before kill -9`);
  const rows = exportRows(db);
  const stored = new Set(rows.filter((r) => r.type === "rating").map((r) => r.answer));
  for (const a of acked) assert.ok(stored.has(a), `acknowledged rating ${a} was lost`);

  // Pairs: a prompt with both ratings.
  const db2 = path.join(tempDir(), "pairs.db");
  const s2 = await startServer(["--feedback-db", db2]);
  const post = (answer, rating, conversation = conv) => fetch(s2.url + "/v1/feedback", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ conversation, answer, rating, model: "tiny-dsv3" }),
  }).then((r) => r.json());
  await post("4", "up");
  await post("5", "down");
  await post("lonely", "up", [{ role: "user", content: "other" }]);
  const bad = await fetch(s2.url + "/v1/feedback", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ conversation: conv, answer: "x", rating: "meh" }) });
  assert.equal(bad.status, 400);
  await s2.stop();
  const r2 = exportRows(db2);
  assert.equal(r2.filter((r) => r.type === "rating").length, 3);
  const pairs = r2.filter((r) => r.type === "pair");
  assert.equal(pairs.length, 1);
  assert.deepEqual(pairs[0].prompt, conv);
  assert.equal(pairs[0].chosen, "4");
  assert.equal(pairs[0].rejected, "5");
});
