// lumenlm playground: plain JavaScript, no build step, requests only to this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: "lumenlm", info: null, chats: [], current: 0, abort: null, key: sessionStorage.getItem("lumenlm.key") || "" };

// ---------------------------------------------------------------- server access
function showStatus(message) {
  const box = $("status");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (state.key) headers.Authorization = "Bearer " + state.key;
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    showStatus("Cannot reach the server (" + location.origin + "): is lumenlm serve still running?");
    throw err;
  }
  if (resp.status === 401) {
    $("key-form").hidden = false;
    $("api-key").focus();
    showStatus("This server needs an API key: enter it above.");
    throw new Error("API key needed");
  }
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
    showStatus("Request failed: " + message);
    throw new Error(message);
  }
  showStatus("");
  return resp;
}

async function* sseEvents(resp, signal) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!block.startsWith("data: ")) continue;
        const data = block.slice(6);
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj.error) { showStatus("Generation failed: " + obj.error.message); return; }
        yield obj;
      }
    }
  } finally {
    if (signal && signal.aborted) reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------- tabs
const tabs = ["chat", "complete", "model"];
function selectTab(name, focus) {
  for (const t of tabs) {
    const on = t === name;
    $("tab-" + t).setAttribute("aria-selected", String(on));
    $("tab-" + t).tabIndex = on ? 0 : -1;
    $("view-" + t).hidden = !on;
  }
  if (focus) $("tab-" + name).focus();
  if (name === "model" && !$("inspect-text").dataset.touched) {
    const last = currentChat().messages.slice(-1)[0];
    if (last) $("inspect-text").value = last.content.slice(0, 400);
  }
}
for (const t of tabs) {
  $("tab-" + t).addEventListener("click", () => selectTab(t, false));
  $("tab-" + t).addEventListener("keydown", (e) => {
    const i = tabs.indexOf(t);
    if (e.key === "ArrowRight") selectTab(tabs[(i + 1) % tabs.length], true);
    if (e.key === "ArrowLeft") selectTab(tabs[(i + tabs.length - 1) % tabs.length], true);
  });
}

// ---------------------------------------------------------------- chat
function storageKey() { return "lumenlm.chats." + state.model; }
function loadChats() {
  try { state.chats = JSON.parse(localStorage.getItem(storageKey()) || "[]"); } catch (_) { state.chats = []; }
  if (!Array.isArray(state.chats) || !state.chats.length) state.chats = [{ title: "New chat", messages: [] }];
  state.current = Math.min(Number(localStorage.getItem(storageKey() + ".current") || 0), state.chats.length - 1);
}
function saveChats() {
  localStorage.setItem(storageKey(), JSON.stringify(state.chats));
  localStorage.setItem(storageKey() + ".current", String(state.current));
}
function currentChat() { return state.chats[state.current]; }

function renderConversations() {
  const sel = $("conversations");
  sel.replaceChildren(...state.chats.map((c, i) => new Option(c.title || "Chat " + (i + 1), String(i))));
  sel.value = String(state.current);
}
function messageItem(role, content) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "role";
  who.textContent = role === "user" ? "You" : "Model";
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = content;
  li.append(who, body);
  return li;
}
function renderMessages() {
  $("messages").replaceChildren(...currentChat().messages.map((m) => messageItem(m.role, m.content)));
  $("regenerate").disabled = !currentChat().messages.some((m) => m.role === "assistant") || !!state.abort;
}
function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("regenerate").disabled = busy || !currentChat().messages.some((m) => m.role === "assistant");
}

