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
  $("explain").hidden = true;
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
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
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
  const hits = [];  // where each bar segment is drawn (canvas pixels): a click names its bucket and series
  buckets.forEach((b, i) => {
    let y = top + plotH;
    const x = left + i * slot + (slot - barW) / 2;
    for (const s of series) {
      const v = s.values.get(b) || 0;
      if (!v) continue;
      const h = (plotH * v) / max;
      ctx.fillStyle = s.colour;
      ctx.fillRect(x, y - h, barW, h);
      hits.push({ x, y: y - h, w: barW, h, bucket: b, name: s.name });
      y -= h;
    }
  });
  canvas.hits = hits;
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
  loadKills(since);
  try {
    const ans = await api("POST", "/api/v1/query", { query: sql, sql: true, cluster: cluster() });
    const series = toSeries(ans.rows, 0, 2, 1);
    const buckets = [];
    for (let t = start; t < end; t += hour) buckets.push(t);
    drawStacked($("timeline"), buckets, series, { label: hhmm });
    legend($("timeline-legend"), series);
    const total = ans.rows.reduce((s, r) => s + Number(r[2]), 0);
    $("timeline-total").textContent = `${total} kill${total === 1 ? "" : "s"}` + (ans.partial ? " (partial: some nodes did not answer)" : "");
    timelineKept = new Set(series.map((s) => s.name));
  } catch (err) {
    $("timeline-error").textContent = err.message;
  }
}

// -- the timeline's kills one by one: a row, or a bar of the chart, opens its explanation -------

const KILLS_SHOWN = 200;
let kills = [];  // the last 24 h's kills, most recent first: {node, time, ms, comm, pid, oomId, where, key}
let timelineKept = new Set();  // the timeline's series names; any other key was folded into "other"
let killsFilter = null;  // {bucket, name}: the bar clicked, or null for all

async function loadKills(since) {
  const sql = "SELECT node, time, comm, pid, oom_id, namespace, pod, container, cgroup_path, " +
              "coalesce(pod, cgroup_path, comm) AS key FROM oom_events " +
              `WHERE time >= TIMESTAMP '${since}' ORDER BY time DESC LIMIT ${KILLS_SHOWN}`;
  $("kills-error").textContent = "";
  try {
    const ans = await api("POST", "/api/v1/query", { query: sql, sql: true, cluster: cluster() });
    const at = Object.fromEntries(ans.columns.map((c, i) => [c.name, i]));
    kills = ans.rows.map((r) => ({
      node: r[at.node], time: r[at.time], ms: Date.parse(r[at.time]), comm: r[at.comm], pid: r[at.pid],
      oomId: r[at.oom_id],
      where: [r[at.namespace], r[at.pod], r[at.container]].filter((x) => x).join("/") || r[at.cgroup_path] || "-",
      key: r[at.key] ?? "-",
    }));
  } catch (err) {
    kills = [];
    $("kills-error").textContent = err.message;
  }
  killsFilter = null;
  showKills();
}

function shownKills() {
  if (!killsFilter) return kills;
  const { bucket, name } = killsFilter;
  return kills.filter((k) => k.ms >= bucket && k.ms < bucket + 3600 * 1000 &&
    (name === null || (name === "other" ? !timelineKept.has(k.key) : k.key === name)));
}

function showKills() {
  const shown = shownKills();
  const head = document.createElement("tr");
  for (const c of ["time", "node", "pod or cgroup", "comm", "pid"]) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  const rows = shown.map((k) => {
    const tr = document.createElement("tr");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.textContent = cellText("time", k.time);
    b.setAttribute("aria-label", `Explain the kill of ${k.comm} (pid ${k.pid}) on ${k.node} at ${cellText("time", k.time)}`);
    b.disabled = !k.oomId && (k.pid === null || k.pid === undefined);
    b.addEventListener("click", () => explainKill(k, b));
    const first = document.createElement("td");
    first.appendChild(b);
    tr.appendChild(first);
    for (const v of [k.node, k.where, k.comm, k.pid]) {
      const td = document.createElement("td");
      td.textContent = cellText("", v);
      tr.appendChild(td);
    }
    return tr;
  });
  $("kills").replaceChildren(head, ...rows);
  const f = killsFilter;
  $("kills-filter").textContent = f
    ? `${shown.length} of them ${hhmm(f.bucket)}–${hhmm(f.bucket + 3600 * 1000)}` + (f.name === null ? "" : ` in ${f.name}`)
    : (kills.length >= KILLS_SHOWN ? `the ${KILLS_SHOWN} most recent` : "");
  $("kills-all").hidden = !f;
}

