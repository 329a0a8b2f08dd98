// What the UI knows about the fleet: services (with topology and policy) and proxies,
// fetched once and kept current by the live stream. Views subscribe to changes.

import { get, seg } from "./api.js";

export const state = {
  /** `{name, role}` of the logged-in token. */
  whoami: null,
  /** name -> Service (see docs/api.md). */
  services: new Map(),
  /** Proxy list and the fleet's current config version. */
  proxies: [],
  fleetVersion: null,
  /** service -> start (ms) of a failover running, from the events, whoever started it. */
  failoversRunning: new Map(),
  /** True once the service list has been fetched. */
  loaded: false,
  /** Live stream state: "connecting" | "live" | "reconnecting". */
  conn: "connecting",
};

const listeners = new Set();

/** Calls `fn(change)` on every change until the returned function is called. Changes:
 *  `{type: "services"}` (the list), `{type: "service", name}` (one service reloaded),
 *  `{type: "topology", name}` (live topology of one service), `{type: "proxies"}`,
 *  `{type: "event", event}`, `{type: "audit", entry}`, `{type: "resync"}`, `{type: "conn"}`. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function emit(change) {
  for (const fn of [...listeners]) {
    try {
      fn(change);
    } catch (e) {
      console.error("view update failed", e);
    }
  }
}

export const canChange = () => state.whoami && state.whoami.role === "admin";

export async function loadServices() {
  const { services } = await get("/services");
  state.services = new Map(services.map((svc) => [svc.name, svc]));
  state.loaded = true;
  emit({ type: "services" });
}

export async function loadService(name) {
  const svc = await get(`/services/${seg(name)}`);
  state.services.set(name, svc);
  emit({ type: "service", name });
  return svc;
}

export async function loadProxies() {
  const { version, proxies } = await get("/proxies");
  state.proxies = proxies;
  state.fleetVersion = version;
  emit({ type: "proxies" });
}

export async function loadAll() {
  await Promise.all([loadServices(), loadProxies()]);
}

/** Proxies that serve `service`. */
export function proxiesOf(service) {
  return state.proxies.filter((p) => (p.services || []).includes(service));
}

/** Applies one message of the live stream. */
export function applyLive(kind, data) {
  switch (kind) {
    case "topology": {
      const svc = state.services.get(data.service);
      if (svc) {
        svc.topology = data.topology;
        emit({ type: "topology", name: data.service });
      } else {
        loadServices().catch(() => {});
      }
      if (typeof data.version === "number" && (state.fleetVersion === null || data.version > state.fleetVersion)) {
        state.fleetVersion = data.version;
      }
      break;
    }
    case "proxy": {
      const i = state.proxies.findIndex((p) => p.proxy_id === data.proxy_id);
      if (i === -1) state.proxies.push(data);
      else state.proxies[i] = data;
      emit({ type: "proxies" });
      break;
    }
    case "event": {
      trackFailover(data);
      if (data.kind === "service-created" || data.kind === "service-deleted") {
        loadServices().catch(() => {});
      } else if (data.kind === "config-changed" && data.service && state.services.has(data.service)) {
        loadService(data.service).catch(() => {});
      }
      if (typeof data.version === "number" && (state.fleetVersion === null || data.version > state.fleetVersion)) {
        state.fleetVersion = data.version;
      }
      emit({ type: "event", event: data });
      break;
    }
    case "audit":
      // A change by anyone: the services' policy, rules and users come from a reload.
      if (data.service && state.services.has(data.service)) loadService(data.service).catch(() => {});
      emit({ type: "audit", entry: data });
      break;
    case "resync":
      loadAll().then(() => emit({ type: "resync" })).catch(() => {});
      break;
    default:
      break;
  }
}

/** A start without an end for this long is not running any more (a planned failover is
 *  bounded by its pause, catch-up and promotion limits, seconds each; the control plane
 *  may have stopped in the middle of one). */
const FAILOVER_STALE_MS = 60000;

/** Keeps `failoversRunning` from the failover events. */
export function trackFailover(event) {
  if (event.kind === "failover-started") state.failoversRunning.set(event.service, new Date(event.at).getTime());
  if (event.kind === "failover-finished" || event.kind === "failover-failed") {
    state.failoversRunning.delete(event.service);
  }
}

/** True while a failover of `service` runs, as far as the events tell. */
export function failoverRunning(service) {
  const since = state.failoversRunning.get(service);
  return since !== undefined && Date.now() - since < FAILOVER_STALE_MS;
}
