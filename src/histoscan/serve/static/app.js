// histoscan page: patches -> probabilities, Grad-CAM on click, CSV; slide jobs with progress.
// Plain JS, no build step. File names are shown with textContent only, never as HTML.
"use strict";

const TOKEN_KEY = "histoscan-token";
const JOB_KEY = "histoscan-job";
const CHUNK = 32; // files per request; the server batches across requests anyway
const SHOWN_TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif"]);

const $ = (id) => document.getElementById(id);
const state = { rows: [], nextOrder: 0, threshold: 0.5, model: null, pollTimer: null };

// ---- API calls with the bearer token ---------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error || message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) askForToken(message);
  throw new ApiError(response.status, message);
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  $("token-form").hidden = true;
  start();
});

// true when the model card loaded, i.e. the token (if one is needed) works
async function loadModel() {
  try {
    const health = await (await fetch("/healthz")).json();
    if (health.auth && !sessionStorage.getItem(TOKEN_KEY)) {
      askForToken("This server needs an access token.");
      $("model-line").textContent = "Enter the access token to start.";
      return false;
    }
    const model = await (await api("/v1/model")).json();
    state.model = model;
    state.threshold = model.threshold;
    const parts = [`Model ${model.name} v${model.version}`,
      `threshold ${model.threshold.toFixed(2)}`, `TTA ${model.tta}`, `engine ${model.engine}`];
    const auc = Object.entries(model.validation).find(([k]) => k.includes("auc"));
    if (auc) parts.push(`validation AUC ${Number(auc[1]).toFixed(3)}`);
    $("model-line").textContent = parts.join(" · ");
    render();
    return true;
  } catch (err) {
    $("model-line").textContent = `Model not available: ${err.message}`;
    return false;
  }
}

async function start() {
  if (await loadModel()) resumeJob();
}

// ---- tabs ------------------------------------------------------------------------------------

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[role=tab]")) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
  });
}

// ---- patches ---------------------------------------------------------------------------------

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles([...event.dataTransfer.files]);
});
$("patch-input").addEventListener("change", (event) => {
  addFiles([...event.target.files]);
  event.target.value = ""; // choosing the same files again adds them again
});

function addFiles(files) {
  if (!files.length) return;
  $("patch-error").hidden = true;
  const rows = files.map((file) => ({
    file, id: file.name, order: state.nextOrder++, p: null, decision: null, error: null,
    thumb: SHOWN_TYPES.has(file.type) ? URL.createObjectURL(file) : null,
  }));
  state.rows.push(...rows);
  render();
  for (let i = 0; i < rows.length; i += CHUNK) predictChunk(rows.slice(i, i + CHUNK));
}

async function predictChunk(rows) {
  const form = new FormData();
  for (const row of rows) form.append("files", row.file, row.file.name);
  const thumbs = rows.some((row) => !row.thumb) ? "?thumbnails=true" : "";
  try {
    const body = await (await api(`/v1/predict${thumbs}`, { method: "POST", body: form })).json();
    body.results.forEach((result, i) => {
      const row = rows[i];
      row.p = result.p_tumor;
      row.decision = result.decision;
      row.version = result.version;
      row.model = result.model;
      if (result.thumbnail_png && !row.thumb) {
        row.thumb = `data:image/png;base64,${result.thumbnail_png}`;
      }
    });
  } catch (err) {
    if (rows.length > 1 && err.status >= 400 && err.status < 500 && err.status !== 401) {
      // one bad file fails its request: retry one by one to find it and keep the rest
      await Promise.all(rows.map((row) => predictChunk([row])));
      return;
    }
    for (const row of rows) row.error = err.message;
  }
  render();
}

