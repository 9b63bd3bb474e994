//! Session recording through the real gateway: psql in front, Postgres behind,
//! the recorder beside. What the client sent, what it saw (masked), what
//! policy decided; never the token; and no session when it cannot be recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::time::Duration;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1::{self, frame::Body};
use airlock_testkit::eventually;
use support::process::{Proc, TempDir, free_addr, wait_ready};
use support::wire::{bind_binary, bind_binary_of, execute, message, parse, raw_login, read_until_ready, send};
use support::{Recording, Stack, admin_client, sqlstate};

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

/// psql as `user`, stopping at the first error.
async fn psql(s: &Stack, user: &str, token: &str, args: &[&str]) -> std::process::Output {
    s.psql(user, token, &[&["-v", "ON_ERROR_STOP=1"], args].concat()).await
}

/// Every frame of a session, once the recorder has signed its manifest.
async fn frames(recordings: &airlock_recorder::Recordings, tenant: TenantId, session: SessionId) -> Vec<v1::Frame> {
    eventually(Duration::from_secs(20), "the session's recording to be signed", || async {
        matches!(recordings.manifest(tenant, session).await, Ok(Some(_)))
    })
    .await;
    let mut frames = Vec::new();
    let mut from = 1;
    loop {
        let page = recordings.read_frames(tenant, session, from, 1000).await.unwrap();
        frames.extend(page.frames);
        if !page.more {
            return frames;
        }
        from = page.next_seq;
    }
}

