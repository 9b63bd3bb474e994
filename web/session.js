// One session: who, where and how it ended; whether its recording is intact;
// and its statements as the client sent them and saw their results. While the
// session is live, new statements are followed (polled every second).

import { ApiError, api, apiBlob, saveBlob } from "./api.js";
import { badge, facts, h, pause } from "./dom.js";
import { bytes, clockMs, duration, timeEl } from "./format.js";
import { OUTCOME_TONE, listed } from "./sessions.js";

const PAGE = 200;
const LIVE_POLL_MS = 1000;

export const VERDICT_TONE = { allow: "ok", deny: "bad", review: "review", mask: "mask" };

export async function render(main, { params, signal }) {
  const [id] = params;
  const base = `/v1/sessions/${encodeURIComponent(id)}`;
  document.title = "Session · Airlock";

  const header = h("section", { class: "card session-head", "aria-labelledby": "session-title" });
  const integrity = h("div", { class: "integrity", id: "integrity", role: "status", "aria-live": "polite" });
  const download = h("button", { type: "button", class: "quiet", onclick: save }, "Download timeline (JSON lines)");
  const liveNote = h("p", { class: "live", role: "status", hidden: true }, "Live: new statements appear as they run.");
  const timeline = h("ol", { class: "timeline", id: "timeline", "aria-label": "Statements" });
  const emptyNote = h("p", { class: "empty", hidden: true }, "Nothing recorded yet.");
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/sessions" }, "Sessions")),
    header,
    h("div", { class: "toolbar" }, integrity, download),
    h("h2", {}, "Timeline"),
    liveNote,
    emptyNote,
    timeline,
  );

  async function save() {
    download.disabled = true;
    try {
      saveBlob(await apiBlob(`${base}/timeline.jsonl`, { signal }), `session-${id}.jsonl`);
    } finally {
      download.disabled = false;
    }
  }

  // `GET /v1/sessions/{id}`, or the row the sessions list showed when the
  // API has no such route.
  async function fetchSession() {
    try {
      return await api(base, { signal });
    } catch (err) {
      const known = listed.get(id);
      if (err instanceof ApiError && err.status === 404 && known) return known;
      throw err;
    }
  }

  async function loadHeader() {
    const s = await fetchSession();
    document.title = `Session of ${s.subject} · Airlock`;
    header.replaceChildren(
      h(
        "div",
        { class: "title" },
        h("h1", { id: "session-title" }, `Session of ${s.subject}`),
        badge(s.outcome, OUTCOME_TONE[s.outcome] ?? "info"),
      ),
      facts([
        ["Principal", s.subject],
        ["Issuer", s.issuer],
        ["Connection", s.connection],
        ["Role on target", s.target_role],
        ["Opened", timeEl(s.opened_at)],
        ["Closed", s.closed_at ? timeEl(s.closed_at) : "still open"],
        ["Duration", s.duration_ms === null ? "" : duration(s.duration_ms)],
        ["From client", bytes(s.bytes_from_client)],
        ["To client", bytes(s.bytes_to_client)],
        ["Close reason", s.close_reason],
        ["Client address", s.client_addr],
        ["Worker", s.worker_id],
        ["Grant", s.grant_id ? h("code", {}, s.grant_id) : ""],
        ["Session id", h("code", {}, s.id)],
      ]),
    );
    return s;
  }

  async function loadIntegrity() {
    const v = await api(`${base}/verify`, { signal });
    let text;
    let tone;
    if (v.intact && v.signed) {
      text = "Recording intact";
      tone = "ok";
    } else if (v.intact) {
      text = "Recording in progress";
      tone = "info";
    } else {
      const index = v.first_bad_chunk?.index;
      text = index === undefined || index === null ? "Recording damaged" : `Recording damaged — chunk ${index}`;
      tone = "bad";
    }
    const detail = [`${v.chunks} chunk${v.chunks === 1 ? "" : "s"}`, v.detail];
    if (v.first_bad_chunk?.reason) detail.push(v.first_bad_chunk.reason);
    integrity.dataset.state = tone;
    integrity.replaceChildren(badge(text, tone), h("span", { class: "muted" }, detail.filter(Boolean).join(" · ")));
  }

  // The header, the badge and the first page of the timeline load side by side.
  const [session] = await Promise.all([
    loadHeader(),
    loadIntegrity().catch((err) => {
      if (signal.aborted) return;
      integrity.dataset.state = "unknown";
      integrity.replaceChildren(badge("Integrity unknown", "info"), h("span", { class: "muted" }, err.message));
    }),
    followTimeline(),
  ]);
  return session;

  async function followTimeline() {
    // The server returns only entries past `after` and never splits a seq
    // between pages: every entry it returns is shown (several share a seq when
    // one read from the client held several statements).
    let after = 0;
    let wasLive = false;
    for (;;) {
      const page = await api(`${base}/timeline?after=${after}&limit=${PAGE}`, { signal });
      for (const entry of page.entries) timeline.append(entryItem(entry));
      emptyNote.hidden = timeline.childElementCount > 0;
      const next = page.next ?? null;
      const progressed = next !== null && next > after;
      if (next !== null) after = Math.max(after, next);
      if (progressed && page.entries.length > 0) continue;
      liveNote.hidden = !page.live;
      if (!page.live) {
        if (next === null || !progressed) break;
        continue;
      }
      wasLive = true;
      // Caught up with a live session: wait before asking again.
      await pause(LIVE_POLL_MS, signal);
      if (signal.aborted) return;
    }
    if (wasLive) {
      // The session ended while it was followed: its end and signature are in now.
      await Promise.all([loadHeader(), loadIntegrity()]);
    }
  }
}

