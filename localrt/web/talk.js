// The talk page: a Realtime session with localrt from the browser (OpenAI's GA event names; the beta
// names of audio and transcript deltas are accepted too).
//
// Hands-free: the microphone streams all the time and the server's VAD decides the turns. Press to talk:
// audio is sent only while the button (or the space bar) is held; release commits it and asks for a reply.
// Barge-in: when the user starts speaking (speech_started, or a press) playback stops at once and the
// assistant's item is truncated to what was actually played.
//
// Test hooks: window.localrtTalk (see `hooks` below).

import { Mic, toBase64 } from "./mic.js";
import { Player, RATE, fromBase64 } from "./player.js";

const $ = (id) => document.getElementById(id);

const hooks = {
  state: "idle",
  playedSamples: 0,
  userTranscripts: [],
  assistantTranscripts: [],
  lastLatencyMs: null,
  latencies: [],
  truncates: 0, // conversation.item.truncate sent
  truncated: 0, // conversation.item.truncated received
  lastTruncate: null, // {itemId, audioEndMs (played), receivedMs}
  lastTruncated: null, // the server's conversation.item.truncated
  sentSamples: 0,
  errors: [],
  events: {}, // count per server event type
  session: null,
  responseActive: false, // a response is being generated
};
window.localrtTalk = hooks;

let ws = null;
let ctx = null;
let mic = null;
let player = null;
let held = false; // press to talk: the button is down
let heldSamples = 0; // sent since the press
let turnEndedAt = null; // performance.now() of the end of the user's turn, until the first reply audio
const muted = new Set(); // assistant items cut by a barge-in: their late deltas are dropped
const entries = new Map(); // item id -> <li>

// --- UI helpers -------------------------------------------------------------------------------------------
function setState(state) {
  hooks.state = state;
  const el = $("state");
  el.dataset.state = state;
  el.textContent = state.replace("-", " ");
}

function showError(message) {
  hooks.errors.push(message);
  $("error").textContent = message;
}

function entry(itemId, role) {
  let li = entries.get(itemId);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    li.dataset.itemId = itemId;
    entries.set(itemId, li);
    $("transcript").append(li);
  }
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

// --- audio ------------------------------------------------------------------------------------------------
function onMicChunk(pcm, rms) {
  $("level").style.width = `${Math.min(100, rms * 400)}%`;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (mode() === "press" && !held) return;
  send({ type: "input_audio_buffer.append", audio: toBase64(pcm) });
  mic.sent(pcm.length);
  hooks.sentSamples += pcm.length;
  heldSamples += pcm.length;
}

// Barge-in: stop playback now, and truncate the assistant's item to what was heard. With server VAD the
// server cancels the response itself (interrupt_response); a press or a typed message cancels it here.
function bargeIn(cancel) {
  if (!player) return;
  const stopped = player.stop();
  if (cancel && hooks.responseActive) send({ type: "response.cancel" });
  if (stopped === null) return;
  if (stopped.cut || hooks.responseActive) {
    muted.add(stopped.itemId);
    const ms = (samples) => Math.floor((samples * 1000) / RATE);
    const audioEndMs = ms(stopped.playedSamples);
    send({ type: "conversation.item.truncate", item_id: stopped.itemId, content_index: 0, audio_end_ms: audioEndMs });
    hooks.truncates += 1;
    hooks.lastTruncate = { itemId: stopped.itemId, audioEndMs, receivedMs: ms(stopped.receivedSamples) };
    entries.get(stopped.itemId)?.classList.add("interrupted");
  }
}

function playerIdle() {
  if (hooks.state === "speaking") setState(hooks.responseActive ? "thinking" : "listening");
}

setInterval(() => {
  if (!player) return;
  hooks.playedSamples = player.playedSamples;
  $("played").textContent = `${(hooks.playedSamples / RATE).toFixed(1)} s`;
}, 50);

// --- session ----------------------------------------------------------------------------------------------
function sessionUpdate() {
  const turnDetection =
    mode() === "hands-free"
      ? {
          type: "server_vad",
          threshold: Number($("vad-threshold").value),
          prefix_padding_ms: 300,
          silence_duration_ms: Number($("vad-silence").value),
          create_response: true,
          interrupt_response: true,
        }
      : null;
  const session = {
    type: "realtime",
    instructions: $("instructions").value,
    max_output_tokens: Number($("max-tokens").value) || "inf",
    audio: { input: { transcription: { model: "whisper-1" }, turn_detection: turnDetection } },
  };
  const voice = $("voice").value;
  const current = hooks.session?.audio?.output?.voice ?? hooks.session?.voice;
  if (voice && voice !== current) session.audio.output = { voice };
  send({ type: "session.update", session });
}

