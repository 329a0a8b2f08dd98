// The topology drawing: proxies, master, replicas and Sentinels as rows of boxes (SVG),
// laid out for the width it gets so that it stays readable on a phone.

import { fmtBytes, fmtRate, s } from "./dom.js";
import { masterState, proxyState, replicaState, sentinelsState } from "./health.js";

const PAD = 12;
const GAP_X = 14;
const GAP_Y = 40;
const LABEL_H = 20;
const NODE_H = 64;
const SMALL_H = 46;
const ICON = { ok: "✓", warn: "▲", bad: "✕", info: "●", muted: "○" };

function fit(text, width, charWidth) {
  const max = Math.max(4, Math.floor((width - 20) / charWidth));
  const str = String(text ?? "");
  return str.length > max ? `${str.slice(0, max - 1)}…` : str;
}

/** One box: `lines` are [text, class] pairs, the first one bold with the state icon. */
function node(x, y, w, hgt, tone, lines, testid, key) {
  const full = lines.map(([t]) => t).filter(Boolean).join(" — ");
  const g = s("g", { class: ["node", `node-${tone}`], "data-testid": testid, "data-key": key, transform: `translate(${x},${y})` },
    s("title", null, full),
    s("rect", { width: w, height: hgt, rx: 6, ry: 6 }));
  lines.forEach(([text, cls], i) => {
    if (!text) return;
    const mono = cls.includes("mono");
    g.append(s("text", { x: 10, y: 18 + i * 17, class: cls }, fit(text, w, mono ? 7.3 : 6.8)));
  });
  return g;
}

/** Places `count` boxes of width `w` in as many centred lines as the width needs. */
function place(count, width, w, hgt, top) {
  const perLine = Math.max(1, Math.floor((width - 2 * PAD + GAP_X) / (w + GAP_X)));
  const spots = [];
  for (let i = 0; i < count; i += 1) {
    const line = Math.floor(i / perLine);
    const inLine = Math.min(perLine, count - line * perLine);
    const lineWidth = inLine * w + (inLine - 1) * GAP_X;
    const x0 = (width - lineWidth) / 2;
    spots.push({ x: x0 + (i % perLine) * (w + GAP_X), y: top + line * (hgt + GAP_Y / 2) });
  }
  const lines = Math.ceil(count / perLine);
  return { spots, bottom: top + lines * hgt + Math.max(0, lines - 1) * (GAP_Y / 2) };
}

function edge(from, to, cls) {
  const midY = (from.y + to.y) / 2;
  return s("path", { class: ["edge", cls], d: `M${from.x},${from.y} C${from.x},${midY} ${to.x},${midY} ${to.x},${to.y}` });
}

/** Words for screen readers: what the drawing shows. */
function describe(t, proxies, fleetVersion) {
  const ms = masterState(t);
  const parts = [t.master ? `Master ${t.master}.` : `No master: ${ms.detail}.`];
  const reps = (t.replicas || []).map((r) => {
    const rs = replicaState(r);
    return `${r.addr} ${rs.text}, ${rs.detail}`;
  });
  parts.push(reps.length ? `Replicas: ${reps.join("; ")}.` : "No replicas.");
  parts.push(`Sentinels ${sentinelsState(t).text}.`);
  const ps = proxies.map((p) => `${p.proxy_id} ${proxyState(p, fleetVersion).text}`);
  parts.push(ps.length ? `Proxies: ${ps.join("; ")}.` : "No proxies serving it.");
  return parts.join(" ");
}

