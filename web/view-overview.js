// Overview: every service at a glance (master, replicas with health and lag, Sentinels,
// the proxies serving it and their config versions, ops/s), kept live.

import { seg } from "./api.js";
import { badge, fmtBytes, fmtRate, h, morph, table } from "./dom.js";
import { fleetBadges, fleetCounts, masterState, proxyState, replicaState, sentinelsState, stateBadge } from "./health.js";
import { proxiesOf, state, subscribe } from "./state.js";

function serviceCard(svc) {
  const t = svc.topology || {};
  const ms = masterState(t);
  const ss = sentinelsState(t);
  const serving = proxiesOf(svc.name);
  const ops = serving.reduce((sum, p) => sum + (Number(p.ops_per_sec) || 0), 0);
  const attention = fleetCounts(serving, state.fleetVersion);
  const replicas = t.replicas || [];
  const unhealthy = replicas.filter((r) => !r.healthy).length;
  const policy = svc.policy || {};
  const down = (t.sentinels || []).filter((x) => !x.reachable).map((x) => x.addr);

  const replicaRows = replicas.map((r) => {
    const rs = replicaState(r);
    return h("tr", { "data-replica": r.addr },
      h("td", { class: "mono" }, r.addr),
      h("td", null, stateBadge(rs), r.healthy ? null : h("div", { class: "small muted wrap" }, rs.detail)),
      h("td", { class: "num nowrap" }, r.healthy ? fmtBytes(r.lag_bytes) : "–"));
  });

  return h("article", { class: "card service-card", "data-testid": "service-card", "data-service": svc.name, "aria-labelledby": `svc-${svc.name}-title` },
    h("header", { class: "card-head" },
      h("h2", { id: `svc-${svc.name}-title` }, h("a", { href: `#/services/${seg(svc.name)}` }, svc.name)),
      stateBadge(ms.tone === "ok" ? { tone: "ok", text: "serving" } : ms)),
    h("dl", { class: "kv" },
      h("dt", null, "Master"),
      h("dd", { class: "mono", "data-testid": "overview-master" }, t.master || h("span", { class: "text-bad" }, ms.detail)),
      h("dt", null, "Sentinels"),
      h("dd", null, stateBadge(ss), down.length ? h("span", { class: "muted small" }, ` unreachable: ${down.join(", ")}`) : null),
      h("dt", null, "Proxies"),
      h("dd", null, serving.length === 0 ? h("span", { class: "muted" }, "none connected")
        : h("ul", { class: "inline-list" }, serving.map((p) => h("li", null,
          h("span", { class: "mono" }, p.proxy_id), " ", stateBadge(proxyState(p, state.fleetVersion)))))),
      h("dt", null, "Ops/s"),
      h("dd", { class: "num-left" }, serving.length ? fmtRate(ops) : "–",
        attention.notCurrent ? h("span", { class: "muted small" },
          ` · ${attention.notCurrent} ${attention.notCurrent === 1 ? "proxy" : "proxies"} not current`) : null,
        attention.draining ? h("span", { class: "muted small" }, ` · ${attention.draining} draining`) : null),
      h("dt", null, "Policy"),
      h("dd", { class: "small" },
        `reads: ${policy.read_policy || "–"} · ${policy.consistency || "–"} · write ack: ${policy.write_ack || "–"}`)),
    h("h3", { class: "subhead" }, `Replicas (${replicas.length}${unhealthy ? `, ${unhealthy} unhealthy` : ""})`),
    replicas.length === 0 ? h("p", { class: "muted" }, "No replicas.")
      : table(`Replicas of ${svc.name}`, ["Address", "Health", "Lag"], replicaRows, { class: "compact" }));
}

function summary() {
  const services = [...state.services.values()];
  const noMaster = services.filter((x) => masterState(x.topology).tone !== "ok").length;
  const connected = state.proxies.filter((p) => p.connected);
  const ops = connected.reduce((sum, p) => sum + (Number(p.ops_per_sec) || 0), 0);
  const stat = (label, value, extra) => h("div", { class: "stat" },
    h("span", { class: "stat-label" }, label), h("span", { class: "stat-value" }, value), extra || null);
  return h("section", { class: "stats", "aria-label": "Fleet summary" },
    stat("Services", String(services.length),
      noMaster ? badge("bad", `${noMaster} without master`) : badge("ok", "all have a master")),
    stat("Proxies connected", String(connected.length),
      fleetBadges(fleetCounts(connected, state.fleetVersion), "all current")),
    stat("Config version", state.fleetVersion === null ? "–" : `v${state.fleetVersion}`),
    stat("Ops/s (all proxies)", fmtRate(ops)));
}

export function mount(root) {
  document.title = "Overview · Pivot";
  const body = h("div", { id: "overview" });
  root.append(h("div", { class: "page-head" }, h("h1", null, "Overview")), body);

  const render = () => {
    if (!state.loaded) {
      morph(body, h("p", { class: "muted", "aria-busy": "true" }, "Loading services…"));
      return;
    }
    const services = [...state.services.values()].sort((a, b) => a.name.localeCompare(b.name));
    morph(body, summary(),
      services.length === 0
        ? h("p", { class: "notice notice-info" }, "No services yet. Create one with POST /api/v1/services.")
        : h("div", { class: "card-grid" }, services.map(serviceCard)));
  };
  render();
  return subscribe((change) => {
    if (["services", "service", "topology", "proxies", "resync"].includes(change.type)) render();
  });
}
