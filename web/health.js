// How a node's state reads: one tone (ok / warn / bad / muted) and the words for it, shared
// by the tables and the topology drawing so they always agree.

import { badge, fmtBytes, fmtMs } from "./dom.js";

/** `{tone, text, detail}` of a service's master. */
export function masterState(t) {
  if (!t || !t.decided) return { tone: "warn", text: "deciding", detail: "waiting for the Sentinels' first answer" };
  if (!t.master) return { tone: "bad", text: "no master", detail: t.master_reason || "no agreed master" };
  return { tone: "ok", text: "master", detail: t.master_reason || "" };
}

/** `{tone, text, detail}` of a replica. */
export function replicaState(r) {
  if (!r.healthy) {
    const down = r.link_down_ms ? `link down ${fmtMs(r.link_down_ms)}` : "";
    return { tone: "bad", text: "unhealthy", detail: [r.reason, down].filter(Boolean).join(" · ") || "not serving reads" };
  }
  return { tone: "ok", text: "healthy", detail: `lag ${fmtBytes(r.lag_bytes)}` };
}

/** `{tone, text, reachable, total}` of a service's Sentinels. */
export function sentinelsState(t) {
  const list = (t && t.sentinels) || [];
  const reachable = list.filter((x) => x.reachable).length;
  const total = list.length;
  const majority = Math.floor(total / 2) + 1;
  let tone = "ok";
  if (total === 0 || reachable < majority) tone = "bad";
  else if (reachable < total) tone = "warn";
  return { tone, text: `${reachable}/${total} reachable`, reachable, total };
}

/** `{tone, text, detail}` of a proxy's config: current, behind, NACKed or disconnected. */
export function proxyState(p, fleetVersion) {
  if (!p.connected) return { tone: "muted", text: "disconnected", detail: "no config stream" };
  if (p.draining) return { tone: "warn", text: "draining", detail: "shutting down: not ready, finishing its clients" };
  if (p.last_nack && (p.last_nack_version === null || p.last_nack_version === undefined
      || p.acked_version === null || p.last_nack_version > p.acked_version)) {
    return { tone: "bad", text: `NACK v${p.last_nack_version ?? "?"}`, detail: p.last_nack };
  }
  if (p.acked_version === null || p.acked_version === undefined) return { tone: "warn", text: "no ACK yet", detail: "" };
  if (p.silent) return { tone: "warn", text: "silent", detail: "connected, but its status reports stopped" };
  // The server's judgement (it knows which versions concern the proxy's services); the
  // UI's own latest version may run a moment ahead of the proxy's status report.
  if (p.behind) return { tone: "warn", text: `behind (v${p.acked_version})`, detail: `current is v${fleetVersion}` };
  return { tone: "ok", text: `v${p.acked_version}`, detail: "current" };
}

/**
 * Connected proxies that need a look: `{notCurrent, draining}`. A draining proxy is shutting
 * down, not behind: it is counted apart, whatever its config.
 */
export function fleetCounts(proxies, fleetVersion) {
  let notCurrent = 0;
  let draining = 0;
  for (const p of proxies) {
    if (!p.connected) continue;
    if (p.draining) draining += 1;
    else if (proxyState(p, fleetVersion).tone !== "ok") notCurrent += 1;
  }
  return { notCurrent, draining };
}

/** Badges of `fleetCounts`: a warning for each kind present, else `okText`. */
export function fleetBadges({ notCurrent, draining }, okText) {
  const out = [];
  if (notCurrent) out.push(badge("warn", `${notCurrent} not current`));
  if (draining) out.push(badge("warn", `${draining} draining`));
  return out.length ? out : [badge("ok", okText)];
}

export const stateBadge = (st, attrs) => badge(st.tone, st.text, { title: st.detail || null, ...attrs });