function sendText(text) {
  bargeIn(true);
  send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  send({ type: "response.create" });
  turnEndedAt = performance.now();
  setState("thinking");
}

function itemText(item) {
  return (item.content || []).map((c) => c.text ?? c.transcript ?? "").join("");
}

const handlers = {
  "session.created"(e) {
    hooks.session = e.session;
    const voice = e.session?.audio?.output?.voice ?? e.session?.voice;
    if (typeof voice === "string" && ![...$("voice").options].some((o) => o.value === voice)) {
      $("voice").append(new Option(voice, voice));
    }
    sessionUpdate();
    setState("listening");
  },
  "session.updated"(e) {
    hooks.session = e.session;
  },
  error(e) {
    // A cancel racing the reply's own end is harmless.
    if (e.error?.code !== "response_cancel_not_active") showError(e.error?.message || "error");
  },
  "input_audio_buffer.speech_started"(e) {
    bargeIn(false);
    const li = entry(e.item_id, "user");
    if (!li.textContent) {
      li.textContent = "…";
      li.classList.add("pending");
    }
    setState("user-speaking");
  },
  "input_audio_buffer.speech_stopped"(e) {
    turnEndedAt = mic ? mic.timeOf(e.audio_end_ms) : performance.now();
    setState("thinking");
  },
  "conversation.item.added"(e) {
    const item = e.item;
    if (item.type !== "message" || item.role === "system") return;
    const li = entry(item.id, item.role);
    const text = itemText(item);
    if (item.role === "user" && text) {
      li.textContent = text;
      li.classList.remove("pending");
      hooks.userTranscripts.push(text);
    } else if (item.role === "user" && !li.textContent) {
      li.textContent = "…";
      li.classList.add("pending");
    }
  },
  "conversation.item.input_audio_transcription.delta"(e) {
    const li = entry(e.item_id, "user");
    if (li.classList.contains("pending")) li.textContent = "";
    li.textContent += e.delta;
  },
  "conversation.item.input_audio_transcription.completed"(e) {
    const li = entry(e.item_id, "user");
    li.classList.remove("pending");
    li.textContent = e.transcript.trim() || "(nothing heard)";
    hooks.userTranscripts.push(e.transcript.trim());
  },
  "conversation.item.input_audio_transcription.failed"(e) {
    const li = entry(e.item_id, "user");
    li.classList.remove("pending");
    li.textContent = "(not understood)";
  },
  "response.created"() {
    hooks.responseActive = true;
    if (hooks.state !== "user-speaking") setState("thinking");
  },
  "response.output_item.added"(e) {
    if (e.item.type === "message") entry(e.item.id, "assistant");
  },
  "response.output_audio_transcript.delta"(e) {
    if (!muted.has(e.item_id)) entry(e.item_id, "assistant").textContent += e.delta;
  },
  "response.output_audio_transcript.done"(e) {
    if (muted.has(e.item_id)) return;
    entry(e.item_id, "assistant").textContent = e.transcript;
    hooks.assistantTranscripts.push(e.transcript);
  },
  "response.output_text.done"(e) {
    if (muted.has(e.item_id)) return;
    entry(e.item_id, "assistant").textContent = e.text;
    hooks.assistantTranscripts.push(e.text);
  },
  "response.output_audio.delta"(e) {
    if (muted.has(e.item_id) || !player) return;
    if (turnEndedAt !== null) {
      hooks.lastLatencyMs = Math.round(performance.now() - turnEndedAt);
      hooks.latencies.push(hooks.lastLatencyMs);
      $("latency").textContent = `${hooks.lastLatencyMs} ms`;
      turnEndedAt = null;
    }
    player.enqueue(e.item_id, fromBase64(e.delta));
    if (hooks.state !== "user-speaking") setState("speaking");
  },
  "response.done"(e) {
    hooks.responseActive = false;
    for (const item of e.response?.output || []) {
      const li = entries.get(item.id);
      if (li && !li.textContent) li.remove(); // cancelled before it said anything
    }
    if (e.response?.status === "failed") showError(e.response.status_details?.error?.message || "reply failed");
    if (hooks.state === "thinking" && !player?.playing) setState("listening");
  },
  "conversation.item.truncated"(e) {
    hooks.truncated += 1;
    hooks.lastTruncated = { itemId: e.item_id, audioEndMs: e.audio_end_ms };
    entries.get(e.item_id)?.classList.add("interrupted");
  },
};
handlers["conversation.item.created"] = handlers["conversation.item.added"]; // beta
handlers["response.output_text.delta"] = handlers["response.output_audio_transcript.delta"];
handlers["response.text.delta"] = handlers["response.output_text.delta"];
handlers["response.text.done"] = handlers["response.output_text.done"];
handlers["response.audio_transcript.delta"] = handlers["response.output_audio_transcript.delta"];
handlers["response.audio_transcript.done"] = handlers["response.output_audio_transcript.done"];
handlers["response.audio.delta"] = handlers["response.output_audio.delta"];

