// The REST client: the bearer token (kept in sessionStorage, so it dies with the tab),
// JSON in and out, and the API's `{"error", "field"}` errors as `ApiError`.

const TOKEN_KEY = "pivot.token";
const BASE = "/api/v1";

/** An error reply of the API, or a failure to reach it (`status` 0). */
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field || null;
  }
}

let unauthorizedHandler = () => {};

/** Called with a message when any call gets 401 (the token is gone or was deleted). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** `encodeURIComponent` for one path segment (`script|load` stays one segment). */
export const seg = (s) => encodeURIComponent(s);

/** A query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "" || (Array.isArray(v) && v.length === 0)) continue;
    q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

async function send(method, path, body, bearer) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(BASE + path, init);
  } catch {
    throw new ApiError(0, "Cannot reach the control plane (network error).");
  }
  const text = res.status === 204 ? "" : await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const message = (data && typeof data.error === "string" && data.error) || `HTTP ${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message, data && data.field);
  }
  return data;
}

/** One API call with the session's token; a 401 ends the session. */
export async function api(method, path, body) {
  try {
    return await send(method, path, body, token());
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      unauthorizedHandler("The control plane did not accept your token (it may have been deleted). Log in again.");
    }
    throw e;
  }
}

export const get = (path) => api("GET", path);

/** Checks a token before keeping it: `{name, role}` of its owner. */
export function whoami(bearer) {
  return send("GET", "/whoami", undefined, bearer);
}
