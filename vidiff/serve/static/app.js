// The vidiff serve page: plain JavaScript, no build step. Every string from the server or the user is put
// on the page as text (textContent, attributes), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {current: null, before: null, urls: new Map()};

function token() { return sessionStorage.getItem("vidiff-token") || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", "Bearer " + token());
  const response = await fetch(path, {...options, headers});
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token: enter it at the top right");
  }
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? String(body.detail) : response.statusText);
  return body;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v; else if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

// -- models and settings -------------------------------------------------------------------------------
async function loadModels() {
  const {models} = await json("/v1/models");
  $("model").replaceChildren(...models.map((m) => el("option", {value: m.name, text: m.name})));
  await loadDefaults();
}

async function loadDefaults() {
  const info = await json("/v1/models/" + encodeURIComponent($("model").value));
  const box = $("settings");
  box.replaceChildren(el("legend", {text: "settings (the model's defaults)"}));
  for (const [name, value] of Object.entries(info.defaults)) {
    const text = typeof value === "string" || name === "sampler" || name === "behaviour";
    const input = el("input", {name, id: "setting-" + name, type: text ? "text" : "number",
                               step: "any", value: value === null ? "" : String(value)});
    box.append(el("label", {}, [name.replaceAll("_", " ") + " ", input]));
  }
}

// -- the image -----------------------------------------------------------------------------------------
function showPreview(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").textContent = file.name;
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("click", (e) => { if (e.target !== $("image")) $("image").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { $("image").files = e.dataTransfer.files; showPreview($("image").files[0]); }
  });
  $("image").addEventListener("change", () => showPreview($("image").files[0]));
}

// -- jobs ----------------------------------------------------------------------------------------------
async function submit(event) {
  event.preventDefault();
  if (!$("image").files.length) { say("choose an image first", true); return; }
  const form = new FormData();
  form.append("image", $("image").files[0]);
  form.append("model", $("model").value);
  form.append("format", $("format").value);
  if ($("long_mode").value !== "") form.append("long_mode", $("long_mode").value);
  for (const input of $("settings").querySelectorAll("input")) {
    if (input.value !== "") form.append(input.name, input.value);
  }
  try {
    const job = await json("/v1/jobs", {method: "POST", body: form});
    say("job " + job.id + " " + job.status);
    watch(job.id);
    refreshHistory();
  } catch (e) { say(e.message, true); }
}

async function watch(id) {
  state.current = id;
  $("current").hidden = false;
  $("current-id").textContent = id;
  $("result").hidden = true;
  $("download").hidden = true;
  $("progress").value = 0;
  const response = await api("/v1/jobs/" + encodeURIComponent(id) + "/events");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function onEvent(event) {
  if (event.id !== state.current) return;
  if (event.total) { $("progress").max = event.total; $("progress").value = event.step; }
  $("step").textContent = event.total ? event.step + " / " + event.total : "";
  if (event.phase !== undefined) $("phase").textContent = event.phase || "";
  if (event.event !== "state") return;
  $("status").textContent = event.status;
  $("status").dataset.status = event.status;
  $("eta").textContent = event.eta_seconds != null ? "about " + Math.ceil(event.eta_seconds) + " s left" : "";
  $("cancel").hidden = !["queued", "running"].includes(event.status);
  if (event.status === "failed") say("job failed: " + event.error, true); else say("job " + event.id + " " + event.status);
  if (event.status === "succeeded") showVideo(event.id, event.video_format);
  if (["succeeded", "failed", "cancelled"].includes(event.status)) refreshHistory();
}

async function blobUrl(path) {
  if (!state.urls.has(path)) {
    const response = await api(path);
    if (!response.ok) throw new Error(response.statusText);
    state.urls.set(path, URL.createObjectURL(await response.blob()));
  }
  return state.urls.get(path);
}

async function showVideo(id, format) {
  const url = await blobUrl("/v1/jobs/" + encodeURIComponent(id) + "/video");
  const video = $("result");
  video.src = url;
  video.hidden = false;
  video.play().catch(() => {});
  Object.assign($("download"), {href: url, download: "vidiff-" + id + "." + format, hidden: false});
}

async function cancel(id) {
  try {
    const job = await json("/v1/jobs/" + encodeURIComponent(id) + "/cancel", {method: "POST"});
    say("job " + id + ": " + (job.cancel_requested ? "stopping at the next step" : job.status));
  } catch (e) { say(e.message, true); }
  refreshHistory();
}

async function remove(id) {
  try { await api("/v1/jobs/" + encodeURIComponent(id), {method: "DELETE"}); } catch (e) { say(e.message, true); }
  refreshHistory();
}

// -- history -------------------------------------------------------------------------------------------
function card(job) {
  const base = "/v1/jobs/" + encodeURIComponent(job.id);
  const thumb = el("img", {alt: "input of job " + job.id, className: "thumb"});
  blobUrl(base + "/image").then((u) => { thumb.src = u; }).catch(() => {});
  const settings = Object.entries(job.sidecar ? job.sidecar.settings : job.settings)
    .filter(([, v]) => v !== null).map(([k, v]) => k + "=" + v).join("  ");
  const actions = el("div", {className: "actions"});
  if (job.status === "succeeded") {
    const link = el("a", {text: "download", href: "#", className: "download"});
    link.addEventListener("click", async (e) => {
      if (link.download) return;
      e.preventDefault();
      link.href = await blobUrl(base + "/video");
      link.download = "vidiff-" + job.id + "." + job.video_format;
      link.click();
    });
    const play = el("button", {type: "button", text: "play"});
    play.addEventListener("click", () => { state.current = job.id; $("current").hidden = false;
      $("current-id").textContent = job.id; showVideo(job.id, job.video_format); });
    actions.append(play, link);
  }
  if (job.status === "queued" || job.status === "running") {
    const stop = el("button", {type: "button", text: "cancel", className: "cancel"});
    stop.addEventListener("click", () => cancel(job.id));
    actions.append(stop);
  } else {
    const del = el("button", {type: "button", text: "delete"});
    del.addEventListener("click", () => remove(job.id));
    actions.append(del);
  }
  const when = new Date(job.created * 1000).toLocaleString();
  return el("div", {className: "card", dataset: {id: job.id, status: job.status}}, [
    thumb,
    el("div", {className: "status", text: job.status + (job.error ? ": " + job.error : "")}),
    el("div", {className: "meta", text: job.model + " · " + when}),
    el("div", {className: "settings", text: settings}),
    actions,
  ]);
}

async function refreshHistory(older = false) {
  try {
    const page = await json("/v1/jobs?limit=24" + (older && state.before ? "&before=" + state.before : ""));
    const cards = page.jobs.map(card);
    if (older) $("history").append(...cards); else $("history").replaceChildren(...cards);
    state.before = page.next_before;
    $("more").hidden = page.next_before === null;
  } catch (e) { say(e.message, true); }
}

async function start() {
  setupDrop();
  $("job-form").addEventListener("submit", submit);
  $("model").addEventListener("change", () => loadDefaults().catch((e) => say(e.message, true)));
  $("cancel").addEventListener("click", () => state.current && cancel(state.current));
  $("more").addEventListener("click", () => refreshHistory(true));
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("vidiff-token", $("token").value);
    start2();
  });
  await start2();
}

async function start2() {
  try {
    await loadModels();
    await refreshHistory();
    say("");
  } catch (e) { say(e.message, true); }
}

document.addEventListener("DOMContentLoaded", start);
