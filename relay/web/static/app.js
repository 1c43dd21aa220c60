// Floodgate console: plain JS over the JSON API, no build step, no outside resources.
// The token lives in sessionStorage (this tab only) and goes out as a Bearer header.
"use strict";

const TOKEN_KEY = "floodgate-token";
const RANGES = { "1h": "1m", "6h": "5m", "24h": "15m" };
const REJECTS = ["unknown_rcpt", "trap", "relay_denied", "virus", "spam", "dnsbl", "blocked",
  "protocol", "other"];

let me = null;
let timer = null;
let busy = false;
let current = null; // the host page's host

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) },
    options.body ? { "Content-Type": "application/json" } : {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) throw new Unauthorized("token refused");
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.detail) || res.statusText);
  return body;
}

const fmtNum = (n) => Number(n).toLocaleString("en");
// Every time in UTC, whatever the browser's zone, as the CLI, the logs and the API give them.
// The API's times carry their offset; one without is UTC, never the browser's local time.
const utc = (iso) => new Date(/(Z|[+-]\d\d:\d\d)$/i.test(iso) ? iso : iso + "Z")
  .toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
const fmtTime = (iso) => iso ? utc(iso).replace("T", " ").slice(0, 19) + " UTC" : "";
const fmtShort = (iso) => iso ? utc(iso).replace("T", " ").slice(5, 19) : "";
const fmtClock = (iso) => utc(iso).slice(11, 16);

// An outcome's colour: the CSS variable --c-OUTCOME, which mirrors blocklist/chart_style.py.
const colour = (outcome) => getComputedStyle(document.documentElement)
  .getPropertyValue(`--c-${outcome}`).trim() || "#999999";

// Axis ticks from 0 in steps of 1, 2 or 5 x 10^n reaching `maximum` in about `count` steps:
// the same integer arithmetic as nice_ticks() in blocklist/chart_style.py (the PNG chart).
function niceTicks(maximum, count = 4) {
  let step = 0;
  for (let magnitude = 1; !step; magnitude *= 10) {
    step = [1, 2, 5].map((m) => m * magnitude).find((s) => s * count >= maximum) || 0;
  }
  const steps = Math.max(1, Math.ceil(maximum / step));
  return Array.from({ length: steps + 1 }, (_, i) => i * step);
}

// Time labels on round clock times (every 10 minutes, 1 hour, 3 hours, ...), about 8.
const CLOCK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440].map((m) => m * 60000);
const clockStep = (span) => CLOCK_STEPS.find((s) => s * 8 >= span) || CLOCK_STEPS.at(-1);

function fmtLeft(seconds) {
  if (seconds <= 0) return "ended";
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = Math.floor(seconds % 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  return `${m}m ${String(s).padStart(2, "0")}s`;
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 9, class: "muted", text: empty }))]));
}

function say(text, error) {
  const msg = $("#action-msg");
  msg.textContent = text;
  msg.className = error ? "error" : "muted";
}

// -- sign in ------------------------------------------------------------------------------

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

async function start() {
  try {
    me = await api("/api/whoami");
  } catch (e) {
    showLogin(e instanceof Unauthorized && sessionStorage.getItem(TOKEN_KEY)
      ? "that token was refused" : "");
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = `${me.name} (${me.scope})`;
  $("#node").textContent = me.node;
  document.querySelectorAll(".admin-only").forEach((n) => { n.hidden = me.scope !== "admin"; });
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, me.refresh_seconds * 1000);
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const page = document.body.dataset.page;
    await (page === "host" ? refreshHost() : page === "trace" ? refreshTrace()
      : refreshDashboard());
    $("#updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (e) {
    if (e instanceof Unauthorized) showLogin("the token is no longer accepted");
    else $("#updated").textContent = "update failed: " + e.message;
  } finally {
    busy = false;
  }
}

// -- dashboard ----------------------------------------------------------------------------

async function refreshDashboard() {
  const range = $("#range").value;
  const [summary, timeline, blocks, hosts, queue, audit] = await Promise.all([
    api("/api/reports/summary?since=24h&top=5"),
    api(`/api/reports/timeline?since=${range}&bucket=${RANGES[range]}`),
    api("/api/blocks"), api("/api/reports/hosts?since=24h&top=15"),
    api("/api/queue?limit=8"), api("/api/audit?limit=8"),
  ]);
  drawTotals(summary);
  drawChart(timeline);
  drawBlocks(blocks);
  drawHosts(hosts);
  drawQueue(queue);
  drawAudit(audit);
}

