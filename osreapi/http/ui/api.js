// Talking to the server: the token (session storage only), JSON requests, and Server-Sent Events
// read through fetch() so that the token travels in the Authorization header (EventSource cannot
// send headers, and a token in a URL would land in logs).
import { lang, t } from "./i18n.js";

const TOKEN_KEY = "osreapi.token";
let asking = null; // one prompt at a time, whatever number of requests wait for it

function headers(extra = {}) {
  const out = { "Accept-Language": lang(), ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

function askToken() {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog");
      const input = document.getElementById("token-input");
      dialog.querySelector("[data-t=token_prompt]").textContent = t("token_prompt");
      input.value = "";
      dialog.addEventListener("close", () => {
        if (input.value.trim()) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        asking = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return asking;
}

// fetch, asking for the token when the server answers 401 (then once more).
async function authorizedFetch(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...init, headers: headers(init.headers), credentials: "omit" });
    if (response.status !== 401 || attempt >= 3) return response;
    await askToken();
  }
}

// { status, body } where body is the parsed envelope (or null).
export async function call(method, path, body) {
  const init = { method };
  if (body !== undefined) { init.body = body; init.headers = { "Content-Type": "application/json" }; }
  const response = await authorizedFetch(path, init);
  let parsed = null;
  try { parsed = await response.json(); } catch { parsed = null; }
  return { status: response.status, body: parsed };
}

// Follow an SSE stream; resumes after a dropped connection with Last-Event-ID.
// onEvent({event, id, data}); onState(connected: boolean). Returns a stop() function.
export function follow(path, { onEvent, onState = () => {}, lastEventId = null, until = () => false }) {
  const controller = new AbortController();
  let last = lastEventId;
  let stopped = false;
  const run = async () => {
    let delay = 500;
    while (!stopped) {
      try {
        const extra = { Accept: "text/event-stream" };
        if (last !== null) extra["Last-Event-ID"] = String(last);
        const response = await authorizedFetch(path, { headers: extra, signal: controller.signal, cache: "no-store" });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState(true);
        delay = 500;
        await readEvents(response.body, (event) => {
          if (event.id !== undefined) last = event.id;
          onEvent(event);
        });
        if (until()) { onState(false); return; }
      } catch (err) {
        if (stopped) return;
      }
      onState(false);
      if (stopped || until()) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  };
  run();
  return () => { stopped = true; controller.abort(); };
}

async function readEvents(body, deliver) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = parseBlock(block);
      if (event) deliver(event);
    }
  }
}

function parseBlock(block) {
  const event = { event: "message", data: [] };
  let seen = false;
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") { event.data.push(value); seen = true; }
    else if (name === "event") { event.event = value; seen = true; }
    else if (name === "id") event.id = value;
  }
  if (!seen) return null;
  event.data = event.data.join("\n");
  return event;
}
