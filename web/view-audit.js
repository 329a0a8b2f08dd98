// The audit log: who changed what and when, with a before/after diff; filters by service
// and actor, paging back with `before`, new entries live on the first page.

import { get, query, seg } from "./api.js";
import { emptyRow, h, morph, replace, table, when } from "./dom.js";
import { state, subscribe } from "./state.js";
import { field, hashParams, reportError, select, setHashParams } from "./ui.js";

const PAGE = 50;
const DIFF_LINES = 10;

/** path -> JSON text of every leaf of `value` (arrays by index). */
function flatten(value, prefix = "", out = new Map()) {
  if (value !== null && typeof value === "object" && Object.keys(value).length > 0) {
    for (const [k, v] of Object.entries(value)) {
      flatten(v, Array.isArray(value) ? `${prefix}[${k}]` : prefix ? `${prefix}.${k}` : k, out);
    }
  } else {
    out.set(prefix || "value", JSON.stringify(value));
  }
  return out;
}

/** The changed leaves between `before` and `after`: [path, old|undefined, new|undefined]. */
export function diff(before, after) {
  const a = before === null || before === undefined ? new Map() : flatten(before);
  const b = after === null || after === undefined ? new Map() : flatten(after);
  const paths = [...new Set([...a.keys(), ...b.keys()])].sort();
  return paths.filter((p) => a.get(p) !== b.get(p)).map((p) => [p, a.get(p), b.get(p)]);
}

function diffView(entry) {
  const changes = diff(entry.before, entry.after);
  if (changes.length === 0) return h("span", { class: "muted" }, "no field changed");
  const line = ([path, old, now]) => h("li", null,
    h("code", { class: "diff-path" }, path), " ",
    old !== undefined ? h("del", { class: "diff-old" }, h("span", { class: "sr-only" }, "was "), `−${old}`) : null,
    old !== undefined && now !== undefined ? h("span", { "aria-hidden": "true" }, " → ") : null,
    now !== undefined ? h("ins", { class: "diff-new" }, h("span", { class: "sr-only" }, "now "), `+${now}`) : null);
  const head = changes.slice(0, DIFF_LINES).map(line);
  const rest = changes.slice(DIFF_LINES);
  return h("div", { class: "diff" },
    h("ul", { class: "diff-list" }, head),
    rest.length ? h("details", null, h("summary", null, `${rest.length} more`), h("ul", { class: "diff-list" }, rest.map(line))) : null);
}

export function mount(root) {
  document.title = "Audit log · Pivot";
  const params = hashParams();
  const filters = { service: params.get("service") || "", actor: params.get("actor") || "" };
  const cursors = [null];
  let page = 0;
  let nextBefore = null;
  let rows = [];
  let loading = false;

  const serviceSelect = select({ id: "audit-service", name: "service" }, [["", "All services"]]);
  const actorInput = h("input", { id: "audit-actor", name: "actor", type: "search", autocomplete: "off", spellcheck: "false", placeholder: "token:NAME or config" });
  actorInput.value = filters.actor;
  const newer = h("button", { type: "button", class: "btn", id: "audit-newer" }, "← Newer");
  const newest = h("button", { type: "button", class: "btn", id: "audit-newest" }, "Newest");
  const older = h("button", { type: "button", class: "btn", id: "audit-older" }, "Older →");
  const pageInfo = h("span", { class: "muted small", "aria-live": "polite" });
  const body = h("div", { id: "audit" });
  const form = h("form", { class: "filters", id: "audit-filters", role: "search" },
    field("Service", serviceSelect),
    field("Actor", actorInput),
    h("button", { type: "submit", class: "btn" }, "Filter"));

  root.append(
    h("div", { class: "page-head" }, h("h1", null, "Audit log"),
      h("p", { class: "page-sub" }, "Every change made through the API: who, what, when, before and after (secrets redacted).")),
    h("section", { class: "card", "aria-label": "Audit entries" }, form, body, h("div", { class: "pager" }, newest, newer, older, pageInfo)));

  function fillServices() {
    const names = [...state.services.keys()].sort();
    if (filters.service && !names.includes(filters.service)) names.unshift(filters.service);
    replace(serviceSelect, h("option", { value: "" }, "All services"), names.map((n) => h("option", { value: n }, n)));
    serviceSelect.value = filters.service;
  }

  function render() {
    morph(body, table("Audit log", ["When", "Who", "Action", "Service", "Target", "Change"],
      rows.length ? rows.map((e) => h("tr", { "data-id": e.id, "data-action": e.action, class: e.fresh ? "row-new" : null },
        h("td", { class: "nowrap" }, when(e.at)),
        h("td", { class: "mono" }, e.actor || "–"),
        h("td", { class: "mono" }, e.action),
        h("td", null, e.service ? h("a", { href: `#/services/${seg(e.service)}` }, e.service) : "–"),
        h("td", { class: "mono wrap" }, e.target || "–"),
        h("td", { class: "wrap" }, diffView(e))))
        : [emptyRow(6, loading ? "Loading…" : "No audit entries match.")],
      { id: "audit-table", "data-testid": "audit-table" }));
    newer.disabled = page === 0 || loading;
    newest.disabled = page === 0 || loading;
    older.disabled = nextBefore === null || nextBefore === undefined || loading;
    pageInfo.textContent = `Page ${page + 1}${rows.length ? ` · ${rows.length} entries` : ""}`;
  }

  async function load() {
    loading = true;
    render();
    try {
      const data = await get(`/audit${query({ service: filters.service, actor: filters.actor, before: cursors[page], limit: PAGE })}`);
      rows = data.entries;
      nextBefore = data.next_before;
    } catch (e) {
      rows = [];
      nextBefore = null;
      reportError("Could not load the audit log", e);
    } finally {
      loading = false;
      render();
    }
  }

  function refilter() {
    filters.service = serviceSelect.value;
    filters.actor = actorInput.value.trim();
    setHashParams({ service: filters.service, actor: filters.actor });
    cursors.length = 1;
    page = 0;
    load();
  }

  serviceSelect.addEventListener("change", refilter);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    refilter();
  });
  older.addEventListener("click", () => {
    cursors[page + 1] = nextBefore;
    page += 1;
    load();
  });
  newer.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  newest.addEventListener("click", () => {
    page = 0;
    load();
  });

  fillServices();
  load();

  return subscribe((change) => {
    if (change.type === "services") fillServices();
    if (change.type === "resync" && page === 0) load();
    if (change.type === "audit" && page === 0) {
      const e = change.entry;
      if (filters.service && e.service !== filters.service) return;
      if (filters.actor && e.actor !== filters.actor) return;
      if (rows.some((x) => x.id === e.id)) return;
      rows = [{ ...e, fresh: true }, ...rows];
      if (rows.length > PAGE) {
        rows = rows.slice(0, PAGE);
        nextBefore = rows[rows.length - 1].id;
      }
      render();
    }
  });
}
