//! Command rules on the data path: statements denied or held for review by
//! the tenant's policy, through real clients (psql and tokio-postgres).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use airlock_testkit::eventually;
use serde_json::{Value, json};
use support::{Stack, admin_client, sqlstate, wire};

const POLICY: &str = r#"
version: 1
commands:
  - name: ddl-needs-dba
    match: { kinds: [ddl] }
    action: { review: { approvers: { groups: [dba] }, timeout: 10m } }
  - name: no-unbounded-writes
    match: { unbounded_write: true }
    action: deny
"#;

/// psql with one command, off the runtime's thread.
fn psql(s: &Stack, token: &str, sql: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = Command::new("psql");
    cmd.arg(format!("host=127.0.0.1 port={} user=pg.readwrite dbname={} sslmode=require", s.pg.port(), s.db.name()))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .env("PGPASSWORD", token);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
}

/// A stack with `policy`, the agent's token (with a readwrite grant) and a DBA's.
async fn setup(policy: &str) -> (Stack, String, String) {
    let s = Stack::start().await;
    s.apply_policy(policy).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let alice = s.token_in("alice", &["dba"]).await;
    (s, agent, alice)
}

/// Decides review `id` as `token`.
async fn decide(s: &Stack, token: &str, id: &str, body: Value) -> (u16, Value) {
    s.post_as(&format!("/v1/reviews/{id}/decision"), token, body).await
}

/// Lets the readwrite template create tables (Postgres 15 takes that from PUBLIC).
async fn allow_create(s: &Stack) {
    let admin = admin_client(s.db.url()).await;
    admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}_rw", s.template)).await.unwrap();
}

async fn columns(s: &Stack, table: &str) -> Vec<String> {
    let admin = admin_client(s.db.url()).await;
    let rows = admin
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY 1", &[&table])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_held_statement_runs_once_when_approved_and_not_at_all_when_denied() {
    let (s, agent, alice) = setup(POLICY).await;

    allow_create(&s).await;

    let waiting = psql(&s, &agent, "CREATE TABLE notes (id int, body text)");
    let review = s.pending_review(&alice).await;
    assert_eq!(review["kind"], "command");
    assert_eq!(review["rule"], "ddl-needs-dba");
    assert_eq!(review["requester"], "agent-7");
    assert_eq!(review["statement"], "CREATE TABLE notes (id int, body text)");
    let id = review["id"].as_str().unwrap().to_owned();
    // The requester cannot approve their own statement.
    let (status, body) = decide(&s, &agent, &id, json!({"approve": true})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "agent-7 requested this and cannot review their own request");
    let (status, body) = decide(&s, &alice, &id, json!({"approve": true, "comment": "ok"})).await;
    assert_eq!(status, 200, "{body}");
    let out = waiting.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Ran exactly once: a second CREATE TABLE would have failed the command.
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr.contains(&format!("NOTICE:  statement held for review {id} by rule ddl-needs-dba")),
        "the client is told what it waits for: {stderr}"
    );
    assert!(stderr.contains(&format!("airlock approve {id}")), "{stderr}");
    assert_eq!(columns(&s, "notes").await, ["body", "id"]);

    // The same kind of statement again is a new review: an approval covers one statement.
    let waiting = psql(&s, &agent, "CREATE TABLE notes2 (id int)");
    let review = s.pending_review(&alice).await;
    assert_ne!(review["id"], id.as_str());
    let id = review["id"].as_str().unwrap().to_owned();
    let (status, _) = decide(&s, &alice, &id, json!({"approve": false, "comment": "not in prod"})).await;
    assert_eq!(status, 200);
    let out = waiting.await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("review {id} was denied by alice: not in prod")), "{stderr}");
    assert!(columns(&s, "notes2").await.is_empty(), "nothing changed in the database");
}

