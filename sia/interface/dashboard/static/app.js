// sia dashboard: a hash-routed page over the JSON endpoints of sia/dashboard/app.py.
// Live updates come from one EventSource (/api/stream); a commit to the watched run
// refetches only that run's summary (the server folds the new events, not the log).
"use strict";

const TOKEN = document.querySelector('meta[name="sia-token"]').content;
const ACTIONS = document.querySelector('meta[name="sia-actions"]').content === "true";
const PALETTE = ["#2458d6", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5f3dc4", "#a16207"];
const RECENT_DECISIONS = 20; // a long run's page paints its newest decisions first
const MARKERS = { edit_harness: "harness edit", update_weights: "weight update", stop: "stop" };

let view = { name: null, stop: () => {} };
let source = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const child of children.flat()) if (child) el.append(child instanceof Node ? child : String(child));
  return el;
}

const fmt = {
  score: (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3)),
  money: (v) => "$" + Number(v || 0).toFixed(4),
  secs: (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(1) + " s"),
  delta: (v) => (v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + Number(v).toFixed(3)),
  short: (s, n = 10) => (s ? s.slice(0, n) : "–"),
  yesno: (v) => (v ? "yes" : "no"),
};

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Sia-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function runLink(id) { return h("a", { href: `#/run/${encodeURIComponent(id)}` }, id); }
function statusPill(status) { return h("span", { class: `pill ${status}` }, status); }

function listen(run, handlers) {
  if (source) source.close();
  const live = document.getElementById("live");
  source = new EventSource(`/api/stream${run ? `?run=${encodeURIComponent(run)}` : ""}`);
  source.onopen = () => { live.textContent = "● live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "○ reconnecting"; live.className = "live"; };
  for (const [name, fn] of Object.entries(handlers)) source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
}

function crumbs(...parts) {
  const el = document.getElementById("crumbs");
  el.replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

function fail(where, error) {
  where.replaceChildren(h("p", { class: "error" }, String(error.message || error)));
}

// ------------------------------------------------------------------ runs list

async function showRuns(main) {
  crumbs(h("a", { href: "#/" }, "runs"));
  const filters = { text: "", status: "", task: "" };
  const table = h("tbody");
  const tasks = h("select", { id: "filter-task", onchange: (e) => { filters.task = e.target.value; draw(); } }, h("option", { value: "" }, "all tasks"));
  const statuses = h("select", { id: "filter-status", onchange: (e) => { filters.status = e.target.value; draw(); } }, h("option", { value: "" }, "any status"));
  let rows = [];
  main.replaceChildren(
    h("h1", {}, "Runs"),
    h("div", { class: "filters" },
      h("input", { id: "filter-text", placeholder: "filter by run id or parent", oninput: (e) => { filters.text = e.target.value; draw(); } }),
      tasks, statuses),
    h("section", { class: "card" }, h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["run", "task", "mode", "status", "generations", "best dev score", "spend", "tokens", "parent", "events"]
        .map((c, i) => h("th", { class: i >= 4 && i !== 8 ? "num" : "" }, c)))),
      table)));

  function fill(select, values, current) {
    const first = select.firstChild;
    select.replaceChildren(first, ...[...new Set(values)].sort().map((v) => h("option", { value: v, selected: v === current }, v)));
  }
  function draw() {
    const shown = rows.filter((r) =>
      (!filters.task || r.task === filters.task) && (!filters.status || r.status === filters.status) &&
      (!filters.text || r.run_id.includes(filters.text) || (r.parent_run_id || "").includes(filters.text)));
    table.replaceChildren(...shown.map((r) => h("tr", { class: "clickable", "data-run": r.run_id, onclick: () => { location.hash = `#/run/${encodeURIComponent(r.run_id)}`; } },
      h("td", {}, runLink(r.run_id)), h("td", {}, r.task || "–"), h("td", {}, r.mode || "–"), h("td", {}, statusPill(r.status)),
      h("td", { class: "num gens" }, r.generations), h("td", { class: "num" }, fmt.score(r.best_dev_score)),
      h("td", { class: "num" }, fmt.money(r.spend.dollars)), h("td", { class: "num" }, r.spend.tokens),
      h("td", {}, r.parent_run_id ? h("span", {}, runLink(r.parent_run_id), ` @ ${r.fork_seq}`) : "–"),
      h("td", { class: "num" }, r.events))));
    if (!shown.length) table.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, rows.length ? "no run matches the filters" : "no runs yet: start one with `sia run`")));
  }
  async function load() {
    try { rows = await getJSON("/api/runs"); } catch (e) { return fail(table, e); }
    fill(tasks, rows.map((r) => r.task || "–"), filters.task);
    fill(statuses, rows.map((r) => r.status), filters.status);
    draw();
  }
  await load();
  let pending = null;
  listen(null, { runs: () => { clearTimeout(pending); pending = setTimeout(load, 50); } });
}

