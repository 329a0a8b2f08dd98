// Admin tokens: list, create (the token is shown once, with a copy button) and delete.
// Viewers cannot list tokens: the page says so.

import { api, ApiError, get, seg } from "./api.js";
import { ago, badge, emptyRow, h, morph, replace, table, when } from "./dom.js";
import { canChange, state, subscribe } from "./state.js";
import { confirmDialog, field, reportError, select, showError, submitting, toast } from "./ui.js";

export function mount(root) {
  document.title = "Tokens · Pivot";
  root.append(h("div", { class: "page-head" }, h("h1", null, "Access tokens"),
    h("p", { class: "page-sub" }, "Bearer tokens for the API and this UI. Admins read and change; viewers only read.")));

  if (!canChange()) {
    root.append(h("p", { class: "notice notice-info", "data-testid": "readonly-note" },
      h("strong", null, "Admins only. "),
      `Your token “${state.whoami ? state.whoami.name : ""}” has the viewer role: it cannot list, create or delete tokens.`));
    return null;
  }

  let tokens = [];
  const listBox = h("div", { id: "tokens" });
  const created = h("div", { id: "token-created-box", "aria-live": "polite" });
  const nameInput = h("input", { id: "token-name", name: "name", type: "text", required: true, autocomplete: "off", spellcheck: "false", placeholder: "e.g. ci-deploy", "data-field": "name" });
  const roleSelect = select({ id: "token-role", name: "role", "data-field": "role" },
    [["viewer", "viewer"], ["admin", "admin"]], "viewer");
  const form = h("form", { id: "token-form", novalidate: true },
    h("fieldset", null, h("legend", null, "Create a token"),
      h("div", { class: "row-fields" },
        field("Name", nameInput),
        field("Role", roleSelect),
        h("button", { type: "submit", class: "btn btn-primary", id: "token-create" }, "Create token"))),
    h("p", { class: "form-status", "aria-live": "polite" }));

  root.append(
    h("div", { class: "grid-2 grid-2-wide" },
      h("section", { class: "card", "aria-labelledby": "tokens-h" },
        h("header", { class: "card-head" }, h("h2", { id: "tokens-h" }, "Tokens")), listBox),
      h("section", { class: "card", "aria-labelledby": "new-token-h" },
        h("header", { class: "card-head" }, h("h2", { id: "new-token-h" }, "New token")), form, created)));

  function render() {
    morph(listBox, table("Tokens", ["Name", "Role", "Created", "Created by", "Last used", h("span", { class: "sr-only" }, "Actions")],
      tokens.length ? tokens.map((t) => {
        const del = h("button", { type: "button", class: "btn btn-small btn-danger-quiet", "data-action": "delete-token", "data-id": t.id, "aria-label": `Delete token ${t.name}` }, "Delete");
        const mine = state.whoami && state.whoami.name === t.name;
        return h("tr", { "data-token": t.name },
          h("td", { class: "mono" }, t.name, mine ? h("span", { class: "muted small" }, " (you)") : null),
          h("td", null, badge(t.role === "admin" ? "info" : "muted", t.role)),
          h("td", { class: "nowrap" }, when(t.created_at)),
          h("td", { class: "mono" }, t.created_by || "–"),
          h("td", null, ago(t.last_used_at)),
          h("td", { class: "actions" }, del));
      }) : [emptyRow(6, "No tokens.")],
      { id: "tokens-table", "data-testid": "tokens-table" }));
  }

  async function load() {
    try {
      tokens = (await get("/tokens")).tokens;
      render();
    } catch (e) {
      reportError("Could not load the tokens", e);
    }
  }

  // Delete buttons act through this one listener (the table is patched in place).
  listBox.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action=delete-token]");
    const t = button && tokens.find((x) => String(x.id) === button.dataset.id);
    if (t) remove(t);
  });

  async function remove(t) {
    const mine = state.whoami && state.whoami.name === t.name;
    const ok = await confirmDialog({
      title: `Delete token ${t.name}?`,
      body: h("p", null, "Scripts and people using it get 401 from now on.",
        mine ? h("strong", null, " This is the token you are logged in with: you will be logged out.") : null),
      confirmLabel: "Delete token",
      danger: true,
    });
    if (!ok) return;
    try {
      await api("DELETE", `/tokens/${seg(String(t.id))}`);
      toast(`Token ${t.name} deleted.`, "ok");
      await load();
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) toast(`Not deleted: ${e.message}`, "bad");
      else reportError(`Could not delete ${t.name}`, e);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = nameInput.value.trim();
    if (!name) {
      showError(form, new ApiError(400, "enter a name", "name"));
      return;
    }
    const res = await submitting(form, () => api("POST", "/tokens", { name, role: roleSelect.value }));
    if (!res) return;
    nameInput.value = "";
    const value = h("input", { id: "token-value", type: "text", readonly: true, class: "mono", "aria-describedby": "token-once" });
    value.value = res.token;
    const copy = h("button", { type: "button", class: "btn", id: "token-copy" }, "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(res.token);
        copy.textContent = "Copied ✓";
      } catch {
        value.select();
        copy.textContent = "Press Ctrl+C";
      }
    });
    const done = h("button", { type: "button", class: "btn btn-small", id: "token-dismiss" }, "Done, I stored it");
    done.addEventListener("click", () => replace(created));
    replace(created, h("div", { class: "notice notice-ok token-once", "data-testid": "token-created" },
      h("p", null, h("strong", null, `Token “${res.name}” (${res.role}) created.`)),
      h("p", { id: "token-once" }, "Copy it now: this is the only time it is shown."),
      h("div", { class: "field" }, h("label", { for: "token-value" }, "Token"), h("div", { class: "copy-row" }, value, copy)),
      done));
    value.focus();
    value.select();
    await load();
  });

  load();
  // Another admin's token changes arrive as audit entries.
  return subscribe((change) => {
    if ((change.type === "audit" && /token/.test(change.entry.action || "")) || change.type === "resync") load();
  });
}
