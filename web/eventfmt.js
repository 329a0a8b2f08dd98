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
      const d = e.details || {};
      if (d.healthy === true) return "ok";
      return "warn";
    }
    default:
      return "info";
  }
}

export const kindBadge = (e) => badge(eventTone(e), e.kind, { class: "kind" });

/** `a=1 b=x` for a details object, short. */
function compact(details, skip = []) {
  if (details === null || details === undefined) return "";
  if (typeof details !== "object") return String(details);
  const parts = [];
  for (const [k, v] of Object.entries(details)) {
    if (skip.includes(k) || v === null || v === undefined) continue;
    if (k.endsWith("_ms") && typeof v === "number") parts.push(`${k.slice(0, -3).replaceAll("_", " ")} ${fmtMs(v)}`);
    else parts.push(`${k.replaceAll("_", " ")} ${typeof v === "object" ? JSON.stringify(v) : v}`);
  }
  const text = parts.join(" · ");
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

/** One line saying what happened. */
export function eventSummary(e) {
  const arrow = `${e.old_master || "none"} → ${e.new_master || "none"}`;
  const reason = e.reason ? ` (${e.reason})` : "";
  const details = compact(e.details, ["old_master", "new_master"]);
  const tail = details ? ` · ${details}` : "";
  switch (e.kind) {
    case "initial":
      return `first decision: master ${e.new_master || "none"}${reason}${tail}`;
    case "master-changed":
    case "failover-finished":
      return `${arrow}${reason}${tail}`;
    case "leader-promoting":
      return `a Sentinel leader is promoting ${e.new_master || "a replica"}${reason}${tail}`;
    default: {
      const masters = e.old_master || e.new_master ? `${arrow} ` : "";
      return `${masters}${e.reason || ""}${e.reason && tail ? tail : details}`.trim() || e.kind;
    }
  }
}
