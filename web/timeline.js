// The failover timeline drawing: three lanes (failover, master, health) on a time axis
// that ends now; a planned failover is a bar from its start to its end.

import { fmtClock, s } from "./dom.js";
import { eventSummary, eventTone } from "./eventfmt.js";

const LANES = [
  { key: "failover", label: "Failover", kinds: ["failover-started", "failover-finished", "failover-failed", "leader-promoting", "promotion-aborted", "promotion-expired"] },
  { key: "master", label: "Master", kinds: ["initial", "master-changed"] },
  { key: "health", label: "Health", kinds: ["replica-health", "replicas-changed", "sentinels-changed"] },
];
const LANE_H = 34;
const LABEL_W = 70;
const PAD = 10;
const AXIS_H = 22;
const TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800].map((x) => x * 1000);

function tickLabel(ms, step) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  if (step >= 86400000) return `${d.getMonth() + 1}/${d.getDate()}`;
  if (step >= 60000) return `${p(d.getHours())}:${p(d.getMinutes())}`;
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The drawing of `events` (any order), `width` px wide, with the axis ending at `now`. */
export function drawTimeline(events, width, now = Date.now()) {
  const W = Math.max(280, Math.floor(width));
  const H = PAD + LANES.length * LANE_H + AXIS_H + PAD;
  const plotX0 = LABEL_W;
  const plotX1 = W - PAD - 8;
  const dated = events.map((e) => ({ e, t: new Date(e.at).getTime() })).filter((x) => !Number.isNaN(x.t));
  const oldest = dated.length ? Math.min(...dated.map((x) => x.t)) : now - 60000;
  // Fit the events (at least 10 s), with a margin before the oldest.
  const span = Math.max(10000, now - oldest) * 1.08;
  const t0 = now - span;
  const x = (t) => plotX0 + ((t - t0) / span) * (plotX1 - plotX0);

  const svg = s("svg", {
    class: "timeline-drawing", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Timeline of ${dated.length} events from ${fmtClock(new Date(t0))} to now; the list below has the details.`,
    "data-testid": "timeline-drawing",
  });

  // Lanes and their labels.
  LANES.forEach((lane, i) => {
    const y = PAD + i * LANE_H;
    svg.append(s("rect", { class: "lane", x: plotX0, y, width: plotX1 - plotX0, height: LANE_H - 4, rx: 3 }),
      s("text", { class: "lane-label", x: 4, y: y + LANE_H / 2 + 2 }, lane.label));
  });

  // Axis with ticks that fit the width.
  const axisY = PAD + LANES.length * LANE_H;
  const maxTicks = Math.max(2, Math.floor((plotX1 - plotX0) / 80));
  const step = TICKS.find((st) => span / st <= maxTicks) || TICKS[TICKS.length - 1];
  svg.append(s("line", { class: "axis", x1: plotX0, x2: plotX1, y1: axisY, y2: axisY }));
  for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
    const tx = x(t);
    svg.append(s("line", { class: "tick", x1: tx, x2: tx, y1: PAD, y2: axisY + 4 }),
      s("text", { class: "tick-label", x: tx, y: axisY + 16, "text-anchor": "middle" }, tickLabel(t, step)));
  }
  svg.append(s("line", { class: "now", x1: x(now), x2: x(now), y1: PAD - 4, y2: axisY }),
    s("text", { class: "tick-label now-label", x: x(now), y: PAD - 1, "text-anchor": "end" }, "now"));

  const laneY = (kind) => {
    const i = LANES.findIndex((l) => l.kinds.includes(kind));
    return i === -1 ? null : PAD + i * LANE_H + (LANE_H - 4) / 2;
  };

  // Planned failovers as bars: each start paired with the next end.
  const chrono = [...dated].sort((a, b) => a.t - b.t);
  const open = [];
  for (const { e, t } of chrono) {
    if (e.kind === "failover-started") open.push(t);
    else if ((e.kind === "failover-finished" || e.kind === "failover-failed") && open.length) {
      const start = open.shift();
      const y = laneY(e.kind);
      svg.append(s("rect", {
        class: ["fo-bar", e.kind === "failover-failed" ? "fo-bad" : "fo-ok"],
        x: x(start), y: y - 6, width: Math.max(4, x(t) - x(start)), height: 12, rx: 2,
      }, s("title", null, `planned failover ${e.kind === "failover-failed" ? "failed" : "finished"} after ${t - start} ms`)));
    }
  }
  for (const start of open) {
    const y = laneY("failover-started");
    svg.append(s("rect", { class: "fo-bar fo-running", x: x(start), y: y - 6, width: Math.max(4, x(now) - x(start)), height: 12, rx: 2 },
      s("title", null, "planned failover running")));
  }

  // The master lane names each new master where the label has room: newest first, left
  // of its marker if no other marker or label is in the way there, else right of it.
  const masterXs = chrono.filter(({ e }) => e.kind === "master-changed" || e.kind === "initial").map(({ t }) => x(t));
  const taken = [];
  const free = (a, b, own) => a >= plotX0 && b <= plotX1
    && masterXs.every((mx) => mx === own || mx + 8 < a || mx - 8 > b)
    && taken.every(([l, r]) => r < a || l > b);
  const labels = [];
  let newest = true;
  for (const { e, t } of [...chrono].reverse()) {
    if ((e.kind !== "master-changed" && e.kind !== "initial") || !e.new_master) continue;
    const cx = x(t);
    const width = e.new_master.length * 6.7;
    // The current master is always named (its label may cover older markers).
    const first = newest;
    newest = false;
    if (first && cx - 10 - width >= plotX0) {
      taken.push([cx - 10 - width, cx - 10]);
      labels.push(s("text", { class: "marker-label", x: cx - 10, y: laneY(e.kind) + 4, "text-anchor": "end" }, e.new_master));
    } else if (free(cx - 10 - width, cx - 10, cx)) {
      taken.push([cx - 10 - width, cx - 10]);
      labels.push(s("text", { class: "marker-label", x: cx - 10, y: laneY(e.kind) + 4, "text-anchor": "end" }, e.new_master));
    } else if (free(cx + 10, cx + 10 + width, cx)) {
      taken.push([cx + 10, cx + 10 + width]);
      labels.push(s("text", { class: "marker-label", x: cx + 10, y: laneY(e.kind) + 4 }, e.new_master));
    }
  }

  // Markers, oldest first so the newest is drawn on top.
  for (const { e, t } of chrono) {
    const y = laneY(e.kind);
    if (y === null) continue;
    const cx = x(t);
    const tone = eventTone(e);
    const { main, extra } = eventSummary(e);
    const title = s("title", null, `${fmtClock(new Date(t))} ${e.kind}: ${main}${extra ? ` (${extra})` : ""}`);
    if (e.kind === "master-changed" || e.kind === "initial") {
      svg.append(s("path", { class: ["marker", `marker-${tone}`], d: `M${cx},${y - 7} L${cx + 7},${y} L${cx},${y + 7} L${cx - 7},${y} Z`, "data-kind": e.kind }, title));
    } else {
      svg.append(s("circle", { class: ["marker", `marker-${tone}`], cx, cy: y, r: 5, "data-kind": e.kind }, title));
    }
  }
  svg.append(...labels);
  return svg;
}