/** The drawing of service `svc` (with `topology`) and the proxies serving it, `width` px wide. */
export function drawTopology(svc, proxies, fleetVersion, width) {
  const t = svc.topology || {};
  const W = Math.max(280, Math.floor(width));
  // Two boxes side by side at least, down to phone width, so that rows of proxies or
  // replicas do not become a column that the edges run through.
  const two = Math.floor((W - 2 * PAD - GAP_X) / 2);
  const w = Math.min(210, Math.max(140, two), W - 2 * PAD);
  const sw = Math.min(170, Math.max(140, two), W - 2 * PAD);
  const edges = s("g", { class: "edges" });
  const nodes = s("g", { class: "nodes" });
  const labels = s("g", { class: "row-labels" });
  let y = PAD;

  const rowLabel = (text) => {
    labels.append(s("text", { x: PAD, y: y + 13, class: "row-label" }, text));
    y += LABEL_H;
  };

  // Proxies.
  let proxySpots = [];
  if (proxies.length) {
    rowLabel(`Proxies (${proxies.length})`);
    const p = place(proxies.length, W, w, NODE_H, y);
    proxySpots = p.spots;
    proxies.forEach((px, i) => {
      const st = proxyState(px, fleetVersion);
      const ops = px.ops_per_sec === null || px.ops_per_sec === undefined ? "" : ` · ${fmtRate(px.ops_per_sec)} ops/s`;
      nodes.append(node(p.spots[i].x, p.spots[i].y, w, NODE_H, st.tone,
        [[`${ICON[st.tone]} ${st.text}`, "node-state"], [px.proxy_id, "mono"], [`${px.listen_addr || ""}${ops}`, "node-detail"]],
        "topo-proxy", px.proxy_id));
    });
    y = p.bottom + GAP_Y;
  }

  // Master.
  const ms = masterState(t);
  rowLabel("Master");
  const m = place(1, W, w, NODE_H, y);
  const master = m.spots[0];
  nodes.append(node(master.x, master.y, w, NODE_H, ms.tone === "ok" ? "info" : ms.tone,
    [[`${ICON[ms.tone === "ok" ? "info" : ms.tone]} ${ms.tone === "ok" ? "master" : ms.text}`, "node-state"],
      [t.master || "—", "mono"], [ms.tone === "ok" ? (t.config_epoch !== undefined ? `epoch ${t.config_epoch}` : "") : ms.detail, "node-detail"]],
    "topo-master", t.master || ""));
  for (const spot of proxySpots) {
    const px = proxies[proxySpots.indexOf(spot)];
    const tone = proxyState(px, fleetVersion).tone;
    edges.append(edge({ x: spot.x + w / 2, y: spot.y + NODE_H }, { x: master.x + w / 2, y: master.y },
      tone === "ok" ? "edge-ok" : `edge-${tone}`));
  }
  y = m.bottom + GAP_Y;

  // Replicas.
  const replicas = t.replicas || [];
  rowLabel(`Replicas (${replicas.length})`);
  if (replicas.length) {
    const r = place(replicas.length, W, w, NODE_H, y);
    replicas.forEach((rep, i) => {
      const rs = replicaState(rep);
      const spot = r.spots[i];
      edges.append(edge({ x: master.x + w / 2, y: master.y + NODE_H }, { x: spot.x + w / 2, y: spot.y },
        rep.healthy ? "edge-ok" : "edge-bad"));
      nodes.append(node(spot.x, spot.y, w, NODE_H, rs.tone,
        [[`${ICON[rs.tone]} ${rs.text}`, "node-state"], [rep.addr, "mono"],
          [rep.healthy ? `lag ${fmtBytes(rep.lag_bytes)}` : rs.detail, "node-detail"]],
        "topo-replica", rep.addr));
    });
    y = r.bottom + GAP_Y;
  } else {
    labels.append(s("text", { x: W / 2, y: y + 14, class: "row-empty", "text-anchor": "middle" }, "no replicas"));
    y += 24 + GAP_Y;
  }

  // Sentinels (they watch; no edges, to keep the drawing legible).
  const sentinels = t.sentinels || [];
  const ss = sentinelsState(t);
  rowLabel(`Sentinels (${ss.text})`);
  if (sentinels.length) {
    const sp = place(sentinels.length, W, sw, SMALL_H, y);
    sentinels.forEach((x, i) => {
      const tone = x.reachable ? "ok" : "bad";
      const text = x.reachable ? "reachable" : "unreachable";
      nodes.append(node(sp.spots[i].x, sp.spots[i].y, sw, SMALL_H, tone,
        [[`${ICON[tone]} ${text}${x.configured === false ? " (discovered)" : ""}`, "node-state"], [x.addr, "mono"]],
        "topo-sentinel", x.addr));
    });
    y = sp.bottom + PAD;
  } else {
    labels.append(s("text", { x: W / 2, y: y + 14, class: "row-empty", "text-anchor": "middle" }, "no Sentinels"));
    y += 24 + PAD;
  }

  const titleId = `topo-title-${svc.name}`;
  const descId = `topo-desc-${svc.name}`;
  return s("svg", {
    class: "topology", width: W, height: Math.ceil(y), viewBox: `0 0 ${W} ${Math.ceil(y)}`,
    role: "img", "aria-labelledby": `${titleId} ${descId}`, "data-testid": "topology",
  },
  s("title", { id: titleId }, `Topology of ${svc.name}`),
  s("desc", { id: descId }, describe(t, proxies, fleetVersion)),
  edges, labels, nodes);
}