async function streamReply() {
  const chat = currentChat();
  const reply = { role: "assistant", content: "" };
  chat.messages.push(reply);
  const item = messageItem("assistant", "");
  item.setAttribute("aria-busy", "true");
  $("messages").append(item);
  const body = item.querySelector(".content");
  state.abort = new AbortController();
  setBusy(true);
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST",
      signal: state.abort.signal,
      body: JSON.stringify({
        model: state.model,
        messages: chat.messages.slice(0, -1),
        stream: true,
        temperature: Number($("chat-temp").value),
        max_tokens: Number($("chat-max").value),
      }),
    });
    for await (const chunk of sseEvents(resp, state.abort.signal)) {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        reply.content += delta.content;
        body.textContent = reply.content;
        item.scrollIntoView({ block: "end" });
      }
    }
  } catch (err) {
    if (err.name !== "AbortError" && !reply.content) item.classList.add("failed");
  } finally {
    item.removeAttribute("aria-busy");
    state.abort = null;
    if (!reply.content) { chat.messages.pop(); item.remove(); }
    setBusy(false);
    saveChats();
    $("chat-input").focus();
  }
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.abort) return;
  const chat = currentChat();
  if (!chat.messages.length) { chat.title = text.slice(0, 40); renderConversations(); }
  chat.messages.push({ role: "user", content: text });
  $("messages").append(messageItem("user", text));
  $("chat-input").value = "";
  saveChats();
  streamReply();
});
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (state.abort) state.abort.abort(); });
$("regenerate").addEventListener("click", () => {
  const msgs = currentChat().messages;
  while (msgs.length && msgs[msgs.length - 1].role === "assistant") msgs.pop();
  renderMessages();
  if (msgs.length) streamReply();
});
$("new-chat").addEventListener("click", () => {
  if (state.abort) state.abort.abort();
  state.chats.unshift({ title: "New chat", messages: [] });
  state.current = 0;
  saveChats();
  renderConversations();
  renderMessages();
  $("chat-input").focus();
});
$("conversations").addEventListener("change", (e) => {
  if (state.abort) state.abort.abort();
  state.current = Number(e.target.value);
  saveChats();
  renderMessages();
});

// ---------------------------------------------------------------- completion
$("complete-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {
    model: state.model,
    prompt: $("prompt").value,
    n: Number($("c-n").value),
    temperature: Number($("c-temp").value),
    top_k: Number($("c-topk").value),
    top_p: Number($("c-topp").value),
    min_p: Number($("c-minp").value),
    max_tokens: Number($("c-max").value),
  };
  if ($("c-seed").value !== "") body.seed = Number($("c-seed").value);
  $("complete").disabled = true;
  $("samples").setAttribute("aria-busy", "true");
  try {
    const data = await (await api("/v1/completions", { method: "POST", body: JSON.stringify(body) })).json();
    $("samples").replaceChildren(...data.choices.map((c) => {
      const art = document.createElement("article");
      const h = document.createElement("h3");
      h.textContent = "Sample " + (c.index + 1) + " (" + c.finish_reason + ")";
      const p = document.createElement("div");
      const b = document.createElement("strong");
      b.textContent = body.prompt;
      p.append(b, document.createTextNode(c.text));
      art.append(h, p);
      return art;
    }));
  } catch (_) { /* shown in the status box */ } finally {
    $("complete").disabled = false;
    $("samples").removeAttribute("aria-busy");
  }
});

