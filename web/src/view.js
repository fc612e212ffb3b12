// Renders the conversation list and the messages of one conversation. Pure DOM building: what a click does is
// given by the `on` handlers (see main.js), so this file holds no state of its own.
import { renderMarkdown } from "./markdown.js";

function button(label, ariaLabel, testid, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-label", ariaLabel);
  b.title = ariaLabel;
  b.dataset.testid = testid;
  b.onclick = onclick;
  return b;
}

function note(cls, text) {
  const d = document.createElement("div");
  d.className = cls;
  d.textContent = text;
  return d;
}

// conversations: [{id, title}], on: { open(c), remove(c) }
export function renderConversationList(ul, conversations, activeId, on) {
  ul.textContent = "";
  for (const c of conversations) {
    const li = document.createElement("li");
    if (c.id === activeId) li.className = "active";
    const open = button(c.title, "Open conversation: " + c.title, "open-conversation", () => on.open(c));
    open.className = "conv-open";
    if (c.id === activeId) open.setAttribute("aria-current", "true");
    const del = button("×", "Delete conversation: " + c.title, "delete-conversation", () => on.remove(c));
    del.className = "conv-delete";
    li.append(open, del);
    ul.appendChild(li);
  }
}

// A failed turn (error, stopped, or nothing generated) gets no rating buttons: its text is not an answer.
export function isRatable(msg) { return !msg.error && !msg.stopped && !!msg.content; }

export function fillAssistant(div, msg, live, on) {
  div.textContent = "";
  if (msg.reasoning) {
    const det = document.createElement("details");
    det.className = "thinking";
    det.open = !!msg.thinkingOpen;
    det.ontoggle = () => { msg.thinkingOpen = det.open; };
    const sum = document.createElement("summary");
    sum.textContent = msg.content || !live ? "Thought process" : "Thinking…";
    const body = note("thinking-body", msg.reasoning);
    det.append(sum, body);
    div.appendChild(det);
  }
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.innerHTML = renderMarkdown(msg.content || "");
  if (live) answer.classList.add("cursor");
  div.appendChild(answer);
  if (msg.error) div.appendChild(note("message error", msg.error));
  if (msg.stopped) div.appendChild(note("note", "(stopped)"));
  if (msg.finish === "length") div.appendChild(note("note cut-off", "Cut off by the length limit (Max tokens)"));
  if (live) return;
  const actions = document.createElement("div");
  actions.className = "actions";
  if (msg.content) actions.append(button("Copy", "Copy the answer", "copy", (e) => on.copy(msg, e.currentTarget)));
  if (isRatable(msg)) {
    const up = button("▲ Good", "Good answer", "thumbs-up", () => on.rate(msg, 1));
    const down = button("▼ Bad", "Bad answer", "thumbs-down", () => on.rate(msg, -1));
    if (msg.rating === 1) up.classList.add("done");
    if (msg.rating === -1) down.classList.add("done");
    actions.append(up, down);
  }
  actions.append(button("↻ Regenerate", "A fresh answer to the same conversation", "regenerate", () => on.regenerate(msg)));
  if (msg.tokens) {
    const speed = msg.tps ? ` · ${msg.tps.toFixed(1)} tokens/s` : "";
    actions.append(note("speed", `${msg.tokens} tokens${speed}`));
  }
  div.appendChild(actions);
}

function fillUser(div, msg, editing, on) {
  div.textContent = "";
  if (editing) {
    const form = document.createElement("form");
    form.className = "edit";
    const area = document.createElement("textarea");
    area.value = msg.content;
    area.rows = Math.min(10, msg.content.split("\n").length + 1);
    area.setAttribute("aria-label", "Edit message");
    area.dataset.testid = "edit-text";
    const send = button("Save & send", "Save the edited message and send it again", "edit-send", () => on.resend(msg, area.value));
    const cancel = button("Cancel", "Cancel the edit", "edit-cancel", () => on.edit(null));
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); }
      if (e.key === "Escape") { e.stopPropagation(); cancel.click(); }
    });
    const row = document.createElement("div");
    row.className = "actions";
    row.append(send, cancel);
    form.append(area, row);
    form.onsubmit = (e) => e.preventDefault();
    div.appendChild(form);
    queueMicrotask(() => area.focus());
    return;
  }
  div.appendChild(note("text", msg.content));
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(button("✎ Edit", "Edit this message and send it again", "edit", () => on.edit(msg)));
  div.appendChild(actions);
}

// state: { conv, streamingMsg, editingMsg }; each message's element is kept on msg.el for streaming updates.
export function renderMessages(box, state, on) {
  box.textContent = "";
  if (!state.conv) return;
  for (const msg of state.conv.messages) {
    const div = document.createElement("div");
    div.className = "message " + msg.role;
    if (msg.role === "assistant") {
      const live = state.streamingMsg === msg;
      if (live) div.classList.add("streaming");
      fillAssistant(div, msg, live, on);
    } else {
      fillUser(div, msg, state.editingMsg === msg && !state.streamingMsg, on);
    }
    Object.defineProperty(msg, "el", { value: div, enumerable: false, configurable: true, writable: true });
    box.appendChild(div);
  }
}
