// Who the console acts as: a bearer token, pasted on the login page (an admin
// token, `airlock-data/admin.token`, or any token Airlock accepts) or the ID
// token of a single sign-on through the OIDC provider (oidc.js), kept in
// sessionStorage so it ends with the browser tab.

const KEY = "airlock.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}
