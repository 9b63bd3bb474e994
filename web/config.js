// The tenant's configuration as the API shows it to its admins: connections,
// the policy in force, and the newest events of the hash-chained log.

import { api } from "./api.js";
import { h } from "./dom.js";
import { timeEl } from "./format.js";

const EVENTS_SHOWN = 200;

export async function render(main, { signal }) {
  document.title = "Configuration · Airlock";
  const connections = h("div", { class: "scroll" });
  const policy = h("div");
  const events = h("div", { class: "scroll" });
  main.append(
    h("div", { class: "title" }, h("h1", {}, "Configuration")),
    h("section", { class: "card", "aria-labelledby": "h-connections" }, h("h2", { id: "h-connections" }, "Connections"), connections),
    h("section", { class: "card", "aria-labelledby": "h-policy" }, h("h2", { id: "h-policy" }, "Policy"), policy),
    h("section", { class: "card", "aria-labelledby": "h-events" }, h("h2", { id: "h-events" }, "Event log"), events),
  );
  const failed = (where) => (err) => {
    if (!signal.aborted) where.replaceChildren(h("p", { class: "error" }, err.message));
  };
  await Promise.all([
    loadConnections(connections, signal).catch(failed(connections)),
    loadPolicy(policy, signal).catch(failed(policy)),
    loadEvents(events, signal).catch(failed(events)),
  ]);
}

function table(caption, columns, rows) {
  return h(
    "table",
    { class: "list" },
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}

async function loadConnections(where, signal) {
  const list = await api("/v1/connections", { signal });
  if (!list.length) return where.replaceChildren(h("p", { class: "empty" }, "No connections registered."));
  where.replaceChildren(table(
    "Connections",
    ["Name", "Kind", "Address", "Database", "TLS", "Roles", "Credentials"],
    list.map((c) => [
      c.name,
      c.kind,
      h("code", {}, c.address),
      c.database,
      c.tls,
      Object.entries(c.roles).map(([role, template]) => `${role} → ${template}`).join(", "),
      `${c.credential_mode} (${c.credential_user})`,
    ]),
  ));
}

async function loadPolicy(where, signal) {
  let p;
  try {
    p = await api("/v1/policy", { signal });
  } catch (err) {
    if (err.status === 404) return where.replaceChildren(h("p", { class: "empty" }, "No policy applied."));
    throw err;
  }
  where.replaceChildren(
    h("p", {}, `Version ${p.version}, applied at event ${p.seq}, digest `, h("code", {}, p.digest.slice(0, 16)), "…"),
    h("pre", { class: "source", "aria-label": "Policy document" }, h("code", {}, p.source)),
  );
}

async function loadEvents(where, signal) {
  const head = (await api("/v1/events?from_seq=1&limit=1", { signal })).head_seq;
  const from = Math.max(1, head - EVENTS_SHOWN + 1);
  const page = await api(`/v1/events?from_seq=${from}&limit=${EVENTS_SHOWN}`, { signal });
  where.replaceChildren(
    h("p", { class: "muted" }, `The newest ${page.events.length} of ${head} events, newest first.`),
    table(
      "Event log",
      ["Seq", "Type", "Actor", "When", "Hash"],
      page.events.slice().reverse().map((e) => [
        String(e.seq),
        e.type,
        e.actor,
        timeEl(e.occurred_at),
        h("code", { title: e.hash }, `${e.hash.slice(0, 16)}…`),
      ]),
    ),
  );
}
