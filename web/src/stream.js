// Reads an OpenAI-style SSE stream of chat completion chunks. onChunk(choiceDelta, finishReason) per choice;
// returns { usage } from the final chunk (stream_options.include_usage). A `{"error":...}` event throws.
export async function readChatStream(res, onChunk, onUsage) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const r = await reader.read();
    if (r.done) return;
    buf += decoder.decode(r.value, { stream: true });
    let pos;
    while ((pos = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, pos);
      buf = buf.slice(pos + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;  // ": keep-alive" comments
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message);
        if (j.usage) onUsage(j.usage);
        for (const ch of j.choices || []) onChunk(ch.delta || {}, ch.finish_reason);
      }
    }
    // Yield to the event loop: a fast server would otherwise keep this loop busy and the page would not paint.
    await new Promise((r) => setTimeout(r, 0));
  }
}
