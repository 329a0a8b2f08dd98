// A service: live topology drawing, failover timeline, routing policy editor, command
// rules, proxy users and the planned-failover button.

import { api, ApiError, get, query, seg } from "./api.js";
import { badge, emptyRow, fmtClock, fmtMs, h, morph, replace, table } from "./dom.js";
import { TIMELINE_KINDS, eventText, kindBadge } from "./eventfmt.js";
import { masterState, sentinelsState, stateBadge } from "./health.js";
import { canChange, failoverRunning as runningElsewhere, loadService, proxiesOf, state, subscribe, trackFailover } from "./state.js";
import { drawTimeline } from "./timeline.js";
import { drawTopology } from "./topology.js";
import { clearErrors, confirmDialog, field, readOnlyNote, reportError, select, showError, submitting } from "./ui.js";

const TIMELINE_LIMIT = 50;

const READ_POLICIES = ["master-only", "replicas", "all"];
const CONSISTENCY = ["eventual", "read-your-writes", "strong"];
const TARGETS = [
  ["master", "master"],
  ["replica", "replica"],
  ["any", "any"],
  ["deny", "deny (refused)"],
];
const TARGET_TONE = { master: "info", replica: "info", any: "muted", deny: "bad" };

/** `replicas(2)` -> ["replicas", 2]; `master` -> ["master", 1]. */
function parseAck(value) {
  const m = /^replicas\((\d+)\)$/.exec(value || "");
  return m ? ["replicas", Number(m[1])] : ["master", 1];
}

