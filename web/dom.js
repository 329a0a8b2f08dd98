// DOM and formatting helpers. Everything is built with createElement / textContent:
// strings from the API are never parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Applies `attrs` to `node`: `class`, `on` ({event: handler}), properties for booleans,
 *  attributes for the rest; `null` / `undefined` / `false` values are skipped. */
function apply(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === "class") {
      node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: `h("td", {class: "num"}, "42")`. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, same calling convention as `h`. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** Replaces the children of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A state badge: an icon and a word, so the state never depends on colour alone. */
export function badge(tone, text, attrs = {}) {
  const icon = { ok: "✓", warn: "▲", bad: "✕", info: "●", muted: "○" }[tone] || "●";
  return h("span", { ...attrs, class: ["badge", `badge-${tone}`, attrs.class] },
    h("span", { class: "badge-icon", "aria-hidden": "true" }, icon), text);
}

/** A table inside a box that scrolls horizontally on narrow screens. */
export function table(caption, headers, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", null, h("tr", null, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", null, rows)));
}

/** A row spanning every column, for "nothing here" messages. */
export function emptyRow(columns, text) {
  return h("tr", { class: "empty-row" }, h("td", { colspan: columns }, text));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtRate(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  const v = Number(n);
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return v >= 10 ? v.toFixed(0) : String(Math.round(v * 10) / 10);
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 1)} s` : `${ms} ms`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** `HH:MM:SS.mmm` in local time. */
export function fmtClock(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** `YYYY-MM-DD HH:MM:SS` in local time. */
export function fmtDateTime(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function fmtAgo(date, now = Date.now()) {
  const s = Math.round((now - date.getTime()) / 1000);
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A `<time>` showing the relative age, refreshed by `refreshTimes`; the full date is in
 *  its title and datetime. */
export function ago(iso) {
  if (!iso) return h("span", { class: "muted" }, "never");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", null, String(iso));
  return h("time", { datetime: iso, title: fmtDateTime(date), "data-ago": "" }, fmtAgo(date));
}

/** A `<time>` with the local date and time. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", null, String(iso));
  return h("time", { datetime: iso, title: iso }, fmtDateTime(date));
}

/** Re-renders every relative time on the page. */
export function refreshTimes() {
  const now = Date.now();
  for (const t of document.querySelectorAll("time[data-ago]")) {
    const next = fmtAgo(new Date(t.getAttribute("datetime")), now);
    if (t.textContent !== next) t.textContent = next;
  }
}

let ids = 0;
/** A document-unique id with a readable prefix. */
export function uid(prefix) {
  ids += 1;
  return `${prefix}-${ids}`;
}

/**
 * Makes the children of `node` equal to `children` by patching the existing DOM in place
 * (same tag: attributes and children updated; otherwise replaced). Elements that stay keep
 * their identity, so focus, scroll position and open `<details>` survive a live update.
 * Event listeners of the new nodes are not carried over: use it for content whose
 * controls act through delegation (`data-action` attributes) or have no listeners.
 */
export function morph(node, ...children) {
  const fresh = document.createDocumentFragment();
  append(fresh, children);
  morphChildren(node, fresh);
  return node;
}

function morphChildren(a, b) {
  const olds = [...a.childNodes];
  const news = [...b.childNodes];
  news.forEach((n, i) => {
    if (i < olds.length) morphNode(olds[i], n);
    else a.append(n);
  });
  for (const extra of olds.slice(news.length)) extra.remove();
}

function morphNode(a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName) {
    a.replaceWith(b);
    return;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue;
    return;
  }
  for (const { name } of [...a.attributes]) {
    // An open <details> stays open: the user opened it.
    if (!b.hasAttribute(name) && !(name === "open" && a.nodeName === "DETAILS")) a.removeAttribute(name);
  }
  for (const { name, value } of [...b.attributes]) {
    if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  }
  morphChildren(a, b);
}
