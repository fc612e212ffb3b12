// moe.cpp chat page: conversations live in this browser (localStorage); answers stream from
// /v1/chat/completions and are rendered with the small Markdown renderer below (no third-party code).
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  load(key, fallback) { try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); } catch { return fallback; } },
  save(key, value) { localStorage.setItem(key, JSON.stringify(value)); },
};

// ---------------------------------------------------------------- Markdown
function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
function safeUrl(url) {
  return /^(https?:|mailto:)/i.test(url.trim()) ? url.trim() : "#";
}
// Inline markup of one block of text: `code`, **bold**, *italic*, _italic_, ~~strike~~, [links](url).
function inline(text) {
  const parts = text.split(/(`+[^`]*`+)/);
  return parts.map((part, i) => {
    if (i % 2 === 1) return "<code>" + escapeHtml(part.replace(/^`+|`+$/g, "")) + "</code>";
    let s = escapeHtml(part);
    s = s.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (_, t, u) => `<a href="${escapeHtml(safeUrl(u))}" target="_blank" rel="noopener noreferrer">${t}</a>`);
    s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/__([^_]+)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>");
    s = s.replace(/(^|\W)_([^_\s][^_]*)_(?=\W|$)/g, "$1<em>$2</em>");
    s = s.replace(/~~([^~]+)~~/g, "<del>$1</del>");
    return s;
  }).join("");
}
function renderBlocks(text) {
  const lines = text.split("\n");
  let html = "", para = [], list = null, quote = [];
  const flushPara = () => { if (para.length) { html += "<p>" + para.map(inline).join("<br>") + "</p>"; para = []; } };
  const flushList = () => { if (list) { html += `<${list.tag}>` + list.items.map((it) => "<li>" + inline(it) + "</li>").join("") + `</${list.tag}>`; list = null; } };
  const flushQuote = () => { if (quote.length) { html += "<blockquote>" + renderBlocks(quote.join("\n")) + "</blockquote>"; quote = []; } };
  const flushAll = () => { flushPara(); flushList(); flushQuote(); };
  for (const line of lines) {
    let m;
    if (/^\s*$/.test(line)) { flushAll(); continue; }
    if ((m = /^>\s?(.*)$/.exec(line))) { flushPara(); flushList(); quote.push(m[1]); continue; }
    flushQuote();
    if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) { flushAll(); html += `<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`; continue; }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flushAll(); html += "<hr>"; continue; }
    if ((m = /^\s*[-*+]\s+(.*)$/.exec(line))) { flushPara(); if (!list || list.tag !== "ul") { flushList(); list = { tag: "ul", items: [] }; } list.items.push(m[1]); continue; }
    if ((m = /^\s*\d+[.)]\s+(.*)$/.exec(line))) { flushPara(); if (!list || list.tag !== "ol") { flushList(); list = { tag: "ol", items: [] }; } list.items.push(m[1]); continue; }
    if (list && /^\s{2,}\S/.test(line)) { list.items[list.items.length - 1] += " " + line.trim(); continue; }
    flushList();
    para.push(line);
  }
  flushAll();
  return html;
}
// Fenced code blocks first (an unterminated fence, as while streaming, runs to the end), then the blocks between.
function renderMarkdown(text) {
  let html = "", rest = text;
  const fence = /^(```|~~~)[ \t]*([\w+#.-]*)[^\n]*\n/m;
  for (;;) {
    const m = fence.exec(rest);
    if (!m) { html += renderBlocks(rest); break; }
    html += renderBlocks(rest.slice(0, m.index));
    const body = rest.slice(m.index + m[0].length);
    const close = new RegExp("^" + m[1] + "[ \\t]*$", "m").exec(body);
    const code = close ? body.slice(0, close.index).replace(/\n$/, "") : body;
    const lang = m[2] ? ` class="language-${escapeHtml(m[2])}"` : "";
    html += `<pre><code${lang}>${escapeHtml(code)}</code></pre>`;
    if (!close) break;
    rest = body.slice(close.index + close[0].length).replace(/^\n/, "");
  }
  return html;
}

// ---------------------------------------------------------------- API
let apiKey = store.load("moe.apiKey", "");
let modelName = "";
let keyPrompt = null;

function askForKey() {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dlg = $("key-dialog");
      $("key-input").value = "";
      dlg.addEventListener("close", () => {
        apiKey = $("key-input").value.trim();
        store.save("moe.apiKey", apiKey);
        $("forget-key").hidden = !apiKey;
        keyPrompt = null;
        resolve();
      }, { once: true });
      dlg.showModal();
    });
  }
  return keyPrompt;
}

