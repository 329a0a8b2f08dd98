// The proxy fleet: who is connected, which config version each one ACKed against the
// current one, why one is behind (NACK reason), its connections and ops/s.

import { seg } from "./api.js";
import { ago, emptyRow, fmtRate, h, morph, table } from "./dom.js";
import { fleetBadges, fleetCounts, proxyState, stateBadge } from "./health.js";
import { loadProxies, state, subscribe } from "./state.js";
import { reportError } from "./ui.js";

function row(p) {
  const st = proxyState(p, state.fleetVersion);
  const why = st.tone === "bad" ? p.last_nack : st.tone === "warn" ? st.detail : "";
  return h("tr", { "data-proxy": p.proxy_id, class: st.tone === "ok" ? null : `row-${st.tone}` },
    h("td", { class: "mono" }, p.proxy_id),
    h("td", { class: "mono" }, p.listen_addr || "–"),
    h("td", { class: "small" }, p.build_version || "–"),
    h("td", null, (p.services || []).length === 0 ? h("span", { class: "muted" }, "none")
      : h("ul", { class: "inline-list" }, p.services.map((x) => h("li", null, h("a", { href: `#/services/${seg(x)}` }, x))))),
    h("td", { class: "num mono", "data-testid": "proxy-acked" },
      `${p.acked_version ?? "–"} / ${state.fleetVersion ?? "–"}`),
    h("td", null, stateBadge(st), why ? h("div", { class: "small text-muted-strong" }, why) : null),
    h("td", { class: "num" }, p.client_connections ?? "–"),
    h("td", { class: "num", title: p.reads_per_sec === null || p.reads_per_sec === undefined ? null
      : `reads ${fmtRate(p.reads_per_sec)}/s · writes ${fmtRate(p.writes_per_sec)}/s` }, fmtRate(p.ops_per_sec),
    p.held_requests ? h("div", { class: "small text-warn" }, `${p.held_requests} held`) : null),
    h("td", null, ago(p.last_seen)));
}

export function mount(root) {
  document.title = "Proxies · Pivot";
  const summary = h("p", { class: "page-sub", id: "proxies-summary" });
  const body = h("div", { id: "proxies" });
  root.append(h("div", { class: "page-head" }, h("h1", null, "Proxy fleet"), summary),
    h("section", { class: "card", "aria-labelledby": "proxies-h" },
      h("h2", { id: "proxies-h", class: "sr-only" }, "Proxies"), body));

  const render = () => {
    const list = [...state.proxies].sort((a, b) => (b.connected - a.connected) || a.proxy_id.localeCompare(b.proxy_id));
    const connected = list.filter((p) => p.connected).length;
    morph(summary, `${list.length} known · ${connected} connected · current config version `,
      h("strong", null, state.fleetVersion === null ? "–" : `v${state.fleetVersion}`), " ",
      list.length ? fleetBadges(fleetCounts(list, state.fleetVersion), "all connected proxies current") : null);
    morph(body, table("Proxies",
      ["Proxy", "Address", "Build", "Services", "Config acked / current", "State", "Connections", "Ops/s", "Last seen"],
      list.length ? list.map(row) : [emptyRow(9, "No proxy has connected yet.")],
      { id: "proxies-table", "data-testid": "proxies-table" }));
  };
  render();
  loadProxies().catch((e) => reportError("Could not load the proxies", e));
  return subscribe((change) => {
    if (["proxies", "resync"].includes(change.type)) render();
  });
}