function drawTotals(s) {
  const refused = REJECTS.reduce((a, r) => a + (s.outcomes[r] || 0), 0);
  const items = [["connections", s.connections], ["accepted", s.outcomes.accepted],
    ["refused", refused], ["tempfail", s.outcomes.tempfail], ["blocked now", s.blocked.length],
    ["queued", s.queued]];
  $("#totals").replaceChildren(...items.map(([k, v]) => el("div", { class: "total" },
    el("div", { class: "value", text: fmtNum(v) }), el("div", { class: "muted", text: k }))),
  el("div", { class: "muted small", text: "last 24 hours" }));
}

function drawChart(tl) {
  const W = 900, H = 220, L = 48, B = 22, T = 8;
  const buckets = tl.buckets;
  const outcomes = tl.outcomes;
  const totals = buckets.map((b) => outcomes.reduce((a, o) => a + b[o], 0));
  const ticks = niceTicks(Math.max(0, ...totals));
  const max = ticks[ticks.length - 1];
  const bw = (W - L) / Math.max(1, buckets.length);
  const every = clockStep(buckets.length < 2 ? 0
    : Date.parse(buckets[buckets.length - 1].time) - Date.parse(buckets[0].time));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "events per bucket by outcome, times in UTC", class: "chart-svg" });
  for (const tick of ticks) {
    const y = T + (H - B - T) * (1 - tick / max);
    root.append(svg("line", { x1: L, x2: W, y1: y, y2: y, class: "grid" }));
    const label = svg("text", { x: L - 6, y: y + 4, class: "axis y-tick", "text-anchor": "end",
      "data-value": tick });
    label.textContent = fmtNum(tick);
    root.append(label);
  }
  const zone = svg("text", { x: L - 6, y: H - 6, class: "axis", "text-anchor": "end" });
  zone.textContent = "UTC";
  root.append(zone);
  buckets.forEach((b, i) => {
    let y = H - B;
    const x = L + i * bw;
    for (const o of outcomes) {
      if (!b[o]) continue;
      const h = (H - B - T) * b[o] / max;
      y -= h;
      const r = svg("rect", { x: x + 0.5, y, width: Math.max(1, bw - 1), height: h,
        fill: colour(o), "data-outcome": o, "data-time": b.time });
      const tip = svg("title", {});
      tip.textContent = `${fmtTime(b.time)}: ${o} ${fmtNum(b[o])}`;
      r.append(tip);
      root.append(r);
    }
    if (Date.parse(b.time) % every === 0) {
      const t = svg("text", { x, y: H - 6, class: "axis x-tick", "data-time": b.time });
      t.textContent = fmtClock(b.time);
      root.append(t);
    }
  });
  $("#chart").replaceChildren(root);
  const seen = outcomes.filter((o) => buckets.some((b) => b[o]));
  $("#legend").replaceChildren(...(seen.length ? seen : ["accepted"]).map((o) =>
    el("span", { class: "key" }, swatch(o), o)));
}

function swatch(outcome) {
  const i = el("i", { class: "swatch" });
  i.style.backgroundColor = colour(outcome); // CSSOM, which the style-src policy allows
  return i;
}

function drawBlocks(blocks) {
  $("#blocked-count").textContent = `(${blocks.length})`;
  const now = Date.now();
  fill($("#blocked tbody"), blocks.map((b) => {
    const until = now + b.seconds_left * 1000;
    const row = el("tr", { "data-network": b.network },
      el("td", {}, el("a", { href: `host.html?a=${encodeURIComponent(b.network.split("/")[0])}`,
        text: b.network })),
      el("td", { text: b.reason, class: "wrap" }), el("td", { text: b.source }),
      el("td", { text: String(b.level) }),
      el("td", { class: "num left", "data-until": String(until),
        text: fmtLeft(b.seconds_left) }),
      el("td", {}, me.scope === "admin" ? el("button", { class: "unblock", type: "button",
        onclick: () => unblock(b.network), text: "Unblock" }) : ""));
    return row;
  }), "nothing is blocked");
}

function tickCountdowns() {
  document.querySelectorAll("td.left[data-until]").forEach((td) => {
    td.textContent = fmtLeft((Number(td.dataset.until) - Date.now()) / 1000);
  });
}

function drawHosts(hosts) {
  const attackers = hosts.filter((h) => h.rejected + h.tempfail > 0);
  fill($("#hosts tbody"), attackers.map((h) => {
    const why = REJECTS.filter((r) => h[r]).sort((a, b) => h[b] - h[a])
      .map((r) => `${r} ${fmtNum(h[r])}`).join(", ");
    return el("tr", { "data-host": h.host },
      el("td", {}, el("a", { href: `host.html?a=${encodeURIComponent(h.host.split("/")[0])}`,
        text: h.host })),
      el("td", { class: "num", text: fmtNum(h.connections) }),
      el("td", { class: "num", text: fmtNum(h.rejected) }),
      el("td", { class: "wrap", text: why }), el("td", { class: "num", text: String(h.score) }),
      el("td", { text: h.blocked_until ? fmtTime(h.blocked_until) : "" }));
  }), "no refusals in the last 24 hours");
}

