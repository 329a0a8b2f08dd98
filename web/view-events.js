// Topology events of every service: filters by service and kind, paging back in time with
// `before`, and new events arriving live on the first page.

import { get, query, seg } from "./api.js";
import { emptyRow, h, morph, replace, table, when } from "./dom.js";
import { EVENT_KINDS, eventText, kindBadge } from "./eventfmt.js";
import { state, subscribe } from "./state.js";
import { field, hashParams, reportError, select, setHashParams } from "./ui.js";

const PAGE = 50;

export function mount(root) {
  document.title = "Events · Pivot";
  const params = hashParams();
  const filters = {
    service: params.get("service") || "",
    kinds: (params.get("kind") || "").split(",").filter((k) => EVENT_KINDS.includes(k)),
  };
  // `before` cursor of each page seen; the first page has none.
  const cursors = [null];
  let page = 0;
  let nextBefore = null;
  let rows = [];
  let loading = false;

  const serviceSelect = select({ id: "events-service", name: "service" }, [["", "All services"]]);
  const kindBoxes = EVENT_KINDS.map((k) => {
    const box = h("input", { type: "checkbox", id: `kind-${k}`, value: k, name: "kind" });
    box.checked = filters.kinds.includes(k);
    return box;
  });
  const kindSummary = h("summary", null, "");
  const kindDetails = h("details", { class: "kind-picker" }, kindSummary,
    h("fieldset", null, h("legend", { class: "sr-only" }, "Event kinds"),
      h("div", { class: "kind-grid" }, kindBoxes.map((box) => h("label", { class: "check" }, box, " ", box.value))),
      h("button", { type: "button", class: "btn btn-small", id: "kinds-clear" }, "All kinds")));
  const newer = h("button", { type: "button", class: "btn", id: "events-newer" }, "← Newer");
  const newest = h("button", { type: "button", class: "btn", id: "events-newest" }, "Newest");
  const older = h("button", { type: "button", class: "btn", id: "events-older" }, "Older →");
  const pageInfo = h("span", { class: "muted small", "aria-live": "polite" });
  const body = h("div", { id: "events" });

  root.append(
    h("div", { class: "page-head" }, h("h1", null, "Events"),
      h("p", { class: "page-sub" }, "Topology changes, failovers and configuration changes, newest first.")),
    h("section", { class: "card", "aria-label": "Events" },
      h("form", { class: "filters", id: "events-filters", role: "search" },
        field("Service", serviceSelect),
        h("div", { class: "field" }, h("span", { class: "label-like", id: "kinds-label" }, "Kinds"), kindDetails)),
      body,
      h("div", { class: "pager" }, newest, newer, older, pageInfo)));

  function fillServices() {
    const names = [...state.services.keys()].sort();
    if (filters.service && !names.includes(filters.service)) names.unshift(filters.service);
    replace(serviceSelect, h("option", { value: "" }, "All services"), names.map((n) => h("option", { value: n }, n)));
    serviceSelect.value = filters.service;
  }

  function updateKindSummary() {
    kindSummary.textContent = filters.kinds.length === 0 ? "All kinds" : `${filters.kinds.length} selected: ${filters.kinds.join(", ")}`;
  }

  function render() {
    morph(body, table("Events", ["Time", "Service", "Kind", "What", "Version"],
      rows.length ? rows.map((e) => h("tr", { "data-id": e.id, "data-kind": e.kind, class: e.fresh ? "row-new" : null },
        h("td", { class: "nowrap" }, when(e.at)),
        h("td", null, e.service ? h("a", { href: `#/services/${seg(e.service)}` }, e.service) : "–"),
        h("td", null, kindBadge(e)),
        h("td", { class: "wrap" }, eventText(e, h)),
        h("td", { class: "num mono" }, e.version ?? "–")))
        : [emptyRow(5, loading ? "Loading…" : "No events match.")],
      { id: "events-table", "data-testid": "events-table" }));
    newer.disabled = page === 0 || loading;
    newest.disabled = page === 0 || loading;
    older.disabled = nextBefore === null || nextBefore === undefined || loading;
    pageInfo.textContent = `Page ${page + 1}${rows.length ? ` · ${rows.length} events` : ""}`;
  }

  async function load() {
    loading = true;
    render();
    try {
      const data = await get(`/events${query({ service: filters.service, kind: filters.kinds, before: cursors[page], limit: PAGE })}`);
      rows = data.events;
      nextBefore = data.next_before;
    } catch (e) {
      rows = [];
      nextBefore = null;
      reportError("Could not load the events", e);
    } finally {
      loading = false;
      render();
    }
  }

  function refilter() {
    filters.service = serviceSelect.value;
    filters.kinds = kindBoxes.filter((b) => b.checked).map((b) => b.value);
    setHashParams({ service: filters.service, kind: filters.kinds.join(",") });
    updateKindSummary();
    cursors.length = 1;
    page = 0;
    load();
  }

  serviceSelect.addEventListener("change", refilter);
  for (const box of kindBoxes) box.addEventListener("change", refilter);
  kindDetails.querySelector("#kinds-clear").addEventListener("click", () => {
    for (const box of kindBoxes) box.checked = false;
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
  updateKindSummary();
  load();

  return subscribe((change) => {
    if (change.type === "services") fillServices();
    if (change.type === "resync" && page === 0) load();
    if (change.type === "event" && page === 0) {
      const e = change.event;
      if (filters.service && e.service !== filters.service) return;
      if (filters.kinds.length && !filters.kinds.includes(e.kind)) return;
      if (rows.some((x) => x.id === e.id)) return;
      rows = [{ ...e, fresh: true }, ...rows];
      if (rows.length > PAGE) {
        // The page keeps its size; "Older" then starts after the last row still shown.
        rows = rows.slice(0, PAGE);
        nextBefore = rows[rows.length - 1].id;
      }
      render();
    }
  });
}