function sortedRows() {
  const rows = [...state.rows];
  const how = $("sort").value;
  const key = (row) => (row.p === null ? -1 : row.p);
  if (how === "desc") rows.sort((a, b) => key(b) - key(a) || a.order - b.order);
  else if (how === "asc") rows.sort((a, b) => (a.p === null) - (b.p === null)
    || key(a) - key(b) || a.order - b.order);
  else rows.sort((a, b) => a.order - b.order);
  return rows;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function probabilityCell(row) {
  const cell = el("td", "prob-col");
  if (row.error) {
    cell.append(el("span", "error", row.error));
    return cell;
  }
  const bar = el("div", "bar");
  const fill = el("div", `fill ${row.decision || "pending"}`);
  fill.style.width = row.p === null ? "0%" : `${(row.p * 100).toFixed(1)}%`;
  const mark = el("div", "threshold");
  mark.style.left = `${(state.threshold * 100).toFixed(1)}%`;
  mark.title = `threshold ${state.threshold.toFixed(2)}`;
  bar.append(fill, mark);
  const value = el("span", "p-value", row.p === null ? "…" : row.p.toFixed(3));
  if (row.p !== null) value.dataset.p = String(row.p);
  cell.append(bar, value);
  return cell;
}

function renderRow(row) {
  const tr = el("tr");
  tr.dataset.id = row.id;
  const thumbCell = el("td");
  if (row.thumb) {
    const img = el("img", "thumb");
    img.src = row.thumb;
    img.alt = "";
    thumbCell.append(img);
  } else {
    thumbCell.append(el("span", "thumb placeholder", row.error ? "✕" : "…"));
  }
  const name = el("td", "file-name", row.id);
  name.title = row.id;
  const decision = el("td");
  if (row.decision) decision.append(el("span", `badge ${row.decision}`, row.decision));
  else if (row.error) decision.append(el("span", "badge rejected", "rejected"));
  tr.append(thumbCell, name, probabilityCell(row), decision);
  if (row.p !== null) {
    tr.tabIndex = 0;
    tr.classList.add("clickable");
    tr.addEventListener("click", () => showCam(row));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        showCam(row);
      }
    });
  }
  return tr;
}

function render() {
  const tbody = document.querySelector("#results tbody");
  tbody.replaceChildren(...sortedRows().map(renderRow));
  const done = state.rows.filter((row) => row.p !== null);
  const tumor = done.filter((row) => row.decision === "tumor").length;
  const failed = state.rows.filter((row) => row.error).length;
  const pending = state.rows.length - done.length - failed;
  const parts = [];
  if (state.rows.length) parts.push(`${done.length} of ${state.rows.length} patches scored`);
  if (done.length) parts.push(`${tumor} tumour`);
  if (failed) parts.push(`${failed} rejected`);
  if (pending) parts.push(`${pending} pending`);
  $("summary").textContent = parts.join(" · ");
  $("results").hidden = !state.rows.length;
  $("results-hint").hidden = !done.length;
  $("download").disabled = !done.length;
  $("clear").disabled = !state.rows.length;
}

$("sort").addEventListener("change", render);
$("clear").addEventListener("click", () => {
  for (const row of state.rows) if (row.thumb && row.thumb.startsWith("blob:")) URL.revokeObjectURL(row.thumb);
  state.rows = [];
  render();
});

// ---- Grad-CAM --------------------------------------------------------------------------------

async function showCam(row) {
  const dialog = $("cam-dialog");
  $("cam-title").textContent = row.id;
  $("cam-text").textContent = "Computing Grad-CAM…";
  $("cam-image").src = row.thumb || "";
  $("cam-overlay").removeAttribute("src");
  if (!dialog.open) dialog.showModal();
  const form = new FormData();
  form.append("file", row.file, row.file.name);
  try {
    const body = await (await api("/v1/explain", { method: "POST", body: form })).json();
    $("cam-image").src = `data:image/png;base64,${body.image_png}`;
    $("cam-overlay").src = `data:image/png;base64,${body.overlay_png}`;
    const where = body.cam_max > 0
      ? "Warm colours mark the regions that raised the tumour score."
      : "No region raised the tumour score, so the map is empty.";
    $("cam-text").textContent = `p(tumour) ${body.p_tumor.toFixed(3)}: ${body.decision} `
      + `at threshold ${body.threshold.toFixed(2)}. ${where}`;
  } catch (err) {
    $("cam-text").textContent = `No Grad-CAM: ${err.message}`;
  }
}
$("cam-close").addEventListener("click", () => $("cam-dialog").close());

// ---- CSV -------------------------------------------------------------------------------------