function timelineClick(ev) {
  // the bar segment under the pointer (canvas pixels, not CSS pixels); else the hour's column
  const canvas = $("timeline");
  const x = ev.offsetX * canvas.width / canvas.clientWidth, y = ev.offsetY * canvas.height / canvas.clientHeight;
  const hits = canvas.hits || [];
  const hit = hits.find((h) => x >= h.x && x <= h.x + h.w && y >= h.y && y <= h.y + h.h) ||
              hits.find((h) => x >= h.x && x <= h.x + h.w);
  if (!hit) return;
  const exact = y >= hit.y && y <= hit.y + hit.h;
  killsFilter = { bucket: hit.bucket, name: exact ? hit.name : null };
  showKills();
  const first = shownKills()[0];
  const button = $("kills").querySelector("button");
  if (first && button) explainKill(first, button);  // the most recent kill of that bar
}

function timelineHover(ev) {
  const canvas = $("timeline");
  const x = ev.offsetX * canvas.width / canvas.clientWidth;
  canvas.classList.toggle("pointing", (canvas.hits || []).some((h) => x >= h.x && x <= h.x + h.w));
}

// -- why a kill happened: GET /api/v1/explain, the same JSON `pxo explain` renders -------------

let explainSeq = 0;  // an answer to an older click must not replace a newer one
let explaining = null;  // {kill, opener}: what the panel shows, and the button to give the focus back to

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function valueText(unit, v) {
  if (v === null || v === undefined) return "-";
  if (unit === "bytes") return humanBytes(v);
  if (unit === "bytes_per_s") return humanBytes(v) + "/s";
  if (unit === "percent") return `${v.toFixed(1)}%`;
  if (unit === "us") return `${Math.round(v / 1000)} ms`;
  return String(v);
}

function killedBy(k, kind) {
  if (kind === "user_kill") {
    return `user space: SIGKILL from ${k.sender_comm} (pid ${k.sender_pid}, ${k.sender_cgroup_path || "cgroup unknown"})`;
  }
  const c = k.constraint, limit = k.memcg_limit_bytes;
  const state = ["usage", "peak", "swap"].filter((n) => k[`memcg_${n}_bytes`] !== null && k[`memcg_${n}_bytes`] !== undefined)
    .map((n) => `${n} ${humanBytes(k[`memcg_${n}_bytes`])}`).join(", ");
  if (c === "memcg") {
    return `the kernel, memory cgroup OOM: ${k.oom_memcg_path || "?"} hit its ${limit ? humanBytes(limit) : "?"} limit` +
      (state ? ` (${state})` : "");
  }
  const wide = { global: "the kernel, node-wide OOM (the node ran out of memory)", cpuset: "the kernel, cpuset OOM",
                 mempolicy: "the kernel, memory-policy OOM" };
  return wide[c] || "the kernel's OOM killer (why unknown: no report and no eBPF)";
}

function killFacts(body) {
  const k = body.kill, kind = body.kind;
  const pid = k.pid ?? k.target_pid;
  let victim = `${k.comm || k.target_comm || "?"} (pid ${pid ?? "?"}`;
  if (k.ns_pid) victim += k.ns_pid === 1 ? ", the container's main process" : `, pid ${k.ns_pid} in its container`;
  victim += ")";
  const pod = [k.namespace, k.pod, k.container].filter((x) => x).join("/");
  const facts = [["victim", victim], ["cgroup", k.cgroup_path || "-"], ["pod", pod || "-"],
                 ["killed by", killedBy(k, kind)]];
  if (kind === "oom") {
    facts.push(["trigger", `${k.trigger_comm || "?"} (pid ${k.trigger_pid ?? "?"})`]);
    const mem = [["anon", "anon_rss_bytes"], ["file", "file_rss_bytes"], ["shmem", "shmem_rss_bytes"], ["swap", "swap_bytes"]]
      .filter(([, col]) => k[col] !== null && k[col] !== undefined).map(([n, col]) => `${n} ${humanBytes(k[col])}`);
    facts.push(["its memory", mem.join(", ") || "-"]);
  }
  if (body.members.length) {
    facts.push(["group kill", body.members.map((m) => `${m.comm} (pid ${m.pid})`).join(", ")]);
  }
  const dl = el("dl", { className: "facts", id: "explain-facts" });
  for (const [name, value] of facts) dl.append(el("dt", { textContent: name }), el("dd", { textContent: value }));
  return dl;
}

const CHART_TITLES = {
  bytes: "Memory of the cgroup, against its limit",
  percent: "Memory pressure (PSI some, avg10)",
  bytes_per_s: "Allocation rate",
  us: "Reclaim stalls (per 10 s)",
};