async function api(path, options = {}, retry = true) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401 && retry) {
    await askForKey();
    return api(path, options, true);
  }
  return res;
}

async function errorText(res) {
  try { const j = await res.json(); return (j.error && j.error.message) || res.statusText; } catch { return res.statusText || ("HTTP " + res.status); }
}

// ---------------------------------------------------------------- conversations
let conversations = store.load("moe.conversations", []);
let activeId = store.load("moe.active", null);
let streaming = null;  // { controller, conv, index }

function save() { store.save("moe.conversations", conversations); store.save("moe.active", activeId); }
function active() { return conversations.find((c) => c.id === activeId); }
function newConversation() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 7), title: "New chat", messages: [] };
  conversations.unshift(c);
  activeId = c.id;
  save();
  return c;
}

function renderSidebar() {
  const ul = $("conversations");
  ul.textContent = "";
  for (const c of conversations) {
    const li = document.createElement("li");
    li.className = c.id === activeId ? "active" : "";
    const span = document.createElement("span");
    span.textContent = c.title;
    li.appendChild(span);
    const del = document.createElement("button");
    del.textContent = "×";
    del.title = "Delete conversation";
    del.onclick = (e) => {
      e.stopPropagation();
      if (streaming && streaming.conv === c) streaming.controller.abort();
      conversations = conversations.filter((x) => x !== c);
      if (activeId === c.id) activeId = conversations.length ? conversations[0].id : null;
      save(); renderAll();
    };
    li.appendChild(del);
    li.onclick = () => { if (streaming) return; activeId = c.id; save(); renderAll(); };
    ul.appendChild(li);
  }
}

function actionButton(label, title, testid, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.title = title;
  b.dataset.testid = testid;
  b.onclick = onclick;
  return b;
}

function fillAssistant(div, msg) {
  div.textContent = "";
  if (msg.reasoning) {
    const det = document.createElement("details");
    det.className = "thinking";
    det.open = !!msg.thinkingOpen;
    det.ontoggle = () => { msg.thinkingOpen = det.open; };
    const sum = document.createElement("summary");
    sum.textContent = msg.content || !(streaming && streaming.msg === msg) ? "Thought process" : "Thinking…";
    const body = document.createElement("div");
    body.className = "thinking-body";
    body.textContent = msg.reasoning;
    det.append(sum, body);
    div.appendChild(det);
  }
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.innerHTML = renderMarkdown(msg.content || "");
  if (streaming && streaming.msg === msg) answer.classList.add("cursor");
  div.appendChild(answer);
  if (msg.error) {
    const err = document.createElement("div");
    err.className = "message error";
    err.textContent = msg.error;
    div.appendChild(err);
  }
  if (msg.stopped) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = "(stopped)";
    div.appendChild(note);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const copy = actionButton("Copy", "Copy the answer", "copy", async () => {
    await navigator.clipboard.writeText(msg.content || "");
    copy.textContent = "Copied";
    copy.classList.add("done");
    setTimeout(() => { copy.textContent = "Copy"; copy.classList.remove("done"); }, 1500);
  });
  const up = actionButton("▲ Good", "Good answer", "thumbs-up", () => rate(msg, 1, up));
  const down = actionButton("▼ Bad", "Bad answer", "thumbs-down", () => rate(msg, -1, down));
  if (msg.rating === 1) up.classList.add("done");
  if (msg.rating === -1) down.classList.add("done");
  const regen = actionButton("↻ Regenerate", "A fresh answer to the same conversation", "regenerate", () => regenerate(msg));
  actions.append(copy, up, down, regen);
  div.appendChild(actions);
}

function renderMessages() {
  const box = $("messages");
  box.textContent = "";
  const c = active();
  if (!c) return;
  for (const msg of c.messages) {
    const div = document.createElement("div");
    div.className = "message " + msg.role;
    if (msg.role === "assistant") {
      if (streaming && streaming.msg === msg) div.classList.add("streaming");
      fillAssistant(div, msg);
      msg.el = div;
    } else {
      div.textContent = msg.content;
    }
    box.appendChild(div);
  }
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderSidebar();
  renderMessages();
  $("send").hidden = !!streaming;
  $("stop").hidden = !streaming;
}

