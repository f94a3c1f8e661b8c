// pxo web page: plain JavaScript, no build step, nothing loaded from the network.
// The API key lives in sessionStorage (this tab only); the last queries in localStorage.
"use strict";

const KEY = "pxo.key";
const HISTORY = "pxo.history";
const COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d",
                 "#9ca3af"];
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.info = e;
  }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json", "Authorization": `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (resp.status === 401) { signOut("Your key was refused: " + ((data && data.error && data.error.message) || "401")); }
  if (!resp.ok) throw new ApiError(resp.status, data);
  // a query answer is streamed: a collector that fails after the rows started ends it with "error"
  if (data && data.error) throw new ApiError(502, data);
  return data;
}

function cluster() { return $("cluster").value || ""; }

// -- sign in -----------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const who = await api("GET", "/api/v1/whoami");
    $("who").textContent = `${who.user} (${who.role})`;
    $("signin-view").hidden = true;
    $("app-view").hidden = false;
    $("signout").hidden = false;
    await loadClusters();
    refresh();
  } catch (err) {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent = err.message;
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("app-view").hidden = true;
  $("signout").hidden = true;
  $("cluster").hidden = true;
  $("who").textContent = "";
  $("signin-view").hidden = false;
  $("signin-error").textContent = message || "";
}

async function loadClusters() {
  const sel = $("cluster");
  const clusters = await api("GET", "/api/v1/clusters");
  sel.replaceChildren(...clusters.map((c) => {
    const o = document.createElement("option");
    o.value = c.default ? "" : c.name;
    o.textContent = c.name + (c.default ? " (default)" : "");
    o.selected = c.default;
    return o;
  }));
  sel.hidden = clusters.length < 2;
}

function refresh() {
  loadTimeline();
  loadNodes();
}

// -- tables --------------------------------------------------------------------------

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function cellText(name, v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number" && name.endsWith("_bytes")) return humanBytes(v);
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) return v.slice(0, 19).replace("T", " ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fillTable(table, columns, rows, cellClass) {
  const head = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  const body = rows.map((r) => {
    const tr = document.createElement("tr");
    r.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = cellText(columns[i], v);
      if (cellClass) td.className = cellClass(columns[i], v);
      tr.appendChild(td);
    });
    return tr;
  });
  table.replaceChildren(head, ...body);
}

// -- charts: stacked bars on a canvas, drawn here --------------------------------------

function drawStacked(canvas, buckets, series, { label = (t) => t } = {}) {
  // buckets: sorted bucket keys (ms); series: [{name, colour, values: Map(bucket -> number)}]
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, left = 40, bottom = 22, top = 8, right = 8;
  ctx.clearRect(0, 0, W, H);
  const totals = buckets.map((b) => series.reduce((s, x) => s + (x.values.get(b) || 0), 0));
  const max = Math.max(1, ...totals);
  const plotW = W - left - right, plotH = H - top - bottom;
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  for (let i = 0; i <= 4; i++) {
    const v = Math.round((max * i) / 4), y = top + plotH - (plotH * v) / max;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(W - right, y + 0.5); ctx.stroke();
    ctx.fillText(String(v), left - 6, y + 4);
  }
  const slot = plotW / Math.max(1, buckets.length), barW = Math.max(2, slot * 0.7);
  buckets.forEach((b, i) => {
    let y = top + plotH;
    const x = left + i * slot + (slot - barW) / 2;
    for (const s of series) {
      const v = s.values.get(b) || 0;
      if (!v) continue;
      const h = (plotH * v) / max;
      ctx.fillStyle = s.colour;
      ctx.fillRect(x, y - h, barW, h);
      y -= h;
    }
  });
  ctx.fillStyle = "#6b7280";
  ctx.textAlign = "center";
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((b, i) => {
    if (i % every === 0) ctx.fillText(label(b), left + i * slot + slot / 2, H - 6);
  });
  canvas.dataset.rendered = String(totals.reduce((a, b) => a + b, 0));
}

function legend(el, series) {
  el.replaceChildren(...series.map((s) => {
    const span = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = s.colour;
    span.append(sw, document.createTextNode(s.name));
    return span;
  }));
}

function toSeries(rows, ti, vi, si) {
  // Group (time, value[, series]) rows into stacked series; more than 8 series fold into "other".
  const byName = new Map();
  for (const r of rows) {
    const name = si === -1 ? "value" : String(r[si] ?? "-");
    byName.set(name, (byName.get(name) || 0) + Number(r[vi] || 0));
  }
  const names = [...byName.keys()].sort((a, b) => byName.get(b) - byName.get(a));
  const kept = new Set(names.slice(0, 8));
  const series = new Map();
  for (const r of rows) {
    let name = si === -1 ? "value" : String(r[si] ?? "-");
    if (!kept.has(name)) name = "other";
    if (!series.has(name)) series.set(name, { name, values: new Map() });
    const t = Date.parse(r[ti]);
    const m = series.get(name).values;
    m.set(t, (m.get(t) || 0) + Number(r[vi] || 0));
  }
  return [...series.values()].map((s, i) => ({ ...s, colour: s.name === "other" ? COLOURS[8] : COLOURS[i % 8] }));
}

const hhmm = (t) => new Date(t).toISOString().slice(11, 16);

// -- OOM timeline: kills per pod per hour, last 24 h ------------------------------------