function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`; // spreadsheets would run it as a formula
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

$("download").addEventListener("click", () => {
  const lines = [["id", "p_tumor", "decision", "model", "version", "error"].join(",")];
  for (const row of sortedRows()) {
    const p = row.p === null ? "" : row.p.toFixed(6);
    lines.push([row.id, p, row.decision, row.model, row.version, row.error].map(csvField).join(","));
  }
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  saveBlob(blob, "histoscan-predictions.csv");
});

function saveBlob(blob, name) {
  const link = el("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---- slides ----------------------------------------------------------------------------------

function uploadSlide(form) {
  // XMLHttpRequest rather than fetch: it reports upload progress, and slides are large
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/slides");
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      $("job-progress").value = event.loaded / event.total;
      $("job-status").textContent = `uploading ${Math.round((100 * event.loaded) / event.total)}%`;
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
      const message = (xhr.response && xhr.response.error) || `${xhr.status} ${xhr.statusText}`;
      if (xhr.status === 401) askForToken(message);
      reject(new ApiError(xhr.status, message));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "upload failed (network)")));
    xhr.send(form);
  });
}

$("slide-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("slide-input").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const mpp = $("mpp-input").value.trim();
  if (mpp) form.append("mpp", mpp);
  $("slide-error").hidden = true;
  $("slide-submit").disabled = true;
  showJob({ file_name: file.name, status: "uploading", progress: 0 });
  try {
    const job = await uploadSlide(form);
    sessionStorage.setItem(JOB_KEY, job.id);
    pollJob(job.id);
  } catch (err) {
    $("job").hidden = true;
    showSlideError(err.message);
  } finally {
    $("slide-submit").disabled = false;
  }
});

function showSlideError(message) {
  $("slide-error").textContent = message;
  $("slide-error").hidden = false;
}

function showJob(job) {
  $("job").hidden = false;
  $("job-name").textContent = job.file_name;
  let status = job.status;
  if (job.status === "queued" && job.queue_position) status += ` (${job.queue_position} ahead)`;
  if (job.status === "running") {
    status += job.total ? ` ${Math.round(100 * job.progress)}% (${job.done} of ${job.total} tiles)` : "";
  }
  if (job.status === "failed") status += `: ${job.error}`;
  $("job-status").textContent = status;
  $("job-progress").value = job.progress || 0;
  $("job-outputs").hidden = job.status !== "done";
}

async function pollJob(jobId) {
  clearTimeout(state.pollTimer);
  try {
    const job = await (await api(`/v1/slides/${encodeURIComponent(jobId)}`)).json();
    showJob(job);
    if (job.status === "done") return showOutputs(job);
    if (job.status === "failed") return;
    state.pollTimer = setTimeout(() => pollJob(jobId), 1000);
  } catch (err) {
    if (err.status === 404) sessionStorage.removeItem(JOB_KEY);
    $("job").hidden = true;
    showSlideError(err.message);
  }
}

async function showOutputs(job) {
  // <img src> cannot send the token, so the heatmap comes through fetch as a blob
  const blob = await (await api(job.files["heatmap.png"])).blob();
  $("heatmap").src = URL.createObjectURL(blob);
  const summary = $("job-summary");
  summary.replaceChildren();
  const s = job.summary || {};
  const fixed = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "–");
  const shown = [
    ["Result", s.message],
    ["Tiles scored", s.tiles_scored],
    ["Tumour tiles", `${s.tumor_tiles} at p ≥ ${fixed(s.threshold, 2)}`],
    ["Tumour area", `${fixed(s.tumor_area_mm2, 3)} of ${fixed(s.tissue_area_mm2, 3)} mm² tissue`],
    ["Highest p(tumour)", fixed(s.max_p_tumor, 3)],
    ["Resolution", `${fixed(s.mpp, 3)} µm/px (${s.mpp_source === "argument" ? "as given" : "from the file"})`],
    ["Time", `${fixed(s.seconds, 1)} s`],
  ];
  for (const [label, value] of shown) {
    if (value === undefined || value === null) continue;
    summary.append(el("dt", "", label), el("dd", "", String(value)));
  }
}

document.querySelector("#job-outputs .downloads").addEventListener("click", async (event) => {
  const name = event.target.dataset && event.target.dataset.artifact;
  const jobId = sessionStorage.getItem(JOB_KEY);
  if (!name || !jobId) return;
  try {
    const response = await api(`/v1/slides/${encodeURIComponent(jobId)}/${name}`);
    saveBlob(await response.blob(), name);
  } catch (err) {
    showSlideError(err.message);
  }
});

$("job-clear").addEventListener("click", async () => {
  const jobId = sessionStorage.getItem(JOB_KEY);
  clearTimeout(state.pollTimer);
  sessionStorage.removeItem(JOB_KEY);
  $("job").hidden = true;
  if (!jobId) return;
  try {
    await api(`/v1/slides/${encodeURIComponent(jobId)}`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 404) showSlideError(err.message);
  }
});

function resumeJob() {
  const jobId = sessionStorage.getItem(JOB_KEY);
  if (jobId) pollJob(jobId);
}

start();
