// Waits until the server has loaded its model: GET /health answers 503 {"status":"loading","progress":0.42}
// while loading and 200 {"status":"ok"} when ready (a server that loads before listening answers 200 at once).
// onProgress(fraction or null) is called for every loading answer; a refused connection is retried too.
export async function waitUntilReady(onProgress, intervalMs = 500) {
  for (;;) {
    let loading = false, progress = null;
    try {
      const res = await fetch("/health", { cache: "no-store" });
      if (res.ok) return;
      const j = await res.json().catch(() => ({}));
      loading = res.status === 503 || j.status === "loading";
      if (typeof j.progress === "number" && isFinite(j.progress)) progress = Math.min(1, Math.max(0, j.progress));
      if (!loading) return;  // another error: let the API calls report it
    } catch {
      loading = true;  // not listening yet (or restarting)
    }
    onProgress(progress);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