// ------------------------------------------------------------------ run page

function chart(branches) {
  const W = 760, H = 280, L = 48, R = 16, T = 14, B = 34;
  const points = branches.flatMap((b) => b.points);
  const scores = points.map((p) => p.score);
  const maxGen = Math.max(1, ...points.map((p) => p.generation));
  const bounded = scores.every((s) => s >= 0 && s <= 1);
  let lo = bounded ? 0 : Math.min(...scores), hi = bounded ? 1 : Math.max(...scores);
  if (!scores.length) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const x = (g) => L + (g / maxGen) * (W - L - R);
  const y = (s) => T + (1 - (s - lo) / (hi - lo)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", id: "score-chart", role: "img", "aria-label": "dev score per generation" });
  for (let i = 0; i <= 4; i++) {
    const v = lo + (i / 4) * (hi - lo);
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e5e7eb" }), svg("text", { x: 4, y: y(v) + 4 }, v.toFixed(3)));
  }
  const step = Math.max(1, Math.ceil(maxGen / 12));
  for (let g = 0; g <= maxGen; g += step) root.append(svg("text", { x: x(g) - 3, y: H - B + 16 }, g));
  root.append(svg("text", { x: W / 2 - 30, y: H - 4 }, "generation"));
  const used = new Set();
  const legend = h("div", { class: "legend", id: "chart-legend" });
  branches.forEach((b, i) => {
    const color = PALETTE[i % PALETTE.length];
    if (b.points.length) {
      root.append(svg("polyline", { points: b.points.map((p) => `${x(p.generation)},${y(p.score)}`).join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": b.fork ? "6 4" : "none", "data-run": b.run_id }));
    }
    for (const p of b.points) {
      if (p.best) { used.add("best"); root.append(svg("circle", { cx: x(p.generation), cy: y(p.score), r: 9, fill: "none", stroke: "#d4a017", "stroke-width": 2.5 })); }
      const cx = x(p.generation), cy = y(p.score);
      const title = svg("title", {}, `${b.run_id} gen ${p.generation}: ${fmt.score(p.score)}${p.action ? " → " + p.action : ""}`);
      let mark;
      if (p.action === "update_weights") mark = svg("path", { d: `M${cx},${cy - 6} L${cx + 6},${cy + 5} L${cx - 6},${cy + 5} Z`, fill: color }, title);
      else if (p.action === "stop") mark = svg("rect", { x: cx - 4.5, y: cy - 4.5, width: 9, height: 9, fill: color }, title);
      else mark = svg("circle", { cx, cy, r: p.action ? 4.5 : 3, fill: p.action ? color : "#fff", stroke: color, "stroke-width": 1.5 }, title);
      if (p.action) used.add(p.action);
      root.append(mark);
    }
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = color;
    legend.append(h("span", { "data-run": b.run_id }, swatch, b.label));
  });
  for (const [action, label] of Object.entries(MARKERS)) if (used.has(action)) legend.append(h("span", { class: "muted" }, { edit_harness: "○", update_weights: "▲", stop: "■" }[action] + " " + label));
  if (used.has("best")) legend.append(h("span", { class: "muted" }, "◯ (gold) best generation"));
  const scale = bounded ? "scores are on their full range, 0 to 1" : `scores shown from ${lo.toFixed(3)} to ${hi.toFixed(3)} (not bounded to 0–1)`;
  return h("div", {}, root, legend, h("p", { class: "muted", id: "chart-scale" }, scale));
}

function tree(node) {
  return h("ul", { class: "tree" }, h("li", { class: node.on_path ? "on-path" : "" },
    runLink(node.run_id), node.fork_seq ? h("span", { class: "muted" }, ` forked at seq ${node.fork_seq}`) : "",
    node.children.length ? node.children.map(tree) : ""));
}

function ledger(data) {
  const rows = ["total", "own", "inherited"].map((k) => {
    const s = data.ledger[k];
    return h("tr", {}, h("td", {}, k), h("td", { class: "num" }, s.tokens), h("td", { class: "num" }, fmt.money(s.dollars)),
      h("td", { class: "num" }, fmt.secs(s.gpu_s)), h("td", { class: "num" }, fmt.secs(s.wall_s)), h("td", { class: "num" }, s.effects), h("td", { class: "num" }, s.cache_hits));
  });
  return h("table", { id: "ledger" }, h("thead", {}, h("tr", {}, ["", "tokens", "$", "GPU", "effect time", "effects", "cache hits"].map((c) => h("th", { class: c ? "num" : "" }, c)))), h("tbody", {}, rows));
}

function generationsTable(data, elapsed) {
  return h("table", { id: "generations" },
    h("thead", {}, h("tr", {}, ["gen", "dev score", "decision", "algorithm", "episodes", "elapsed", "effect time", "$", "tokens", "GPU", "harness", "adapter"].map((c, i) => h("th", { class: i === 1 || (i >= 4 && i <= 9) ? "num" : "" }, c)))),
    h("tbody", {}, data.generations.map((g) => h("tr", { "data-gen": g.generation },
      h("td", {}, g.generation), h("td", { class: "num" }, fmt.score(g.dev_score), g.best ? " ★" : ""), h("td", {}, g.decision || "–"),
      h("td", {}, g.algorithm || "–"), h("td", { class: "num" }, g.episodes),
      h("td", { class: "num" }, elapsed ? fmt.secs(elapsed[String(g.generation)]) : "…"), h("td", { class: "num" }, fmt.secs(g.effect_s)),
      h("td", { class: "num" }, fmt.money(g.dollars)), h("td", { class: "num" }, g.tokens), h("td", { class: "num" }, fmt.secs(g.gpu_s)),
      h("td", {}, g.harness), h("td", {}, g.adapter)))));
}

function decisionCard(runId, d) {
  const refused = d.refused_answers === null ? h("span", { class: "muted" }, "…")
    : d.refused_answers.length ? h("ul", {}, d.refused_answers.map((r) => h("li", {}, `attempt ${r.attempt}: ${r.problems.join("; ")}`)))
      : h("span", { class: "muted" }, "none");
  const evidence = d.evidence.episodes.length
    ? h("ul", {}, d.evidence.episodes.map((e) => h("li", {}, h("a", { href: `#/run/${encodeURIComponent(runId)}/episode/${e.episode_id}`, class: "episode-link" }, `${e.sample_id || e.episode_id}`), e.status ? h("span", { class: "muted" }, ` (${e.status})`) : "")))
    : h("span", { class: "muted" }, "no episodes cited");
  const steps = d.investigation === null || d.investigation === undefined ? h("span", { class: "muted" }, "…")
    : d.investigation.length ? h("ol", { class: "investigation", start: 0 }, d.investigation.map((s) =>
      h("li", {}, h("span", { class: "muted" }, s.kind === "turn" ? `model ${s.name}: ` : `tool ${s.name}: `), s.summary)))
      : h("span", { class: "muted" }, "none (one structured answer)");
  const outcome = d.score_after === null ? "not yet measured" : `${fmt.score(d.score_before)} → ${fmt.score(d.score_after)} (${fmt.delta(d.delta)})`;
  return h("section", { class: `card decision ${d.action}`, id: `decision-${d.generation}`, "data-gen": d.generation },
    h("h3", {}, `generation ${d.generation}: ${d.action}`, d.forced ? " (forced)" : "", d.algorithm ? ` · ${d.algorithm}` : ""),
    h("dl", { class: "kv" },
      h("dt", {}, "decided by"), h("dd", {}, d.provider || "–"),
      h("dt", {}, "algorithm"), h("dd", {}, d.algorithm ? `${d.algorithm}${d.recommended_algorithm ? ` (reward shape recommends ${d.recommended_algorithm})` : ""}` : (d.recommended_algorithm ? `– (reward shape recommends ${d.recommended_algorithm})` : "–")),
      h("dt", {}, "why"), h("dd", {}, d.rationale),
      h("dt", {}, "evidence"), h("dd", {}, h("div", { class: "muted" }, d.evidence.summary || ""), evidence),
      h("dt", {}, "refused answers"), h("dd", { class: "refused" }, refused),
      h("dt", {}, "investigation"), h("dd", { class: "investigation" }, steps),
      d.rollback_to !== null ? [h("dt", {}, "rolled back to"), h("dd", {}, `generation ${d.rollback_to}`)] : [],
      h("dt", {}, "outcome"), h("dd", { class: "outcome" }, outcome),
      h("dt", {}, "at event"), h("dd", {}, `seq ${d.seq}`)));
}

function diffPanel(runId, data) {
  const gens = data.generations.map((g) => g.generation);
  const pick = (id, value) => h("select", { id }, gens.map((g) => h("option", { value: g, selected: g === value }, `gen ${g}`)));
  const a = pick("diff-a", gens[0]), b = pick("diff-b", gens[gens.length - 1]);
  const out = h("div", { id: "diff-out" });
  async function show() {
    try {
      const d = await getJSON(`/api/runs/${encodeURIComponent(runId)}/diff?a=${a.value}&b=${b.value}`);
      out.replaceChildren(d.identical ? h("p", { class: "muted" }, "the harnesses are identical")
        : h("pre", { class: "diff" }, d.diff.map((line) => h("span", { class: line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, line + "\n"))));
    } catch (e) { fail(out, e); }
  }
  return h("div", {}, h("div", { class: "filters" }, "harness of", a, "vs", b, h("button", { id: "diff-show", onclick: show }, "diff")), out);
}

function eventLog(runId, knownTypes) {
  const state = { after: 0, types: "" };
  const body = h("tbody");
  const more = h("button", { id: "events-more" }, "load more");
  const travel = h("div", { id: "time-travel" });
  const typeSelect = h("select", { id: "event-type" }, h("option", { value: "" }, "all event types"), knownTypes.map((t) => h("option", { value: t }, t)));
  const seqInput = h("input", { id: "state-seq", type: "number", min: 1, placeholder: "seq", size: 8 });
  async function page(reset) {
    if (reset) { state.after = 0; body.replaceChildren(); }
    try {
      const p = await getJSON(`/api/runs/${encodeURIComponent(runId)}/events?after=${state.after}&limit=100&types=${encodeURIComponent(state.types)}`);
      for (const e of p.events) body.append(eventRow(runId, e, travel));
      state.after = p.next_after ?? p.scanned_to ?? state.after;
      more.disabled = p.next_after === null;
      more.textContent = p.next_after === null ? `end of log (seq ${p.last_seq})` : "load more";
    } catch (e) { fail(travel, e); }
  }
  more.addEventListener("click", () => page(false));
  typeSelect.addEventListener("change", () => { state.types = typeSelect.value; page(true); });
  const travelButton = h("button", { id: "state-go", onclick: () => stateAt(runId, Number(seqInput.value), travel) }, "state at seq");
  page(true);
  return {
    el: h("div", {}, h("div", { class: "filters" }, typeSelect, seqInput, travelButton), travel,
      h("table", { id: "events" }, h("thead", {}, h("tr", {}, ["seq", "type", "run", "recorded", "payload", ""].map((c) => h("th", {}, c)))), body), more),
    refresh: () => { if (more.disabled) page(false); },
  };
}

function eventRow(runId, e, travel) {
  const payload = h("div", { class: "payload" }, JSON.stringify(e.payload));
  payload.addEventListener("click", () => { payload.classList.toggle("open"); payload.textContent = JSON.stringify(e.payload, null, payload.classList.contains("open") ? 2 : 0); });
  return h("tr", { "data-seq": e.seq },
    h("td", { class: "num" }, e.seq), h("td", {}, e.type), h("td", { class: "muted" }, e.run_id === runId ? "" : e.run_id),
    h("td", { class: "muted" }, e.recorded_at.replace("T", " ").slice(0, 19)), h("td", {}, payload),
    h("td", {}, h("button", { class: "state-here", onclick: () => stateAt(runId, e.seq, travel) }, "state here"),
      ACTIONS ? h("button", { class: "fork-here", onclick: () => forkForm(runId, e.seq, travel) }, "fork here") : ""));
}

async function stateAt(runId, seq, where) {
  try {
    const s = await getJSON(`/api/runs/${encodeURIComponent(runId)}/state?at=${seq}`);
    where.replaceChildren(h("div", { class: "panel", id: "state-panel" },
      h("h3", {}, `state after seq ${s.seq}`),
      h("dl", { class: "kv" }, ["status", "generation", "best_generation", "best_score", "harness_hash", "adapter_hash", "state_hash"].flatMap((k) => [h("dt", {}, k), h("dd", {}, s[k] === null ? "–" : String(s[k]))]),
        h("dt", {}, "pending effects"), h("dd", {}, s.pending_effects.map((p) => `${p.kind}@${p.seq}`).join(", ") || "none"),
        h("dt", {}, "dev scores"), h("dd", {}, s.dev_scores.map(fmt.score).join(", ") || "–"))));
  } catch (e) { fail(where, e); }
}

function forkForm(runId, seq, where) {
  const settings = h("textarea", { id: "fork-settings", rows: 3, cols: 50, placeholder: "one key=value per line, e.g. feedback.force=update_weights:grpo" });
  const message = h("p", { id: "fork-message" });
  const go = h("button", { class: "primary", id: "fork-go" }, `fork ${runId} at seq ${seq}`);
  go.addEventListener("click", async () => {
    try {
      const made = await postJSON(`/api/runs/${encodeURIComponent(runId)}/fork`, { at: seq, settings: settings.value.split("\n").map((s) => s.trim()).filter(Boolean) });
      message.replaceChildren(h("span", { class: "ok" }, "forked: "), runLink(made.run_id), ` — continue it with: ${made.resume}`);
    } catch (e) { message.replaceChildren(h("span", { class: "error" }, e.message)); }
  });
  where.replaceChildren(h("div", { class: "panel", id: "fork-panel" }, h("h3", {}, `fork at seq ${seq}`), settings, h("div", {}, go), message));
}

async function showRun(main, runId) {
  crumbs(h("a", { href: "#/" }, "runs"), runLink(runId));
  const head = h("div", { id: "run-head" }), chartBox = h("div", { id: "chart" }), lineageBox = h("div", { id: "lineage" });
  const ledgerBox = h("div"), gensBox = h("div"), decisionsBox = h("div", { id: "decisions" }), diffBox = h("div", { id: "diff" });
  const logBox = h("div", { id: "log" }), actionBox = h("div", { id: "actions" }), notice = h("p", { id: "notice" });
  main.replaceChildren(h("h1", {}, runId), head, actionBox, notice,
    h("div", { class: "grid" }, h("section", { class: "card" }, h("h2", {}, "Dev score per generation"), chartBox),
      h("section", { class: "card" }, h("h2", {}, "Lineage"), lineageBox, h("h2", {}, "Ledger"), ledgerBox)),
    h("section", { class: "card" }, h("h2", {}, "Generations"), gensBox),
    h("h2", {}, "Decisions"), decisionsBox,
    h("section", { class: "card" }, h("h2", {}, "Harness diff"), diffBox),
    h("section", { class: "card" }, h("h2", {}, "Event log"), logBox));
  let data = null, timeline = null, log = null, waiting = false, allDecisions = false;

  function drawHead() {
    const s = data.summary;
    head.replaceChildren(h("dl", { class: "kv" },
      h("dt", {}, "status"), h("dd", { id: "run-status" }, statusPill(s.status), s.stop_reason ? ` (${s.stop_reason})` : "", s.error ? h("span", { class: "error" }, ` ${s.error}`) : ""),
      h("dt", {}, "task"), h("dd", {}, `${s.task} · mode ${s.mode}${s.sandbox ? ` · harness sandbox ${s.sandbox}` : ""}`),
      h("dt", {}, "best"), h("dd", {}, s.best_score === null ? "–" : `${fmt.score(s.best_score)} at generation ${s.best_generation}`),
      h("dt", {}, "events"), h("dd", { id: "run-seq" }, s.seq),
      s.parent_run_id ? [h("dt", {}, "forked from"), h("dd", {}, runLink(s.parent_run_id), ` at seq ${s.fork_seq}`)] : [],
      Object.keys(data.overrides).length ? [h("dt", {}, "overrides"), h("dd", {}, Object.entries(data.overrides).map(([k, v]) => `${k}=${v}`).join(", "))] : []));
    actionBox.replaceChildren();
    if (ACTIONS && s.status === "running") {
      actionBox.append(h("div", { class: "filters" }, h("button", { id: "pause", onclick: async () => {
        try {
          const paused = await postJSON(`/api/runs/${encodeURIComponent(runId)}/pause`);
          notice.replaceChildren(h("span", { class: "ok" }, "paused"), ` — continue it with: ${paused.resume}`);
        } catch (e) { notice.replaceChildren(h("span", { class: "error" }, e.message)); }
      } }, "pause run")));
    }
  }
  function draw() {
    drawHead();
    chartBox.replaceChildren(chart(data.branches));
    lineageBox.replaceChildren(tree(data.lineage.root));
    ledgerBox.replaceChildren(ledger(data));
    drawTimed();
  }
  function drawTimed() {
    gensBox.replaceChildren(generationsTable(data, timeline && timeline.elapsed));
    const cards = (timeline ? timeline.decisions : data.decisions);
    const shown = allDecisions ? cards : cards.slice(-RECENT_DECISIONS);
    decisionsBox.replaceChildren(...(cards.length ? shown.map((d) => decisionCard(runId, d)) : [h("p", { class: "muted" }, "no decision yet")]),
      shown.length < cards.length ? h("button", { id: "all-decisions", onclick: () => { allDecisions = true; drawTimed(); } }, `show all ${cards.length} decisions (the ${shown.length} most recent are shown)`) : "");
    if (!diffBox.firstChild || diffBox.dataset.gens !== String(data.generations.length)) {
      diffBox.dataset.gens = String(data.generations.length);
      diffBox.replaceChildren(data.generations.length ? diffPanel(runId, data) : h("p", { class: "muted" }, "no generation yet"));
    }
  }
  async function load() {
    try {
      data = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
    } catch (e) {
      if (String(e.message).startsWith("no run")) { waiting = true; head.replaceChildren(h("p", { class: "muted", id: "waiting" }, `waiting for run ${runId} to appear…`)); return; }
      return fail(head, e);
    }
    waiting = false;
    draw();
    if (!log) { log = eventLog(runId, data.event_types); logBox.replaceChildren(log.el); }
    else log.refresh();
    loadTimeline();
  }
  async function loadTimeline() {
    try { timeline = await getJSON(`/api/runs/${encodeURIComponent(runId)}/timeline`); drawTimed(); } catch (e) { /* the first paint stands; the timeline is extra */ }
  }
  await load();
  let pending = null;
  listen(runId, { run: () => { clearTimeout(pending); pending = setTimeout(load, 30); }, runs: (heads) => { if (waiting && heads[runId]) load(); } });
}

// ------------------------------------------------------------------ episode page

async function showEpisode(main, runId, episodeId) {
  crumbs(h("a", { href: "#/" }, "runs"), runLink(runId), `episode ${episodeId.slice(0, 10)}`);
  listen(null, {});
  let e;
  try { e = await getJSON(`/api/runs/${encodeURIComponent(runId)}/episodes/${encodeURIComponent(episodeId)}`); } catch (err) { return fail(main, err); }
  main.replaceChildren(h("h1", {}, `episode ${e.sample_id} · generation ${e.generation}`),
    h("section", { class: "card", id: "episode" }, h("dl", { class: "kv" },
      h("dt", {}, "split"), h("dd", {}, e.split), h("dt", {}, "status"), h("dd", { id: "episode-status" }, e.status),
      h("dt", {}, "reward"), h("dd", { id: "episode-reward" }, e.reward === null || e.reward === undefined ? "–" : String(e.reward)),
      h("dt", {}, "prediction"), h("dd", {}, e.prediction ? h("pre", {}, e.prediction) : h("span", { class: "muted" }, e.prediction === "" ? "(empty)" : "none")),
      e.error ? [h("dt", {}, "error"), h("dd", { class: "error" }, e.error)] : [],
      h("dt", {}, "episode"), h("dd", {}, e.episode_id), h("dt", {}, "trajectory"), h("dd", {}, e.trajectory_hash || "–"))),
    h("section", { class: "card", id: "sample" }, h("h2", {}, "Sample (public fields)"),
      e.sample ? h("pre", {}, JSON.stringify(e.sample, null, 2)) : h("p", { class: "muted" }, e.sample_note || "not available")),
    h("section", { class: "card", id: "calls" }, h("h2", {}, `Model calls (${e.calls.length})`),
      e.calls.length ? e.calls.map((c) => h("div", { class: "call" },
        h("div", { class: "muted" }, `call ${c.index}${c.endpoint ? ` · ${c.endpoint}` : ""}${c.status !== null && c.status !== undefined ? ` · status ${c.status}` : ""}`),
        c.error ? h("p", { class: "error" }, c.error) : "",
        c.messages ? h("pre", {}, c.messages.map((m) => `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n")) : c.prompts.map((p) => h("pre", { class: "prompt" }, p)),
        c.generations.map((g) => h("div", {}, g.text ? h("pre", { class: "completion" }, g.text) : h("p", { class: "muted" }, "(empty completion)"),
          h("div", { class: "muted" }, `prompt tokens ${g.prompt_tokens ?? "–"} · completion tokens ${g.completion_tokens ?? "–"}${g.finish_reason ? ` · ${g.finish_reason}` : ""}`),
          g.logprobs && g.logprobs.length ? h("div", { class: "logprobs" }, "logprobs: " + g.logprobs.map((v) => v.toFixed(2)).join(" ")) : ""))))
        : h("p", { class: "muted" }, "the harness made no model call")),
    h("section", { class: "card", id: "stderr" }, h("h2", {}, "stderr (tail)"),
      e.stderr_tail.length ? h("pre", {}, e.stderr_tail.join("\n")) : h("p", { class: "muted" }, "empty"),
      Object.keys(e.outcome).length ? h("pre", {}, JSON.stringify(e.outcome, null, 2)) : ""));
}

// ------------------------------------------------------------------ routing

function route() {
  const main = document.getElementById("main");
  window.scrollTo(0, 0);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "run" && parts[1] && parts[2] === "episode" && parts[3]) return showEpisode(main, parts[1], parts[3]);
  if (parts[0] === "run" && parts[1]) return showRun(main, parts[1]);
  return showRuns(main);
}

document.getElementById("mode").textContent = ACTIONS ? "actions allowed" : "read-only";
window.addEventListener("hashchange", route);
route();
