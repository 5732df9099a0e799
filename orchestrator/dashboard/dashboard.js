// The dashboard: reads GET /dashboard/data every few seconds and renders it (sections.js).
//
// Everything is built with createElement and text nodes, never innerHTML: job errors, agent
// names and worker ids are user input, and must show as text. The server's Content Security
// Policy backs this up (no inline script, nothing from another origin).

import { h } from "./dom.js";
import * as sections from "./sections.js";

const REFRESH_MS = 3000;
const HIDDEN_REFRESH_MS = 30000; // a background tab still notices an outage, slowly
const ARM_MS = 5000; // a replay button stays armed this long after its first click
const FLASH_MS = 8000;
const TOKEN_KEY = "orchestrator.dashboard.token";

const state = { data: null, armed: new Map(), timer: 0, inFlight: false, flashTimer: 0 };

function armed(id) {
  return (state.armed.get(id) || 0) > Date.now();
}

async function onReplayClick(event) {
  const button = event.target.closest("button[data-replay]");
  if (!button || button.disabled) return;
  const id = button.dataset.replay;
  // Replay is an admin action: the first click only arms the button (so a stray click runs
  // nothing), the second sends it with the bearer token once issue 6 makes one required.
  if (!armed(id)) {
    state.armed.set(id, Date.now() + ARM_MS);
    button.replaceWith(sections.replayButton({ id, type: button.dataset.jobType }, true));
    setTimeout(() => state.data && paint(state.data), ARM_MS + 50);
    return;
  }
  state.armed.delete(id);
  button.disabled = true;
  button.textContent = "Replaying…";
  try {
    const job = await api(`/dlq/${encodeURIComponent(id)}/replay`, { method: "POST" });
    flash(`Replayed ${job.id} (${job.type}): now ${job.status}.`, "ok");
  } catch (err) {
    const denied = err.status === 401 || err.status === 403;
    const hint = denied ? " (an admin token is needed)" : "";
    flash(`Replay of ${id} failed: ${err.message}${hint}`, "error");
  }
  refresh();
}

function fill(id, render, data) {
  const body = document.querySelector(`#${id} .body`);
  try {
    const nodes = [render(data)].flat(Infinity);
    body.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  } catch (err) {
    // One section that cannot render (an unexpected field) must not blank the others.
    body.replaceChildren(h("p", { class: "alert" }, `cannot show this: ${err.message}`));
  }
}

function paint(d) {
  document.getElementById("replica").replaceChildren(...sections.renderReplica(d));
  fill("gpus", sections.renderGpus, d);
  fill("leader", sections.renderLeader, d);
  fill("queues", sections.renderQueues, d);
  fill("jobs", sections.renderJobs, d);
  fill("dlq", (data) => sections.renderDlq(data, armed), d);
  fill("pools", sections.renderPools, d);
  fill("workers", sections.renderWorkers, d);
}

function authHeaders() {
  const t = storedToken();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    cache: "no-store",
    headers: { Accept: "application/json", ...authHeaders() },
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const err = new Error(`${response.status} ${(body && body.message) || response.statusText}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

function setStatus(text, kind) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

function flash(text, kind) {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = `flash ${kind}`;
  el.hidden = false;
  clearTimeout(state.flashTimer);
  state.flashTimer = setTimeout(() => {
    el.hidden = true;
  }, FLASH_MS);
}

async function refresh() {
  clearTimeout(state.timer);
  if (state.inFlight) return;
  state.inFlight = true;
  try {
    const data = await api("/dashboard/data");
    state.data = data;
    paint(data);
    const at = new Date(Date.parse(data.generated_at)).toLocaleTimeString();
    setStatus(`updated ${at} · every ${REFRESH_MS / 1000}s`, "ok");
    document.body.dataset.state = "ready";
    document.body.dataset.generatedAt = data.generated_at;
    document.body.classList.remove("stale");
  } catch (err) {
    // 401: no token or a revoked one; 403: a token below admin (the data is every owner's).
    const hint =
      err.status === 401 || err.status === 403 ? " · enter an admin token (above)" : "";
    setStatus(`cannot refresh: ${err.message}${hint}`, "error");
    document.body.classList.add("stale");
    if (!state.data) document.body.dataset.state = "error";
  } finally {
    state.inFlight = false;
    state.timer = setTimeout(refresh, document.hidden ? HIDDEN_REFRESH_MS : REFRESH_MS);
  }
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: no token
  }
}

function showToken() {
  const input = document.getElementById("token");
  input.value = "";
  input.placeholder = storedToken() ? "set (this tab)" : "none";
}

function onTokenSubmit(event) {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    flash("This browser keeps no session storage: the token cannot be kept.", "error");
  }
  showToken();
  flash(value ? "Token set for this tab." : "Token cleared.", "ok");
  refresh();
}

function start() {
  document.getElementById("dlq").addEventListener("click", onReplayClick);
  document.getElementById("token-form").addEventListener("submit", onTokenSubmit);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  showToken();
  refresh();
}

start();
