// The Sluice dashboard: reads the gateway's JSON views every few seconds and draws them.
//
// Rules this file keeps:
// - It reads only /sluice/usage, /sluice/calls and /sluice/experiments; the admin credential is the
//   HttpOnly cookie the login form set, which the browser sends with these same-origin fetches.
// - Everything from a view reaches the page through textContent or an attribute, never innerHTML,
//   and prompt_text / answer_text (present when `[ledger] store_text` is on) are never read.
// - No third-party code: the chart is SVG drawn here.
"use strict";

const REFRESH_MS = 5000;
const SAMPLE_LIMIT = 1000; // the calls read for latency percentiles and fallbacks: one page of /sluice/calls
const LAST_CALLS = 25;
const WINDOWS = {
  // bucket: the /sluice/usage time dimension; step: the width of one bar of the chart
  "1h": { bucket: "minute", stepMs: 5 * 60e3 },
  "24h": { bucket: "hour", stepMs: 3600e3 },
  "7d": { bucket: "hour", stepMs: 6 * 3600e3 },
};
const COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5"];
const OTHER_COLOR = "#9498a0";
const SVG = "http://www.w3.org/2000/svg";

const state = {
  window: WINDOWS[location.hash.slice(1)] ? location.hash.slice(1) : "24h",
  split: "provider",
  timer: null,
  last: null, // the last data drawn, to redraw the chart on a resize or a split change
};

// ---- formatting ---------------------------------------------------------------------------------

function usd(value) {
  const x = Number(value);
  if (!Number.isFinite(x)) return "—";
  if (x === 0) return "$0";
  if (Math.abs(x) >= 1) return "$" + x.toFixed(2);
  const digits = Math.min(10, Math.ceil(-Math.log10(Math.abs(x))) + 2);
  return "$" + x.toFixed(digits);
}

function percent(part, whole) {
  return whole > 0 ? ((100 * part) / whole).toFixed(1) + "%" : "—";
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 10000) return (value / 1000).toFixed(1) + " s";
  return (value < 10 ? value.toFixed(1) : Math.round(value).toString()) + " ms";
}

function count(value) {
  return Number(value).toLocaleString("en-US");
}

const COMPACT = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

function compact(value) {
  return COMPACT.format(value);
}

function target(provider, model) {
  if (!provider) return "—";
  return model ? provider + "/" + model : provider;
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// nearest-rank percentile, as the gateway's own /sluice/experiments computes it
function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil((q / 100) * sorted.length)) - 1];
}

// ---- DOM helpers: text only ----------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(text, { num = false, testid = null, value = null } = {}) {
  const td = el("td", text, num ? "num" : "");
  if (testid) td.dataset.testid = testid;
  if (value !== null) td.dataset.value = String(value);
  return td;
}

function setText(testid, text, value = null) {
  const node = document.querySelector(`[data-testid="${testid}"]`);
  node.textContent = text;
  if (value !== null) node.dataset.value = String(value);
}

function fill(tbodyId, rows, emptyText, columns) {
  const tbody = document.getElementById(tbodyId);
  const fresh = rows.length ? rows : [emptyRow(emptyText, columns)];
  tbody.replaceChildren(...fresh);
}

function emptyRow(text, columns) {
  const td = el("td", text, "empty");
  td.colSpan = columns;
  const tr = el("tr");
  tr.append(td);
  return tr;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

// ---- data ---------------------------------------------------------------------------------------

class SignedOut extends Error {}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401 || response.status === 403) throw new SignedOut(String(response.status));
  if (!response.ok) throw new Error(`${path.split("?")[0]} answered ${response.status}`);
  return response.json();
}