async function loadTimeline() {
  const hour = 3600 * 1000;
  const end = Math.floor(Date.now() / hour) * hour + hour;
  const start = end - 24 * hour;
  const since = new Date(start).toISOString().slice(0, 19).replace("T", " ");
  const sql = "SELECT time_bucket(INTERVAL '1 hour', time) AS t, coalesce(pod, cgroup_path, comm) AS pod, " +
              `count(*) AS kills FROM oom_events WHERE time >= TIMESTAMP '${since}' GROUP BY ALL ORDER BY t`;
  $("timeline-error").textContent = "";
  try {
    const ans = await api("POST", "/api/v1/query", { query: sql, sql: true, cluster: cluster() });
    const series = toSeries(ans.rows, 0, 2, 1);
    const buckets = [];
    for (let t = start; t < end; t += hour) buckets.push(t);
    drawStacked($("timeline"), buckets, series, { label: hhmm });
    legend($("timeline-legend"), series);
    const total = ans.rows.reduce((s, r) => s + Number(r[2]), 0);
    $("timeline-total").textContent = `${total} kill${total === 1 ? "" : "s"}` + (ans.partial ? " (partial: some nodes did not answer)" : "");
  } catch (err) {
    $("timeline-error").textContent = err.message;
  }
}

// -- nodes --------------------------------------------------------------------------------

async function loadNodes() {
  $("nodes-error").textContent = "";
  try {
    const body = await api("GET", "/api/v1/nodes" + (cluster() ? `?cluster=${encodeURIComponent(cluster())}` : ""));
    const rows = body.nodes.map((n) => [n.node, n.state, n.kernel_release, n.last_heartbeat,
      n.sources.map((s) => `${s.name}: ${s.state}${s.detail ? " (" + s.detail + ")" : ""}`).join("; ") || "-"]);
    fillTable($("nodes"), ["node", "state", "kernel", "last heartbeat", "probes"], rows,
              (c, v) => (c === "state" ? `state-${v}` : ""));
  } catch (err) {
    $("nodes-error").textContent = err.message;
  }
}

// -- the query box ---------------------------------------------------------------------

function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY) || "[]"); } catch { return []; }
}

function remember(text, sql) {
  const h = history().filter((e) => !(e.text === text && e.sql === sql));
  h.unshift({ text, sql });
  localStorage.setItem(HISTORY, JSON.stringify(h.slice(0, 10)));
  showHistory();
}

function showHistory() {
  $("history").replaceChildren(...history().map((e) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = (e.sql ? "SQL: " : "") + e.text;
    b.title = e.text;
    b.addEventListener("click", () => { $("query").value = e.text; $("sql").checked = e.sql; runQuery(); });
    return b;
  }));
}

function chartable(columns) {
  // A time-bucketed answer: one time column, a number, and at most one label column.
  const ti = columns.findIndex((c) => c.type.startsWith("timestamp"));
  const numeric = (t) => /^(u?int|int|uint|double|float|decimal)/.test(t);
  const vi = columns.findIndex((c, i) => i !== ti && numeric(c.type));
  const si = columns.findIndex((c, i) => i !== ti && i !== vi && c.type === "string");
  if (ti === -1 || vi === -1 || columns.length > 4) return null;
  return { ti, vi, si };
}

async function runQuery() {
  const text = $("query").value.trim();
  const sql = $("sql").checked;
  if (!text) return;
  $("query-error").textContent = "";
  $("query-status").textContent = "running ...";
  const chart = $("answer-chart");
  try {
    const t0 = performance.now();
    const ans = await api("POST", "/api/v1/query", { query: text, sql, cluster: cluster() });
    remember(text, sql);
    const names = ans.columns.map((c) => c.name);
    fillTable($("answer"), names, ans.rows);
    const bad = ans.nodes.filter((n) => n.state !== "ok" && n.state !== "skipped");
    $("query-status").textContent = `${ans.rows.length} rows in ${Math.round(performance.now() - t0)} ms` +
      (ans.truncated ? " (cut at the row cap)" : "") +
      ((ans.approximate_columns || []).length ? ` (approximate, within ${(100 * ans.relative_error).toFixed(2)}%: ` +
        `${ans.approximate_columns.join(", ")})` : "") +
      (bad.length ? ` — partial: ${bad.map((n) => `${n.node} ${n.state}`).join(", ")}` : "");
    const c = chartable(ans.columns);
    if (c && ans.rows.length) {
      const series = toSeries(ans.rows, c.ti, c.vi, c.si);
      const buckets = [...new Set(ans.rows.map((r) => Date.parse(r[c.ti])))].sort((a, b) => a - b);
      chart.hidden = false;
      drawStacked(chart, buckets, series, { label: hhmm });
      legend($("answer-legend"), series.length > 1 || c.si !== -1 ? series : []);
    } else {
      chart.hidden = true;
      delete chart.dataset.rendered;
      $("answer-legend").replaceChildren();
    }
  } catch (err) {
    // the previous answer must not read as this query's
    $("query-status").textContent = "";
    $("answer").replaceChildren();
    chart.hidden = true;
    delete chart.dataset.rendered;
    $("answer-legend").replaceChildren();
    const i = err.info || {};
    let msg = err.message;
    if (i.line && i.column) {
      const line = text.split("\n")[i.line - 1] || "";
      msg += `\n  ${line}\n  ${" ".repeat(i.column - 1)}^`;
    }
    if (i.hint) msg += `\n  hint: ${i.hint}`;
    $("query-error").textContent = msg;
  }
}

// -- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("apikey").value.trim()); });
  $("signout").addEventListener("click", () => signOut(""));
  $("query-form").addEventListener("submit", (ev) => { ev.preventDefault(); runQuery(); });
  $("query").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); runQuery(); }
  });
  $("cluster").addEventListener("change", refresh);
  showHistory();
  const key = sessionStorage.getItem(KEY);
  if (key) signIn(key); else $("apikey").focus();
});