#[tokio::test]
async fn an_approval_for_the_grant_lets_identical_statements_through() {
    let (s, agent, alice) = setup(POLICY).await;
    allow_create(&s).await;

    let sql = "CREATE TABLE IF NOT EXISTS scratch (id int)";
    let first = psql(&s, &agent, sql);
    let review = s.pending_review(&alice).await;
    let id = review["id"].as_str().unwrap();
    let (status, body) = decide(&s, &alice, id, json!({"approve": true, "scope": "grant"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(first.await.unwrap().status.success());
    s.settle().await;
    // Identical: no new review. (Not even whitespace may differ: it can end a comment.)
    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    client.batch_execute(sql).await.unwrap();
    let list = s.get_as("/v1/reviews?pending_for_me=true", &alice).await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    // A different statement is held again.
    let other = tokio::spawn({
        let client = s.connect("pg.readwrite", &agent).await.unwrap();
        async move { client.batch_execute("CREATE TABLE IF NOT EXISTS other (id int)").await }
    });
    let review = s.pending_review(&alice).await;
    assert_eq!(review["statement"], "CREATE TABLE IF NOT EXISTS other (id int)");
    let id = review["id"].as_str().unwrap();
    decide(&s, &alice, id, json!({"approve": false})).await;
    assert_eq!(sqlstate(&other.await.unwrap().unwrap_err()), "42501");
}

#[tokio::test]
async fn a_denied_statement_aborts_the_transaction_like_any_failed_statement() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &agent).await.unwrap();

    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("UPDATE people SET name = 'x' WHERE id = 1").await.unwrap();
    let e = client.batch_execute("DELETE FROM people").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.message(), "permission denied: denied by rule no-unbounded-writes");
    assert_eq!(db.detail(), Some("rule: no-unbounded-writes"));
    // Postgres itself now refuses everything until the transaction ends.
    let e = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let name: String = client.query_one("SELECT name FROM people WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(name, "café", "the update before the refusal was rolled back");

    // Several statements in one query cannot be checked one by one: refused.
    let e = client.batch_execute("SELECT 1; SELECT 2").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:one-statement-per-query"));
}

#[tokio::test]
async fn a_refusal_in_a_pipeline_fails_that_query_only() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    // Issued together: three Parse/Bind/Execute/Sync batches before the first answer.
    for _ in 0..5 {
        let (a, b, c) = tokio::join!(
            client.query_one("SELECT 1", &[]),
            client.execute("DELETE FROM people", &[]),
            client.query_one("SELECT name FROM people WHERE id = 2", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 1);
        let e = b.unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
        assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: no-unbounded-writes"));
        assert_eq!(c.unwrap().get::<_, String>(0), "Zoë");
    }
    let n: i64 = client.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_statement_nobody_reviews_in_time_is_refused() {
    let s = Stack::start().await;
    s.apply_policy(
        r#"
version: 1
commands:
  - name: ddl-needs-dba
    match: { kinds: [ddl, dcl] }
    action: { review: { approvers: { groups: [dba] }, timeout: 1s } }
"#,
    )
    .await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    allow_create(&s).await;
    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    let e = client.batch_execute("CREATE TABLE late (id int)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(message.ends_with("was not decided in time; the statement did not run"), "{message}");
    assert!(columns(&s, "late").await.is_empty());
    // The control plane recorded the expiry, and the session goes on.
    let reviews = s.get_as("/v1/reviews", &s.admin).await;
    assert_eq!(reviews[0]["state"], "expired");
    client.batch_execute("SELECT 1").await.unwrap();

    // A held statement's password reaches neither approvers nor the log.
    let e = client.batch_execute("ALTER ROLE nobody_at_all PASSWORD 'hunter2'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let reviews = s.get_as("/v1/reviews", &s.admin).await;
    assert_eq!(reviews[0]["statement"], "ALTER ROLE nobody_at_all PASSWORD '<redacted>'");
    let events = s.get_as("/v1/events?from_seq=1&limit=1000", &s.admin).await;
    assert!(!events.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_prepared_statement_is_held_at_each_execution_with_its_parameters() {
    let (s, agent, alice) = setup(POLICY).await;
    allow_create(&s).await;
    let client = std::sync::Arc::new(s.connect("pg.readwrite", &agent).await.unwrap());
    // Preparing runs nothing, so it is not held.
    let statement = client.prepare("CREATE TABLE IF NOT EXISTS prepared_t (id int)").await.unwrap();

    let run = |client: std::sync::Arc<tokio_postgres::Client>, statement: tokio_postgres::Statement| {
        tokio::spawn(async move { client.execute(&statement, &[]).await })
    };
    let first = run(client.clone(), statement.clone());
    let review = s.pending_review(&alice).await;
    assert_eq!(review["statement"], "CREATE TABLE IF NOT EXISTS prepared_t (id int)");
    let id = review["id"].as_str().unwrap().to_owned();
    decide(&s, &alice, &id, json!({"approve": true})).await;
    first.await.unwrap().unwrap();
    assert_eq!(columns(&s, "prepared_t").await, ["id"]);

    // The approval covered that execution only: running it again is a new review.
    let second = run(client.clone(), statement);
    let review = s.pending_review(&alice).await;
    assert_ne!(review["id"], id.as_str());
    let id = review["id"].as_str().unwrap();
    decide(&s, &alice, id, json!({"approve": false})).await;
    assert_eq!(sqlstate(&second.await.unwrap().unwrap_err()), "42501");
    client.query_one("SELECT 1", &[]).await.unwrap();

    // Parameters are shown to approvers with the statement.
    let update = client.prepare("UPDATE people SET name = $1 WHERE id = $2 RETURNING id").await.unwrap();
    s.apply_policy(
        r#"
version: 1
commands:
  - name: writes-need-review
    match: { kinds: [write] }
    action: { review: { approvers: { groups: [dba] } } }
"#,
    )
    .await;
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.query(&update, &[&"Zed", &2i32]).await }
    });
    let review = s.pending_review(&alice).await;
    assert_eq!(
        review["statement"],
        "UPDATE people SET name = $1 WHERE id = $2 RETURNING id\n-- parameters: $1 = 'Zed', $2 = <4 bytes>"
    );
    let id = review["id"].as_str().unwrap();
    decide(&s, &alice, id, json!({"approve": true})).await;
    assert_eq!(held.await.unwrap().unwrap().len(), 1, "a statement prepared before the policy changed is held too");
}

#[tokio::test]
async fn a_session_that_reads_strings_differently_is_refused_where_rules_apply() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let mut config: tokio_postgres::Config = s.url("pg.readwrite", &agent).parse().unwrap();
    config.options("-c standard_conforming_strings=off");
    // With backslash escapes on, 'a\' , ' is one string to the server and not to a
    // standard SQL reader: such a session is not let in.
    let Err(e) = config.connect(tokio_postgres::NoTls).await else {
        panic!("a session reading strings differently was let in");
    };
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:session-lexing"));

    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    let e = client.batch_execute("SET standard_conforming_strings = off").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:session-lexing"));
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_statement_too_complex_to_check_is_refused_and_the_worker_lives() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    // 40,000 terms: as a tree, deeper than any thread's stack could walk.
    let flat = format!("SELECT {}1", "1 + ".repeat(40_000));
    let e = client.batch_execute(&flat).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:unreadable-statement"));
    assert!(e.as_db_error().unwrap().message().contains("too many to check"), "{e}");
    // The same worker serves the session and new ones.
    client.batch_execute("SELECT 1").await.unwrap();
    s.connect("pg.readwrite", &agent).await.unwrap().batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_cancel_ends_the_wait_for_review_and_the_statement_never_runs() {
    let (s, agent, alice) = setup(POLICY).await;
    allow_create(&s).await;
    let client = std::sync::Arc::new(s.connect("pg.readwrite", &agent).await.unwrap());
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.batch_execute("CREATE TABLE cancelled_t (id int)").await }
    });
    let review = s.pending_review(&alice).await;
    let id = review["id"].as_str().unwrap().to_owned();
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = held.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    // The review is withdrawn: nobody is asked to decide what can no longer run.
    eventually(Duration::from_secs(10), "the review to be withdrawn", || async {
        s.get_as(&format!("/v1/reviews/{id}"), &alice).await["state"] == "withdrawn"
    })
    .await;
    let (status, _) = decide(&s, &alice, &id, json!({"approve": true})).await;
    assert_eq!(status, 409);
    client.batch_execute("SELECT 1").await.unwrap();
    assert!(columns(&s, "cancelled_t").await.is_empty());
}