function plainMessages(list) { return list.map((m) => ({ role: m.role, content: m.content })); }

async function rate(msg, rating, button) {
  const c = active();
  const idx = c.messages.indexOf(msg);
  const res = await api("/v1/feedback", {
    method: "POST",
    body: JSON.stringify({ conversation: plainMessages(c.messages.slice(0, idx)), answer: msg.content, rating, model: modelName }),
  });
  if (!res.ok) { setStatus("Feedback not stored: " + (await errorText(res))); return; }
  msg.rating = rating;
  save();
  renderMessages();
  setStatus(rating > 0 ? "Thanks for the thumbs up" : "Thanks for the feedback");
}

function setStatus(text) { $("status").textContent = text; }

// ---------------------------------------------------------------- streaming
async function generate(conv, msg) {
  const idx = conv.messages.indexOf(msg);
  const controller = new AbortController();
  streaming = { controller, conv, msg };
  let renderPending = false;
  const scheduleRender = () => {  // at most one render of the growing answer per frame
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      if (streaming && streaming.msg === msg && msg.el) {
        fillAssistant(msg.el, msg);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
  };
  renderAll();
  const body = {
    model: modelName || undefined,
    messages: plainMessages(conv.messages.slice(0, idx)),
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value) || undefined,
  };
  try {
    const res = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw new Error(await errorText(res));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "", done = false;
    while (!done) {
      const r = await reader.read();
      if (r.done) break;
      buf += decoder.decode(r.value, { stream: true });
      let pos;
      while ((pos = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, pos);
        buf = buf.slice(pos + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;  // ": keep-alive" comments
          const data = line.slice(6);
          if (data === "[DONE]") { done = true; break; }
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          if (j.usage) setStatus(`${j.usage.completion_tokens} tokens`);
          for (const ch of j.choices || []) {
            const d = ch.delta || {};
            if (d.reasoning_content) msg.reasoning = (msg.reasoning || "") + d.reasoning_content;
            if (d.content) msg.content += d.content;
            if (ch.finish_reason) msg.finish = ch.finish_reason;
          }
        }
        scheduleRender();
      }
      // Yield to the event loop: a fast server would otherwise keep this loop busy and the page would not paint.
      await new Promise((r) => setTimeout(r, 0));
    }
  } catch (e) {
    if (e.name === "AbortError") msg.stopped = true;
    else msg.error = String(e.message || e);
  } finally {
    streaming = null;
    save();
    renderAll();
  }
}

async function send(text) {
  if (streaming || !text.trim()) return;
  const conv = active() || newConversation();
  if (!conv.messages.length) conv.title = text.trim().slice(0, 40);
  conv.messages.push({ role: "user", content: text });
  const msg = { role: "assistant", content: "" };
  conv.messages.push(msg);
  save();
  await generate(conv, msg);
}

async function regenerate(msg) {
  if (streaming) return;
  const conv = active();
  const idx = conv.messages.indexOf(msg);
  if (idx < 0) return;
  // A fresh answer to the same conversation: this answer (and anything after it) is replaced.
  conv.messages.splice(idx);
  const fresh = { role: "assistant", content: "" };
  conv.messages.push(fresh);
  save();
  await generate(conv, fresh);
}

// ---------------------------------------------------------------- wiring
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").onclick = () => { if (streaming) streaming.controller.abort(); };
$("new-chat").onclick = () => { if (streaming) return; newConversation(); renderAll(); };
$("forget-key").onclick = () => { apiKey = ""; store.save("moe.apiKey", ""); $("forget-key").hidden = true; };
$("forget-key").hidden = !apiKey;

(async function init() {
  renderAll();
  try {
    const res = await api("/v1/models");
    if (res.ok) {
      const j = await res.json();
      modelName = j.data[0].id;
      $("model-name").textContent = "moe.cpp · " + modelName;
      document.body.dataset.ready = "1";
    } else {
      setStatus(await errorText(res));
    }
  } catch (e) { setStatus(String(e)); }
})();

