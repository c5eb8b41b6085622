// scorer review: the three pages. No framework, nothing fetched from elsewhere.
// Every URL is relative to /<token>/, which BASE holds; the server knows files only by snippet id.
"use strict";

const BASE = "/" + location.pathname.split("/")[1] + "/";
const PALETTE = ["#7f8c8d", "#2e86de", "#e84393", "#f39c12", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#d35400"];
const FILTERS = ["model", "sort", "predicted", "truth", "reviewed"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options) {
  const response = await fetch(BASE + "api/" + path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function colour(classes, label) {
  const i = classes.indexOf(label);
  return i < 0 ? "#555" : PALETTE[i % PALETTE.length];
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

// The queue's filters travel in the query string from page to page.
function filterParams() {
  const here = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of FILTERS) if (here.get(k)) out.set(k, here.get(k));
  return out;
}

function withFilters(path, extra = {}) {
  const q = filterParams();
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  const s = q.toString();
  return BASE + path + (s ? "?" + s : "");
}

async function showModel(id) {
  const models = await api("models");
  const model = models.models.find((m) => String(m.id) === String(id || models.default));
  document.getElementById("model-name").textContent = model ? "model " + model.name : "";
  return { models, model };
}

function linkNav() {
  for (const id of ["queue-link", "summary-link"]) {
    const a = document.getElementById(id);
    if (a) a.href = withFilters(id === "queue-link" ? "queue" : "summary");
  }
}

// --- queue -----------------------------------------------------------------------------------

async function queuePage() {
  linkNav();
  const params = filterParams();
  const { models, model } = await showModel(params.get("model"));
  const form = document.getElementById("filters");
  const modelSelect = document.getElementById("f-model");
  for (const m of models.models) modelSelect.append(el("option", { value: m.id, text: m.name + (m.active ? " (active)" : "") }));
  for (const c of model.classes) {
    document.getElementById("f-predicted").append(el("option", { value: c, text: c }));
    document.getElementById("f-truth").append(el("option", { value: c, text: c }));
  }
  modelSelect.value = model.id;
  for (const k of FILTERS.slice(1)) if (params.get(k)) form.elements[k].value = params.get(k);
  form.addEventListener("change", () => {
    const q = new URLSearchParams();
    for (const k of FILTERS) if (form.elements[k].value) q.set(k, form.elements[k].value);
    if (form.elements.model.value !== String(model.id)) { q.delete("predicted"); q.delete("truth"); }
    location.search = q.toString();
  });
  const body = document.querySelector("#queue tbody");
  const more = document.getElementById("more");
  const status = document.getElementById("queue-status");
  const skipped = new Set(JSON.parse(sessionStorage.getItem("skipped") || "[]"));
  let next = null;
  let shown = 0;
  async function load() {
    const q = filterParams();
    if (next) q.set("after", next);
    const page = await api("queue?" + q.toString());
    for (const item of page.items) {
      const link = el("a", { href: withFilters("snippet/" + item.id), text: basename(item.path), title: item.path });
      const truth = el("td", { text: item.truth || "" });
      if (item.reviewed) truth.append(el("span", { class: "badge", text: "reviewed" }));
      else if (skipped.has(item.id)) truth.append(el("span", { class: "badge skipped", text: "skipped" }));
      const predicted = el("td", {}, el("span", { class: "dot" }), item.predicted);
      predicted.firstChild.style.background = colour(page.model.classes, item.predicted);
      body.append(el("tr", { "data-id": item.id }, el("td", {}, link), predicted,
        el("td", { text: fmt(item.confidence) }), el("td", { text: fmt(item.entropy) }),
        el("td", { text: fmt(item.disagreement, 2) }), truth));
    }
    shown += page.items.length;
    next = page.next;
    more.hidden = !next;
    status.textContent = shown ? `${shown} shown, least certain first` + (next ? "" : " (end)") : "nothing to review with these filters";
  }
  more.addEventListener("click", load);
  await load();
}

// --- snippet ---------------------------------------------------------------------------------

async function snippetPage() {
  linkNav();
  const id = location.pathname.split("/").filter(Boolean).pop();
  const params = filterParams();
  const modelQuery = params.get("model") ? "?model=" + encodeURIComponent(params.get("model")) : "";
  await showModel(params.get("model"));
  const d = await api("snippets/" + id + modelQuery);
  const classes = d.model.classes;
  document.getElementById("title").textContent = d.paths.length ? basename(d.paths[0]) : d.sha256;
  document.getElementById("paths").textContent = d.paths.join(" · ") + (d.duration_s ? ` · ${fmt(d.duration_s, 1)} s` : "");
  const original = document.getElementById("original");
  const vocals = document.getElementById("vocals");
  original.src = BASE + "api/snippets/" + id + "/original";
  vocals.src = BASE + "api/snippets/" + id + "/vocals" + modelQuery;

  // verdict
  const bars = document.getElementById("bars");
  if (d.verdict) {
    const v = document.getElementById("verdict-label");
    v.textContent = d.verdict.label;
    v.className = "badge";
    v.style.background = colour(classes, d.verdict.label);
    classes.forEach((c, i) => {
      const p = d.verdict.probabilities[i];
      const fill = el("div", { class: "fill" });
      fill.style.width = (100 * p).toFixed(1) + "%";
      fill.style.background = colour(classes, c);
      bars.append(el("div", { class: "bar", "data-class": c }, el("span", { class: "name", text: c }), el("div", { class: "track" }, fill), el("span", { class: "value", text: fmt(p) })));
    });
    document.getElementById("uncertainty").textContent = `entropy ${fmt(d.verdict.entropy)} · member disagreement ${fmt(d.verdict.disagreement, 2)} · confidence ${fmt(d.verdict.confidence)}`;
  } else {
    bars.textContent = `model ${d.model.name} has not scored this snippet`;
  }

  // windows: one block per 3 s window, each plays its 3 s of the original
  if (d.windows.length > 1) {
    document.getElementById("windows-section").hidden = false;
    const strip = document.getElementById("windows");
    let stopAt = null;
    original.addEventListener("timeupdate", () => {
      if (stopAt !== null && original.currentTime >= stopAt) { original.pause(); stopAt = null; }
    });
    for (const w of d.windows) {
      const block = el("button", { class: "window", title: `${fmt(w.start_s, 0)} s: ${w.label} (${fmt(w.confidence, 2)})`, "data-start": w.start_s, text: w.label });
      block.style.background = colour(classes, w.label);
      block.addEventListener("click", () => { original.currentTime = w.start_s; stopAt = w.start_s + 3; original.play(); });
      strip.append(block);
    }
  }

  // members' votes, computed on demand by the server
  api("snippets/" + id + "/members" + modelQuery).then((m) => {
    const box = document.getElementById("members");
    box.textContent = "";
    if (m.unavailable) { box.textContent = "not available: " + m.unavailable; return; }
    const counts = Object.fromEntries(classes.map((c) => [c, 0]));
    for (const v of m.members) counts[v.label] += 1;
    box.append(el("p", { text: classes.map((c) => `${c} ${counts[c]}`).join(" · ") }));
    const row = el("div", { class: "votes" });
    for (const v of m.members) {
      const chip = el("span", { class: "vote", title: `member ${v.member}: ${v.label} ${fmt(Math.max(...v.probabilities))}`, text: String(v.member) });
      chip.style.background = colour(classes, v.label);
      row.append(chip);
    }
    box.append(row);
    box.classList.remove("muted");
  }).catch((e) => { document.getElementById("members").textContent = "not available: " + e.message; });

  // labels: keys 1..N, saved at once
  const truth = document.getElementById("truth");
  const saved = document.getElementById("saved");
  const buttons = document.getElementById("label-buttons");
  function showTruth(label, origin) {
    truth.textContent = label ? label + (origin === "review" ? " (reviewed)" : "") : "none yet";
    truth.style.background = label ? colour(classes, label) : "#555";
    for (const b of buttons.children) b.classList.toggle("chosen", b.dataset.label === label);
  }
  async function setLabel(label) {
    saved.textContent = "saving…";
    try {
      const r = await api("snippets/" + id + "/label", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ label, model: d.model.id }),
      });
      showTruth(r.label, r.origin);
      saved.textContent = "saved " + new Date(r.labelled_at).toLocaleTimeString();
      document.body.dataset.saved = r.label;
    } catch (e) { saved.textContent = "not saved: " + e.message; }
  }
  classes.forEach((c, i) => {
    const b = el("button", { "data-label": c, text: `${i + 1} ${c}` });
    b.style.borderColor = colour(classes, c);
    b.addEventListener("click", () => setLabel(c));
    buttons.append(b);
  });
  document.getElementById("max-key").textContent = String(Math.min(classes.length, 9));
  showTruth(d.truth, d.label_origin);

  async function goNext(skip) {
    if (skip) {
      const skipped = JSON.parse(sessionStorage.getItem("skipped") || "[]");
      sessionStorage.setItem("skipped", JSON.stringify([...new Set([...skipped, d.id])]));
    }
    const sort = params.get("sort") || "entropy";
    if (!d.verdict) { location.href = withFilters("queue"); return; }
    const q = filterParams();
    q.set("after", d.verdict.cursors[sort]);
    q.set("limit", "1");
    const page = await api("queue?" + q.toString());
    location.href = page.items.length ? withFilters("snippet/" + page.items[0].id) : withFilters("queue");
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = Number(e.key);
    if (Number.isInteger(k) && k >= 1 && k <= Math.min(classes.length, 9)) { setLabel(classes[k - 1]); e.preventDefault(); }
    else if (e.key === "n") goNext(false);
    else if (e.key === "s") goNext(true);
    else if (e.key === " ") { e.preventDefault(); original.paused ? original.play() : original.pause(); }
  });
  document.body.dataset.ready = "yes";
}

