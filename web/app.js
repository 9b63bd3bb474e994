// The console's shell: hash routes, the header, and the error banner. Each
// view is a module with `render(main, ctx)`; `ctx.signal` aborts when the
// view is left, which stops its polling and its requests.

import { SIGNED_OUT, api } from "./api.js";
import { clearToken, token } from "./auth.js";
import * as config from "./config.js";
import * as inbox from "./inbox.js";
import * as login from "./login.js";
import { completeOidcLogin } from "./oidc.js";
import * as session from "./session.js";
import * as sessions from "./sessions.js";

const routes = [
  { path: /^\/login$/, view: login, nav: null, public: true },
  { path: /^\/inbox$/, view: inbox, nav: "inbox" },
  { path: /^\/sessions$/, view: sessions, nav: "sessions" },
  { path: /^\/sessions\/([^/?]+)$/, view: session, nav: "sessions" },
  { path: /^\/config$/, view: config, nav: "config" },
];

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let current = null;

/** Shows an error above the view; `null` hides it. */
export function showError(message) {
  banner.textContent = message ?? "";
  banner.hidden = !message;
}

/** "#/sessions?principal=x" → { path: "/sessions", query: URLSearchParams } */
function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const i = raw.indexOf("?");
  return {
    path: i < 0 ? raw : raw.slice(0, i),
    query: new URLSearchParams(i < 0 ? "" : raw.slice(i + 1)),
  };
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route(event) {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { path, query } = parseHash();
  const signedIn = Boolean(token());
  if (!signedIn && path !== "/login") return go("#/login");
  if (path === "/" || path === "") return go(signedIn ? "#/inbox" : "#/login");
  let match = null;
  const found = routes.find((r) => (match = r.path.exec(path)));
  showError(null);
  header(signedIn, found?.nav);
  main.replaceChildren();
  if (!found) {
    main.append(document.createElement("h1"));
    main.firstChild.textContent = "Page not found";
    return;
  }
  let params;
  try {
    params = match.slice(1).map(decodeURIComponent);
  } catch {
    main.append(document.createElement("h1"));
    main.firstChild.textContent = "Page not found";
    return;
  }
  // A new page for screen readers and keyboards too, as a full load would be.
  if (event && !found.public) main.focus({ preventScroll: true });
  try {
    await found.view.render(main, { params, query, signal: controller.signal, go, showError });
  } catch (err) {
    if (controller.signal.aborted || err.name === "AbortError") return;
    showError(err.message);
  }
}

function header(signedIn, active) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (signedIn) loadTenant();
  else document.getElementById("tenant").textContent = "";
}

let tenantShown = false;
async function loadTenant() {
  if (tenantShown) return;
  tenantShown = true;
  try {
    // Tenant admins see their tenant's name; other tokens may not list tenants.
    const tenants = await api("/v1/tenants");
    document.getElementById("tenant").textContent = tenants.map((t) => t.name).join(", ");
  } catch {
    tenantShown = false;
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  clearToken();
  tenantShown = false;
  go("#/login");
});

window.addEventListener(SIGNED_OUT, (e) => {
  tenantShown = false;
  const why = e.detail ? `: ${e.detail}` : "";
  sessionStorage.setItem("airlock.login-message", `The token was refused${why}. Sign in again.`);
  go("#/login");
});

// Back from the identity provider (`/?code=...&state=...`): finish signing in
// before the first route, so it opens signed in (or on the login page with
// what failed). The address is replaced, not assigned: no hashchange, so the
// first route runs once.
async function start() {
  try {
    const next = await completeOidcLogin();
    if (next) history.replaceState(null, "", next);
  } catch (err) {
    clearToken();
    sessionStorage.setItem("airlock.login-message", err.message);
    history.replaceState(null, "", "#/login");
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
