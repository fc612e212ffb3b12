// moe.cpp chat page: conversations live in this browser (localStorage); answers stream from /v1/chat/completions.
// This file holds the page's state and wires the controls; rendering is in view.js, Markdown in markdown.js.
import * as store from "./store.js";
import { api, errorText, forgetKey, hasKey } from "./api.js";
import { waitUntilReady } from "./health.js";
import { readChatStream } from "./stream.js";
import { renderConversationList, renderMessages, fillAssistant } from "./view.js";

const $ = (id) => document.getElementById(id);
let conversations = store.load("moe.conversations", []);
let activeId = store.load("moe.active", null);
let streaming = null;  // { controller, conv, msg } while an answer streams
let editingMsg = null;  // the user message being edited
let modelName = "";

// ---------------------------------------------------------------- settings (kept across reloads)
const settingIds = ["system-prompt", "temperature", "top-p", "max-tokens"];
const savedSettings = store.load("moe.settings", {});
for (const id of settingIds) {
  if (typeof savedSettings[id] === "string") $(id).value = savedSettings[id];
  $(id).addEventListener("change", () => {
    store.save("moe.settings", Object.fromEntries(settingIds.map((k) => [k, $(k).value])));
  });
}
function numberSetting(id) {
  const v = $(id).value.trim();
  return v === "" || !isFinite(Number(v)) ? undefined : Number(v);
}

// ---------------------------------------------------------------- conversations
function save() { store.save("moe.conversations", conversations); store.save("moe.active", activeId); }
function active() { return conversations.find((c) => c.id === activeId); }
function newConversation() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 7), title: "New chat", messages: [] };
  conversations.unshift(c);
  activeId = c.id;
  save();
  return c;
}
function setStatus(text) { $("status").textContent = text; }

const handlers = {
  open(c) { if (streaming) return; activeId = c.id; editingMsg = null; save(); showSidebar(false); renderAll(); },
  remove(c) {
    if (streaming && streaming.conv === c) streaming.controller.abort();
    conversations = conversations.filter((x) => x !== c);
    if (activeId === c.id) activeId = conversations.length ? conversations[0].id : null;
    save(); renderAll();
  },
  async copy(msg, b) {
    await navigator.clipboard.writeText(msg.content || "");
    flash(b, "Copied");
  },
  rate,
  regenerate,
  edit(msg) { if (streaming) return; editingMsg = msg; renderAll(); },
  resend,
};

function flash(b, text) {
  const old = b.textContent;
  b.textContent = text;
  b.classList.add("done");
  setTimeout(() => { b.textContent = old; b.classList.remove("done"); }, 1500);
}

function renderAll() {
  renderConversationList($("conversations"), conversations, activeId, handlers);
  renderMessages($("messages"), { conv: active(), streamingMsg: streaming?.msg, editingMsg }, handlers);
  $("messages").scrollTop = $("messages").scrollHeight;
  $("send").hidden = !!streaming;
  $("stop").hidden = !streaming;
  document.body.dataset.streaming = streaming ? "1" : "";
}

function plainMessages(list) { return list.map((m) => ({ role: m.role, content: m.content })); }

async function rate(msg, rating) {
  const c = active();
  const idx = c.messages.indexOf(msg);
  const res = await api("/v1/feedback", {
    method: "POST",
    body: JSON.stringify({ conversation: plainMessages(c.messages.slice(0, idx)), answer: msg.content, rating, model: modelName }),
  });
  if (!res.ok) { setStatus("Feedback not stored: " + (await errorText(res))); return; }
  msg.rating = rating;
  save();
  renderAll();
  setStatus(rating > 0 ? "Thanks for the thumbs up" : "Thanks for the feedback");
}

// ---------------------------------------------------------------- streaming
async function generate(conv, msg) {
  const idx = conv.messages.indexOf(msg);
  const controller = new AbortController();
  streaming = { controller, conv, msg };
  editingMsg = null;
  let renderPending = false;
  const scheduleRender = () => {  // at most one render of the growing answer per frame
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      if (streaming && streaming.msg === msg && msg.el) {
        fillAssistant(msg.el, msg, true, handlers);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
  };
  renderAll();
  const system = $("system-prompt").value.trim();
  const body = {
    model: modelName || undefined,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...plainMessages(conv.messages.slice(0, idx))],
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberSetting("temperature"),
    top_p: numberSetting("top-p"),
    max_tokens: numberSetting("max-tokens"),
  };
  // tokens/s of the answer: the tokens after the first over the time from the first to the last; when they all
  // arrive in one read (a loaded machine, a short answer), all tokens over the time since the response began.
  let start = 0, first = 0, last = 0, chunks = 0;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw new Error(await errorText(res));
    start = performance.now();
    await readChatStream(res, (d, finish) => {
      if (d.reasoning_content || d.content) {
        last = performance.now();
        if (!first) first = last;
        ++chunks;
      }
      if (d.reasoning_content) msg.reasoning = (msg.reasoning || "") + d.reasoning_content;
      if (d.content) msg.content += d.content;
      if (finish) msg.finish = finish;
      scheduleRender();
    }, (usage) => { msg.tokens = usage.completion_tokens; });
  } catch (e) {
    if (e.name === "AbortError") msg.stopped = true;
    else msg.error = String(e.message || e);
  } finally {
    const n = msg.tokens || chunks;
    if (n > 1 && last > first) msg.tps = (n - 1) / ((last - first) / 1000);
    else if (n > 0 && last > start && start) msg.tps = n / ((last - start) / 1000);
    if (!msg.tokens && chunks) msg.tokens = chunks;
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

// Edit and resend: the user message takes the new text; everything after it is dropped and answered afresh.
async function resend(msg, text) {
  if (streaming || !text.trim()) return;
  const conv = active();
  const idx = conv.messages.indexOf(msg);
  if (idx < 0) return;
  msg.content = text;
  conv.messages.splice(idx + 1);
  if (idx === 0) conv.title = text.trim().slice(0, 40);
  const fresh = { role: "assistant", content: "" };
  conv.messages.push(fresh);
  save();
  await generate(conv, fresh);
}

// ---------------------------------------------------------------- wiring
function showSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
}
$("menu").onclick = () => showSidebar(!document.body.classList.contains("sidebar-open"));
$("scrim").onclick = () => showSidebar(false);
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
// Escape stops a streaming answer (anywhere on the page), else closes the conversation list on a phone.
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (streaming) { e.preventDefault(); streaming.controller.abort(); } else showSidebar(false);
});
// Copy buttons of code blocks (rendered from Markdown, so one listener for all of them).
$("messages").addEventListener("click", async (e) => {
  const b = e.target.closest("button.copy-code");
  if (!b) return;
  const code = b.closest(".code-block")?.querySelector("pre code");
  if (!code) return;
  await navigator.clipboard.writeText(code.textContent);
  flash(b, "Copied");
});
$("new-chat").onclick = () => { if (streaming) return; newConversation(); showSidebar(false); renderAll(); };
$("forget-key").onclick = () => { forgetKey(); $("forget-key").hidden = true; };
$("forget-key").hidden = !hasKey();

(async function init() {
  renderAll();
  const loading = $("loading");
  await waitUntilReady((progress) => {
    loading.hidden = false;
    const bar = $("loading-progress");
    if (progress === null) bar.removeAttribute("value");
    else bar.value = progress;
    $("loading-text").textContent = progress === null ? "Loading the model…" : `Loading the model… ${Math.round(progress * 100)}%`;
    $("send").disabled = true;
  });
  loading.hidden = true;
  $("send").disabled = false;
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