async function load(windowName) {
  const { bucket } = WINDOWS[windowName];
  const since = encodeURIComponent(windowName);
  const [usage, keys, calls, experiments] = await Promise.all([
    getJSON(`/sluice/usage?since=${since}&by=${bucket},provider,model`),
    getJSON(`/sluice/usage?since=${since}&by=key`),
    getJSON(`/sluice/calls?limit=${SAMPLE_LIMIT}`),
    getJSON(`/sluice/experiments?since=${since}`),
  ]);
  // The same cut-off as the server's, so the sample and the totals cover the same window.
  const sinceTs = Date.parse(usage.since) / 1000;
  const sample = calls.data.filter((rec) => rec.ts >= sinceTs);
  const truncated = calls.next !== null && sample.length === calls.data.length;
  return { windowName, bucket, usage, keys, sample, truncated, experiments, sinceTs, nowTs: Date.now() / 1000 };
}

// ---- sections -----------------------------------------------------------------------------------

function drawTotals(data) {
  const totals = data.usage.totals;
  setText("total-spend", usd(totals.cost_usd), totals.cost_usd);
  setText("unpriced", totals.unpriced ? `${count(totals.unpriced)} unpriced calls not counted` : "every call priced");
  setText("total-calls", count(totals.calls), totals.calls);
  setText("total-errors", count(totals.errors), totals.errors);
  setText("error-rate", percent(totals.errors, totals.calls));
  setText("cache-hit-rate", percent(totals.cache_hits, totals.calls));
  setText("cache-hits", count(totals.cache_hits), totals.cache_hits);
  setText("saved", usd(totals.saved_usd), totals.saved_usd);
  const fallbacks = data.sample.filter((rec) => rec.attempts > 1).length;
  const limited = data.sample.reduce((n, rec) => n + rec.tries.filter((t) => t.status === 429).length, 0);
  const billed = data.sample.filter((rec) => rec.possibly_billed).length;
  setText("fallbacks", count(fallbacks), fallbacks);
  setText("cooldowns", count(limited), limited);
  setText("possibly-billed", count(billed), billed);
}

function drawKeys(data) {
  const rows = data.keys.rows.map((row) => {
    const tr = el("tr");
    const key = row.group.key ?? "(none)";
    tr.dataset.testid = "key-row";
    tr.dataset.key = key;
    tr.append(
      cell(key),
      cell(count(row.calls), { num: true }),
      cell(count(row.errors), { num: true }),
      cell(usd(row.cost_usd), { num: true, testid: "key-cost", value: row.cost_usd }),
      cell(usd(row.saved_usd), { num: true }),
    );
    return tr;
  });
  fill("keys", rows, "No calls in this window.", 5);
}

// The usage rows come per (time bucket, provider, model): summed here per provider and model.
function byTarget(usage) {
  const groups = new Map();
  for (const row of usage.rows) {
    const name = target(row.group.provider, row.group.model);
    const sum = groups.get(name) ?? { name, calls: 0, errors: 0, input: 0, output: 0, cost: 0 };
    sum.calls += row.calls;
    sum.errors += row.errors;
    sum.input += row.input_tokens;
    sum.output += row.output_tokens;
    sum.cost += Number(row.cost_usd);
    groups.set(name, sum);
  }
  return [...groups.values()].sort((a, b) => b.cost - a.cost || b.calls - a.calls);
}

function drawModels(data) {
  const rows = byTarget(data.usage).map((sum) => {
    const tr = el("tr");
    tr.append(
      cell(sum.name),
      cell(count(sum.calls), { num: true }),
      cell(percent(sum.errors, sum.calls), { num: true }),
      cell(`${compact(sum.input)} / ${compact(sum.output)}`, { num: true }),
      cell(usd(sum.cost), { num: true }),
    );
    return tr;
  });
  fill("models", rows, "No calls in this window.", 5);
}

