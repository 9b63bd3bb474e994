// Signing in: paste a token. (Single sign-on through the tenant's identity
// provider will sit beside this form; see auth.js.)

import { ApiError, api } from "./api.js";
import { clearToken, setToken } from "./auth.js";
import { h } from "./dom.js";

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
  const form = h(
    "form",
    { class: "card login", onsubmit: (e) => signIn(e) },
    h("h1", {}, "Sign in"),
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