export function mount(root, [rawName]) {
  let name = rawName;
  try {
    name = decodeURIComponent(rawName);
  } catch {
    // Not valid percent-encoding: the name as written (the API will say it is unknown).
  }
  document.title = `${name} · Pivot`;
  const admin = canChange();
  let svc = state.services.get(name) || null;
  let timeline = [];
  let failoverRunning = false;
  let lastReport = null;
  let policyDirty = false;
  let disposed = false;

  // ---------- Layout ----------
  const headBadges = h("div", { class: "head-badges", id: "service-badges" });
  const foButton = h("button", { type: "button", class: "btn btn-danger", id: "failover-button", "data-testid": "failover-button" }, "Fail over…");
  const foStatus = h("div", { id: "failover-status", class: "failover-status", role: "status", "aria-live": "polite", "data-testid": "failover-status" });
  const topoBox = h("div", { class: "topology-box", id: "topology-box" });
  const tlDrawing = h("div", { class: "timeline-box", id: "timeline-box" });
  const tlList = h("ol", { class: "timeline-list", id: "timeline-list", "data-testid": "timeline-list", "aria-label": "Failover timeline, newest first" });
  const rulesBox = h("div", { id: "rules-box" });
  const usersBox = h("div", { id: "users-box" });
  const policyBox = h("div", { id: "policy-box" });

  root.append(
    h("div", { class: "page-head" },
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Overview"), h("span", { "aria-hidden": "true" }, " / ")),
      h("div", { class: "page-title-row" },
        h("h1", { id: "service-name" }, name),
        headBadges,
        h("div", { class: "head-actions" }, foButton))),
    readOnlyNote("changing the policy, rules, users or failing over") || "",
    foStatus,
    h("div", { class: "grid-2" },
      h("section", { class: "card", "aria-labelledby": "topo-h" },
        h("header", { class: "card-head" }, h("h2", { id: "topo-h" }, "Topology"), h("span", { class: "muted small" }, "live")),
        topoBox),
      h("section", { class: "card", "aria-labelledby": "tl-h" },
        h("header", { class: "card-head" }, h("h2", { id: "tl-h" }, "Failover timeline"), h("span", { class: "muted small" }, "newest first")),
        tlDrawing,
        h("div", { class: "timeline-scroll", tabindex: "0", role: "region", "aria-label": "Timeline events (scrolls)" }, tlList))),
    h("div", { class: "grid-3" },
      h("section", { class: "card", "aria-labelledby": "policy-h" },
        h("header", { class: "card-head" }, h("h2", { id: "policy-h" }, "Routing policy")), policyBox),
      h("section", { class: "card", "aria-labelledby": "rules-h" },
        h("header", { class: "card-head" }, h("h2", { id: "rules-h" }, "Command rules")), rulesBox),
      h("section", { class: "card", "aria-labelledby": "users-h" },
        h("header", { class: "card-head" }, h("h2", { id: "users-h" }, "Proxy users")), usersBox)));

  // ---------- Header ----------
  function renderHead() {
    if (!svc) return;
    const t = svc.topology || {};
    const ms = masterState(t);
    morph(headBadges,
      stateBadge(ms.tone === "ok" ? { tone: "ok", text: `master ${t.master}` } : ms, { "data-testid": "service-master" }),
      stateBadge({ ...sentinelsState(t), text: `Sentinels ${sentinelsState(t).text}` }),
      svc.config_version !== undefined
        ? badge("muted", `changed in v${svc.config_version}`, { title: "The config version that last changed this service" })
        : null);
    const running = failoverRunning || runningElsewhere(name);
    foButton.disabled = !admin || running || !t.master;
    foButton.textContent = running ? "Failing over…" : "Fail over…";
    foButton.title = !admin ? "Needs an admin token" : running ? "A failover is running" : !t.master ? "No master to fail over from" : "";
    foButton.setAttribute("aria-busy", running ? "true" : "false");
  }

  // ---------- Topology ----------
  let lastWidth = 0;
  function renderTopology() {
    if (!svc) return;
    lastWidth = topoBox.clientWidth;
    morph(topoBox, drawTopology(svc, proxiesOf(name), state.fleetVersion, lastWidth || 600));
  }

  // ---------- Timeline ----------
  function renderTimeline() {
    morph(tlDrawing, drawTimeline(timeline, tlDrawing.clientWidth || 600));
    if (timeline.length === 0) {
      morph(tlList, h("li", { class: "muted" }, "No failover or health events yet."));
      return;
    }
    morph(tlList, timeline.map((e) => h("li", {
      class: ["tl-item", `tl-${e.kind}`], "data-kind": e.kind, "data-id": e.id,
      "data-new-master": e.new_master || null, "data-old-master": e.old_master || null,
    },
    h("time", { datetime: e.at, title: e.at, class: "mono small" }, fmtClock(new Date(e.at))),
    kindBadge(e),
    h("span", { class: "tl-text" }, eventText(e, h)))));
  }

  async function loadTimeline() {
    const data = await get(`/events${query({ service: name, kind: TIMELINE_KINDS, limit: TIMELINE_LIMIT })}`);
    timeline = data.events;
    // Whoever started a failover, the button waits for its end.
    for (const e of [...timeline].reverse()) trackFailover(e);
    if (!disposed) {
      renderTimeline();
      renderHead();
    }
  }

  // ---------- Policy ----------
  const pf = {};
  function policyForm() {
    pf.read = select({ id: "policy-read_policy", name: "read_policy", "data-field": "read_policy" }, READ_POLICIES);
    pf.consistency = select({ id: "policy-consistency", name: "consistency", "data-field": "consistency" }, CONSISTENCY);
    pf.ackMode = select({ id: "policy-write_ack", name: "write_ack", "data-field": "write_ack" },
      [["master", "master"], ["replicas", "replicas(N)"]]);
    pf.ackN = h("input", { id: "policy-write_ack_n", name: "write_ack_n", type: "number", min: 1, step: 1, inputmode: "numeric", "data-field": "write_ack_n" });
    pf.lag = h("input", { id: "policy-max_replica_lag", name: "max_replica_lag", type: "number", min: 0, step: 1, inputmode: "numeric", placeholder: "no limit", "data-field": "max_replica_lag" });
    pf.hold = h("input", { id: "policy-failover_hold", name: "failover_hold", type: "text", placeholder: "none", autocomplete: "off", spellcheck: "false", "data-field": "failover_hold" });
    const ackNField = field("Replicas to wait for (N)", pf.ackN);
    pf.ackNField = ackNField;
    const status = h("p", { class: "form-status", "aria-live": "polite", id: "policy-status" });
    const form = h("form", { id: "policy-form", "data-testid": "policy-form", novalidate: true },
      h("fieldset", { disabled: !admin },
        h("legend", { class: "sr-only" }, `Routing policy of ${name}`),
        field("Read policy", pf.read, "master-only: every read on the master; replicas: healthy replicas, master as fallback; all: master and replicas."),
        field("Consistency", pf.consistency, "read-your-writes: a client reads its own writes; strong: reads see every acknowledged write."),
        field("Write acknowledgement", pf.ackMode, "replicas(N): a write is acknowledged once N replicas have it (WAIT)."),
        ackNField,
        field("Max replica lag (bytes)", pf.lag, "A replica further behind stops serving reads. Empty: no limit."),
        field("Failover hold", pf.hold, "How long proxies hold requests while the service has no usable master (then -TRYAGAIN), e.g. 10s. Empty: the proxies' own --failover-hold."),
        h("div", { class: "form-actions" },
          h("button", { type: "submit", class: "btn btn-primary", id: "policy-save" }, "Save policy"),
          h("button", { type: "button", class: "btn", id: "policy-reset" }, "Reset"))),
      status);
    pf.form = form;
    pf.status = status;
    form.addEventListener("input", () => {
      policyDirty = true;
      ackNField.hidden = pf.ackMode.value !== "replicas";
    });
    form.addEventListener("change", () => {
      ackNField.hidden = pf.ackMode.value !== "replicas";
    });
    form.querySelector("#policy-reset").addEventListener("click", () => {
      policyDirty = false;
      clearErrors(form);
      fillPolicy();
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const lag = pf.lag.value.trim();
      const hold = pf.hold.value.trim();
      const body = {
        read_policy: pf.read.value,
        consistency: pf.consistency.value,
        write_ack: pf.ackMode.value === "replicas" ? `replicas(${pf.ackN.value.trim() || "1"})` : "master",
        max_replica_lag: lag === "" ? null : Number(lag),
        failover_hold: hold === "" ? null : hold,
      };
      if (lag !== "" && !(Number.isInteger(body.max_replica_lag) && body.max_replica_lag >= 0)) {
        clearErrors(form);
        showError(form, new ApiError(400, "a whole number of bytes, 0 or more", "max_replica_lag"));
        return;
      }
      const res = await submitting(form, () => api("PATCH", `/services/${seg(name)}/policy`, body));
      if (!res) return;
      policyDirty = false;
      if (svc) svc.policy = res.policy;
      fillPolicy();
      replace(status, h("span", { class: "text-ok" }, `✓ Saved; published to the proxies as config version ${res.version}.`));
      loadService(name).catch(() => {});
    });
    return form;
  }

  function fillPolicy() {
    if (!svc || !pf.form) return;
    const p = svc.policy || {};
    pf.read.value = p.read_policy || "replicas";
    pf.consistency.value = p.consistency || "eventual";
    const [mode, n] = parseAck(p.write_ack);
    pf.ackMode.value = mode;
    pf.ackN.value = String(n);
    pf.ackNField.hidden = mode !== "replicas";
    pf.lag.value = p.max_replica_lag === null || p.max_replica_lag === undefined ? "" : String(p.max_replica_lag);
    pf.hold.value = p.failover_hold || "";
  }

  function renderPolicy(fromElsewhere) {
    if (!svc) return;
    if (!pf.form) {
      replace(policyBox, policyForm());
      fillPolicy();
      return;
    }
    if (!policyDirty) fillPolicy();
    else if (fromElsewhere) {
      replace(pf.status, h("span", { class: "text-warn" }, "▲ The policy changed on the server while you edit; Reset loads it."));
    }
  }

  // ---------- Rules ----------
  // The tables are patched in place on updates (`morph`); their buttons act through one
  // delegated listener each, reading what to act on from `data-*`.
  const rulesTable = h("div", { id: "rules-table-box" });
  const command = h("input", { id: "rule-command", name: "command", type: "text", required: true, autocomplete: "off", spellcheck: "false", placeholder: "flushall or script|load", "data-field": "command" });
  const target = select({ id: "rule-target", name: "target", "data-field": "target" }, TARGETS, "deny");
  const ruleStatus = h("p", { class: "form-status", "aria-live": "polite" });
  const ruleForm = h("form", { id: "rule-form", class: "inline-form", "data-testid": "rule-form", novalidate: true },
    h("fieldset", { disabled: !admin },
      h("legend", null, "Add or change a rule"),
      h("div", { class: "row-fields" },
        field("Command", command),
        field("Target", target),
        h("button", { type: "submit", class: "btn btn-primary", id: "rule-add" }, "Save rule"))),
    ruleStatus);
  rulesBox.append(rulesTable, ruleForm);

  ruleForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const cmd = command.value.trim().toLowerCase();
    if (!cmd) {
      clearErrors(ruleForm);
      showError(ruleForm, new ApiError(400, "enter a command name", "command"));
      return;
    }
    const res = await submitting(ruleForm, () => api("PUT", `/services/${seg(name)}/rules/${seg(cmd)}`, { target: target.value }));
    if (!res) return;
    command.value = "";
    replace(ruleStatus, h("span", { class: "text-ok" }, `✓ ${cmd} → ${target.value}; config version ${res.version}.`));
    await loadService(name).catch(() => {});
  });

  rulesTable.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action=remove-rule]");
    if (!button || button.disabled) return;
    const cmd = button.dataset.command;
    button.disabled = true;
    try {
      await api("DELETE", `/services/${seg(name)}/rules/${seg(cmd)}`);
      replace(ruleStatus, h("span", { class: "text-ok" }, `✓ Rule for ${cmd} removed.`));
      await loadService(name);
    } catch (err) {
      reportError(`Could not remove the rule for ${cmd}`, err);
      button.disabled = !admin;
    }
  });

  function renderRules() {
    if (!svc) return;
    const rules = [...((svc.policy && svc.policy.rules) || [])].sort((a, b) => a.command.localeCompare(b.command));
    const rows = rules.length === 0 ? [emptyRow(3, "No rules: commands follow the read policy.")]
      : rules.map((r) => h("tr", { "data-command": r.command },
        h("td", { class: "mono" }, r.command),
        h("td", null, badge(TARGET_TONE[r.target] || "muted", r.target)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "btn btn-small", disabled: !admin, "data-action": "remove-rule", "data-command": r.command, "aria-label": `Remove the rule for ${r.command}` }, "Remove"))));
    morph(rulesTable, table(`Command rules of ${name}`, ["Command", "Target", h("span", { class: "sr-only" }, "Actions")], rows, { id: "rules-table", "data-testid": "rules-table" }));
  }

  // ---------- Users ----------
  const usersTable = h("div", { id: "users-table-box" });
  const userName = h("input", { id: "user-name", name: "user", type: "text", required: true, autocomplete: "off", spellcheck: "false", "data-field": "user name" });
  const userPassword = h("input", { id: "user-password", name: "password", type: "password", required: true, autocomplete: "new-password", "data-field": "password" });
  const userStatus = h("p", { class: "form-status", "aria-live": "polite" });
  const userForm = h("form", { id: "user-form", class: "inline-form", novalidate: true },
    h("fieldset", { disabled: !admin },
      h("legend", null, "Add a user or set a password"),
      h("div", { class: "row-fields" },
        field("User", userName),
        field("Password", userPassword),
        h("button", { type: "submit", class: "btn btn-primary", id: "user-save" }, "Save user"))),
    h("p", { class: "hint" }, "Passwords are stored hashed and never shown again."),
    userStatus);
  usersBox.append(usersTable, userForm);

  userForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const u = userName.value.trim();
    if (!u || !userPassword.value) {
      clearErrors(userForm);
      showError(userForm, new ApiError(400, u ? "enter a password" : "enter a user name", u ? "password" : "user"));
      return;
    }
    const res = await submitting(userForm, () => api("PUT", `/services/${seg(name)}/users/${seg(u)}`, { password: userPassword.value }));
    if (!res) return;
    userPassword.value = "";
    userName.value = "";
    replace(userStatus, h("span", { class: "text-ok" }, `✓ User ${u} saved; config version ${res.version}.`));
    await loadService(name).catch(() => {});
  });

  usersTable.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const u = button.dataset.user;
    if (button.dataset.action === "set-password") {
      userName.value = u;
      userPassword.value = "";
      userPassword.focus();
      return;
    }
    const ok = await confirmDialog({
      title: `Delete user ${u}?`,
      body: h("p", null, "Clients that authenticate as ", h("code", null, u), ` on ${name} are refused from now on.`),
      confirmLabel: "Delete user",
      danger: true,
    });
    if (!ok) return;
    try {
      await api("DELETE", `/services/${seg(name)}/users/${seg(u)}`);
      replace(userStatus, h("span", { class: "text-ok" }, `✓ User ${u} deleted.`));
      await loadService(name);
    } catch (err) {
      reportError(`Could not delete ${u}`, err);
    }
  });

  function renderUsers() {
    if (!svc) return;
    const users = [...(svc.users || [])].sort();
    const rows = users.length === 0 ? [emptyRow(2, "No proxy users: clients connect without AUTH.")]
      : users.map((u) => h("tr", { "data-user": u },
        h("td", { class: "mono" }, u),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "btn btn-small", disabled: !admin, "data-action": "set-password", "data-user": u, "aria-label": `Set password for ${u}` }, "Set password"),
          " ",
          h("button", { type: "button", class: "btn btn-small btn-danger-quiet", disabled: !admin, "data-action": "delete-user", "data-user": u, "aria-label": `Delete user ${u}` }, "Delete"))));
    morph(usersTable, table(`Proxy users of ${name}`, ["User", h("span", { class: "sr-only" }, "Actions")], rows, { id: "users-table", "data-testid": "users-table" }));
  }

  // ---------- Failover ----------
  function renderFailoverStatus() {
    if (failoverRunning) {
      replace(foStatus, h("p", { class: "notice notice-info" }, h("span", { class: "spinner", "aria-hidden": "true" }),
        ` Failing over ${name}: pausing writes, letting the replicas catch up, asking a Sentinel to promote one…`));
    } else if (lastReport && lastReport.ok) {
      const r = lastReport.report;
      replace(foStatus, h("div", { class: "notice notice-ok", id: "failover-result", "data-testid": "failover-result", "data-new-master": r.new_master },
        h("p", null, h("strong", null, "✓ Failover done: "), h("span", { class: "mono" }, r.old_master), " → ", h("span", { class: "mono", "data-testid": "failover-new-master" }, r.new_master)),
        h("p", { class: "small" },
          `writes paused ${fmtMs(r.paused_ms)} · replicas caught up in ${fmtMs(r.catch_up_ms)} · promotion ${fmtMs(r.promotion_ms)} · total ${fmtMs(r.total_ms)}`),
        h("button", { type: "button", class: "btn btn-small", on: { click: () => { lastReport = null; renderFailoverStatus(); } } }, "Dismiss")));
    } else if (lastReport) {
      replace(foStatus, h("div", { class: "notice notice-bad", id: "failover-result", "data-testid": "failover-error" },
        h("p", null, h("strong", null, "✕ Failover failed: "), lastReport.error),
        h("button", { type: "button", class: "btn btn-small", on: { click: () => { lastReport = null; renderFailoverStatus(); } } }, "Dismiss")));
    } else {
      replace(foStatus);
    }
  }

  foButton.addEventListener("click", async () => {
    const t = (svc && svc.topology) || {};
    const healthy = (t.replicas || []).filter((r) => r.healthy).length;
    const ok = await confirmDialog({
      title: `Fail over ${name}?`,
      body: h("div", null,
        h("p", null, "Pivot pauses writes on ", h("strong", { class: "mono" }, t.master || "the master"),
          ", waits until the replicas have caught up, then asks a Sentinel that agrees with the majority to promote one."),
        h("p", null, `Clients see writes stall briefly (at most the pause bound). Healthy replicas: ${healthy}.`)),
      confirmLabel: "Fail over now",
      danger: true,
    });
    if (!ok) return;
    failoverRunning = true;
    lastReport = null;
    renderHead();
    renderFailoverStatus();
    try {
      const report = await api("POST", `/services/${seg(name)}/failover`);
      lastReport = { ok: true, report };
    } catch (e) {
      lastReport = { ok: false, error: e.message };
    } finally {
      failoverRunning = false;
      if (!disposed) {
        renderHead();
        renderFailoverStatus();
        loadService(name).catch(() => {});
        loadTimeline().catch(() => {});
      }
    }
  });

  // ---------- Wiring ----------
  function renderAll(fromElsewhere) {
    if (!svc) return;
    renderHead();
    renderTopology();
    renderPolicy(fromElsewhere);
    renderRules();
    renderUsers();
  }

  function notFound() {
    replace(root, h("div", { class: "page-head" },
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Overview"), " /"),
      h("h1", null, name)),
    h("p", { class: "notice notice-bad" }, `No service named “${name}”. `, h("a", { href: "#/" }, "Back to the overview.")));
  }

  if (svc) renderAll(false);
  else morph(topoBox, h("p", { class: "muted" }, "Loading…"));
  renderTimeline();
  loadService(name).catch((e) => {
    if (e instanceof ApiError && e.status === 404) notFound();
    else reportError(`Could not load ${name}`, e);
  });
  loadTimeline().catch((e) => {
    if (!(e instanceof ApiError && e.status === 404)) reportError("Could not load the timeline", e);
  });

  const resize = new ResizeObserver(() => {
    if (svc && Math.abs(topoBox.clientWidth - lastWidth) > 4) renderTopology();
    renderTimeline();
  });
  resize.observe(topoBox);
  resize.observe(tlDrawing);
  // The drawing's axis ends "now": keep it moving.
  const tick = setInterval(() => renderTimeline(), 15000);

  const unsubscribe = subscribe((change) => {
    if (change.type === "service" && change.name === name) {
      const before = svc && JSON.stringify(svc.policy);
      svc = state.services.get(name);
      renderAll(before !== undefined && before !== JSON.stringify(svc.policy));
    } else if (change.type === "topology" && change.name === name) {
      svc = state.services.get(name) || svc;
      renderHead();
      renderTopology();
    } else if (change.type === "proxies") {
      renderTopology();
    } else if (change.type === "event" && change.event.service === name) {
      if (TIMELINE_KINDS.includes(change.event.kind) && !timeline.some((x) => x.id === change.event.id)) {
        timeline = [change.event, ...timeline].slice(0, TIMELINE_LIMIT);
        renderTimeline();
      }
      renderHead();
    } else if (change.type === "resync") {
      svc = state.services.get(name) || svc;
      renderAll(true);
      loadTimeline().catch(() => {});
    }
  });

  return () => {
    disposed = true;
    unsubscribe();
    resize.disconnect();
    clearInterval(tick);
  };
}