function onMessage(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch {
    return;
  }
  hooks.events[event.type] = (hooks.events[event.type] || 0) + 1;
  handlers[event.type]?.(event);
}

// --- connect / disconnect ---------------------------------------------------------------------------------
async function connect() {
  setState("connecting");
  $("error").textContent = "";
  ctx = new AudioContext();
  await ctx.resume();
  player = new Player(ctx, playerIdle);
  mic = new Mic(ctx, onMicChunk);
  try {
    await mic.open();
  } catch (err) {
    mic = null;
    const why = window.isSecureContext ? err.name || String(err) : "the page needs https:// off this machine";
    showError(`No microphone (${why}): you can still type.`);
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = $("api-key").value.trim();
  const protocols = ["realtime"];
  if (key) protocols.push(`openai-insecure-api-key.${key}`);
  sessionStorage.setItem("localrt-key", key);
  const socket = new WebSocket(`${scheme}://${location.host}/v1/realtime`, protocols);
  ws = socket;
  ws.onmessage = onMessage;
  ws.onclose = (e) => {
    if (ws !== socket) return; // an earlier connection, already let go
    if (e.code !== 1000) showError(`Disconnected (${e.code}${e.reason ? ` ${e.reason}` : ""}).`);
    disconnect(e.code === 1000 ? "closed" : "error");
  };
  setControls(true);
}

function disconnect(state = "closed") {
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  ws = null;
  player?.stop();
  mic?.close();
  mic = null;
  ctx?.close();
  ctx = null;
  player = null;
  hooks.responseActive = false;
  setControls(false);
  setState(state);
}

function setControls(connected) {
  $("connect").textContent = connected ? "Disconnect" : "Connect";
  for (const id of ["text", "send", "apply"]) $(id).disabled = !connected;
  $("talk").disabled = !connected || mode() !== "press";
}

function press() {
  if (held || !ws || mode() !== "press") return;
  held = true;
  $("talk").classList.add("held");
  bargeIn(true);
  send({ type: "input_audio_buffer.clear" });
  heldSamples = 0;
  setState("user-speaking");
}

function release() {
  if (!held) return;
  held = false;
  $("talk").classList.remove("held");
  if (heldSamples < RATE / 5) {
    // Under 200 ms: a slip of the finger (the server refuses commits under 100 ms).
    send({ type: "input_audio_buffer.clear" });
    setState("listening");
    return;
  }
  send({ type: "input_audio_buffer.commit" });
  send({ type: "response.create" });
  turnEndedAt = performance.now();
  setState("thinking");
}

$("connect").addEventListener("click", () => (ws ? disconnect() : connect()));
$("apply").addEventListener("click", sessionUpdate);
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    setControls(Boolean(ws));
    sessionUpdate();
  });
}
$("talk").addEventListener("pointerdown", press);
$("talk").addEventListener("pointerup", release);
$("talk").addEventListener("pointerleave", release);
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && e.target === document.body) {
    e.preventDefault();
    press();
  }
});
document.addEventListener("keyup", (e) => {
  if (e.code === "Space" && e.target === document.body) release();
});
$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !ws) return;
  $("text").value = "";
  sendText(text);
});
$("api-key").value = sessionStorage.getItem("localrt-key") || "";
