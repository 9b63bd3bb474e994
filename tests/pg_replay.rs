//! Replay of a recorded session, end to end: psql through the gateway with a
//! masked column and a refused statement, then the sessions API (filters, and
//! another tenant sees nothing), the timeline as the auditor reads it (pages
//! and JSON lines), and the `airlock` binary's `sessions`, `replay` and
//! `verify SESSION`, which names the chunk a changed byte broke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use airlock_testkit::eventually;
use serde_json::{Value, json};
use support::{Stack, admin_client};

const POLICY: &str = r#"
version: 1
commands:
  - name: no-unbounded-writes
    match: { unbounded_write: true }
    action: deny
masking:
  - name: pii
    columns: ["public.contacts.email"]
    strategy: redact
"#;

/// The `airlock` binary as a client of the stack's API.
async fn airlock(s: &Stack, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(support::process::BIN);
    cmd.args(args).env("AIRLOCK_URL", &s.api).env("AIRLOCK_TOKEN", token).env_remove("AIRLOCK_CONFIG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

async fn get(s: &Stack, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new().get(format!("{}{path}", s.api)).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every timeline entry, `limit` at a time, checking that pages move on and overlap nowhere.
async fn paged(s: &Stack, id: &str, limit: usize) -> Vec<Value> {
    let mut after = 0u64;
    let mut entries = Vec::new();
    loop {
        let (status, page) = get(s, &format!("/v1/sessions/{id}/timeline?after={after}&limit={limit}"), &s.admin).await;
        assert_eq!(status, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            assert!(e["seq"].as_u64().unwrap() > after, "entry {e} is at or before {after}");
            entries.push(e.clone());
        }
        assert_eq!(page["live"], json!(false));
        match page["next"].as_u64() {
            None => return entries,
            Some(next) => {
                assert!(next > after, "next {next} does not move past {after}");
                after = next;
            }
        }
    }
}

#[tokio::test]
async fn a_recorded_session_is_listed_replayed_and_verified() {
    let s = Stack::start().await;
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(
            "CREATE TABLE contacts (id int PRIMARY KEY, email text);
             INSERT INTO contacts VALUES (1, 'ana@example.com'), (2, 'bo@example.com');",
        )
        .await
        .unwrap();
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let (_, events) = get(&s, "/v1/events?from_seq=0&limit=1", &s.admin).await;
    let head = events["head_seq"].as_u64().unwrap();

    let out = s
        .psql(
            "pg.readwrite",
            &token,
            &[
                "-c",
                "SELECT id, email FROM contacts ORDER BY id",
                "-c",
                "DELETE FROM people",
                "-c",
                "SELECT 41 + 1 AS answer",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "1|[redacted]\n2|[redacted]\n42\n", "{stderr}");
    assert!(stderr.contains("denied by rule no-unbounded-writes"), "{stderr}");

    // The session's close reaches the log (awaited, not slept on).
    let (_, closed) = get(&s, &format!("/v1/events?from_seq={}&wait_ms=20000", head + 1), &s.admin).await;
    let mut from = head + 1;
    let mut seen = closed;
    while !seen["events"].as_array().unwrap().iter().any(|e| e["type"] == "session_closed") {
        from = seen["events"].as_array().unwrap().last().map_or(from, |e| e["seq"].as_u64().unwrap() + 1);
        seen = get(&s, &format!("/v1/events?from_seq={from}&wait_ms=20000"), &s.admin).await.1;
    }

    // Listed, newest first, with what the log says of it.
    let (status, page) = get(&s, "/v1/sessions", &s.admin).await;
    assert_eq!(status, 200, "{page}");
    let sessions = page["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{page}");
    let session = &sessions[0];
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["subject"], "agent-7");
    assert_eq!(session["connection"], "pg");
    assert_eq!(session["outcome"], "completed");
    assert_eq!(session["close_reason"], "client closed the session");
    assert!(session["bytes_from_client"].as_u64().unwrap() > 0 && session["bytes_to_client"].as_u64().unwrap() > 0);
    assert!(session["closed_at"].is_string() && session["duration_ms"].is_u64(), "{session}");
    assert_eq!(page["next"], Value::Null);
    let connection_id = session["connection_id"].as_str().unwrap().to_owned();

    // Filters.
    let count = |q: String| {
        let s = &s;
        async move {
            let (status, page) = get(s, &format!("/v1/sessions?{q}"), &s.admin).await;
            assert_eq!(status, 200, "{q}: {page}");
            page["sessions"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("principal=agent-7".into()).await, 1);
    assert_eq!(count("principal=agent-8".into()).await, 0);
    assert_eq!(count("connection=pg".into()).await, 1);
    assert_eq!(count(format!("connection={connection_id}")).await, 1);
    assert_eq!(count("connection=elsewhere".into()).await, 0);
    assert_eq!(count("outcome=completed".into()).await, 1);
    assert_eq!(count("outcome=terminated".into()).await, 0);
    assert_eq!(count("outcome=open".into()).await, 0);
    assert_eq!(count("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into()).await, 1);
    assert_eq!(count("since=2999-01-01T00:00:00Z".into()).await, 0);
    assert_eq!(count("until=2000-01-01T00:00:00%2B02:00".into()).await, 0);
    for bad in ["outcome=closed", "since=yesterday", "cursor=x"] {
        let (status, body) = get(&s, &format!("/v1/sessions?{bad}"), &s.admin).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_argument", "{body}");
    }

    // Its recording, signed once the session ended.
    eventually(Duration::from_secs(20), "the recording to be signed", || async {
        get(&s, &format!("/v1/sessions/{id}"), &s.admin).await.1["recording"]["signed"] == json!(true)
    })
    .await;
    let (_, detail) = get(&s, &format!("/v1/sessions/{id}"), &s.admin).await;
    assert_eq!(detail["recording"], json!({"stored": true, "signed": true}));
    assert_eq!(detail["subject"], "agent-7");

    // The timeline: the statements in order, their decisions, what the client saw.
    let (status, timeline) = get(&s, &format!("/v1/sessions/{id}/timeline"), &s.admin).await;
    assert_eq!(status, 200, "{timeline}");
    assert_eq!((&timeline["next"], &timeline["live"]), (&Value::Null, &json!(false)));
    let entries = timeline["entries"].as_array().unwrap().clone();
    let statements: Vec<&str> =
        entries.iter().filter(|e| e["kind"] == "statement").map(|e| e["statement"].as_str().unwrap()).collect();
    assert_eq!(
        statements,
        ["SELECT id, email FROM contacts ORDER BY id", "DELETE FROM people", "SELECT 41 + 1 AS answer"]
    );
    let select = &entries.iter().find(|e| e["statement"] == "SELECT id, email FROM contacts ORDER BY id").unwrap();
    assert_eq!(select["decision"]["verdict"], "allow", "{select}");
    assert_eq!(select["columns"], json!(["id", "email"]));
    assert_eq!(select["rows"], json!([["1", "[redacted]"], ["2", "[redacted]"]]));
    assert_eq!((&select["row_count"], &select["rows_truncated"]), (&json!(2), &json!(false)));
    assert_eq!(select["command_tag"], "SELECT 2");
    assert!(select["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(select["at"].as_str().unwrap().ends_with('Z') && select["at"].as_str().unwrap().len() == 27);
    let denied = &entries.iter().find(|e| e["statement"] == "DELETE FROM people").unwrap();
    assert_eq!(denied["decision"]["verdict"], "deny");
    assert_eq!(denied["decision"]["rule"], "no-unbounded-writes");
    assert_eq!(denied["error"]["sqlstate"], "42501");
    assert_eq!(denied["error"]["severity"], "ERROR");
    assert!(denied["error"]["message"].as_str().unwrap().contains("no-unbounded-writes"), "{denied}");
    assert_eq!(denied["command_tag"], Value::Null);
    let answer = &entries.iter().find(|e| e["statement"] == "SELECT 41 + 1 AS answer").unwrap();
    assert_eq!(answer["rows"], json!([["42"]]));
    assert_eq!(entries.last().unwrap()["kind"], "end");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("ana@example.com"), "the masked value is in the timeline");
    assert!(!text.contains(&token), "the token is in the timeline");

    // Pages of any size hand out every entry once; JSON lines stream the same.
    for limit in [1, 2, 1000] {
        assert_eq!(paged(&s, &id, limit).await, entries, "pages of {limit}");
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{id}/timeline.jsonl", s.api))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, entries);

    // Another tenant sees none of it.
    let (status, created) = s.post("/v1/tenants", json!({"name": "tenant-b"})).await;
    assert_eq!(status, 201, "{created}");
    let other = created["admin_token"].as_str().unwrap();
    let (status, page) = get(&s, "/v1/sessions", other).await;
    assert_eq!((status, page["sessions"].as_array().unwrap().len()), (200, 0), "{page}");
    for path in ["", "/timeline", "/timeline.jsonl", "/verify"] {
        let (status, body) = get(&s, &format!("/v1/sessions/{id}{path}"), other).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found");
    }
    // Nor does a token that is not the tenant's admin.
    let (status, _) = get(&s, "/v1/sessions", &token).await;
    assert_eq!(status, 403);

    // The CLI: the list, the replay, the recording's verification.
    let out = airlock(&s, &s.admin, &["sessions", "--principal", "agent-7"]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains(&id) && listed.contains("completed"), "{listed}");
    let out = airlock(&s, &s.admin, &["replay", &id]).await;
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for seen in [
        "SELECT id, email FROM contacts ORDER BY id",
        "| 1  | [redacted] |",
        "DENY",
        "[no-unbounded-writes] DELETE FROM people",
        "ERROR 42501",
        "SELECT 41 + 1 AS answer",
        "END",
    ] {
        assert!(replay.contains(seen), "replay lacks {seen:?}:\n{replay}");
    }
    assert!(!replay.contains("ana@example.com"));
    let out = airlock(&s, &s.admin, &["replay", &id, "--json"]).await;
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, entries);

    let out = airlock(&s, &s.admin, &["verify", &id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("recording intact"));
    // The event log's chain is still what `verify` checks without a session.
    let out = airlock(&s, &s.admin, &["verify"]).await;
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("chain intact"));

    // One changed byte in a stored chunk: verification fails and names it.
    let tenant = s.get_as("/v1/tenants", &s.admin).await[0]["id"].as_str().unwrap().to_owned();
    let chunks = s.dir.join(format!("recorder/recordings/tenants/{tenant}/sessions/{id}/chunks"));
    let mut files: Vec<_> = std::fs::read_dir(&chunks).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let victim = files.last().unwrap().clone();
    let index = files.len() - 1;
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = 65 + (bytes.len() - 65) / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let out = airlock(&s, &s.admin, &["verify", &id]).await;
    assert!(!out.status.success(), "a changed recording verified");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("first bad chunk {index} (")) && stderr.contains(&format!("/chunks/{index:010}")),
        "{stderr}"
    );
    let (_, report) = get(&s, &format!("/v1/sessions/{id}/verify"), &s.admin).await;
    assert_eq!(report["intact"], json!(false));
    assert_eq!(report["first_bad_chunk"]["index"], json!(index));
}
