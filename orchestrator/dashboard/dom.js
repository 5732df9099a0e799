// DOM and formatting helpers of the dashboard.
//
// Text is only ever added as text nodes (`h` turns strings into them): nothing here parses
// HTML, so user input (job errors, agent names) cannot become markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "width") el.style.width = value; // CSSOM, which the CSP allows
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // a string becomes a text node
  }
  return el;
}

export function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { class: numeric(t) }, t)))),
    h("tbody", {}, rows),
  );
}

const NUMERIC = new Set(["Pending", "Retrying", "Running", "Dead", "Attempts", "Workers", "PID"]);
function numeric(header) {
  return NUMERIC.has(header) ? "num" : null;
}

function token(value) {
  // A status from the server becomes part of a class name: keep only harmless characters.
  return String(value).replace(/[^a-z0-9_-]/gi, "");
}

export function badge(text, kind) {
  return h("span", { class: `badge b-${token(kind || text)}` }, text);
}

export function mb(n) {
  return n === null || n === undefined ? "—" : Math.round(n).toLocaleString("en-US");
}

export function duration(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// Ages are measured against the server's clock, so a skewed browser clock cannot lie.
export function when(iso, now) {
  if (!iso) return "—";
  const seconds = (now - Date.parse(iso)) / 1000;
  const text = seconds >= 0 ? `${duration(seconds)} ago` : `in ${duration(seconds)}`;
  return h("time", { datetime: iso, title: iso }, text);
}

export function shortId(id) {
  // Job ids are UUIDv7: the start is the time (alike for jobs of the same minute), the end
  // is random. Show the end; the title and the link have the whole id.
  return `…${String(id).slice(-8)}`;
}

export function jobLink(id) {
  return h(
    "a",
    {
      class: "mono",
      href: `/jobs/${encodeURIComponent(id)}/events`,
      title: `${id}: its events`,
      dataset: { jobId: id },
    },
    shortId(id),
  );
}

export function orNone(value) {
  return value === null || value === undefined || value === "" ? "—" : value;
}

export function metric(label, value, data) {
  return h("span", { class: "metric", dataset: data || {} }, h("small", {}, label), value);
}

export function errorCell(error) {
  return error
    ? h("td", { class: "clip error", title: error }, error)
    : h("td", { class: "muted" }, "—");
}

export function setCount(id, n) {
  const el = document.getElementById(id);
  if (el) el.textContent = String(n);
}