function explainCharts(body, start, end) {
  // one chart per unit; the bytes series are drawn against the limit (dashed), as `pxo explain` scales them
  const limit = body.series.find((s) => s.name === "limit");
  const limitTop = limit ? Math.max(0, ...limit.points.map(([, v]) => v ?? 0)) : 0;
  const units = [...new Set(body.series.filter((s) => s.name !== "limit").map((s) => s.unit))];
  return units.map((unit) => {
    const lines = body.series.filter((s) => s.unit === unit).map((s, i) => ({
      name: s.name, colour: s.name === "limit" ? "#b42318" : COLOURS[i % 8], dashed: s.name === "limit",
      points: s.points.map(([t, v]) => [Date.parse(t), v]),
    }));
    const canvas = el("canvas", { width: 960, height: 170, className: "explain-chart" });
    canvas.dataset.unit = unit;
    canvas.setAttribute("role", "img");
    const lastOf = (l) => [...l.points].reverse().find(([, v]) => v !== null);
    const summary = lines.map((l) => `${l.name} ${valueText(unit, (lastOf(l) || [0, null])[1])}`).join(", ");
    canvas.setAttribute("aria-label", `${CHART_TITLES[unit] || unit}; at the kill: ${summary}`);
    const top = unit === "bytes" && limitTop ? limitTop : unit === "percent" ? 10 : 0;
    drawLines(canvas, lines, { start, end, top, fmt: (v) => valueText(unit, v) });
    const leg = el("div", { className: "legend" });
    legend(leg, lines);
    return el("figure", { className: "chart" }, el("figcaption", { textContent: CHART_TITLES[unit] || unit }),
              canvas, leg, el("p", { className: "muted", textContent: `at the kill: ${summary}` }));
  });
}