function drawQueue(q) {
  const facts = [["queued", q.queued], ["held", q.held], ["deferred", q.deferred],
    ["recipients", q.recipients],
    ["oldest", q.oldest_seconds == null ? "-" : fmtLeft(q.oldest_seconds)]];
  const dests = Object.entries(q.by_destination).map(([d, n]) => `${d} ${n}`).join(", ");
  const rows = q.messages.map((m) => el("tr", {},
    el("td", { text: m.queue_id.slice(0, 12) }), el("td", { text: m.sender || "<>" }),
    el("td", { text: String(m.pending.length) }), el("td", { text: String(m.attempts) }),
    el("td", { class: "wrap", text: (m.held ? "[held] " : "") + m.last_reply })));
  $("#queue").replaceChildren(
    el("div", { class: "facts" }, ...facts.map(([k, v]) => el("span", {},
      el("b", { text: typeof v === "number" ? fmtNum(v) : v }), " " + k))),
    el("p", { class: "muted", text: (dests ? "waiting for: " + dests : "nothing waiting") +
      (q.examined < q.queued ? ` (counted over the oldest ${fmtNum(q.examined)})` : "") }),
    rows.length ? el("table", {}, el("thead", {}, el("tr", {}, ...["id", "sender", "rcpts",
      "tries", "last reply"].map((h) => el("th", { text: h })))), el("tbody", {}, ...rows)) : "");
}

function drawAudit(rows) {
  fill($("#audit tbody"), rows.map((a) => el("tr", {},
    el("td", { text: fmtTime(a.ts) }), el("td", { text: a.who }), el("td", { text: a.action }),
    el("td", { text: a.target }), el("td", { class: "wrap", text: a.detail }))),
  "no changes through the API yet");
}

async function unblock(network) {
  try {
    const r = await api(`/api/blocks/${encodeURIComponent(network)}`, { method: "DELETE" });
    say(r.detail);
  } catch (e) {
    say(e.message, true);
  }
  await refresh();
}

async function blockSubmit(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    const b = await api("/api/blocks", { method: "POST", body: JSON.stringify({
      network: f.get("network"), duration: f.get("duration"), reason: f.get("reason") }) });
    say(`blocked ${b.network} for ${fmtLeft(b.seconds_left)}`);
    ev.target.network.value = "";
  } catch (e) {
    say(e.message, true);
  }
  await refresh();
}

// -- host page ----------------------------------------------------------------------------

function hostAddress() {
  return new URLSearchParams(location.search).get("a") || "";
}

async function refreshHost() {
  const address = hostAddress();
  $("#address").value = $("#address").value || address;
  if (!address) return;
  const h = await api(`/api/hosts/${encodeURIComponent(address)}?events=30`);
  current = h;
  $("#host-title").textContent = h.host === h.address ? h.address
    : `${h.address} (counted as ${h.host})`;
  $("#state").textContent = h.state;
  $("#state").className = `badge state-${h.state}`;
  $("#why").textContent = h.why;
  $("#scorefill").style.width = `${Math.min(100, 100 * Math.max(0, h.score) / h.threshold)}%`;
  $("#score-text").textContent = `score ${h.score} (blocks at ${h.threshold}) over the last ` +
    `${h.window_seconds / 3600} h: the sum of weight × events below`;
  const blocked = Boolean(h.block && h.block.seconds_left > 0);
  $("#unblock").hidden = !blocked;
  $("#block").hidden = blocked || h.state === "never";
  $("#allow").hidden = h.state === "never";
  fill($("#reasons tbody"), h.reasons.map((r) => el("tr", {},
    el("td", { text: r.reason }), el("td", { class: "num", text: String(r.weight) }),
    el("td", { class: "num", text: fmtNum(r.count) }),
    el("td", { class: "num", text: String(r.points) }),
    el("td", { text: fmtShort(r.first) }), el("td", { text: fmtShort(r.last) }))),
  "no events in the scoring window");
  fill($("#events tbody"), h.events.map((e) => el("tr", {},
    el("td", { text: fmtShort(e.ts) }), el("td", { text: e.stage }),
    el("td", { text: e.action }),
    el("td", { text: e.reason }), el("td", { class: "wrap", text: e.recipient }),
    el("td", { class: "wrap", text: e.detail }))), "no events");
}

