// Starts and stops a `moe serve` on a free loopback port (--port 0; the bound port is read from its stdout).
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export const MOE_BIN = process.env.MOE_BIN || "build/src/cli/moe";
export const MODEL = process.env.MOE_MODEL || "models/tiny-dsv3";

export function tempDir(prefix = "moe-test-") {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export async function startServer(args = [], env = {}, opts = {}) {
  const host = args.includes("--host") ? [] : ["--host", "127.0.0.1"];  // a test may bind elsewhere
  const proc = spawn(MOE_BIN, ["serve", "--model", MODEL, ...host, "--port", "0", "--threads", "2", ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "", err = "";
  proc.stderr.on("data", (d) => { err += d; });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("moe serve did not start:\n" + out + err)), 60000);
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`moe serve exited with ${code}:\n${out}${err}`)); });
  });
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  // The port opens before the model is loaded (/health is a 503 "loading" until then): wait until it is ready,
  // unless the test watches the loading itself.
  if (!opts.loading) {
    const end = Date.now() + 60000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`moe serve exited with ${proc.exitCode}:\n${out}${err}`);
      // (bounded: a poll the server never answers fails here, not as a test file that hangs until ctest's timeout)
      const r = await fetch(url.replace("0.0.0.0", "127.0.0.1") + "/health", { signal: AbortSignal.timeout(10000) })
        .catch((e) => { if (e.name === "TimeoutError") throw new Error("GET /health went unanswered for 10 s:\n" + out + err); return null; });
      if (r?.status === 200) break;
      if (Date.now() > end) throw new Error("moe serve did not become ready:\n" + out + err);
      await new Promise((res) => setTimeout(res, 20));
    }
  }
  return {
    url,
    proc,
    stderr: () => err,
    async stop(signal = "SIGTERM") {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill(signal);
      return exited;
    },
  };
}

// Parses Prometheus text into { "name{labels}": value }.
export async function metrics(url) {
  const text = await (await fetch(url + "/metrics")).text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export async function waitFor(fn, timeoutMs = 20000, what = "condition") {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

// Reads an SSE response body into its parsed `data:` events ("[DONE]" kept as the string).
export async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const events = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let pos;
    while ((pos = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, pos);
      buf = buf.slice(pos + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (!line.startsWith("data: ")) throw new Error("unexpected SSE line: " + line);
        const data = line.slice(6);
        const ev = data === "[DONE]" ? data : JSON.parse(data);
        events.push(ev);
        if (onEvent && onEvent(ev, reader) === false) return events;
      }
    }
  }
  if (buf.trim()) throw new Error("unterminated SSE event: " + buf);
  return events;
}
