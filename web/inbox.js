// The approvers' inbox: what waits for a decision, with Approve and Deny.
// Refreshed every few seconds; a card the approver is typing in stays as it is.

import { api } from "./api.js";
import { badge, facts, h, pause } from "./dom.js";
import { dateTime, duration, timeEl } from "./format.js";

const REFRESH_MS = 3000;

export async function render(main, { signal }) {
  document.title = "Inbox · Airlock";
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const list = h("div", { class: "cards", id: "reviews" });
  const empty = h("p", { class: "empty", hidden: true }, "Nothing waits for a decision.");
  const heading = h("h1", { tabindex: "-1" }, "Inbox");
  main.append(
    h("div", { class: "title" }, heading, h("span", { class: "muted" }, "Pending reviews, newest first")),
    status,
    empty,
    list,
  );
  const cards = new Map();

  async function refresh() {
    const [pending, mine] = await Promise.all([
      api("/v1/reviews?state=pending", { signal }),
      api("/v1/reviews?pending_for_me=true", { signal }),
    ]);
    const mayDecide = new Set(mine.map((r) => r.id));
    const seen = new Set();
    let previous = null;
    for (const review of pending) {
      seen.add(review.id);
      let card = cards.get(review.id);
      const key = `${review.approvals}/${mayDecide.has(review.id)}`;
      if (!card || (card.dataset.key !== key && !card.contains(document.activeElement))) {
        const fresh = reviewCard(review, mayDecide.has(review.id), decided);
        fresh.dataset.key = key;
        if (card) card.replaceWith(fresh);
        card = fresh;
        cards.set(review.id, card);
      }
      // Keep the API's order (newest first) without rebuilding cards.
      const want = previous ? previous.nextSibling : list.firstChild;
      if (want !== card) list.insertBefore(card, want);
      previous = card;
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    empty.hidden = cards.size > 0;
  }

  function decided(review, approve) {
    const what = review.kind === "command" ? "the held statement" : `${review.requester}'s access request`;
    status.textContent = `${approve ? "Approved" : "Denied"} ${what} (review ${review.id}).`;
    const card = cards.get(review.id);
    card?.remove();
    cards.delete(review.id);
    empty.hidden = cards.size > 0;
    refresh().catch(() => {});
  }

  await refresh();
  while (!signal.aborted) {
    await pause(REFRESH_MS, signal);
    if (signal.aborted) break;
    try {
      await refresh();
      if (status.dataset.failed) {
        status.textContent = "";
        delete status.dataset.failed;
      }
    } catch (err) {
      if (signal.aborted) break;
      status.textContent = `Could not refresh: ${err.message}`;
      status.dataset.failed = "1";
    }
  }
}

function reviewCard(review, mayDecide, onDecided) {
  const command = review.kind === "command";
  const headingId = `review-${review.id}-title`;
  const title = command ? "Held statement" : "Access request";
  const approvers = [
    ...review.approver_groups.map((g) => `group ${g}`),
    ...review.approver_subjects,
  ].join(", ");
  const body = [
    h(
      "header",
      {},
      h("h2", { id: headingId }, title),
      badge(command ? "statement" : "access", command ? "review" : "info"),
    ),
    command
      ? h("pre", { class: "sql", "aria-label": "Statement" }, h("code", {}, review.statement ?? ""))
      : h(
        "p",
        { class: "lead" },
        `Role ${review.role ?? "?"} on ${review.connection}`,
        review.ttl_seconds ? ` for ${duration(review.ttl_seconds * 1000)}` : "",
      ),
    facts([
      ["Requested by", review.requester],
      ["Connection", review.connection],
      ["Rule", h("code", {}, review.rule)],
      ["Reason", review.reason],
      ["Requested at", timeEl(review.opened_at_unix)],
      ["Expires", timeEl(review.expires_at_unix)],
      ["Approvals", `${review.approvals} of ${review.quorum}`],
      ["Approvers", approvers],
      ["Session", review.session_id ? h("a", { href: `#/sessions/${encodeURIComponent(review.session_id)}` }, review.session_id) : ""],
    ]),
  ];
  if (review.decisions.length) {
    body.push(h(
      "ul",
      { class: "decisions" },
      review.decisions.map((d) =>
        h(
          "li",
          {},
          `${d.approve ? "Approved" : "Denied"} by ${d.by} at ${dateTime(d.at_unix)}`,
          d.comment ? `: ${d.comment}` : "",
        )
      ),
    ));
  }
  body.push(mayDecide ? decisionForm(review, onDecided) : h(
    "p",
    { class: "muted" },
    "You cannot decide this review (your own request, already decided by you, or not one of its approvers).",
  ));
  return h("article", { class: "card review", "aria-labelledby": headingId, dataset: { reviewId: review.id } }, body);
}

function decisionForm(review, onDecided) {
  const id = review.id;
  const comment = h("textarea", { id: `comment-${id}`, name: "comment", rows: "2", maxlength: "1024" });
  const forGrant = review.kind === "command"
    ? h("input", { type: "checkbox", id: `grant-${id}`, name: "scope" })
    : null;
  const error = h("p", { class: "error", role: "alert" });
  const approve = h("button", { type: "button", class: "approve", onclick: () => decide(true) }, "Approve");
  const deny = h("button", { type: "button", class: "deny", onclick: () => decide(false) }, "Deny");
  async function decide(yes) {
    approve.disabled = deny.disabled = true;
    error.textContent = "";
    const body = { approve: yes, comment: comment.value.trim() };
    if (yes && forGrant?.checked) body.scope = "grant";
    try {
      await api(`/v1/reviews/${encodeURIComponent(id)}/decision`, { method: "POST", body });
      onDecided(review, yes);
    } catch (err) {
      error.textContent = `Not recorded: ${err.message}`;
      approve.disabled = deny.disabled = false;
    }
  }
  return h(
    "div",
    { class: "decide" },
    h("label", { for: `comment-${id}` }, "Comment (optional)"),
    comment,
    forGrant && h(
      "p",
      { class: "check" },
      forGrant,
      h("label", { for: `grant-${id}` }, "Also approve identical statements for the rest of the grant"),
    ),
    h("div", { class: "actions" }, approve, deny),
    error,
  );
}
