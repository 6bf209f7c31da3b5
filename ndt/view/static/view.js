// ndt view: the page over `python -m ndt.view`'s JSON API (ndt/view/server.py). No framework, no network:
// the charts are Plotly's offline bundle, loaded from the server when a chart is first drawn.
// Views (in the URL hash): #/grid/<sweep>, #/run/<sweep>/<run>?metric=M, #/compare/<sweep>?runs=a,b&metric=M.
"use strict";

const S = {
  index: null,        // /api/index
  sweep: null,        // current sweep name
  view: null,         // "grid" | "run" | "compare"
  params: null,       // URLSearchParams of the hash
  version: null,      // version of what is drawn (the server answers "unchanged" for it)
  grid: null,         // last grid payload
  run: null,          // last run payload
  filters: { family: "", dataset: "", state: "", text: "" },
  timer: null,
  busy: false,
  lastUpdate: null,
};
window.ndtView = S;  // for the tests and the curious

const STATES = ["done", "skipped", "running", "failed", "missing"];

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(digits)).toString();
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${response.status}: ${(await response.text()).trim()}`);
  return response.json();
}

let plotlyPromise = null;
function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/static/plotly.min.js";
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => reject(new Error("could not load /static/plotly.min.js"));
      document.head.appendChild(script);
    });
  }
  return plotlyPromise;
}

function hashFor(view, sweep, extra = "", params = null) {
  const q = params && [...params].length ? `?${params}` : "";
  return `#/${view}/${encodeURIComponent(sweep)}${extra}${q}`;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}

// ---- the page frame ------------------------------------------------------------------------------

function renderHeader() {
  const select = document.getElementById("sweep");
  const names = S.index.sweeps.map((s) => s.name);
  select.innerHTML = names.map((n) => `<option${n === S.sweep ? " selected" : ""}>${esc(n)}</option>`).join("");
  select.onchange = () => { location.hash = hashFor("grid", select.value); };
  document.getElementById("nav-grid").href = hashFor("grid", S.sweep);
  document.getElementById("nav-compare").href = hashFor("compare", S.sweep);
}

function renderCounts(counts) {
  document.getElementById("counts").innerHTML = STATES.filter((s) => counts[s] > 0 || s !== "skipped")
    .map((s) => `<span class="count" data-state="${s}"><span class="badge state-${s}">${counts[s]}</span> ${s}</span>`).join("");
}

function markLive() {
  S.lastUpdate = new Date();
  const running = S.grid ? S.grid.counts.running : 0;
  document.getElementById("live").textContent =
    `live: every ${S.index.refresh_s} s · ${running} running · read ${S.lastUpdate.toLocaleTimeString()}`;
}

function showError(err) {
  document.getElementById("app").innerHTML = `<div class="error-box">${esc(err.message || err)}</div>`;
}

// ---- sweep grid ----------------------------------------------------------------------------------

function sparkline(tile) {
  const W = 184, H = 38, pad = 2;
  const runs = tile.runs.filter((r) => r.spark.steps.length > 0);
  if (!runs.length) return `<svg class="spark" viewBox="0 0 ${W} ${H}"></svg>`;
  let xmax = 1, ymin = Infinity, ymax = -Infinity;
  for (const r of tile.runs) xmax = Math.max(xmax, r.planned_steps ? r.planned_steps - 1 : 0, r.last_step || 0);
  for (const r of runs) for (const v of r.spark.values) if (v !== null) { ymin = Math.min(ymin, v); ymax = Math.max(ymax, v); }
  if (!Number.isFinite(ymin)) { ymin = 0; ymax = 1; }
  if (ymax - ymin < 1e-12) { ymin -= 0.5; ymax += 0.5; }
  const x = (s) => pad + (W - 2 * pad) * (s / xmax);
  const y = (v) => H - pad - (H - 2 * pad) * ((v - ymin) / (ymax - ymin));
  let svg = `<svg class="spark" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">`;
  for (const r of runs) {
    for (const e of r.init_escape) {
      svg += `<rect class="escape" x="${x(e.start_step)}" y="0" width="${Math.max(1, x(e.end_step) - x(e.start_step))}" height="${H}" fill="#bdbdbd" opacity="0.45"><title>initial escape, steps ${e.start_step}–${e.end_step}</title></rect>`;
    }
  }
  runs.forEach((r, i) => {
    const pts = [];
    r.spark.steps.forEach((s, k) => { if (r.spark.values[k] !== null) pts.push(`${x(s).toFixed(1)},${y(r.spark.values[k]).toFixed(1)}`); });
    svg += `<polyline fill="none" stroke="${i === 0 ? "#37474f" : "#78909c"}" stroke-width="1.2" points="${pts.join(" ")}"/>`;
    for (const e of r.events) {
      svg += `<line class="event" x1="${x(e.peak_step)}" x2="${x(e.peak_step)}" y1="0" y2="${H}" stroke="#e53935" stroke-width="1"><title>jump ${e.rank} at step ${e.peak_step} (size ${fmt(e.size)})</title></line>`;
    }
  });
  return svg + "</svg>";
}