function drawLines(canvas, lines, { start, end, top = 0, fmt = String }) {
  // lines: [{name, colour, dashed, points: [[ms, number|null]]}], x from start to end (the kill, at the right
  // edge), y from 0 to the larger of top and the highest value; a null value breaks the line
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, left = 72, bottom = 22, topM = 8, right = 8;
  ctx.clearRect(0, 0, W, H);
  const values = lines.flatMap((l) => l.points.map(([, v]) => v).filter((v) => v !== null));
  const max = Math.max(top, ...values) || 1;
  const plotW = W - left - right, plotH = H - topM - bottom, span = Math.max(1, end - start);
  const X = (t) => left + (plotW * (Math.min(end, Math.max(start, t)) - start)) / span;
  const Y = (v) => topM + plotH - (plotH * v) / max;
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, y = Y(v);
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(W - right, y + 0.5); ctx.stroke();
    ctx.fillText(fmt(v), left - 6, y + 4);
  }
  ctx.textAlign = "center";
  for (let i = 0; i <= 4; i++) {
    const t = start + (span * i) / 4;
    ctx.fillText(new Date(t).toISOString().slice(11, 19), Math.min(W - right - 24, Math.max(left + 24, X(t))), H - 6);
  }
  ctx.strokeStyle = "#b42318";  // the kill
  ctx.beginPath(); ctx.moveTo(X(end) - 0.5, topM); ctx.lineTo(X(end) - 0.5, topM + plotH); ctx.stroke();
  let drawn = 0;
  ctx.lineWidth = 1.5;
  for (const l of lines) {
    ctx.strokeStyle = l.colour;
    ctx.fillStyle = l.colour;
    ctx.setLineDash(l.dashed ? [6, 4] : []);
    ctx.beginPath();
    let pen = false;
    l.points.forEach(([t, v], i) => {
      if (v === null) { pen = false; return; }
      drawn++;
      const alone = (i === 0 || l.points[i - 1][1] === null) && (i === l.points.length - 1 || l.points[i + 1][1] === null);
      if (alone) ctx.fillRect(X(t) - 1.5, Y(v) - 1.5, 3, 3);  // one sample between gaps: a dot
      if (pen) ctx.lineTo(X(t), Y(v)); else ctx.moveTo(X(t), Y(v));
      pen = true;
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
  canvas.dataset.rendered = String(drawn);
}

function spanText(ms) {
  const s = ms / 1000;
  return s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function section(title, ...children) {
  return el("section", { className: "explain-part" }, el("h3", { textContent: title }), ...children);
}

function renderExplanation(body, asked) {
  const k = body.kill;
  const title = body.kind === "oom" ? "OOM kill" : "Kill from user space (not an OOM kill)";
  $("explain-title").textContent = `${title} on node ${body.node} at ${cellText("time", k.time)}Z`;
  const parts = [killFacts(body)];
  if (asked && (Date.parse(k.time) !== asked.ms || body.node !== asked.node)) {
    // a target without an oom_id is a pid: the most recent kill of that pid was found, not this one
    parts.push(el("p", { className: "note", textContent: `This is the most recent kill of pid ${asked.pid}; the one ` +
      `picked, on ${asked.node} at ${cellText("time", asked.time)}, has no oom_id to name it by.` }));
  }
  parts.push(section("Why", el("ul", { className: "verdicts", id: "explain-verdicts" },
    ...body.verdicts.map((v) => { const li = el("li", { textContent: v.sentence }); li.dataset.rule = v.rule; return li; }))));
  const start = Date.parse(body.window.start), end = Date.parse(body.window.end);
  if (body.series.length && start && end) {
    parts.push(section(`The ${spanText(end - start)} before (to the kill at the right edge)`,
                       ...explainCharts(body, start, end)));
  }
  if (body.holders.length) {
    const src = body.holders[0].source || "";
    const table = el("table", { id: "explain-holders" });
    fillTable(table, ["comm", "pid", "rss_bytes", "victim"],
              body.holders.map((h) => [h.comm, h.pid, h.rss_bytes, h.victim ? "yes" : ""]));
    parts.push(section("Who held the memory" + (src ? ` (${src})` : ""), el("div", { className: "scroll" }, table)));
  }
  if (body.missing.length) {
    parts.push(section("Not recorded", el("ul", { id: "explain-missing" },
      ...body.missing.map((m) => el("li", { textContent: m })))));
  }
  if ((body.unanswered || []).length) {
    parts.push(section("Not asked or no answer (a newer kill may be there)", el("ul", { id: "explain-unanswered" },
      ...body.unanswered.map((u) => el("li", { textContent: `${u.node}: ${u.state}: ${u.detail}` })))));
  }
  $("explain-body").replaceChildren(...parts);
}

async function explainKill(kill, opener) {
  const seq = ++explainSeq;
  explaining = { kill, opener };
  const target = kill.oomId || String(kill.pid);
  const q = new URLSearchParams({ target, window: $("explain-window").value });
  if (cluster()) q.set("cluster", cluster());
  const panel = $("explain");
  panel.hidden = false;
  $("explain-title").textContent = `The kill of ${kill.comm} (pid ${kill.pid}) on ${kill.node}`;
  $("explain-status").textContent = "explaining ...";
  $("explain-error").textContent = "";
  $("explain-body").replaceChildren();
  delete panel.dataset.state;
  $("explain-title").focus();
  try {
    const body = await api("GET", "/api/v1/explain?" + q.toString());
    if (seq !== explainSeq) return;
    renderExplanation(body, kill.oomId ? null : kill);
    $("explain-status").textContent = "";
    panel.dataset.state = "done";
  } catch (err) {
    if (seq !== explainSeq) return;
    $("explain-status").textContent = "";
    const what = { 400: "The target was refused", 404: "Not found", 502: "The collector did not answer" }[err.status];
    $("explain-error").textContent = (what ? `${what}: ` : "") + err.message;
    panel.dataset.state = "error";
  }
}

function closeExplain() {
  explainSeq++;
  $("explain").hidden = true;
  const opener = explaining && explaining.opener;
  explaining = null;
  if (opener && opener.isConnected) opener.focus();
}

// -- nodes --------------------------------------------------------------------------------

async function loadNodes() {
  $("nodes-error").textContent = "";
  try {
    const body = await api("GET", "/api/v1/nodes" + (cluster() ? `?cluster=${encodeURIComponent(cluster())}` : ""));
    const rows = body.nodes.map((n) => [n.node, n.state, n.started || "-", n.kernel_release, n.last_heartbeat,
      n.sources.map((s) => `${s.name}: ${s.state}${s.detail ? " (" + s.detail + ")" : ""}`).join("; ") || "-"]);
    fillTable($("nodes"), ["node", "state", "edge started", "kernel", "last heartbeat", "probes"], rows,
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
  $("cluster").addEventListener("change", () => { closeExplain(); refresh(); });
  $("timeline").addEventListener("click", timelineClick);
  $("timeline").addEventListener("mousemove", timelineHover);
  $("kills-all").addEventListener("click", () => { killsFilter = null; showKills(); });
  $("explain-close").addEventListener("click", closeExplain);
  $("explain").addEventListener("keydown", (ev) => { if (ev.key === "Escape") { ev.preventDefault(); closeExplain(); } });
  $("explain-window").addEventListener("change", () => { if (explaining) explainKill(explaining.kill, explaining.opener); });
  showHistory();
  const key = sessionStorage.getItem(KEY);
  if (key) signIn(key); else $("apikey").focus();
});