// ---------------------------------------------------------------- model view
function renderCard(markdown) {
  // A small, safe Markdown subset: headings, lists, code blocks, paragraphs (text only).
  const out = [];
  let para = [], list = null, code = null;
  const flush = () => {
    if (para.length) { const p = document.createElement("p"); p.textContent = para.join(" "); out.push(p); para = []; }
    list = null;
  };
  for (const line of markdown.split("\n")) {
    if (code) {
      if (line.startsWith("```")) { code = null; continue; }
      code.textContent += line + "\n";
      continue;
    }
    if (line.startsWith("```")) { flush(); code = document.createElement("pre"); out.push(code); continue; }
    const h = /^(#{1,6})\s+(.*)/.exec(line);
    const li = /^\s*[-*]\s+(.*)/.exec(line);
    if (h) { flush(); const el = document.createElement("h" + Math.min(6, h[1].length + 2)); el.textContent = h[2]; out.push(el); }
    else if (li) {
      if (para.length) flush();
      if (!list) { list = document.createElement("ul"); out.push(list); }
      const item = document.createElement("li"); item.textContent = li[1]; list.append(item);
    } else if (!line.trim()) flush();
    else { list = null; para.push(line.trim()); }
  }
  flush();
  $("card").replaceChildren(...(out.length ? out : [document.createTextNode("No model card (README.md) found beside this model.")]));
}

function renderInfo(info) {
  state.info = info;
  $("model-id").textContent = info.id;
  document.title = info.id + " · lumenlm playground";
  $("param-count").textContent = info.parameters.toLocaleString("en-US") + " (" + info.parameters + ")";
  const rows = Object.entries(info.config).filter(([, v]) => v !== null && typeof v !== "object");
  $("arch").replaceChildren($("arch").querySelector("caption") || document.createElement("caption"),
    ...rows.map(([k, v]) => { const tr = document.createElement("tr"); const th = document.createElement("th"); th.textContent = k; const td = document.createElement("td"); td.textContent = String(v); tr.append(th, td); return tr; }));
  $("template").textContent = JSON.stringify(info.template, null, 2);
  renderCard(info.card || "");
}

let inspected = null;
function drawAttention() {
  if (!inspected) return;
  const att = inspected.attention;
  const m = att.patterns[Number($("att-layer").value)][Number($("att-head").value)];
  const n = m.length, canvas = $("attention"), cell = Math.max(2, Math.floor(360 / n));
  canvas.width = canvas.height = cell * n;
  const ctx = canvas.getContext("2d");
  for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
    const v = m[q][k];
    const shade = Math.round(255 * (1 - Math.sqrt(v)));
    ctx.fillStyle = "rgb(" + shade + "," + shade + ",255)";
    ctx.fillRect(k * cell, q * cell, cell, cell);
  }
  canvas.dataset.drawn = "1";
  canvas.setAttribute("aria-label", "Attention map, layer " + $("att-layer").value + " head " + $("att-head").value + ", " + n + " tokens");
}
function options(sel, n, label) { sel.replaceChildren(...Array.from({ length: n }, (_, i) => new Option(label + " " + i, String(i)))); }

$("inspect-text").addEventListener("input", (e) => { e.target.dataset.touched = "1"; });
$("inspect-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("inspect").disabled = true;
  try {
    inspected = await (await api("/ui/inspect", { method: "POST", body: JSON.stringify({ text: $("inspect-text").value }) })).json();
    const att = inspected.attention;
    options($("att-layer"), att.n_layers, "layer");
    options($("att-head"), att.n_heads, "head");
    drawAttention();
    const tl = inspected.token_loss, hi = Math.max(1e-6, ...tl.losses.filter((x) => x !== null));
    $("loss").replaceChildren(...tl.tokens.map((t, i) => {
      const s = document.createElement("span");
      const l = tl.losses[i];
      s.textContent = t;
      s.title = l === null ? "first token" : "loss " + l.toFixed(3);
      s.style.background = l === null ? "transparent" : "rgba(220,60,30," + (0.1 + 0.8 * l / hi).toFixed(2) + ")";
      return s;
    }), document.createTextNode("  (mean loss " + (tl.mean_loss === null ? "n/a" : tl.mean_loss.toFixed(3)) + ")"));
    const lens = inspected.logit_lens;
    const head = document.createElement("tr");
    head.append(...["layer", ...lens.tokens].map((t) => { const th = document.createElement("th"); th.textContent = t; return th; }));
    $("lens").replaceChildren(head, ...lens.layers.map((name, li) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.textContent = name; tr.append(th);
      for (const pos of lens.top[li]) { const td = document.createElement("td"); td.textContent = pos[0].token; td.title = "p=" + pos[0].prob; tr.append(td); }
      return tr;
    }));
    $("inspect-out").hidden = false;
  } catch (_) { /* shown in the status box */ } finally { $("inspect").disabled = false; }
});
$("att-layer").addEventListener("change", drawAttention);
$("att-head").addEventListener("change", drawAttention);

// ---------------------------------------------------------------- start
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("lumenlm.key", state.key);
  $("key-form").hidden = true;
  start();
});

async function start() {
  try {
    const models = await (await api("/v1/models")).json();
    state.model = models.data[0].id;
    loadChats();
    renderConversations();
    renderMessages();
    renderInfo(await (await api("/ui/info")).json());
  } catch (_) { /* shown in the status box */ }
}
loadChats();
renderConversations();
renderMessages();
selectTab("chat", false);
start();
