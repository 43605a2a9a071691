// hark live view: polls /api/state and draws satellites, p50/p95 per stage, and the last
// turns as waterfall charts (one bar per stage span on the turn's own time axis).
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 1000;
const COLORS = {
  end_of_turn: "#9aa5b8", asr_final: "#4f7cff", intent: "#13a89e",
  llm_first_token: "#f2a93b", llm_first_chunk: "#e8892b", llm_total: "#f5cf8f",
  tts_first_audio: "#b45cd6", tts_total: "#dcb3ee", total: "#d64545",
};
const SVG = "http://www.w3.org/2000/svg";
let lastTurnsSeen = -1;

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtMs(v) { return v === null || v === undefined ? "–" : Math.round(v).toString(); }

function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago`
    : `${Math.round(s / 3600)} h ago`;
}

function renderSatellites(sats) {
  const body = document.querySelector("#satellites tbody");
  body.replaceChildren(...sats.map((s) => {
    const tr = el("tr", { "data-satellite": s.name });
    const connected = typeof s.connected_at === "number" ? ago(s.connected_at) : (s.connected_at || "");
    for (const v of [s.name, s.peer || s.address || "", s.state || "connected", connected,
                     s.turns ?? s.turns_completed ?? ""]) tr.append(el("td", {}, String(v)));
    return tr;
  }));
  document.getElementById("sat-count").textContent = String(sats.length);
  document.getElementById("no-satellites").hidden = sats.length > 0;
}

function renderPercentiles(pct) {
  const body = document.querySelector("#percentiles tbody");
  body.replaceChildren(...Object.entries(pct).map(([stage, p]) => {
    const tr = el("tr", { "data-stage": stage });
    tr.append(el("td", {}, stage), el("td", { class: "num p50" }, fmtMs(p.p50)),
              el("td", { class: "num p95" }, fmtMs(p.p95)), el("td", { class: "num" }, String(p.n)));
    return tr;
  }));
}

function renderLegend(spans) {
  const legend = document.getElementById("legend");
  if (legend.childElementCount) return;
  for (const stage of Object.keys(spans)) {
    const span = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[stage] || "#888";
    span.append(swatch, document.createTextNode(stage));
    legend.append(span);
  }
}

function waterfall(turn) {
  const bars = turn.bars;
  const W = 800, rowH = 16, left = 130, right = 60, top = 4;
  const axisH = 18;
  const start = Math.min(0, ...bars.map((b) => b.start_ms));
  const end = Math.max(1, ...bars.map((b) => b.end_ms));
  const x = (ms) => left + ((ms - start) / (end - start)) * (W - left - right);
  const H = top + bars.length * rowH + axisH;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "waterfall", role: "img",
                             "aria-label": `waterfall of turn ${turn.turn_id}` });
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    svg.append(svgEl("text", { x: 4, y: y + 11 }, b.stage));
    const rect = svgEl("rect", { x: x(b.start_ms), y: y + 2, height: rowH - 4,
                                 width: Math.max(1, x(b.end_ms) - x(b.start_ms)),
                                 fill: COLORS[b.stage] || "#888", "data-stage": b.stage, rx: 2 });
    rect.append(svgEl("title", {}, `${b.stage}: ${b.ms.toFixed(1)} ms`));
    svg.append(rect);
    svg.append(svgEl("text", { x: x(b.end_ms) + 4, y: y + 11 }, `${Math.round(b.ms)} ms`));
  });
  const ay = top + bars.length * rowH + 2;
  svg.append(svgEl("line", { x1: left, x2: W - right, y1: ay, y2: ay, class: "axis" }));
  const step = niceStep(end - start);
  for (let t = Math.ceil(start / step) * step; t <= end + 1e-9; t += step) {
    svg.append(svgEl("line", { x1: x(t), x2: x(t), y1: ay, y2: ay + 4, class: "axis" }));
    svg.append(svgEl("text", { x: x(t) - 8, y: ay + 15 }, `${Math.round(t)}`));
  }
  svg.append(svgEl("text", { x: 4, y: ay + 15, class: "axis-label" },
                   turn.origin === "speech_end" ? "ms after speech end" : "ms"));
  return svg;
}

function niceStep(end) {
  const raw = end / 6;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

function renderTurns(turns) {
  const box = document.getElementById("turns");
  box.replaceChildren(...turns.map((t) => {
    const div = el("div", { class: "turn", "data-turn-id": String(t.turn_id) });
    const meta = el("div", { class: "meta" });
    meta.append(el("strong", {}, `turn ${t.turn_id}`));
    if (t.satellite) meta.append(el("span", { class: "muted" }, t.satellite));
    meta.append(el("span", { class: "muted" }, new Date(t.time * 1000).toLocaleTimeString()));
    if (t.intent) meta.append(el("span", { class: "muted intent" }, t.intent));
    if (t.spans_ms.total !== undefined) meta.append(el("span", { class: "total" },
      `end of speech → first audio ${Math.round(t.spans_ms.total)} ms`));
    div.append(meta);
    const said = el("div", { class: "said" });
    said.append(el("b", {}, "heard: "), document.createTextNode(t.transcript || "(nothing)"));
    div.append(said);
    if (t.reply) {
      const reply = el("div", { class: "reply" });
      reply.append(el("b", {}, "reply: "), document.createTextNode(t.reply));
      div.append(reply);
    }
    if (t.error) div.append(el("div", { class: "error" }, t.error));
    if (t.bars.length) div.append(waterfall(t));
    return div;
  }));
  document.getElementById("turn-count").textContent = String(turns.length);
  document.getElementById("no-turns").hidden = turns.length > 0;
}

function renderServer(stats, sched) {
  document.querySelector("#server-stats tbody").replaceChildren(
    ...Object.entries(stats).map(([k, v]) => {
      const tr = el("tr", { "data-stat": k });
      tr.append(el("td", {}, k.replaceAll("_", " ")), el("td", { class: "num" }, String(v)));
      return tr;
    }));
  document.querySelector("#sched tbody").replaceChildren(...sched.map((r) => {
    const tr = el("tr", { "data-setting": `${r.stage}:${r.setting}` });
    const status = el("td", { class: `status-${String(r.status).replace(" ", "-")}` }, r.status);
    tr.append(el("td", {}, r.stage), el("td", {}, r.setting), status,
              el("td", {}, r.detail + (r.fix && !r.ok ? ` (fix: ${r.fix})` : "")));
    return tr;
  }));
  document.getElementById("no-sched").hidden = sched.length > 0;
}

function render(state) {
  const status = document.getElementById("status");
  status.dataset.ready = String(state.ready);
  status.textContent = state.ready ? "ready" : "starting (loading models)";
  document.getElementById("uptime").textContent = `up ${Math.round(state.uptime_s)} s`;
  renderSatellites(state.satellites);
  renderPercentiles(state.percentiles);
  renderLegend(state.spans);
  if (state.turns_seen !== lastTurnsSeen) {
    renderTurns(state.turns);
    lastTurnsSeen = state.turns_seen;
  }
  renderServer(state.server_stats || {}, state.sched || []);
  const tl = state.trace_log;
  document.getElementById("tracelog").textContent =
    `${tl.path}: ${tl.written} written, ${tl.errors} failed` + (tl.last_error ? ` (${tl.last_error})` : "");
}

async function poll() {
  try {
    const resp = await fetch("/api/state", { cache: "no-store" });
    if (resp.status === 401) {  // the server token changed: log in again
      const status = document.getElementById("status");
      status.dataset.ready = "error";
      status.textContent = "not logged in (open the URL 'hark token show --url' prints)";
      return;
    }
    render(await resp.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.dataset.ready = "error";
    status.textContent = "server unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