/// The bytes each way, in order.
fn streams(frames: &[v1::Frame]) -> (Vec<u8>, Vec<u8>) {
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for f in frames {
        match &f.body {
            Some(Body::ClientBytes(b)) => client.extend_from_slice(b),
            Some(Body::ServerBytes(b)) => server.extend_from_slice(b),
            _ => {}
        }
    }
    (client, server)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A masking rule with a detector.
const MASKED: &str = "version: 1\nmasking:\n  - name: mail\n    columns: [\"public.contacts.email\"]\n    \
                      detectors: [email]\n    strategy: redact\n";

/// A stack with a masking rule with a detector, and the token of `subject`,
/// granted `pg.readwrite`.
async fn masked_stack(subject: &str) -> (Stack, String) {
    masked_stack_under(subject, MASKED).await
}

/// `masked_stack`, under `policy`.
async fn masked_stack_under(subject: &str, policy: &str) -> (Stack, String) {
    let s = Stack::start().await;
    s.apply_policy(policy).await;
    let token = s.token(subject).await;
    s.grant_role(subject, "readwrite", 900).await;
    (s, token)
}

/// A session of `subject`'s under a masking rule with a detector.
async fn masked_session(subject: &str) -> (Stack, tokio_postgres::Client) {
    let (s, token) = masked_stack(subject).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    (s, client)
}

/// The denies recorded in the stack's one session, in order.
async fn recorded_denies(s: &Stack) -> Vec<v1::Decision> {
    let (tenant, opened) = s.opened_sessions(1).await;
    let frames = frames(&s.recordings, tenant, opened[0]).await;
    frames
        .into_iter()
        .filter_map(|f| match f.body {
            Some(Body::Decision(d)) if d.verdict == v1::Verdict::Deny as i32 => Some(d),
            _ => None,
        })
        .collect()
}

/// A binary result the detectors cannot read is refused before its
/// statement runs, and the refusal is recorded as a deny that names the
/// statement and the rule.
#[tokio::test]
async fn a_binary_result_refused_before_it_runs_is_recorded_with_its_statement() {
    let (s, client) = masked_session("agent-8").await;
    // tokio-postgres asks for every result in binary format.
    let sql = "SELECT ARRAY['write to ana@example.com']";
    let e = client.query(sql, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    drop(client);

    let denied = recorded_denies(&s).await;
    let denied = denied.first().expect("the refusal is recorded");
    assert_eq!(denied.rule, "builtin:masked-binary");
    assert_eq!(denied.statement, sql);
    assert!(denied.reason.contains("binary format"), "{}", denied.reason);
}

/// A client that describes the portal itself (once or twice) before its
/// Execute hears of the refusal once, at its first Describe, and the rest of
/// the batch is skipped; it is recorded once, with the statement. A Describe
/// of another portal than the Execute's is recorded with its own portal's
/// statement.
#[tokio::test]
async fn a_refusal_told_at_the_clients_own_describe_is_recorded_once() {
    let (s, token) = masked_stack("agent-10").await;
    let mut stream = raw_login(&s, "pg.readwrite", &token).await;
    let sql = "SELECT ARRAY['write to ana@example.com']";
    send(&mut stream, &[parse("", sql), bind_binary_of(""), message(b'D', b"P\0"), execute("", 0), message(b'S', &[])])
        .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2", "E:42501"]);
    // Described twice: still one refusal, recorded once.
    let twice = "SELECT ARRAY['twice to ana@example.com']";
    let describe = message(b'D', b"P\0");
    send(
        &mut stream,
        &[parse("", twice), bind_binary_of(""), describe.clone(), describe, execute("", 0), message(b'S', &[])],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2", "E:42501"]);
    // Portal p1 cannot be masked: its Describe is refused, and p2's Execute skipped with the batch.
    let other = "SELECT ARRAY['call bo@example.org']";
    let batch = [
        parse("", other),
        bind_binary("p1", ""),
        parse("s2", "SELECT 1"),
        bind_binary("p2", "s2"),
        message(b'D', b"Pp1\0"),
        execute("p2", 0),
        message(b'S', &[]),
    ];
    send(&mut stream, &batch).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2", "1", "2", "E:42501"]);
    drop(stream);

    let denied = recorded_denies(&s).await;
    let denied: Vec<_> = denied.iter().map(|d| (d.rule.as_str(), d.statement.as_str())).collect();
    assert_eq!(
        denied,
        [("builtin:masked-binary", sql), ("builtin:masked-binary", twice), ("builtin:masked-binary", other)]
    );
}

/// A result refused only once its statement ran (a `FETCH` in a simple query
/// from a `BINARY` cursor the gateway did not see declared: a DO block's,
/// where a rule lets blocks run) is recorded as a deny with its statement, as
/// those refused before they run are (a `BINARY` cursor's declaration, a
/// `COPY` in binary format, by their text).
#[tokio::test]
async fn a_binary_result_refused_after_it_ran_is_recorded_with_its_statement() {
    let blocks_allowed =
        format!("{MASKED}commands:\n  - name: blocks\n    match: {{ kinds: [unknown] }}\n    action: allow\n");
    let (s, token) = masked_stack_under("agent-9", &blocks_allowed).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let declare = "DECLARE c BINARY CURSOR FOR SELECT ARRAY['write to ana@example.com']";
    let e = client.batch_execute(declare).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let block = "DO $$BEGIN EXECUTE 'DECLARE c BINARY CURSOR FOR SELECT ARRAY[''write to ana@example.com'']'; END$$";
    client.batch_execute(block).await.unwrap();
    let fetch = "FETCH ALL FROM c";
    let e = client.simple_query(fetch).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Over the extended protocol: refused at its Parse.
    let copy = "COPY (SELECT 'ana@example.com') TO STDOUT (FORMAT binary)";
    let e = client.copy_out(copy).await.err().expect("a binary COPY is refused");
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    drop(client);

    let denied = recorded_denies(&s).await;
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied.iter().all(|d| d.rule == "builtin:masked-binary"), "{denied:?}");
    assert_eq!(denied[0].statement, declare);
    assert!(denied[0].reason.contains("BINARY cursor"), "{}", denied[0].reason);
    assert_eq!(denied[1].statement, fetch);
    assert!(denied[1].reason.contains("binary format"), "{}", denied[1].reason);
    assert_eq!(denied[2].statement, copy);
    assert!(denied[2].reason.contains("COPY in binary format"), "{}", denied[2].reason);
}

#[tokio::test]
async fn a_psql_session_is_recorded_with_its_statements_masked_rows_and_decisions_and_never_the_token() {
    let s = Stack::start().await;
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(
            "CREATE TABLE contacts (id int PRIMARY KEY, email text);
             INSERT INTO contacts VALUES (1, 'ana@example.com');",
        )
        .await
        .unwrap();
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;

    let out = psql(
        &s,
        "pg.readwrite",
        &token,
        &[
            "-c",
            "SELECT id, name FROM people ORDER BY id",
            "-c",
            "SELECT email FROM contacts",
            "-c",
            "DELETE FROM people",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "1|café\n2|Zoë\n[redacted]\n", "{stderr}");
    assert!(stderr.contains("denied by rule no-unbounded-writes"), "{stderr}");

    let (tenant, opened) = s.opened_sessions(1).await;
    assert_eq!(opened.len(), 1);
    let session = opened[0];
    let frames = frames(&s.recordings, tenant, session).await;

    // Signed by the recorder, every chunk in the chain.
    let recorder = s.recorder.as_ref().unwrap();
    let report = s.recordings.verify(tenant, session, &recorder.public_key).await.unwrap();
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.last_seq, frames.last().unwrap().seq);

    // What the client sent, the refused statement too.
    let (client, server) = streams(&frames);
    for sql in ["SELECT id, name FROM people ORDER BY id", "SELECT email FROM contacts", "DELETE FROM people"] {
        assert!(contains(&client, sql.as_bytes()), "client bytes lack {sql:?}");
    }
    // What the client saw: the rows, the masked value and not what it hides, the refusal.
    for seen in ["café", "Zoë", "[redacted]", "denied by rule no-unbounded-writes"] {
        assert!(contains(&server, seen.as_bytes()), "server bytes lack {seen:?}");
    }
    assert!(!contains(&server, b"ana@example.com"), "the masked value was recorded");

    // The decisions, the refusal naming its rule.
    let decisions: Vec<&v1::Decision> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Some(Body::Decision(d)) => Some(d),
            _ => None,
        })
        .collect();
    let denied = decisions.iter().find(|d| d.verdict == v1::Verdict::Deny as i32).expect("a denial is recorded");
    assert_eq!(denied.rule, "no-unbounded-writes");
    assert_eq!(denied.statement, "DELETE FROM people");
    assert!(denied.reason.contains("no-unbounded-writes"), "{}", denied.reason);
    let allowed: Vec<&str> =
        decisions.iter().filter(|d| d.verdict == v1::Verdict::Allow as i32).map(|d| d.statement.as_str()).collect();
    assert!(allowed.contains(&"SELECT email FROM contacts"), "{allowed:?}");

    // The session's end, last.
    match &frames.last().unwrap().body {
        Some(Body::End(end)) => {
            assert_eq!(end.reason, "client closed the session");
            assert_eq!(end.client_bytes, client.len() as u64);
            assert_eq!(end.server_bytes, server.len() as u64);
        }
        other => panic!("the last frame is not the end: {other:?}"),
    }

    // The token is nowhere: recording starts after the password message.
    for f in &frames {
        let text = match &f.body {
            Some(Body::ClientBytes(b) | Body::ServerBytes(b)) => b.to_vec(),
            Some(Body::Decision(d)) => format!("{}{}{}{}", d.statement, d.rule, d.reason, d.approver).into_bytes(),
            Some(Body::End(e)) => e.reason.clone().into_bytes(),
            None => Vec::new(),
        };
        assert!(!contains(&text, token.as_bytes()), "frame {} holds the token", f.seq);
    }
}