/// A session whose grant is revoked while a statement waits for review ends,
/// and its review is withdrawn: no approver is left asked to decide a
/// statement that can no longer run.
#[tokio::test]
async fn a_review_whose_session_ends_is_withdrawn() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    let grant = s.grant_role("agent-7", "readwrite", 900).await;
    let alice = s.token_in("alice", &["dba"]).await;
    allow_create(&s).await;
    let waiting = psql(&s, &agent, "CREATE TABLE never_decided (id int)");
    let review = s.pending_review(&alice).await;
    let id = review["id"].as_str().unwrap().to_owned();
    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
    assert_eq!(status, 200);
    let out = waiting.await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"), "{out:?}");
    eventually(Duration::from_secs(10), "the review to be withdrawn", || async {
        s.get_as(&format!("/v1/reviews/{id}"), &alice).await["state"] == "withdrawn"
    })
    .await;
    assert!(columns(&s, "never_decided").await.is_empty());
}

/// A statement held for review while a long row of an earlier statement is
/// still on its way to the client (rows over 1 MiB go on as they arrive):
/// the row reaches the client whole, and the notice that the statement is
/// held comes after it, never inside it, where the client would read it as
/// the row's data and the row's end as messages. Several rounds: which of
/// the client's message and the rest of the row the gateway reads first
/// varies from round to round.
#[tokio::test]
async fn the_notice_of_a_hold_never_lands_inside_a_long_row() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LONG: usize = 8_000_000;
    let (s, agent, alice) = setup(POLICY).await;
    let mut stream = wire::raw_login(&s, "pg.readwrite", &agent).await;
    for round in 0..4 {
        stream.write_all(&wire::query(&format!("SELECT repeat('x', {LONG})"))).await.unwrap();
        assert_eq!(wire::read_message(&mut stream).await.0, b'T');
        assert_eq!(stream.read_u8().await.unwrap(), b'D');
        let len = usize::try_from(stream.read_i32().await.unwrap()).unwrap() - 4;
        assert_eq!(len, 2 + 4 + LONG);
        // The row's start has arrived: the gateway is passing it on.
        let mut row = vec![0u8; len];
        stream.read_exact(&mut row[..64 << 10]).await.unwrap();
        stream.write_all(&wire::query(&format!("CREATE TABLE held_{round} (x int)"))).await.unwrap();
        stream.read_exact(&mut row[64 << 10..]).await.unwrap();
        assert_eq!(row[..6], [0, 1, 0x00, 0x7a, 0x12, 0x00], "one column of {LONG} bytes");
        let stray = row[6..].iter().position(|b| *b != b'x');
        assert_eq!(stray, None, "round {round}: the row's data was cut into");
        // Then the end of the SELECT and the notice of the hold: at the
        // row's end when the row was still on its way as the statement was
        // held, else after the SELECT's end. The review is denied.
        let (mut seen, mut noticed) = (Vec::new(), false);
        loop {
            let (tag, body) =
                tokio::time::timeout(Duration::from_secs(10), wire::read_message(&mut stream)).await.unwrap();
            match tag {
                b'N' => {
                    assert!(String::from_utf8_lossy(&body).contains("held for review"), "round {round}");
                    noticed = true;
                    seen.push("N".to_owned());
                }
                b'Z' => seen.push(format!("Z:{}", body[0] as char)),
                _ => seen.push((tag as char).to_string()),
            }
            if noticed && seen.iter().any(|t| t.starts_with('Z')) {
                break;
            }
        }
        assert!(seen == ["N", "C", "Z:I"] || seen == ["C", "Z:I", "N"], "round {round}: {seen:?}");
        let review = s.pending_review(&alice).await;
        let (status, body) = decide(&s, &alice, review["id"].as_str().unwrap(), json!({"approve": false})).await;
        assert_eq!(status, 200, "{body}");
        let (seen, status) = wire::read_until_ready(&mut stream).await;
        assert_eq!((seen, status), (vec!["E:42501".to_owned()], b'I'), "round {round}");
    }
}