function entryItem(e) {
  const d = e.decision;
  const meta = h(
    "div",
    { class: "meta" },
    h("span", { class: "seq" }, `#${e.seq}`),
    timeEl(e.at, clockMs(e.at)),
    d && badge(d.verdict, VERDICT_TONE[d.verdict] ?? "info"),
    d?.rule && h("span", {}, "rule ", h("code", {}, d.rule)),
    d?.approver && h("span", {}, `approved by ${d.approver}`),
    d?.review_id && h("span", { class: "muted" }, `review ${d.review_id}`),
    e.duration_ms !== null && e.duration_ms !== undefined && h("span", { class: "muted" }, duration(e.duration_ms)),
    e.command_tag && h("span", { class: "tag" }, e.command_tag),
  );
  const parts = [meta];
  if (e.kind === "end") {
    parts.push(h("p", { class: "end" }, "Session ended", e.statement ? `: ${e.statement}` : ""));
  } else if (e.statement !== null && e.statement !== undefined) {
    parts.push(h("pre", { class: "sql" }, h("code", {}, e.statement)));
  }
  if (d?.reason) parts.push(h("p", { class: "reason" }, d.reason));
  if (e.parameters?.length) {
    parts.push(h(
      "ul",
      { class: "params", "aria-label": "Parameters" },
      e.parameters.map((p, i) => h("li", {}, h("code", {}, `$${i + 1}`), " = ", p === null ? nullMark() : h("code", {}, p))),
    ));
  }
  if (e.error) {
    const severity = e.error.severity || (e.kind === "notice" ? "NOTICE" : "ERROR");
    parts.push(h(
      "p",
      { class: e.kind === "notice" ? "notice" : "error-msg" },
      h("strong", {}, severity),
      e.error.sqlstate ? ` ${e.error.sqlstate}` : "",
      ": ",
      e.error.message ?? "",
    ));
  }
  if (e.columns) parts.push(resultTable(e));
  else if (e.row_count !== null && e.row_count !== undefined) {
    parts.push(h("p", { class: "muted" }, `${e.row_count} row${e.row_count === 1 ? "" : "s"}`));
  }
  return h(
    "li",
    { class: `entry kind-${e.kind}${d ? ` verdict-${d.verdict}` : ""}`, dataset: { seq: e.seq, kind: e.kind } },
    parts,
  );
}

function nullMark() {
  return h("span", { class: "null" }, "NULL");
}

function resultTable(e) {
  const rows = e.rows ?? [];
  const table = h(
    "table",
    { class: "result" },
    h("thead", {}, h("tr", {}, e.columns.map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, v === null ? nullMark() : v)))),
    ),
  );
  const count = e.row_count ?? rows.length;
  let note = `${count} row${count === 1 ? "" : "s"}`;
  if (e.rows_truncated) note += `; the first ${rows.length} shown (the recording keeps no more)`;
  return h(
    "div",
    { class: "result-wrap" },
    h("div", { class: "scroll" }, table),
    h("p", { class: e.rows_truncated ? "note truncated" : "muted" }, note),
  );
}