function drawTargets(data) {
  const stats = new Map();
  const get = (name) => {
    if (!stats.has(name)) stats.set(name, { name, latency: [], ttft: [], served: 0, tries: 0, failed: 0, limited: 0 });
    return stats.get(name);
  };
  for (const rec of data.sample) {
    // Latency of answers a provider gave: cache hits (no provider time) and errors would flatter it.
    if (rec.provider && rec.status < 400 && rec.cache_status !== "HIT") {
      const s = get(target(rec.provider, rec.model));
      s.served += 1;
      s.latency.push(rec.latency_ms);
      if (rec.stream && rec.ttft_ms !== null) s.ttft.push(rec.ttft_ms);
    }
    for (const t of rec.tries) {
      const s = get(target(t.provider, t.model));
      s.tries += 1;
      s.failed += t.outcome === "failed" ? 1 : 0;
      s.limited += t.status === 429 ? 1 : 0;
    }
  }
  const rows = [...stats.values()]
    .sort((a, b) => b.served - a.served || b.tries - a.tries)
    .map((s) => {
      const tr = el("tr");
      tr.append(
        cell(s.name),
        cell(count(s.served), { num: true }),
        cell(ms(percentile(s.latency, 50)), { num: true }),
        cell(ms(percentile(s.latency, 95)), { num: true }),
        cell(ms(percentile(s.ttft, 50)), { num: true }),
        cell(ms(percentile(s.ttft, 95)), { num: true }),
        cell(count(s.tries), { num: true }),
        cell(count(s.failed), { num: true }),
        cell(count(s.limited), { num: true }),
      );
      return tr;
    });
  fill("targets", rows, "No upstream tries in this window.", 9);
  const note = data.truncated
    ? `From the last ${count(data.sample.length)} calls of the window. First token: streams only.`
    : `From all ${count(data.sample.length)} calls of the window. First token: streams only.`;
  setText("sample-note", note);
}

function intervalBar(interval) {
  const box = svg("svg", { viewBox: "0 0 100 12", width: 100, height: 12, class: "interval", role: "img" });
  box.append(svg("line", { x1: 0, y1: 6, x2: 100, y2: 6, class: "interval-axis" }));
  box.append(svg("line", { x1: 50, y1: 1, x2: 50, y2: 11, class: "interval-even" }));
  if (interval) {
    const [lo, hi] = interval.map((v) => Math.max(0, Math.min(100, v * 100)));
    box.append(svg("rect", { x: lo, y: 3, width: Math.max(1, hi - lo), height: 6, rx: 2, class: "interval-range" }));
  }
  return box;
}

function drawExperiments(data) {
  const rows = [];
  for (const route of data.experiments.routes) {
    for (const v of route.variants) {
      const tr = el("tr");
      tr.dataset.testid = "variant-row";
      const interval = v.win_rate_95;
      const range = el("td");
      range.append(intervalBar(interval));
      range.append(el("span", interval ? ` ${percent(interval[0], 1)} – ${percent(interval[1], 1)}` : " —", "sub"));
      tr.append(
        cell(route.route),
        cell(v.variant),
        cell(count(v.calls), { num: true }),
        cell(count(v.errors), { num: true }),
        cell(ms(v.latency_ms.p50), { num: true }),
        cell(ms(v.latency_ms.p95), { num: true }),
        cell(v.cost_per_call_usd === null ? "—" : usd(v.cost_per_call_usd), { num: true }),
        cell(v.judged ? `${v.judged} (${v.wins}/${v.losses}/${v.ties})` : "0", { num: true }),
        cell(v.win_rate === null ? "—" : percent(v.win_rate, 1), { num: true }),
        range,
      );
      rows.push(tr);
    }
  }
  fill("experiments", rows, "No A/B route has had calls in this window.", 10);
}

function drawCalls(data) {
  const rows = data.sample.slice(0, LAST_CALLS).map((rec) => {
    const tr = el("tr", null, rec.status >= 400 ? "failed" : "");
    tr.dataset.testid = "call-row";
    tr.dataset.requestId = rec.request_id;
    tr.tabIndex = 0;
    tr.append(
      cell(clock(rec.ts)),
      cell(rec.key_id ?? "—"),
      cell(rec.route ?? "—"),
      cell(target(rec.provider, rec.model)),
      cell(rec.status, { num: true }),
      cell(rec.cache_status),
      cell(rec.attempts, { num: true }),
      cell(ms(rec.latency_ms), { num: true }),
      cell(rec.cost_usd === null ? "unpriced" : usd(rec.cost_usd), { num: true }),
    );
    const open = () => showCall(rec);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    return tr;
  });
  fill("calls", rows, "No calls in this window.", 9);
}

// ---- one call's attempts ------------------------------------------------------------------------