// --- summary ---------------------------------------------------------------------------------

async function summaryPage() {
  linkNav();
  const params = filterParams();
  await showModel(params.get("model"));
  const s = await api("summary" + (params.get("model") ? "?model=" + encodeURIComponent(params.get("model")) : ""));
  const classes = s.model.classes;
  const counts = document.querySelector("#counts tbody");
  const names = [...new Set([...classes, ...Object.keys(s.labels)])];
  for (const c of names) {
    const l = s.labels[c] || { data: 0, review: 0 };
    counts.append(el("tr", {}, el("td", { text: c }), el("td", { text: String(s.predicted[c] || 0) }), el("td", { text: String(l.data) }), el("td", { text: String(l.review) })));
  }
  document.getElementById("accuracy").textContent = s.reviewed
    ? `accuracy ${(100 * s.accuracy).toFixed(1)} % on ${s.reviewed} reviewed snippets (${s.corrections} labelling writes logged)`
    : "no reviewed snippet scored by this model yet";
  const table = document.getElementById("confusion");
  table.append(el("tr", {}, el("th", { text: "reviewed ↓ / verdict →" }), ...classes.map((c) => el("th", { text: c }))));
  s.confusion_matrix.forEach((row, i) => {
    table.append(el("tr", {}, el("th", { text: classes[i] }), ...row.map((n, j) => el("td", { class: i === j ? "diag" : "", text: String(n) }))));
  });
}

const page = document.body.dataset.page;
({ queue: queuePage, snippet: snippetPage, summary: summaryPage })[page]().catch((e) => {
  document.querySelector("main").prepend(el("p", { class: "error", text: "error: " + e.message }));
});
