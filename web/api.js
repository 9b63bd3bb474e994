// The REST API under /v1/, with the bearer token. Errors carry the API's
// JSON error body ({error, message, field?, rule?}).

import { clearToken, token } from "./auth.js";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `request failed with status ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Fired on window when the API refuses the token: the app shows the login page. */
export const SIGNED_OUT = "airlock:signed-out";

async function request(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!res.ok) {
    const err = await res.json().catch(() => null);
    if (res.status === 401) {
      clearToken();
      window.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: err?.message }));
    }
    throw new ApiError(res.status, err);
  }
  return res;
}

/** The JSON a call answers. */
export async function api(path, options) {
  const res = await request(path, options);
  return res.json();
}

/** The body a call answers, as a Blob (for downloads that need the bearer header). */
export async function apiBlob(path, options) {
  const res = await request(path, options);
  return res.blob();
}

/** Saves `blob` as a file named `name`. */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