function showCall(rec) {
  const dialog = document.getElementById("call-detail");
  document.getElementById("call-detail-title").textContent = "Call " + rec.request_id;
  const facts = [
    ["time", new Date(rec.ts * 1000).toLocaleString()],
    ["key", rec.key_id ?? "—"],
    ["route", rec.route ?? "—"],
    ["served by", target(rec.provider, rec.model)],
    ["status", rec.status],
    ["cache", rec.cache_status],
    ["stream", rec.stream ? "yes" : "no"],
    ["latency", ms(rec.latency_ms)],
    ["first byte", ms(rec.ttft_ms)],
    ["tokens in / out", `${rec.input_tokens ?? "—"} / ${rec.output_tokens ?? "—"}`],
    ["cost", rec.cost_usd === null ? "unpriced" : usd(rec.cost_usd)],
    ["saved", rec.saved_usd === null ? "—" : usd(rec.saved_usd)],
    ["variant", rec.variant ?? "—"],
    ["A/B judge's call", rec.judge ? "yes" : "no"],
    ["possibly billed", rec.possibly_billed ? "yes" : "no"],
    ["error", rec.error ?? "—"],
  ];
  const list = document.getElementById("call-facts");
  list.replaceChildren();
  for (const [name, value] of facts) {
    const wrap = el("div");
    wrap.append(el("dt", name), el("dd", value));
    list.append(wrap);
  }
  const rows = rec.tries.map((t) => {
    const tr = el("tr", null, t.outcome === "ok" ? "" : "failed");
    tr.dataset.testid = "try-row";
    tr.append(
      cell(t.n, { num: true }),
      cell(target(t.provider, t.model)),
      cell(t.status ?? "—", { num: true, testid: "try-status" }),
      cell(t.outcome),
      cell(ms(t.first_byte_ms), { num: true }),
      cell(ms(t.duration_ms), { num: true }),
      cell(t.possibly_billed ? "yes" : "no", { testid: "try-billed" }),
      cell(t.error ?? ""),
    );
    return tr;
  });
  fill("call-tries", rows, "No upstream try (a cache hit, or refused before any).", 8);
  if (!dialog.open) dialog.showModal();
}

// ---- the chart: spend per time bucket, stacked by provider or model ------------------------------

function series(data) {
  const { stepMs } = WINDOWS[data.windowName];
  const start = Math.floor((data.sinceTs * 1000) / stepMs) * stepMs;
  const n = Math.max(1, Math.ceil((data.nowTs * 1000 - start) / stepMs));
  const totals = new Map();
  for (const row of data.usage.rows) {
    const name = row.group[data.split] ?? "(none)";
    const cost = Number(row.cost_usd);
    if (!cost) continue;
    const at = Math.floor((Date.parse(row.group[data.bucket]) - start) / stepMs);
    if (at < 0 || at >= n) continue;
    if (!totals.has(name)) totals.set(name, new Array(n).fill(0));
    totals.get(name)[at] += cost;
  }
  const sum = (values) => values.reduce((a, b) => a + b, 0);
  const ordered = [...totals.entries()].sort((a, b) => sum(b[1]) - sum(a[1]));
  const shown = ordered.slice(0, COLORS.length).map(([name, values], i) => ({ name, values, color: COLORS[i] }));
  if (ordered.length > COLORS.length) {
    const other = new Array(n).fill(0);
    for (const [, values] of ordered.slice(COLORS.length)) values.forEach((v, i) => (other[i] += v));
    shown.push({ name: "other", values: other, color: OTHER_COLOR });
  }
  return { start, stepMs, n, series: shown };
}

function niceCeiling(x) {
  if (x <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * power >= x) return m * power;
  return 10 * power;
}

function tickLabel(ms, windowName) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return windowName === "7d" ? d.toLocaleDateString([], { weekday: "short" }) + " " + hm : hm;
}

