// Shared interaction pieces: status messages, the confirmation dialog, API errors shown
// next to the field they name, and the read-only notice for viewer tokens.

import { ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import { canChange, state } from "./state.js";

/** A status message in the polite live region; errors stay until dismissed. */
export function toast(text, tone = "info") {
  const box = document.getElementById("toasts");
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss message" }, "×");
  const item = h("div", { class: ["toast", `toast-${tone}`] }, h("span", null, text), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  if (tone !== "bad") setTimeout(() => item.remove(), 6000);
  while (box.children.length > 4) box.firstElementChild.remove();
}

/**
 * Asks for confirmation in the modal `<dialog>` (focus stays inside it; Escape cancels).
 * `body` is a node or text. Resolves to true when confirmed.
 */
export function confirmDialog({ title, body, confirmLabel = "Confirm", danger = false }) {
  const dialog = document.getElementById("confirm-dialog");
  const opener = document.activeElement;
  replace(document.getElementById("confirm-title"), title);
  replace(document.getElementById("confirm-body"), body);
  const ok = document.getElementById("confirm-ok");
  ok.textContent = confirmLabel;
  ok.className = danger ? "btn btn-danger" : "btn btn-primary";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (opener && typeof opener.focus === "function" && opener.isConnected) opener.focus();
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

/** Keeps Tab and Shift+Tab inside an open modal dialog (the browser chrome aside). */
export function trapFocus(dialog) {
  dialog.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const focusable = [...dialog.querySelectorAll("button, [href], input, select, textarea, [tabindex]:not([tabindex='-1'])")]
      .filter((x) => !x.disabled && x.offsetParent !== null);
    if (focusable.length === 0) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  });
}

/** Removes the errors `showError` put on `form`. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.remove();
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const described = (el.getAttribute("aria-describedby") || "").split(" ").filter((x) => !x.startsWith("err-"));
    if (described.length) el.setAttribute("aria-describedby", described.join(" "));
    else el.removeAttribute("aria-describedby");
  }
  const status = form.querySelector(".form-status");
  if (status) replace(status);
}

/** The control of `form` that an API error's `field` names (`rules[2].target` tries the
 *  full path, then without indexes, then its last part); a control's `data-field` lists
 *  the names it answers to. */
function controlFor(form, field) {
  if (!field) return null;
  const candidates = [field, field.replace(/\[\d+\]/g, ""), field.split(/[.[\]]/).filter(Boolean).pop()];
  for (const name of candidates) {
    const el = form.querySelector(`[data-field~="${CSS.escape(name)}"]`);
    if (el) return el;
  }
  return null;
}

/** Shows an error next to the field it names, or in the form's status line. */
export function showError(form, error) {
  const message = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  const field = error instanceof ApiError ? error.field : null;
  const control = controlFor(form, field);
  if (control) {
    const id = `err-${control.id || Math.random().toString(36).slice(2)}`;
    const note = h("p", { class: "field-error", id }, h("span", { "aria-hidden": "true" }, "✕ "), message);
    const anchor = control.closest(".field") || control;
    anchor.append(note);
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", `${control.getAttribute("aria-describedby") || ""} ${id}`.trim());
    control.focus();
  }
  const status = form.querySelector(".form-status");
  if (status) {
    replace(status, h("span", { class: "text-bad" }, control ? `Not saved: ${field}: ${message}` : `Not saved: ${message}`));
  } else if (!control) {
    toast(message, "bad");
  }
}

/** Runs `action` for a form submit: disables the submit button meanwhile, clears and shows
 *  errors; resolves to the action's result or undefined when it failed. */
export async function submitting(form, action) {
  clearErrors(form);
  const buttons = [...form.querySelectorAll("button[type=submit]")];
  const wasDisabled = buttons.map((b) => b.disabled);
  for (const b of buttons) b.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    return await action();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showError(form, e);
    return undefined;
  } finally {
    form.removeAttribute("aria-busy");
    buttons.forEach((b, i) => {
      b.disabled = wasDisabled[i];
    });
  }
}

/** The note a viewer sees where an admin has change controls. */
export function readOnlyNote(what) {
  if (canChange()) return null;
  const who = state.whoami ? `“${state.whoami.name}”` : "this token";
  return h("p", { class: "notice notice-info readonly-note", "data-testid": "readonly-note" },
    h("strong", null, "Read-only. "),
    `Your token ${who} has the viewer role; ${what} needs an admin token.`);
}

/** A labelled form control: `<div class="field"><label>…</label>control hint</div>`. */
export function field(label, control, hint) {
  const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hintEl);
}

/** A `<select>` with `options` as [value, label] pairs or plain strings. */
export function select(attrs, options, value) {
  const el = h("select", attrs, options.map((o) => {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    return h("option", { value: v }, label);
  }));
  if (value !== undefined && value !== null) el.value = value;
  return el;
}

/** Tells the user that `what` failed (a 401 already sent them to the login page). */
export function reportError(what, error) {
  if (error instanceof ApiError && error.status === 401) return;
  toast(`${what}: ${error.message}`, "bad");
}

/** The `?a=b` part of the hash route, as URLSearchParams. */
export function hashParams() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i === -1 ? "" : location.hash.slice(i + 1));
}

/** Rewrites the `?a=b` part of the hash route without a navigation. */
export function setHashParams(params) {
  const path = location.hash.split("?")[0] || "#/";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const text = q.toString();
  history.replaceState(null, "", text ? `${path}?${text}` : path);
}