function tileHTML(tile) {
  const runs = tile.runs;
  const accs = runs.map((r) => r.final_accuracy).filter((a) => a !== null && a !== undefined);
  const acc = accs.length ? `${(100 * accs.reduce((a, b) => a + b, 0) / accs.length).toFixed(1)}%` : "";
  const progress = runs.map((r) => r.progress ?? 0).reduce((a, b) => a + b, 0) / runs.length;
  const counts = {};
  for (const r of runs) counts[r.state] = (counts[r.state] || 0) + 1;
  const label = Object.keys(counts).length === 1 ? tile.state
    : STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(" · ");
  const measured = runs.map((r) => r.measurements).reduce((a, b) => a + b, 0);
  const seeds = runs.map((r) => `<a class="seed state-${r.state}" data-run="${esc(r.name)}" data-state="${r.state}" href="${hashFor("run", S.sweep, "/" + encodeURIComponent(r.name))}" title="${esc(r.name)}: ${r.state}">s${esc(r.seed ?? "?")}</a>`).join("");
  const errors = runs.filter((r) => r.reason).map((r) => `<div class="error" title="${esc(r.reason)}">${runs.length > 1 ? `s${esc(r.seed)}: ` : ""}${esc(r.reason)}</div>`).join("");
  const events = runs.map((r) => r.events.length).reduce((a, b) => a + b, 0);
  return `<div class="tile state-${tile.state}" data-arch="${esc(tile.arch)}" data-dataset="${esc(tile.dataset)}" data-family="${esc(tile.family)}" data-state="${tile.state}" data-runs="${esc(runs.map((r) => r.name).join(","))}" data-measurements="${measured}">
    <div class="tile-head"><span class="badge state-${tile.state}">${esc(label)}</span><span class="acc" title="final test accuracy${runs.length > 1 ? " (mean over seeds)" : ""}">${acc}</span></div>
    ${sparkline(tile)}
    <div class="progress" title="${(100 * progress).toFixed(0)}% of the planned steps"><div style="width:${(100 * progress).toFixed(1)}%"></div></div>
    <div class="tile-foot"><span class="measurements">${measured} meas. · ${events} jump${events === 1 ? "" : "s"}</span><span>${seeds}</span></div>
    ${errors}
  </div>`;
}