#[tokio::test]
async fn a_full_spool_ends_live_sessions_and_refuses_new_ones() {
    let s = Stack::start_with(None, Recording::Unreachable { spool_max_bytes: 16 << 10, strict: false }).await;
    let token = s.token("agent-7").await;
    s.grant("agent-7", 900).await;
    let idle = s.connect("pg.readonly", &token).await.unwrap();
    let busy = s.connect("pg.readonly", &token).await.unwrap();
    let n: i64 = busy.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);

    // The recorder is unreachable: a large result fills the spool, and ends the session that asked for it.
    let e = busy.simple_query("SELECT repeat('x', 100000)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53000");
    assert_eq!(e.as_db_error().unwrap().message(), "session recording is unavailable (the recording spool is full)");
    // ... and the idle one too, told why.
    eventually(Duration::from_secs(5), "the idle session to be ended", || async { idle.is_closed() }).await;

    // A new session is refused with a clear error, over psql as over tokio-postgres.
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53000");
    assert_eq!(e.as_db_error().unwrap().message(), "session recording is unavailable (the recording spool is full)");
    let out = psql(&s, "pg.readonly", &token, &["-c", "SELECT 1"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session recording is unavailable (the recording spool is full)"), "{stderr}");
}

#[tokio::test]
async fn in_strict_mode_a_statement_runs_only_once_the_recorder_stored_it() {
    // With the recorder: sessions work, and their recording is whole.
    let s = Stack::start_with(None, Recording::Strict).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let out = psql(
        &s,
        "pg.readwrite",
        &token,
        &["-c", "INSERT INTO people VALUES (3, 'Ida')", "-c", "SELECT name FROM people WHERE id = 3"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "INSERT 0 1\nIda\n", "{}", String::from_utf8_lossy(&out.stderr));
    let (tenant, opened) = s.opened_sessions(1).await;
    let frames = frames(&s.recordings, tenant, opened[0]).await;
    let (client, server) = streams(&frames);
    assert!(contains(&client, b"INSERT INTO people VALUES (3, 'Ida')"));
    assert!(contains(&server, b"Ida"));
    let report = s.recordings.verify(tenant, opened[0], &s.recorder.as_ref().unwrap().public_key).await.unwrap();
    assert!(report.is_valid(), "{report}");

    // Without it: the statement never reaches the target, and the session ends.
    let s = Stack::start_with(None, Recording::Unreachable { spool_max_bytes: 1 << 20, strict: true }).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    let e = client.simple_query("INSERT INTO people VALUES (3, 'Ida')").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53000");
    assert!(e.as_db_error().unwrap().message().contains("did not store the statement in time"), "{e}");
    let admin = admin_client(s.db.url()).await;
    let n: i64 = admin.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "the unrecorded statement ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_killed_mid_session_loses_nothing_once_it_is_back() {
    // `airlock recorder` as a process of its own, killed with SIGKILL while a
    // session runs, then started again on the same store.
    let dir = TempDir::new();
    let addr = free_addr();
    let args = ["recorder", "--addr", &addr.to_string()];
    let env = [("AIRLOCK_DATA_DIR", dir.0.display().to_string()), ("AIRLOCK_WORKER__TOKEN", "w".to_owned())];
    let mut recorder = Proc::spawn("recorder", &dir.0, &args, &env);
    wait_ready(&format!("http://{addr}/healthz")).await;
    let s = Stack::start_with(None, Recording::External { url: format!("http://{addr}") }).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    client.simple_query("INSERT INTO people VALUES (10, 'before the kill')").await.unwrap();

    recorder.kill();
    // The session goes on: its frames wait in the worker's spool.
    client.simple_query("INSERT INTO people VALUES (11, 'while it is down')").await.unwrap();
    let mut recorder = Proc::spawn("recorder-again", &dir.0, &args, &env);
    wait_ready(&format!("http://{addr}/healthz")).await;
    client.simple_query("INSERT INTO people VALUES (12, 'once it is back')").await.unwrap();
    drop(client);

    let (tenant, opened) = s.opened_sessions(1).await;
    let session = opened[0];
    let config = airlock_recorder::Config { data_dir: Some(dir.0.join("recorder")), ..Default::default() };
    let recordings = airlock_recorder::Recordings::open(&config).unwrap();
    let frames = frames(&recordings, tenant, session).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "every frame, in order");
    let (client_bytes, _) = streams(&frames);
    for row in ["before the kill", "while it is down", "once it is back"] {
        assert!(contains(&client_bytes, row.as_bytes()), "{row} is not in the recording");
    }
    let key = airlock_recorder::Signer::load(&config.signing_key_file()).unwrap().verifying_key();
    let report = recordings.verify(tenant, session, &key).await.unwrap();
    assert!(report.is_valid(), "{report}");
    // The spool drained: the closed session's file goes once the worker hears it closed.
    let spool = s.dir.join("spool");
    eventually(Duration::from_secs(20), "the session's spool file to be deleted", || async {
        std::fs::read_dir(&spool)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().contains(&session.to_string()))
    })
    .await;
    recorder.kill();
}
