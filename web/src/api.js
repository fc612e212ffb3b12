// Calls to the server's API with the API key (asked for once, on the first 401, and kept in localStorage).
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
let apiKey = store.load("moe.apiKey", "");
let keyPrompt = null;

export function hasKey() { return !!apiKey; }
export function forgetKey() { apiKey = ""; store.save("moe.apiKey", ""); }

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

export async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) {
    await askForKey();
    return api(path, options);
  }
  return res;
}

export async function errorText(res) {
  try {
    const j = await res.json();
    return (j.error && j.error.message) || res.statusText;
  } catch {
    return res.statusText || "HTTP " + res.status;
  }
}
