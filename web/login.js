// Signing in: through the OIDC provider the control plane names, when it names
// one (oidc.js), or by pasting a token.

import { ApiError, api } from "./api.js";
import { clearToken, setToken } from "./auth.js";
import { h } from "./dom.js";
import { beginOidcLogin, providerConfig } from "./oidc.js";

export async function render(main, { go, query }) {
  document.title = "Sign in · Airlock";
  const message = sessionStorage.getItem("airlock.login-message");
  sessionStorage.removeItem("airlock.login-message");
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message ?? "");
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-help login-error",
  });
  const submit = h("button", { type: "submit" }, "Sign in");
  // Filled once the console's configuration names a provider.
  const sso = h("div", { class: "sso", hidden: true });
  const form = h(
    "form",
    { class: "card login", onsubmit: (e) => signIn(e) },
    h("h1", {}, "Sign in"),
    sso,
    h("label", { for: "token" }, "Access token"),
    input,
    h(
      "p",
      { class: "muted", id: "token-help" },
      "Paste an admin token (",
      h("code", {}, "airlock-data/admin.token"),
      " on an embedded install) or a token Airlock issued to you. It is kept in this tab only.",
    ),
    submit,
    error,
  );
  main.append(form);
  input.focus();
  offerSingleSignOn().catch((err) => {
    error.textContent = `Single sign-on is unavailable: ${err.message}`;
  });

  async function offerSingleSignOn() {
    const oidc = await providerConfig();
    if (!oidc) return;
    const host = new URL(oidc.issuer).host;
    const button = h("button", { type: "button", class: "sso-button", onclick: () => go() }, `Sign in with ${host}`);
    sso.append(button, h("p", { class: "muted or" }, "or paste a token"));
    sso.hidden = false;
    button.focus();

    async function go() {
      button.disabled = true;
      error.textContent = "";
      try {
        await beginOidcLogin(oidc, query.get("next"));
      } catch (err) {
        error.textContent = err.message;
        button.disabled = false;
      }
    }
  }

  async function signIn(e) {
    e.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    submit.disabled = true;
    error.textContent = "";
    setToken(value);
    try {
      // Any token Airlock accepts may list the reviews it can see.
      await api("/v1/reviews?pending_for_me=true");
      go(query.get("next") || "#/inbox");
    } catch (err) {
      clearToken();
      error.textContent = err instanceof ApiError && err.status === 401
        ? `The token was refused: ${err.message}`
        : `Cannot sign in: ${err.message}`;
      submit.disabled = false;
    }
  }
}
