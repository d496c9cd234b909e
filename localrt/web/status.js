"use strict";
// localrt status page: polls status.json every 2 s and draws it. The key (if the page was opened with
// ?key=) is sent as a bearer header; nothing from the server is ever parsed as HTML.
const params = new URLSearchParams(location.search);
const key = params.get("key") || params.get("api-key");
const headers = key ? { Authorization: "Bearer " + key } : {};
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function table(id, head, rows, numeric = []) {
  const t = $(id);
  const tr = el("tr");
  head.forEach((h, i) => tr.append(el("th", h, numeric.includes(i) ? "num" : "")));
  const out = [tr];
  for (const row of rows) {
    const r = el("tr");
    row.forEach((c, i) => {
      const td = el("td", null, numeric.includes(i) ? "num" : "");
      if (c instanceof Node) td.append(c);
      else td.textContent = c === null || c === undefined || c === "" ? "–" : String(c);
      r.append(td);
    });
    out.push(r);
  }
  t.replaceChildren(...out);
}

function pill(text, cls) { return el("span", text, "pill " + cls); }

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function renderModels(d) {
  const kinds = { llm: "chat", stt: "stt", tts: "tts", vad: "vad" };
  const up = {};
  for (const [kind, u] of Object.entries(d.upstreams || {})) up[kinds[kind] || kind] = u;
  table("models", ["kind", "model", "engine", "where", "state"], d.models.map((m) => {
    const where = el("span");
    where.append(pill(m.location, m.location));
    const u = up[m.kind];
    if (m.upstream) where.append(" " + m.upstream);
    if (u && m.location === "remote") {
      where.append(" ", pill(u.reachable ? "answers " + u.latency_ms + " ms" : "down", u.reachable ? "local" : "down"));
      if (u.error) where.title = u.error;
    }
    const state = [m.loaded ? "loaded" : "not loaded"];
    if (m.default) state.push("default");
    if (m.voice) state.push("voice " + m.voice);
    return [m.kind, m.id, m.engine, where, state.join(", ")];
  }));
}

function renderEngines(d) {
  const rows = Object.entries(d.engines).map(([name, e]) => [
    name, e.queued, e.running, e.slots, e.max_queue, e.completed, e.rejected,
    e.latency_ms ? e.latency_ms.total_p50 + " / " + e.latency_ms.total_p95 : "",
  ]);
  table("engines", ["engine", "queued", "running", "slots", "max queue", "done", "refused", "p50 / p95 ms"],
    rows, [1, 2, 3, 4, 5, 6, 7]);
}

function renderChart(turns) {
  const items = turns.recent.filter((t) => t.latency_ms !== null);
  const box = $("chart");
  const s = turns.latency;
  $("turn-summary").replaceChildren(
    s.count ? `${s.count} turns · p50 ${s.p50_ms} ms · p95 ${s.p95_ms} ms ` : "No realtime turns yet. ",
    el("span", "completed", "key done"), el("span", "cancelled, incomplete or failed", "key other"),
    el("span", "p50", "key p50"));
  const W = 1000, H = 180, L = 48, B = 20, T = 8;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(100, ...items.map((t) => t.latency_ms)) * 1.1;
  const y = (ms) => H - B - ((H - B - T) * ms) / max;
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" });
  for (const ms of [0, max / 2, max]) add("text", { x: L - 6, y: y(ms) + 4, "text-anchor": "end" }, Math.round(ms));
  const slot = (W - L) / 50;
  items.forEach((t, i) => {
    const bar = add("rect", {
      x: L + i * slot + 2, y: y(t.latency_ms), width: Math.max(2, slot - 4),
      height: Math.max(1, H - B - y(t.latency_ms)), class: t.status === "completed" ? "bar" : "bar other",
    });
    const stages = Object.entries(t.stages_ms).map(([k, v]) => `${k} ${v} ms`).join("\n");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${t.latency_ms} ms (${t.status}, ${t.age_s} s ago)\n${stages}`;
    bar.append(title);
  });
  if (s.count) add("line", { x1: L, y1: y(s.p50_ms), x2: W, y2: y(s.p50_ms), class: "p50" });
  add("text", { x: L, y: H - 4 }, "older");
  add("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, "newest");
  box.replaceChildren(svg);
}

function render(d) {
  const badge = $("badge");
  badge.textContent = d.status;
  badge.className = "badge " + d.status;
  $("meta").textContent = `v${d.version} · up ${duration(d.uptime_s)} · chat ${d.chat_busy ? "busy" : "idle"}`;
  $("error").hidden = true;
  renderModels(d);
  renderEngines(d);
  const s = d.sessions;
  $("sessions").replaceChildren(el("span", s.open), el("span", ` / ${s.max} open`, "dim"),
    el("div", `at most ${s.max_per_client} per client`, "dim"));
  renderChart(d.turns);
  table("settings", ["setting", "value"], Object.entries(d.settings).map(([k, v]) => [
    k, typeof v === "object" && v !== null ? JSON.stringify(v) : v === null ? "null" : v,
  ]));
}

function fail(text) {
  const badge = $("badge");
  badge.textContent = "error";
  badge.className = "badge error";
  const e = $("error");
  e.textContent = text;
  e.hidden = false;
}

async function refresh() {
  try {
    const r = await fetch("status.json", { headers, cache: "no-store" });
    const body = await r.json().catch(() => null);
    if (!r.ok) fail((body && body.error && body.error.message) || "HTTP " + r.status);
    else render(body);
  } catch (err) {
    fail("The server does not answer.");
  } finally {
    setTimeout(refresh, 2000);
  }
}

refresh();
