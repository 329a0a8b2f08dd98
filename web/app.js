// Entry point: login, the session (who am I, the live stream), the header and the hash
// router. Each page is a module whose `mount(root, params)` returns a cleanup function.

import { ApiError, onUnauthorized, setToken, token, whoami } from "./api.js";
import { h, refreshTimes, replace } from "./dom.js";
import { startLive } from "./live.js";
import { applyLive, emit, loadAll, state } from "./state.js";
import { toast, trapFocus } from "./ui.js";
import * as audit from "./view-audit.js";
import * as events from "./view-events.js";
import * as overview from "./view-overview.js";
import * as proxies from "./view-proxies.js";
import * as service from "./view-service.js";
import * as tokens from "./view-tokens.js";

const ROUTES = [
  { pattern: /^\/?$/, nav: "overview", view: overview },
  { pattern: /^\/services\/([^/]+)$/, nav: "overview", view: service },
  { pattern: /^\/proxies$/, nav: "proxies", view: proxies },
  { pattern: /^\/events$/, nav: "events", view: events },
  { pattern: /^\/audit$/, nav: "audit", view: audit },
  { pattern: /^\/tokens$/, nav: "tokens", view: tokens },
];

const main = document.getElementById("main");
let cleanup = null;
let stopLive = null;
let firstRoute = true;

function unmount() {
  if (cleanup) cleanup();
  cleanup = null;
}

function route() {
  unmount();
  // Matched raw: a service name with an encoded "/" stays one segment.
  const path = location.hash.replace(/^#/, "").split("?")[0];
  const match = ROUTES.map((r) => [r, r.pattern.exec(path)]).find(([, m]) => m);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (match && a.dataset.nav === match[0].nav && match[0].view !== service) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main);
  if (!match) {
    document.title = "Not found · Pivot";
    main.append(h("h1", { tabindex: "-1" }, "Page not found"),
      h("p", null, "No page at ", h("code", null, location.hash || "/"), ". ", h("a", { href: "#/" }, "Go to the overview.")));
  } else {
    const [r, m] = match;
    cleanup = r.view.mount(main, m.slice(1)) || null;
  }
  // Moving focus to the new page's heading tells keyboard and screen-reader users where
  // they are (not on the first load: the skip link comes first then).
  if (!firstRoute) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }
  firstRoute = false;
}

function setConn(kind, detail) {
  state.conn = kind;
  const box = document.getElementById("conn");
  box.dataset.state = kind;
  const text = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: `Reconnecting in ${Math.max(1, Math.round((detail || 0) / 1000))} s`,
  }[kind];
  document.getElementById("conn-text").textContent = text;
  box.title = kind === "live" ? "Receiving live updates from the control plane" : "Live updates paused; the page may be stale";
  emit({ type: "conn" });
}

/** Ends the session: back to the login page, with `message` when it was not asked for. */
function logout(message) {
  const dialog = document.getElementById("confirm-dialog");
  if (dialog.open) dialog.close("cancel");
  if (stopLive) stopLive();
  stopLive = null;
  unmount();
  setToken(null);
  state.whoami = null;
  state.loaded = false;
  state.services = new Map();
  state.proxies = [];
  state.failoversRunning = new Map();
  window.removeEventListener("hashchange", route);
  showLogin(message);
}

function showLogin(message) {
  document.getElementById("topbar").hidden = true;
  document.title = "Log in · Pivot";
  const input = h("input", {
    id: "login-token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, "aria-describedby": "login-hint", "data-field": "token",
  });
  const msg = h("div", { id: "login-message", role: "alert" },
    message ? h("p", { class: "notice notice-warn" }, message) : null);
  const form = h("form", { id: "login-form", class: "login-card", "aria-labelledby": "login-title", novalidate: true },
    h("div", { class: "login-brand" }, h("img", { src: "/assets/favicon.svg", alt: "", width: 32, height: 32 }),
      h("span", null, "Pivot")),
    h("h1", { id: "login-title" }, "Log in to the control plane"),
    msg,
    h("div", { class: "field" },
      h("label", { for: "login-token" }, "Access token"),
      input,
      h("p", { class: "hint", id: "login-hint" },
        "An admin or viewer token. The bootstrap admin token is printed once by the control plane on its first start (or set with PIVOT_ADMIN_TOKEN). It is kept in this tab only.")),
    h("button", { type: "submit", class: "btn btn-primary btn-block", id: "login-submit" }, "Log in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (!value) {
      replace(msg, h("p", { class: "notice notice-bad" }, "Enter a token."));
      input.focus();
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    replace(msg, h("p", { class: "notice notice-info" }, "Checking the token…"));
    try {
      const me = await whoami(value);
      setToken(value);
      state.whoami = me;
      replace(msg);
      startSession();
    } catch (err) {
      const text = err instanceof ApiError && err.status === 401
        ? "The control plane does not know this token." : `Cannot log in: ${err.message}`;
      replace(msg, h("p", { class: "notice notice-bad" }, text));
      input.focus();
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, h("div", { class: "login-page" }, form));
  input.focus();
}

function startSession() {
  document.getElementById("topbar").hidden = false;
  const me = state.whoami;
  replace(document.getElementById("whoami"),
    h("span", { class: "sr-only" }, "Logged in as "), h("strong", null, me.name), " ",
    h("span", { class: ["role", `role-${me.role}`] }, me.role));
  stopLive = startLive({
    token,
    onMessage: applyLive,
    onStatus: setConn,
    onUnauthorized: () => logout("The control plane did not accept your token (it may have been deleted). Log in again."),
  });
  window.addEventListener("hashchange", route);
  firstRoute = true;
  route();
  loadAll().catch((e) => {
    if (!(e instanceof ApiError && e.status === 401)) toast(`Could not load the fleet: ${e.message}`, "bad");
  });
}

async function boot() {
  onUnauthorized((message) => logout(message));
  document.getElementById("logout").addEventListener("click", () => logout());
  trapFocus(document.getElementById("confirm-dialog"));
  setInterval(refreshTimes, 5000);
  if (!token()) {
    showLogin();
    return;
  }
  try {
    state.whoami = await whoami(token());
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      setToken(null);
      showLogin("Your saved token is no longer accepted. Log in again.");
    } else {
      showLogin(`Cannot reach the control plane: ${e.message}`);
    }
    return;
  }
  startSession();
}

boot();
