// How a topology event reads in lists and drawings: its tone and a one-line summary.

import { badge, fmtMs } from "./dom.js";

export const EVENT_KINDS = [
  "initial", "master-changed", "leader-promoting", "promotion-aborted", "promotion-expired",
  "replicas-changed", "replica-health", "sentinels-changed", "config-changed",
  "failover-started", "failover-finished", "failover-failed", "service-created", "service-deleted",
];

/** The kinds the failover timeline shows. */
export const TIMELINE_KINDS = [
  "initial", "master-changed", "leader-promoting", "promotion-aborted", "promotion-expired",
  "failover-started", "failover-finished", "failover-failed", "replica-health", "replicas-changed",
  "sentinels-changed",
];

export function eventTone(e) {
  switch (e.kind) {
    case "failover-finished":
    case "initial":
    case "service-created":
      return "ok";
    case "failover-failed":
      return "bad";
    case "promotion-aborted":
    case "promotion-expired":
    case "service-deleted":
      return "warn";
    case "replica-health": {
      // Recovered (every replica healthy) or degraded.
      const d = e.details || {};
      if (Array.isArray(d.replicas)) return d.replicas.every((r) => r && r.healthy) ? "ok" : "warn";
      if (typeof d.healthy === "boolean") return d.healthy ? "ok" : "warn";
      return /unhealthy|down/.test(e.reason || "") ? "warn" : "ok";
    }
    default:
      return "info";
  }
}

export const kindBadge = (e) => badge(eventTone(e), e.kind, { class: "kind" });

/** `k v · k v` for the scalar fields of a details object (lists as their length, nested
 *  objects left out: the events page links to the raw data through the API). */
function compact(details, skip) {
  if (details === null || details === undefined) return "";
  if (typeof details !== "object") return String(details);
  const parts = [];
  for (const [k, v] of Object.entries(details)) {
    if (skip.includes(k) || v === null || v === undefined || v === "") continue;
    const label = k.replaceAll("_", " ");
    if (Array.isArray(v)) parts.push(`${label}: ${v.length}`);
    else if (typeof v === "object") continue;
    else if (k.endsWith("_ms") && typeof v === "number") parts.push(`${label.slice(0, -3)} ${fmtMs(v)}`);
    else parts.push(`${label} ${v}`);
  }
  const text = parts.join(" · ");
  return text.length > 240 ? `${text.slice(0, 239)}…` : text;
}

/** What happened, as `{main, extra}`: `main` is one short line (the master change, or the
 *  reason), `extra` the rest (reason, masters, scalar details). */
export function eventSummary(e) {
  const changed = (e.old_master || null) !== (e.new_master || null);
  const arrow = changed ? `${e.old_master || "none"} → ${e.new_master || "none"}` : "";
  let main;
  if (e.kind === "initial") main = `master ${e.new_master || "none"}`;
  else if (e.kind === "master-changed" && arrow) main = arrow;
  else main = e.reason || arrow || (e.new_master ? `master ${e.new_master}` : e.kind);
  const skip = ["old_master", "new_master"];
  if (!changed && e.new_master) {
    // The current master as context: named once, not again in the details.
    for (const [k, v] of Object.entries(e.details || {})) if (v === e.new_master) skip.push(k);
  }
  const extra = [
    main !== e.reason ? e.reason : "",
    main !== arrow ? arrow : "",
    compact(e.details, skip),
  ].filter(Boolean).join(" · ");
  return { main, extra };
}

/** The summary as nodes: the main line and, muted below it, the rest. */
export function eventText(e, h) {
  const { main, extra } = eventSummary(e);
  return [h("span", { class: "ev-main" }, main), extra ? h("span", { class: "ev-extra" }, extra) : null];
}
