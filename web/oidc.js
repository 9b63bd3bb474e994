// Signing in through the OIDC provider the control plane names in
// /console/config.json: the authorization code flow with PKCE (RFC 7636, S256)
// for a public client, with no client secret. The browser talks to the
// provider itself: its discovery document and token endpoint (the console's
// Content-Security-Policy allows the provider's origin in connect-src), and a
// top-level navigation to its authorization endpoint.
//
// The ID token the provider answers is the bearer token: the control plane
// accepts it when a tenant trusts the provider with the console's client id
// as the audience. Its signature is checked there, not here; the console
// checks what only it can: the state and the nonce it made.

import { setToken } from "./auth.js";

/** Where the login in progress is kept between leaving for the provider and coming back. */
const PENDING = "airlock.oidc-pending";

/** The provider the console signs in with, or null (a pasted token only). */
export async function providerConfig() {
  const res = await fetch("/console/config.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`cannot read the console's configuration (status ${res.status})`);
  return (await res.json()).oidc ?? null;
}

/** Where the provider sends the browser back: the console's own page. */
function redirectUri() {
  return `${location.origin}/`;
}

function base64url(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** `n` random bytes, base64url: 32 bytes make 43 characters. */
function random(n) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

async function s256(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** The provider's discovery document (OpenID Connect Discovery 1.0, §4). */
async function discover(issuer) {
  const url = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
  let res;
  try {
    res = await fetch(url, { cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new Error(`Cannot reach the identity provider at ${issuer}: ${err.message}`);
  }
  if (!res.ok) throw new Error(`The identity provider's discovery document answered status ${res.status}.`);
  const doc = await res.json().catch(() => null);
  if (doc?.issuer !== issuer) {
    throw new Error(`The identity provider's discovery document names issuer ${doc?.issuer}, not ${issuer}.`);
  }
  for (const name of ["authorization_endpoint", "token_endpoint"]) {
    if (typeof doc[name] !== "string") throw new Error(`The identity provider names no ${name}.`);
  }
  // The console's Content-Security-Policy lets it call the issuer's origin only.
  if (new URL(doc.token_endpoint).origin !== new URL(issuer).origin) {
    throw new Error(`The identity provider's token endpoint ${doc.token_endpoint} is not on its issuer's origin, which is the only one the console may call.`);
  }
  return doc;
}

/**
 * Leaves for the provider's sign-in page. `next` is the console route to
 * open once signed in. Resolves only if it fails to leave (it throws then).
 */
export async function beginOidcLogin(oidc, next) {
  const doc = await discover(oidc.issuer);
  const verifier = random(64); // 86 characters, within RFC 7636's 43 to 128
  const pending = {
    issuer: oidc.issuer,
    client_id: oidc.client_id,
    token_endpoint: doc.token_endpoint,
    redirect_uri: redirectUri(),
    state: random(32),
    nonce: random(32),
    verifier,
    next: next || "#/inbox",
  };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = new URL(doc.authorization_endpoint);
  const params = {
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: pending.redirect_uri,
    scope: oidc.scopes,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await s256(verifier),
    code_challenge_method: "S256",
  };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  location.assign(url.href);
}

/** The claims of a JWT, unverified (the control plane verifies the signature). */
function claimsOf(jwt) {
  const part = jwt.split(".")[1] ?? "";
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/**
 * The return from the provider, when this page was loaded with `?code=` or
 * `?error=`: checks the state, trades the code for an ID token, checks its
 * nonce, and keeps it as the bearer token. Resolves to null when the page is
 * no such return, else to the route to open; throws an Error whose message
 * says what failed. The query is taken off the address either way, and the
 * login in progress is forgotten (a code is good once).
 */
export async function completeOidcLogin() {
  const params = new URLSearchParams(location.search);
  if (!params.has("code") && !params.has("error")) return null;
  const saved = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  history.replaceState(null, "", `${location.pathname}${location.hash}`);
  const pending = saved ? JSON.parse(saved) : null;
  if (!pending) {
    throw new Error("Single sign-on failed: this sign-in was not started in this tab. Sign in again.");
  }
  if (params.get("state") !== pending.state) {
    throw new Error("Single sign-on failed: the identity provider's answer does not belong to this sign-in (state mismatch). Sign in again.");
  }
  if (params.has("error")) {
    const why = params.get("error_description");
    throw new Error(`The identity provider refused the sign-in: ${params.get("error")}${why ? ` (${why})` : ""}.`);
  }
  let res;
  try {
    res = await fetch(pending.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code: params.get("code"),
        redirect_uri: pending.redirect_uri,
        client_id: pending.client_id,
        code_verifier: pending.verifier,
      }),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new Error(`Single sign-on failed: cannot reach the identity provider's token endpoint: ${err.message}`);
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const why = body?.error_description ? ` (${body.error_description})` : "";
    throw new Error(`Single sign-on failed: the identity provider refused the code: ${body?.error ?? `status ${res.status}`}${why}.`);
  }
  const idToken = body?.id_token;
  if (typeof idToken !== "string") throw new Error("Single sign-on failed: the identity provider sent no ID token.");
  let claims;
  try {
    claims = claimsOf(idToken);
  } catch {
    throw new Error("Single sign-on failed: the ID token cannot be read.");
  }
  if (claims.nonce !== pending.nonce) {
    throw new Error("Single sign-on failed: the ID token was not issued for this sign-in (nonce mismatch).");
  }
  setToken(idToken);
  return pending.next;
}