function drawChart(data) {
  const box = document.getElementById("chart");
  const legend = document.getElementById("legend");
  const { start, stepMs, n, series: shown } = series({ ...data, split: state.split });
  if (!shown.length) {
    box.replaceChildren(el("p", "No priced spend in this window.", "empty"));
    legend.replaceChildren();
    return;
  }
  const width = Math.max(280, box.clientWidth);
  const height = 220;
  const pad = { left: 64, right: 8, top: 10, bottom: 26 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const stacks = Array.from({ length: n }, (_, i) => shown.reduce((a, s) => a + s.values[i], 0));
  const top = niceCeiling(Math.max(...stacks));
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  const slot = plotW / n;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Spend over time" });
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid-line" }));
    const label = svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = usd(v);
    chart.append(label);
  }
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 90))));
  for (let i = 0; i < n; i++) {
    const x = pad.left + i * slot;
    let base = 0;
    for (const s of shown) {
      const v = s.values[i];
      if (!v) continue;
      const bar = svg("rect", {
        x: x + slot * 0.1, y: y(base + v), width: Math.max(1, slot * 0.8), height: Math.max(0.5, y(base) - y(base + v)), fill: s.color,
      });
      const title = svg("title", {});
      title.textContent = `${s.name}: ${usd(v)} (${tickLabel(start + i * stepMs, data.windowName)})`;
      bar.append(title);
      chart.append(bar);
      base += v;
    }
    if (i % every === 0) {
      const label = svg("text", { x: x + slot / 2, y: height - 8, "text-anchor": "middle", class: "axis" });
      label.textContent = tickLabel(start + i * stepMs, data.windowName);
      chart.append(label);
    }
  }
  box.replaceChildren(chart);
  legend.replaceChildren(
    ...shown.map((s) => {
      const item = el("li");
      const swatch = el("span", null, "swatch");
      swatch.style.background = s.color; // CSSOM, which the CSP allows (unlike a style attribute)
      item.append(swatch, el("span", `${s.name} ${usd(s.values.reduce((a, b) => a + b, 0))}`));
      return item;
    }),
  );
}

// ---- the loop -----------------------------------------------------------------------------------

function draw(data) {
  state.last = data;
  drawTotals(data);
  drawChart(data);
  drawKeys(data);
  drawModels(data);
  drawTargets(data);
  drawExperiments(data);
  drawCalls(data);
}

function signedOut() {
  // Nothing the last session showed stays on screen.
  document.getElementById("main").hidden = true;
  document.getElementById("main").replaceChildren();
  document.getElementById("signed-out").hidden = false;
  document.querySelector("form.logout").hidden = true; // it is an admin path too: it would answer 401
  setText("status", "logged out");
}

async function refresh() {
  clearTimeout(state.timer);
  const asked = state.window;
  try {
    const data = await load(asked);
    if (asked !== state.window) return; // a newer window was chosen meanwhile; its own refresh draws it
    document.getElementById("main").hidden = false; // first, so the chart can measure its width
    draw(data);
    setText("status", "updated " + new Date().toLocaleTimeString());
  } catch (error) {
    if (error instanceof SignedOut) {
      signedOut();
      return; // no more polling: the next visit logs in again
    }
    setText("status", "could not refresh: " + error.message);
  }
  if (!document.hidden) state.timer = setTimeout(refresh, REFRESH_MS);
}

function choose(selector, attr, current) {
  for (const button of document.querySelectorAll(selector)) {
    button.setAttribute("aria-pressed", String(button.dataset[attr] === current));
  }
}

function start() {
  for (const button of document.querySelectorAll("[data-window]")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      history.replaceState(null, "", "#" + state.window);
      choose("[data-window]", "window", state.window);
      refresh();
    });
  }
  for (const button of document.querySelectorAll("[data-split]")) {
    button.addEventListener("click", () => {
      state.split = button.dataset.split;
      choose("[data-split]", "split", state.split);
      if (state.last) drawChart(state.last);
    });
  }
  const dialog = document.getElementById("call-detail");
  document.getElementById("call-detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => state.last && drawChart(state.last), 150);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh(); // paused while the tab is hidden; catch up at once
  });
  choose("[data-window]", "window", state.window);
  choose("[data-split]", "split", state.split);
  refresh();
}

start();