async function hostAction(kind) {
  if (!current) return;
  const h = kind === "unblock" && current.block ? current.block.network : current.host;
  try {
    let r;
    if (kind === "unblock") {
      r = await api(`/api/blocks/${encodeURIComponent(h)}`, { method: "DELETE" });
    } else if (kind === "block") {
      r = await api("/api/blocks", { method: "POST",
        body: JSON.stringify({ network: h, duration: "24h", reason: "manual (console)" }) });
      r = { detail: `blocked ${r.network}` };
    } else {
      r = await api("/api/allow", { method: "POST",
        body: JSON.stringify({ network: h, reason: "console" }) });
    }
    say(r.detail);
  } catch (e) {
    say(e.message, true);
  }
  await refresh();
}

// -- trace page ---------------------------------------------------------------------------

let traced = null; // the search shown: a story is read once, not at every refresh

// What the box holds, as /api/trace searches: an IP address is a client; an address or a
// Message-ID (an @, or <...>) is looked for as sender, recipient and Message-ID at once;
// anything else is a reference (a reply's [ref ...] or a queue id).
function traceQueries(q) {
  const v = encodeURIComponent(q);
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(q) || (q.includes(":") && /^[0-9a-f:.]+$/i.test(q))) {
    return [`client=${v}`];
  }
  if (q.includes("@") || q.startsWith("<")) return [`from=${v}`, `to=${v}`, `message_id=${v}`];
  return [`ref=${v}`];
}

function eventWhat(e) {
  const what = [];
  if (e.recipient) what.push(e.stage === "rcpt" ? `<${e.recipient}>` : `to=${e.recipient}`);
  if (e.queue_id) what.push(`queue_id=${e.queue_id}`);
  if (e.message_id) what.push(`message_id=${e.message_id}`);
  if (e.size !== null) what.push(`size=${e.size}`);
  if (e.detail) what.push(e.detail);
  if (e.count > 1) {
    what.push(`(x${e.count}, folded in a flood` + (e.folded.length ? "; also of sessions " +
      e.folded.join(" ") + (e.folded_more ? " and more not named" : "") : "") + ")");
  }
  return what.join(" ");
}

async function refreshTrace() {
  const q = (new URLSearchParams(location.search).get("q") || "").trim();
  $("#q").value = $("#q").value || q;
  if (!q || q === traced) return;
  traced = q;
  let results;
  try {
    results = await Promise.all(traceQueries(q).map((p) => api("/api/trace?" + p)));
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    $("#trace-msg").textContent = "trace failed: " + e.message;
    return;
  }
  const seen = new Set();
  const sessions = [];
  for (const r of results) {
    for (const st of r.sessions) {
      const key = `${st.session}|${st.events[0]?.ts}`;
      if (!seen.has(key)) { seen.add(key); sessions.push(st); }
    }
  }
  sessions.sort((a, b) => utc(a.events[0].ts).localeCompare(utc(b.events[0].ts)));
  const more = results.reduce((n, r) => n + r.more, 0);
  $("#trace-title").textContent = `Trace of ${q}`;
  $("#trace-msg").textContent = sessions.length
    ? `${sessions.length} session${sessions.length === 1 ? "" : "s"}` +
      (more ? `, and ${more} more: narrow the search` : "")
    : "nothing found";
  $("#stories").replaceChildren(...sessions.map((st) => el("section",
    { class: "card story", "data-session": st.session },
    el("h2", { text: `session ${st.session || "-"}` }),
    el("p", { class: "muted", text: `client ${st.client || "-"}, helo ${st.helo || "-"}, ` +
      `node ${st.node}` + (st.sender || st.queue_ids.length ? `, from <${st.sender}>` : "") }),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["time (UTC)", "stage", "action", "reason", "code",
        "what"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...st.events.map((e) => el("tr", {},
        el("td", { text: fmtShort(e.ts) }), el("td", { text: e.stage }),
        el("td", { text: e.action }), el("td", { text: e.reason }),
        el("td", { class: "num", text: e.code ? String(e.code) : "" }),
        el("td", { class: "wrap", text: eventWhat(e) }))))))));
}

// -- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    start();
  });
  $("#logout").addEventListener("click", () => showLogin("signed out"));
  if (document.body.dataset.page === "host") {
    $("#lookup").addEventListener("submit", (ev) => {
      ev.preventDefault();
      location.search = "?a=" + encodeURIComponent($("#address").value.trim());
    });
    for (const kind of ["unblock", "block", "allow"]) {
      $("#" + kind).addEventListener("click", () => hostAction(kind));
    }
  } else if (document.body.dataset.page === "trace") {
    // a plain GET form: the search is in the address, so it can be bookmarked and shared
  } else {
    $("#range").addEventListener("change", refresh);
    $("#block-form").addEventListener("submit", blockSubmit);
    setInterval(tickCountdowns, 1000);
  }
  if (sessionStorage.getItem(TOKEN_KEY)) start(); else showLogin("");
});