/// The control plane is slow to open a statement's review (the link to it
/// holds what the worker sends): the client's cancel meanwhile answers at
/// once, the session goes on, and the review, once the control plane opens
/// it, is withdrawn rather than left in approvers' inboxes.
#[tokio::test]
async fn a_cancel_while_a_review_opens_answers_at_once_and_the_review_is_withdrawn() {
    let s = Stack::start_with_control_plane_link().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let alice = s.token_in("alice", &["dba"]).await;
    allow_create(&s).await;
    let client = std::sync::Arc::new(s.connect("pg.readwrite", &agent).await.unwrap());
    client.simple_query("SELECT 1").await.unwrap();
    s.opened_sessions(1).await;
    let link = s.control_plane_link.as_ref().unwrap();
    link.pause();
    let paused_at = std::time::Instant::now();
    let mut held = tokio::spawn({
        let client = client.clone();
        async move { client.batch_execute("CREATE TABLE cancelled_early (id int)").await }
    });
    // A cancel that comes before the statement is held finds nothing to
    // cancel, as a cancel of a statement not yet running does: the client
    // sends it again until the statement ends.
    let cancelling = client.cancel_token();
    let e = loop {
        cancelling.cancel_query(tokio_postgres::NoTls).await.unwrap();
        tokio::select! {
            ended = &mut held => break ended.unwrap().unwrap_err(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert!(paused_at.elapsed() < Duration::from_secs(20), "the statement never ended");
    };
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    let took = paused_at.elapsed();
    assert!(took < Duration::from_secs(5), "the cancel took {took:?}: it waited for the review's opening");
    client.batch_execute("SELECT 1").await.unwrap();
    let opened = s.get_as("/v1/reviews", &alice).await;
    assert_eq!(opened, json!([]), "the review's opening was held on its way to the control plane");

    link.resume();
    eventually(Duration::from_secs(20), "the late review to be withdrawn", || async {
        let reviews = s.get_as("/v1/reviews", &alice).await;
        reviews
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["statement"] == "CREATE TABLE cancelled_early (id int)" && r["state"] == "withdrawn")
    })
    .await;
    assert!(columns(&s, "cancelled_early").await.is_empty());
}

/// The control plane stops answering while a statement's review opens: a
/// revocation meanwhile (the bus still carries it) ends the session within
/// a second, as it does while a review waits, and not once opening the
/// review has timed out.
#[tokio::test]
async fn a_revocation_while_a_review_opens_ends_the_session_at_once() {
    let s = Stack::start_with_control_plane_link().await;
    s.apply_policy(POLICY).await;
    let agent = s.token("agent-7").await;
    let grant = s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &agent).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    // The session's opening has reached the control plane; from here the
    // worker's calls to it go unanswered.
    s.opened_sessions(1).await;
    let link = s.control_plane_link.as_ref().unwrap();
    link.stall();
    // The statement's review opens on a connection the control plane's side
    // never answers. (The first call after the stall may instead fail at
    // once on the connection the stall reset: the statement is refused, and
    // sent again.)
    let client = std::sync::Arc::new(client);
    let mut held = None;
    for _ in 0..3 {
        let (sending, before) = (client.clone(), link.stalled());
        let task = tokio::spawn(async move { sending.batch_execute("CREATE TABLE never_opened (x int)").await });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.stalled() == before && !task.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the review's opening never reached the control plane");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if link.stalled() > before && !task.is_finished() {
            held = Some(task);
            break;
        }
        let refused = task.await.unwrap().unwrap_err();
        let said = refused.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(said.contains("could not be opened"), "{refused}: {said}");
    }
    let held = held.expect("a review's opening waiting on the control plane");
    let revoked_at = std::time::Instant::now();
    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
    assert_eq!(status, 200);
    let e = tokio::time::timeout(Duration::from_secs(20), held).await.unwrap().unwrap().unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("revoked")) || client.is_closed(), "{e}");
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "the session outlived its grant by {took:?} while the review opened");
}