function renderGrid(data) {
  S.grid = data;
  renderCounts(data.counts);
  const f = S.filters;
  const app = document.getElementById("app");
  const option = (value, current, label = value) => `<option value="${esc(value)}"${value === current ? " selected" : ""}>${esc(label)}</option>`;
  const tiles = data.tiles.filter((t) => (!f.family || t.family === f.family) && (!f.dataset || t.dataset === f.dataset)
    && (!f.state || t.runs.some((r) => r.state === f.state)) && (!f.text || t.arch.includes(f.text) || t.dataset.includes(f.text)));
  const datasets = data.datasets.filter((d) => tiles.some((t) => t.dataset === d));
  const archs = data.archs.filter((a) => tiles.some((t) => t.arch === a));
  const byPair = new Map(tiles.map((t) => [`${t.arch}\u0000${t.dataset}`, t]));
  const familyOf = new Map(data.tiles.map((t) => [t.arch, t.family]));
  let rows = "";
  for (const arch of archs) {
    rows += `<tr><th class="arch">${esc(arch)}<small>${esc(familyOf.get(arch))}</small></th>`;
    for (const d of datasets) {
      const t = byPair.get(`${arch}\u0000${d}`);
      rows += `<td>${t ? tileHTML(t) : ""}</td>`;
    }
    rows += "</tr>";
  }
  const expected = data.expected === null ? "no multirun.yaml: the runs on disk" : `${data.expected} expected by multirun.yaml`;
  app.innerHTML = `
    <div class="filters">
      <label>family <select id="f-family">${option("", f.family, "all")}${data.families.map((x) => option(x, f.family)).join("")}</select></label>
      <label>dataset <select id="f-dataset">${option("", f.dataset, "all")}${data.datasets.map((x) => option(x, f.dataset)).join("")}</select></label>
      <label>state <select id="f-state">${option("", f.state, "all")}${STATES.map((x) => option(x, f.state)).join("")}</select></label>
      <label>name <input id="f-text" size="14" value="${esc(f.text)}"></label>
      <span class="muted">${tiles.length} of ${data.tiles.length} pairs · ${expected} · sparkline: layer-mean ${esc(data.metric)}, red = ${esc(data.detector)} detector's jumps</span>
    </div>
    <table class="grid"><thead><tr><th></th>${datasets.map((d) => `<th>${esc(d)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>`;
  for (const key of ["family", "dataset", "state"]) {
    document.getElementById(`f-${key}`).onchange = (ev) => { S.filters[key] = ev.target.value; renderGrid(S.grid); };
  }
  document.getElementById("f-text").oninput = (ev) => {
    S.filters.text = ev.target.value;
    renderGrid(S.grid);
    const input = document.getElementById("f-text");
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  };
  for (const el of app.querySelectorAll(".tile")) {
    el.onclick = (ev) => {
      if (ev.target.closest("a")) return;
      location.hash = hashFor("run", S.sweep, "/" + encodeURIComponent(el.dataset.runs.split(",")[0]));
    };
  }
  document.body.dataset.view = "grid";
  document.body.dataset.ready = "grid";
  performance.mark("ndt-grid-ready");  // `make bench` reads these marks
  markLive();
  // Fetch the chart bundle while the user reads the grid: the run view then draws at once.
  setTimeout(() => loadPlotly().catch(() => {}), 50);
}

async function updateGrid(force) {
  const metric = S.index.default_metric;
  const v = force || S.view !== "grid" ? "" : `&v=${S.version}`;
  const data = await getJSON(`/api/sweep?sweep=${encodeURIComponent(S.sweep)}&metric=${metric}${v}`);
  if (data.unchanged) { markLive(); return; }
  S.version = data.version;
  renderGrid(data);
}

// ---- one run -------------------------------------------------------------------------------------

const PALETTE = (i, n) => `hsl(${Math.round(220 - 200 * (n > 1 ? i / (n - 1) : 0))}, 65%, 45%)`;

function eventShapes(run, yref = "paper") {
  const shapes = [];
  for (const e of run.init_escape) {
    shapes.push({ type: "rect", xref: "x", yref, x0: e.start_step, x1: e.end_step, y0: 0, y1: 1, fillcolor: "rgba(120,120,120,0.18)", line: { width: 0 }, layer: "below" });
  }
  for (const e of run.events) {
    shapes.push({ type: "rect", xref: "x", yref, x0: e.start_step, x1: e.end_step, y0: 0, y1: 1, fillcolor: "rgba(229,57,53,0.10)", line: { width: 0 }, layer: "below" });
    shapes.push({ type: "line", xref: "x", yref, x0: e.peak_step, x1: e.peak_step, y0: 0, y1: 1, line: { color: "rgba(229,57,53,0.8)", width: 1, dash: "dot" } });
  }
  return shapes;
}

function eventAnnotations(run) {
  const notes = run.events.map((e) => ({ x: e.peak_step, y: 1, xref: "x", yref: "paper", yanchor: "bottom", showarrow: false, text: `#${e.rank}`, font: { size: 10, color: "#c62828" } }));
  for (const e of run.init_escape) notes.push({ x: (e.start_step + e.end_step) / 2, y: 1, xref: "x", yref: "paper", yanchor: "bottom", showarrow: false, text: "initial escape", font: { size: 10, color: "#616161" } });
  return notes;
}

function normalizedMatrix(matrix) {
  return matrix.map((row) => {
    const finite = row.filter((v) => v !== null);
    const hi = Math.max(...finite), lo = Math.min(...finite);
    return row.map((v) => (v === null || hi === lo ? v : (v - lo) / (hi - lo)));
  });
}

function spansDecades(values) {
  // A log axis helps a gradient norm that spans orders of magnitude and garbles a nearly constant one.
  const v = values.filter((x) => x !== null && x > 0);
  return v.length > 1 && Math.max(...v) / Math.min(...v) > 20;
}

async function drawRun(run) {
  const Plotly = await loadPlotly();
  const normalize = document.getElementById("normalize").checked;
  const base = { margin: { l: 110, r: 20, t: 34, b: 40 }, uirevision: run.name, font: { size: 11 } };
  const heat = document.getElementById("heatmap");
  await Plotly.react(heat, [{
    type: "heatmap", x: run.steps, y: run.layers, z: normalize ? normalizedMatrix(run.matrix) : run.matrix,
    colorscale: "Viridis", colorbar: { title: { text: normalize ? "per-layer 0–1" : run.metric, side: "right" } },
    hovertemplate: "step %{x}<br>%{y}<br>" + run.metric + " %{z:.4g}<extra></extra>",
  }], { ...base, title: { text: `${run.metric}: layer × step`, font: { size: 13 } }, xaxis: { title: { text: "step" } },
    yaxis: { autorange: "reversed", type: "category" }, shapes: eventShapes(run).filter((s) => s.type === "line"), annotations: eventAnnotations(run) },
  { responsive: true, displaylogo: false });
  heat.dataset.metric = run.metric;
  heat.dataset.normalized = String(normalize);

  const n = run.layers.length;
  const traces = run.layers.map((layer, i) => ({ type: "scatter", mode: "lines", name: layer, x: run.steps, y: run.matrix[i], line: { width: 1, color: PALETTE(i, n) }, connectgaps: false }));
  traces.push({ type: "scatter", mode: "lines", name: "layer mean", x: run.mean.steps, y: run.mean.values, line: { width: 2.5, color: "#212121" } });
  const lines = document.getElementById("lines");
  await Plotly.react(lines, traces, { ...base, margin: { l: 50, r: 10, t: 34, b: 40 }, title: { text: `${run.metric} per layer; ${S.index.detector} detector's jumps on the layer mean`, font: { size: 13 } },
    xaxis: { title: { text: "step" } }, yaxis: { title: { text: run.metric } }, shapes: eventShapes(run), annotations: eventAnnotations(run), legend: { font: { size: 10 } } },
  { responsive: true, displaylogo: false });
  lines.dataset.metric = run.metric;

  const loss = document.getElementById("loss");
  await Plotly.react(loss, [
    { type: "scatter", mode: "lines", name: "loss", x: run.loss.steps, y: run.loss.values, line: { color: "#6a1b9a", width: 1.5 } },
    { type: "scatter", mode: "lines", name: "gradient norm", x: run.grad_norm.steps, y: run.grad_norm.values, yaxis: "y2", line: { color: "#ef6c00", width: 1.2 } },
  ], { ...base, margin: { l: 50, r: 60, t: 34, b: 40 }, title: { text: "training loss and gradient norm", font: { size: 13 } }, xaxis: { title: { text: "step" } },
    yaxis: { title: { text: "loss" } }, yaxis2: { title: { text: "grad norm" }, overlaying: "y", side: "right", type: spansDecades(run.grad_norm.values) ? "log" : "linear" }, shapes: eventShapes(run), legend: { orientation: "h", y: -0.2 } },
  { responsive: true, displaylogo: false });
  document.body.dataset.ready = "run";
  performance.mark("ndt-run-ready");
}

function factsHTML(record) {
  const cell = (v) => {
    if (v !== null && typeof v === "object" && !Object.keys(v).length) return "—";
    if (v !== null && typeof v === "object") {
      return Object.entries(v).map(([k, x]) => `<div><span class="muted">${esc(k)}</span> ${esc(typeof x === "object" && x !== null ? JSON.stringify(x) : fmt(x, 5))}</div>`).join("");
    }
    return esc(fmt(v, 5));
  };
  return Object.entries(record).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${k === "error" && v ? `<div class="error-box">${esc(v)}</div>` : cell(v)}</td></tr>`).join("");
}

function eventsHTML(run) {
  const rows = [...run.init_escape.map((e) => ({ ...e, rank: null })), ...run.events].sort((a, b) => a.start_step - b.start_step);
  if (!rows.length) return `<p class="muted">no jump on the layer-mean ${esc(run.metric)} (${esc(S.index.detector)} detector)</p>`;
  return `<table class="list" id="events-table"><thead><tr><th>jump</th><th>kind</th><th>steps (start · peak · end)</th><th>size</th><th>peak z</th><th>report</th></tr></thead><tbody>${rows.map((e) => `
    <tr class="event-row" data-kind="${e.kind}" data-rank="${e.rank ?? ""}"><td>${e.rank ?? ""}</td><td>${esc(e.kind.replace("_", " "))}</td>
    <td class="num">${e.start_step} · ${e.peak_step} · ${e.end_step}</td><td class="num">${fmt(e.size)}</td><td class="num">${fmt(e.peak_z)}</td>
    <td>${e.report ? `<a class="report" href="/files/${e.report.split("/").map(encodeURIComponent).join("/")}" target="_blank">report</a>`
      : e.command ? `<code class="command">${esc(e.command)}</code>` : `<span class="muted">not a transition</span>`}</td></tr>`).join("")}</tbody></table>`;
}

function renderRunFrame(run) {
  const app = document.getElementById("app");
  const metrics = S.index.metrics;
  const sameArch = new URLSearchParams({ preset: `arch:${run.arch}`, metric: run.metric });
  const sameData = new URLSearchParams({ preset: `dataset:${run.dataset}`, metric: run.metric });
  app.innerHTML = `
    <div class="run-head"><h2 id="run-name">${esc(run.name)}</h2><span class="badge state-${run.state}" id="run-state">${run.state}</span>
      <span class="muted" id="run-progress"></span>
      <a href="${hashFor("grid", S.sweep)}">← grid</a>
      <a href="${hashFor("compare", S.sweep, "", sameArch)}">compare ${esc(run.arch)} across datasets</a>
      <a href="${hashFor("compare", S.sweep, "", sameData)}">compare ${esc(run.dataset)} across architectures</a></div>
    <div id="run-reason"></div>
    <div class="controls">
      <label>metric <select id="metric">${metrics.map((m) => `<option value="${m}"${m === run.metric ? " selected" : ""}${run.metrics.length && !run.metrics.includes(m) ? " disabled" : ""}>${m}</option>`).join("")}</select></label>
      <label><input type="checkbox" id="normalize"> heatmap scaled per layer (0–1)</label>
    </div>
    <div class="charts">
      <div class="chart wide" id="heatmap"></div>
      <div class="chart" id="lines"></div>
      <div class="chart" id="loss"></div>
    </div>
    <div class="panels">
      <div class="panel"><h3>jumps (${esc(S.index.detector)} detector, layer-mean ${esc(run.metric)})</h3><div id="events"></div></div>
      <div class="panel"><h3>run.json</h3><table class="list" id="facts"></table><details><summary>resolved config</summary><pre id="config"></pre></details></div>
    </div>`;
  document.getElementById("metric").onchange = (ev) => {
    const params = new URLSearchParams(S.params);
    params.set("metric", ev.target.value);
    location.hash = hashFor("run", S.sweep, "/" + encodeURIComponent(run.name), params);
  };
  document.getElementById("normalize").onchange = () => drawRun(S.run);
}

function renderRunText(run) {
  const done = run.progress === null || run.planned_steps === null ? "" : ` · ${(100 * run.progress).toFixed(0)}% of ${run.planned_steps} steps`;
  document.getElementById("run-progress").textContent = `${run.measurements} measurements, last step ${run.last_step ?? "—"}${done}`;
  document.getElementById("run-state").textContent = run.state;
  document.getElementById("run-state").className = `badge state-${run.state}`;
  document.getElementById("run-reason").innerHTML = run.reason ? `<div class="error-box">${esc(run.reason)}</div>` : "";
  document.getElementById("events").innerHTML = eventsHTML(run);
  document.getElementById("facts").innerHTML = factsHTML(run.record_error ? { ...run.record, unreadable: run.record_error } : run.record);
  document.getElementById("config").textContent = run.config ? JSON.stringify(run.config, null, 2) : "(none recorded)";
}

async function updateRun(force) {
  const name = S.runName;
  const metric = S.params.get("metric") || S.index.default_metric;
  const v = force ? "" : `&v=${encodeURIComponent(S.version)}`;
  const run = await getJSON(`/api/run?sweep=${encodeURIComponent(S.sweep)}&run=${encodeURIComponent(name)}&metric=${metric}${v}`);
  if (run.unchanged) { markLive(); return; }
  if (force || !document.getElementById("heatmap")) renderRunFrame(run);
  S.run = run;
  S.version = run.version;
  renderRunText(run);
  markLive();
  if (run.steps.length) await drawRun(run);
  else document.body.dataset.ready = "run";
}

// ---- compare -------------------------------------------------------------------------------------

async function renderCompare(force) {
  const grid = await getJSON(`/api/sweep?sweep=${encodeURIComponent(S.sweep)}&metric=${S.index.default_metric}`);
  S.grid = grid;
  renderCounts(grid.counts);
  const runs = grid.tiles.flatMap((t) => t.runs).filter((r) => r.state !== "missing");
  const p = S.params;
  let chosen = (p.get("runs") || "").split(",").filter(Boolean);
  const preset = p.get("preset");
  if (preset && !chosen.length) {
    const [key, value] = preset.split(":");
    chosen = runs.filter((r) => r[key] === value).map((r) => r.name);
  }
  if (!chosen.length) chosen = runs.slice(0, 3).map((r) => r.name);
  const metric = p.get("metric") || S.index.default_metric;
  const layer = p.get("layer") || "mean";
  const band = p.get("band") === "1";
  const app = document.getElementById("app");
  if (force || !document.getElementById("compare-chart")) {
    app.innerHTML = `<div class="compare-layout">
      <div><div class="controls" style="flex-direction:column;align-items:flex-start">
        <label>metric <select id="c-metric">${S.index.metrics.map((m) => `<option${m === metric ? " selected" : ""}>${m}</option>`).join("")}</select></label>
        <label>layer <select id="c-layer"><option value="mean">layer mean</option></select></label>
        <label><input type="checkbox" id="c-band"${band ? " checked" : ""}> seeds of a pair as mean and min–max band</label>
        <label>runs <input id="c-filter" placeholder="filter" size="16"></label></div>
        <div class="runlist" id="c-runs">${runs.map((r) => `<label data-name="${esc(r.name)}"><input type="checkbox" value="${esc(r.name)}"${chosen.includes(r.name) ? " checked" : ""}> <span class="badge state-${r.state}">${r.state[0]}</span> ${esc(r.name)}</label>`).join("")}</div></div>
      <div class="chart" id="compare-chart" style="min-height:520px"></div></div>`;
    const apply = () => {
      const params = new URLSearchParams();
      params.set("runs", [...document.querySelectorAll("#c-runs input:checked")].map((i) => i.value).join(","));
      params.set("metric", document.getElementById("c-metric").value);
      params.set("layer", document.getElementById("c-layer").value);
      if (document.getElementById("c-band").checked) params.set("band", "1");
      location.hash = hashFor("compare", S.sweep, "", params);
    };
    for (const id of ["c-metric", "c-layer", "c-band"]) document.getElementById(id).onchange = apply;
    for (const box of document.querySelectorAll("#c-runs input")) box.onchange = apply;
    document.getElementById("c-filter").oninput = (ev) => {
      for (const label of document.querySelectorAll("#c-runs label")) label.style.display = label.dataset.name.includes(ev.target.value) ? "" : "none";
    };
  }
  const data = await getJSON(`/api/compare?sweep=${encodeURIComponent(S.sweep)}&runs=${chosen.map(encodeURIComponent).join(",")}&metric=${metric}&layer=${layer}&band=${band ? 1 : 0}`);
  const nLayers = Math.max(0, ...data.series.map((s) => s.layers.length));
  const layerNames = data.series.find((s) => s.layers.length === nLayers)?.layers || [];
  document.getElementById("c-layer").innerHTML = `<option value="mean">layer mean</option>` + layerNames.map((name, i) => `<option value="${i}"${String(i) === layer ? " selected" : ""}>${i}: ${esc(name)}</option>`).join("");
  const Plotly = await loadPlotly();
  const traces = [];
  const banded = new Set(data.bands.flatMap((b) => b.runs));
  data.bands.forEach((b, i) => {
    const color = PALETTE(i, Math.max(2, data.bands.length));
    traces.push({ type: "scatter", mode: "lines", x: b.steps, y: b.high, line: { width: 0 }, showlegend: false, hoverinfo: "skip" });
    traces.push({ type: "scatter", mode: "lines", x: b.steps, y: b.low, fill: "tonexty", fillcolor: color.replace("hsl", "hsla").replace(")", ", 0.2)"), line: { width: 0 }, name: `${b.arch} / ${b.dataset}: min–max over ${b.runs.length} seeds`, hoverinfo: "skip" });
    traces.push({ type: "scatter", mode: "lines", x: b.steps, y: b.mean, line: { color, width: 2 }, name: `${b.arch} / ${b.dataset}: mean of ${b.runs.length} seeds` });
  });
  data.series.filter((s) => !banded.has(s.name)).forEach((s, i) => {
    traces.push({ type: "scatter", mode: "lines", x: s.steps, y: s.values, name: s.name, line: { width: 1.5, color: PALETTE(i, Math.max(2, data.series.length)) } });
  });
  const chart = document.getElementById("compare-chart");
  await Plotly.react(chart, traces, { margin: { l: 60, r: 10, t: 34, b: 40 }, uirevision: "compare", title: { text: `${metric}, ${layer === "mean" ? "layer mean" : "layer " + (layerNames[+layer] || layer)}`, font: { size: 13 } },
    xaxis: { title: { text: "step" } }, yaxis: { title: { text: metric } }, legend: { font: { size: 10 } } }, { responsive: true, displaylogo: false });
  chart.dataset.series = String(traces.length);
  document.body.dataset.view = "compare";
  document.body.dataset.ready = "compare";
  markLive();
}

// ---- routing and the live loop -------------------------------------------------------------------

async function route() {
  const { parts, params } = parseHash();
  const [view = "grid", sweep, run] = parts;
  S.params = params;
  S.sweep = S.index.sweeps.some((s) => s.name === sweep) ? sweep : (S.index.sweeps[0] || {}).name;
  if (!S.sweep) { document.getElementById("app").innerHTML = `<p>No sweep under ${esc(S.index.root)} yet: the page will show it when runs start.</p>`; S.view = null; return; }
  S.view = ["grid", "run", "compare"].includes(view) ? view : "grid";
  S.runName = run;
  S.version = null;
  document.body.dataset.ready = "";
  document.body.dataset.view = S.view;
  renderHeader();
  if (S.view !== "grid") loadPlotly().catch(() => {});  // fetch the bundle while the data comes
  try {
    if (S.view === "run" && run) await updateRun(true);
    else if (S.view === "compare") await renderCompare(true);
    else { S.view = "grid"; await updateGrid(true); }
  } catch (err) { showError(err); }
}

async function tick() {
  if (S.busy || !S.view) {
    if (!S.view) { S.index = await getJSON("/api/index"); if (S.index.sweeps.length) route(); }
    return;
  }
  S.busy = true;
  try {
    if (S.view === "grid") await updateGrid(false);
    else if (S.view === "run") await updateRun(false);
  } catch (err) {
    document.getElementById("live").textContent = `not updated: ${err.message}`;
  } finally { S.busy = false; }
}

async function start() {
  try {
    S.index = await getJSON("/api/index");
  } catch (err) { showError(err); return; }
  window.addEventListener("hashchange", route);
  await route();
  S.timer = setInterval(tick, 1000 * S.index.refresh_s);
}

start();
