// Who the console acts as. Today: a bearer token pasted on the login page
// (an admin token, `airlock-data/admin.token`, or any token Airlock accepts),
// kept in sessionStorage so it ends with the browser tab.
//
// Signing in through the tenant's identity provider (OIDC authorization code
// with PKCE) belongs here: a `beginOidcLogin()` that redirects to the
// provider and a `completeOidcLogin()` that trades the code for a token and
// calls `setToken`. The control plane does not offer that flow yet, so the
// login page offers the token only.

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
