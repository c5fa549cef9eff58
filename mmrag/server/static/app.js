// mmrag search page: plain JS over the JSON API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { target: "image", filters: {}, config: null, key: localStorage.getItem("mmrag-api-key") || "", last: null };
const TARGET_NAMES = { image: "Images", text: "Captions", fused: "Fused", hybrid: "Hybrid" };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const res = await fetch(path, opts);
  if (res.status === 401) { $("auth").hidden = false; throw new Error("this server needs an API key"); }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : res.statusText;
    throw new Error(detail);
  }
  return body;
}

// <img> cannot send a bearer token: with a key, fetch the bytes and show a blob URL.
function setImage(img, url) {
  if (!state.key) { img.src = url; return; }
  fetch(url, { headers: headers() }).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); });
}

function message(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.classList.toggle("error", !!isError);
}

function currentFilter() {
  const f = {};
  for (const [key, values] of Object.entries(state.filters)) {
    const list = Array.from(values);
    if (list.length === 1) f[key] = list[0];
    else if (list.length > 1) f[key] = list;
  }
  return Object.keys(f).length ? f : null;
}

function hitCard(hit, small) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "hit";
  card.dataset.id = hit.id;
  card.dataset.path = hit.path || "";
  const img = document.createElement("img");
  img.alt = hit.caption || hit.path || hit.id;
  img.loading = "lazy";
  setImage(img, hit.thumbnail_url + (small ? "?size=160" : "?size=256"));
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = hit.score === null || hit.score === undefined ? "" : hit.score.toFixed(3);
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.textContent = hit.caption || hit.page_content || hit.path;
  meta.append(score, cap);
  card.append(img, meta);
  card.addEventListener("click", () => openDetail(hit));
  return card;
}

function showHits(result) {
  const grid = $("results");
  grid.replaceChildren();
  const hits = result.hits || [];
  if (!hits.length) { message("No images match. Try other words, another search mode, or fewer filters."); return; }
  message(hits.length + " results");
  for (const hit of hits) grid.append(hitCard(hit, false));
}

async function run(fn) {
  message("Searching…");
  try { showHits(await fn()); } catch (e) { $("results").replaceChildren(); message(e.message, true); }
}

// The optional "min score" box: a number, or null (no threshold) when empty or not a number.
function minScore() {
  const v = parseFloat($("min-score").value);
  return Number.isFinite(v) ? v : null;
}

function searchText() {
  const query = $("query").value.trim();
  if (!query) { message("Type what you are looking for, or drop an image."); return; }
  state.last = () => searchText();
  $("query-image").hidden = true;
  return run(() => api("/api/search", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query, k: 24, target: state.target, filter: currentFilter(), score_threshold: minScore() }),
  }));
}

function searchFile(file) {
  if (!file) return;
  state.last = () => searchFile(file);
  const preview = $("query-image");
  preview.replaceChildren();
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  const label = document.createElement("span");
  label.textContent = "Images like " + file.name;
  preview.append(img, label);
  preview.hidden = false;
  const form = new FormData();
  form.append("file", file);
  form.append("k", "24");
  form.append("target", state.target);
  const f = currentFilter();
  if (f) form.append("filter", JSON.stringify(f));
  const min = minScore();
  if (min !== null) form.append("score_threshold", String(min));
  return run(() => api("/api/search/upload", { method: "POST", body: form }));
}

async function openDetail(hit) {
  $("detail").hidden = false;
  const img = $("detail-image");
  img.removeAttribute("src");
  img.alt = hit.caption || hit.path;
  setImage(img, hit.image_url);
  $("detail-caption").textContent = hit.caption || hit.page_content || hit.path;
  const dl = $("detail-meta");
  dl.replaceChildren();
  const rows = { id: hit.id, path: hit.path, score: hit.score, size: hit.width + " × " + hit.height };
  for (const [k, v] of Object.entries(hit.payload || {})) if (!(k in rows) && k !== "caption" && v !== "" && v !== null) rows[k] = v;
  for (const [k, v] of Object.entries(rows)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
    dl.append(dt, dd);
  }
  const row = $("similar");
  row.replaceChildren();
  try {
    const sim = await api("/api/points/" + encodeURIComponent(hit.id) + "/similar?k=8");
    for (const h of sim.hits) row.append(hitCard(h, true));
    if (!sim.hits.length) row.textContent = "No similar images.";
  } catch (e) { row.textContent = e.message; }
}

function renderTargets(targets) {
  const box = $("targets");
  box.replaceChildren();
  for (const t of targets) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = "target"; input.value = t; input.checked = t === state.target;
    input.addEventListener("change", () => { state.target = t; if (state.last) state.last(); });
    label.append(input, document.createTextNode(TARGET_NAMES[t] || t));
    label.dataset.target = t;
    box.append(label);
  }
}

async function renderFacets() {
  const list = $("facet-list");
  list.replaceChildren();
  const data = await api("/api/facets");
  for (const [key, values] of Object.entries(data.facets)) {
    if (!values.length) continue;
    const box = document.createElement("div");
    box.className = "facet";
    box.dataset.key = key;
    const h = document.createElement("h4"); h.textContent = key;
    box.append(h);
    for (const { value, count } of values) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.value = value; input.name = key;
      input.addEventListener("change", () => {
        const set = state.filters[key] || (state.filters[key] = new Set());
        input.checked ? set.add(value) : set.delete(value);
        if (state.last) state.last();
      });
      const name = document.createElement("span"); name.append(input, document.createTextNode(" " + value));
      const c = document.createElement("span"); c.className = "count"; c.textContent = count;
      label.append(name, c);
      box.append(label);
    }
    list.append(box);
  }
}

async function init() {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); searchText(); });
  $("file-input").addEventListener("change", (e) => searchFile(e.target.files[0]));
  const zone = $("drop-zone");
  for (const ev of ["dragenter", "dragover"]) zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); searchFile(e.dataTransfer.files[0]); });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) $("detail").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("detail").hidden = true; });
  $("api-key-save").addEventListener("click", () => {
    state.key = $("api-key").value.trim();
    localStorage.setItem("mmrag-api-key", state.key);
    $("auth").hidden = true;
    init2();
  });
  init2();
}

async function init2() {
  try {
    const ready = await fetch("/readyz").then((r) => r.json());
    if (ready.status !== "ready") { message("The server is not ready: " + (ready.detail || "no collection yet"), true); return; }
    state.config = await api("/api/config");
    renderTargets(state.config.targets);
    await renderFacets();
    message("Search " + ready.points + " images in " + state.config.collection + ".");
    document.body.dataset.ready = "1";
  } catch (e) { message(e.message, true); }
}

init();
