// Recorded sessions, newest first, filtered by principal, connection, time
// range and outcome. The filters live in the URL (#/sessions?principal=...),
// so a filtered list can be reloaded and shared.

import { api, query } from "./api.js";
import { badge, h } from "./dom.js";
import { bytes, duration, localInputToIso, timeEl } from "./format.js";

const PAGE = 50;
const OUTCOMES = ["open", "completed", "terminated"];

export const OUTCOME_TONE = { open: "info", completed: "ok", terminated: "bad" };

/** Sessions this list showed, by id: the session page starts from them. */
export const listed = new Map();

export async function render(main, { query: q, signal, go }) {
  document.title = "Sessions · Airlock";
  const field = (name, label, input) =>
    h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), input);
  const text = (name, extra = {}) =>
    h("input", { id: `f-${name}`, name, type: "text", value: q.get(name) ?? "", ...extra });
  const when = (name) => h("input", { id: `f-${name}`, name, type: "datetime-local", value: q.get(name) ?? "" });
  const outcome = h(
    "select",
    { id: "f-outcome", name: "outcome" },
    h("option", { value: "" }, "Any"),
    OUTCOMES.map((o) => h("option", { value: o, selected: q.get("outcome") === o }, o)),
  );
  const connections = h("datalist", { id: "connection-names" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter sessions", onsubmit: apply },
    field("principal", "Principal", text("principal", { placeholder: "subject" })),
    field("connection", "Connection", text("connection", { list: "connection-names" })),
    field("since", "Opened after", when("since")),
    field("until", "Opened before", when("until")),
    field("outcome", "Outcome", outcome),
    h(
      "div",
      { class: "field actions" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "quiet", onclick: () => go("#/sessions") }, "Clear"),
    ),
    connections,
  );
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "list", id: "sessions" },
    h("caption", { class: "sr-only" }, "Sessions"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Opened", "Principal", "Connection", "Target role", "Duration", "From client", "To client", "Outcome"].map((c) =>
          h("th", { scope: "col" }, c)
        ),
      ),
    ),
    tbody,
  );
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more");
  const summary = h("p", { class: "muted", role: "status" });
  main.append(
    h("div", { class: "title" }, h("h1", {}, "Sessions")),
    form,
    summary,
    h("div", { class: "scroll" }, table),
    more,
  );

  function apply(e) {
    e.preventDefault();
    const data = new FormData(form);
    const params = {};
    for (const [k, v] of data) params[k] = String(v).trim();
    go(`#/sessions${query(params)}`);
  }

  api("/v1/connections", { signal })
    .then((list) => connections.append(...list.map((c) => h("option", { value: c.name }))))
    .catch(() => {});

  const filters = {
    principal: q.get("principal"),
    connection: q.get("connection"),
    since: localInputToIso(q.get("since")),
    until: localInputToIso(q.get("until")),
    outcome: q.get("outcome"),
    limit: PAGE,
  };
  let shown = 0;
  async function load(cursor) {
    more.disabled = true;
    const page = await api(`/v1/sessions${query({ ...filters, cursor })}`, { signal });
    for (const s of page.sessions) tbody.append(row(s));
    shown += page.sessions.length;
    summary.textContent = shown === 0
      ? "No sessions match."
      : `${shown} session${shown === 1 ? "" : "s"}${page.next ? ", more below" : ""}.`;
    more.hidden = !page.next;
    more.disabled = false;
    more.onclick = () => load(page.next).catch((err) => (summary.textContent = err.message));
  }
  await load(null);
}

function row(s) {
  listed.set(s.id, s);
  const href = `#/sessions/${encodeURIComponent(s.id)}`;
  return h(
    "tr",
    { dataset: { sessionId: s.id } },
    h("td", {}, h("a", { href }, timeEl(s.opened_at))),
    h("td", { title: s.issuer ?? "" }, s.subject),
    h("td", {}, s.connection),
    h("td", {}, s.target_role ?? ""),
    h("td", { class: "num" }, s.closed_at ? duration(s.duration_ms) : "running"),
    h("td", { class: "num" }, bytes(s.bytes_from_client)),
    h("td", { class: "num" }, bytes(s.bytes_to_client)),
    h("td", {}, badge(s.outcome, OUTCOME_TONE[s.outcome] ?? "info")),
  );
}
