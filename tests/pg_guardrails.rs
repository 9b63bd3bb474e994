//! Statement rules against an adversarial client, through the real gateway to
//! the real Postgres: each statement's outcome as the client sees it, and for
//! each refusal, proof that nothing changed in the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use support::{Stack, admin_client, sqlstate, wire};

const POLICY: &str = r#"
version: 1
commands:
  - name: no-schema-or-privilege-changes
    match: { kinds: [ddl, dcl, admin] }
    action: deny
  - name: no-unbounded-writes
    match: { unbounded_write: true }
    action: deny
"#;

/// What a statement must come to: run, or be refused by the named rule.
enum Expect {
    Runs,
    Refused(&'static str),
}
use Expect::{Refused, Runs};

const CASES: &[(&str, Expect)] = &[
    // Unbounded writes, however they are spelled.
    ("DELETE FROM people", Refused("no-unbounded-writes")),
    ("DELETE FROM people WHERE 1 = 1", Refused("no-unbounded-writes")),
    ("DELETE FROM people WHERE true", Refused("no-unbounded-writes")),
    ("DELETE FROM people WHERE id = 1 OR true", Refused("no-unbounded-writes")),
    ("DELETE FROM people WHERE (id = id)", Refused("no-unbounded-writes")),
    ("UPDATE people SET name = 'x'", Refused("no-unbounded-writes")),
    ("UPDATE people SET name = 'x' WHERE 'a' = 'a'", Refused("no-unbounded-writes")),
    ("delete/* a comment */from people", Refused("no-unbounded-writes")),
    ("DELETE /* nested /* block */ comment */ FROM people", Refused("no-unbounded-writes")),
    ("DeLeTe FrOm PEOPLE", Refused("no-unbounded-writes")),
    ("DELETE\n\tFROM\r\n  people", Refused("no-unbounded-writes")),
    ("TRUNCATE people", Refused("no-unbounded-writes")),
    ("WITH d AS (DELETE FROM people RETURNING *) SELECT count(*) FROM d", Refused("no-unbounded-writes")),
    ("SELECT 1 FROM (WITH d AS (DELETE FROM people RETURNING 1) SELECT * FROM d) s", Refused("no-unbounded-writes")),
    ("EXPLAIN ANALYZE DELETE FROM people", Refused("no-unbounded-writes")),
    ("EXPLAIN (ANALYZE) DELETE FROM people", Refused("no-unbounded-writes")),
    ("COPY (DELETE FROM people RETURNING *) TO STDOUT", Refused("no-unbounded-writes")),
    ("PREPARE wipe AS DELETE FROM people", Refused("no-unbounded-writes")),
    ("EXECUTE wipe", Refused("builtin:unknown-statement")),
    // Several statements in one query.
    ("SELECT 1; DELETE FROM people", Refused("builtin:one-statement-per-query")),
    ("SELECT 1; SELECT 2", Refused("builtin:one-statement-per-query")),
    ("BEGIN; DELETE FROM people WHERE id = 1; COMMIT", Refused("builtin:one-statement-per-query")),
    ("SELECT 1;DELETE FROM people;--", Refused("builtin:one-statement-per-query")),
    // Schema and privilege changes.
    ("DROP TABLE people", Refused("no-schema-or-privilege-changes")),
    ("drop table \"people\"", Refused("no-schema-or-privilege-changes")),
    ("CREATE TABLE other (id int)", Refused("no-schema-or-privilege-changes")),
    ("ALTER TABLE people ADD COLUMN c int", Refused("no-schema-or-privilege-changes")),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM people RETURNING 1'",
        Refused("no-schema-or-privilege-changes"),
    ),
    ("SELECT * INTO people_copy FROM people", Refused("no-schema-or-privilege-changes")),
    ("GRANT SELECT ON people TO PUBLIC", Refused("no-schema-or-privilege-changes")),
    ("SET ROLE postgres", Refused("no-schema-or-privilege-changes")),
    ("SET SESSION AUTHORIZATION postgres", Refused("no-schema-or-privilege-changes")),
    ("SET role = 'postgres'", Refused("no-schema-or-privilege-changes")),
    ("SET session_authorization TO 'postgres'", Refused("no-schema-or-privilege-changes")),
    ("VACUUM people", Refused("no-schema-or-privilege-changes")),
    ("ANALYZE people", Refused("no-schema-or-privilege-changes")),
    ("ALTER SYSTEM SET work_mem = '1MB'", Refused("no-schema-or-privilege-changes")),
    // What the gateway cannot follow.
    ("DO $$BEGIN DELETE FROM people; END$$", Refused("builtin:unknown-statement")),
    ("DO 'BEGIN DELETE FROM people; END'", Refused("builtin:unknown-statement")),
    ("SELEC 1", Refused("builtin:unreadable-statement")),
    // Files, programs, other sessions.
    ("COPY people TO PROGRAM 'id'", Refused("builtin:copy-program")),
    ("COPY (SELECT 1) TO PROGRAM 'id'", Refused("builtin:copy-program")),
    ("SELECT pg_read_file('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT * FROM pg_read_file('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT PG_READ_FILE('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT pg_catalog.pg_read_file('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT \"pg_read_file\"('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT lo_import('/etc/passwd')", Refused("builtin:denied-function")),
    ("SELECT pg_terminate_backend(pg_backend_pid())", Refused("builtin:denied-function")),
    ("SELECT length(pg_read_binary_file('/etc/hostname'))", Refused("builtin:denied-function")),
    // Changing who the session is, or how it reads text.
    ("SELECT set_config('role', 'postgres', false)", Refused("builtin:denied-function")),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", Refused("builtin:session-lexing")),
    ("SET standard_conforming_strings = off", Refused("builtin:session-lexing")),
    ("SET client_encoding = 'SJIS'", Refused("builtin:session-lexing")),
    ("SET NAMES 'GBK'", Refused("builtin:session-lexing")),
    (
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        Refused("builtin:session-lexing"),
    ),
    // Reads, and writes that name their rows: these run.
    ("SELECT * FROM people", Runs),
    ("SELECT name FROM people WHERE id = 1", Runs),
    ("select $$DELETE FROM people$$", Runs),
    ("SELECT $x$; DELETE FROM people; $x$", Runs),
    ("SELECT 'DROP TABLE people'", Runs),
    ("SELECT 1 -- ; DELETE FROM people", Runs),
    ("/* DELETE FROM people; */ SELECT 1", Runs),
    ("SELECT E'\\'; DELETE FROM people; --'", Runs),
    ("SELECT U&'\\0044ELETE FROM people'", Runs),
    ("SELECT * FROM people FOR NO KEY UPDATE", Runs),
    ("TABLE people", Runs),
    ("UPDATE people SET name = name WHERE id = 1", Runs),
    ("DELETE FROM people WHERE id = 999", Runs),
    ("LISTEN channel_a", Runs),
    ("NOTIFY channel_a", Runs),
    ("SET statement_timeout = '5s'", Runs),
];

/// Everything a refused statement could have changed.
async fn snapshot(s: &Stack) -> String {
    let admin = admin_client(s.db.url()).await;
    let row = admin
        .query_one(
            "SELECT (SELECT coalesce(string_agg(id || ':' || name, ',' ORDER BY id), '') FROM people)
                 || ' | ' || (SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public')",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn adversarial_statements_are_refused_and_change_nothing() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    let mut failures = Vec::new();
    for (sql, expect) in CASES {
        let before = snapshot(&s).await;
        let outcome = client.batch_execute(sql).await;
        match (expect, outcome) {
            (Runs, Ok(())) => {}
            (Runs, Err(e)) => failures.push(format!("{sql:?} should run: {e:?}")),
            (Refused(rule), Ok(())) => failures.push(format!("{sql:?} ran; rule {rule} should refuse it")),
            (Refused(rule), Err(e)) => {
                let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_owned();
                if sqlstate(&e) != "42501" || !detail.contains(rule) {
                    failures.push(format!("{sql:?}: expected 42501 by {rule}, got {} {detail:?}", sqlstate(&e)));
                }
                let after = snapshot(&s).await;
                if after != before {
                    failures.push(format!("{sql:?} was refused but changed the database: {before} -> {after}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    assert!(CASES.len() >= 60);
}

#[tokio::test]
async fn the_extended_protocol_is_held_to_the_same_rules() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    let before = snapshot(&s).await;
    let e = client.execute("DELETE FROM people", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: no-unbounded-writes"));
    let e = client.query("SELECT pg_read_file($1)", &[&"/etc/passwd"]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:denied-function"));
    let e = client.execute("UPDATE people SET name = $1 WHERE $2 = $2", &[&"x", &1i32]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: no-unbounded-writes"));
    assert_eq!(snapshot(&s).await, before);
    let n = client.execute("UPDATE people SET name = $1 WHERE id = $2", &[&"Zoë", &2i32]).await.unwrap();
    assert_eq!(n, 1);
}

/// A DO block, where a policy lets statements of unknown kind run, may
/// replace a prepared statement by SQL, its body in dollar quotes or in
/// single quotes: the gateway forgets what it knew of the session's
/// statements, and a Bind of the replaced one is refused instead of running
/// what the block prepared under the old name.
#[tokio::test]
async fn a_do_block_that_replaces_a_prepared_statement_leaves_it_unknown() {
    let s = Stack::start().await;
    s.apply_policy(&format!(
        "{POLICY}  - name: blocks-allowed\n    match: {{ kinds: [unknown] }}\n    action: allow\n"
    ))
    .await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let mut stream = wire::raw_login(&s, "pg.readwrite", &token).await;
    let before = snapshot(&s).await;
    let sync = wire::message(b'S', &[]);
    for (n, block) in [
        "DO $$BEGIN EXECUTE 'DEALLOCATE s1'; EXECUTE 'PREPARE s1 AS DELETE FROM people'; END$$",
        "DO 'BEGIN EXECUTE ''DEALLOCATE s2''; EXECUTE ''PREPARE s2 AS DELETE FROM people''; END'",
        "DO E'BEGIN EXECUTE \\'DEALLOCATE s3\\'; EXECUTE \\'PREPARE s3 AS DELETE FROM people\\'; END'",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("s{}", n + 1);
        wire::send(&mut stream, &[wire::parse(&name, "SELECT 1"), sync.clone()]).await;
        assert!(answers(&mut stream).await.is_empty(), "{name} prepared");
        wire::send(&mut stream, &[wire::query(block)]).await;
        assert!(answers(&mut stream).await.is_empty(), "the block runs: {block}");
        let run = [wire::bind("", &name, &[]), wire::execute("", 0), sync.clone()];
        wire::send(&mut stream, &run).await;
        let seen = answers(&mut stream).await;
        assert_eq!(seen.len(), 1, "{block}: {seen:?}");
        assert!(seen[0].starts_with("E:42501 rule: builtin:unknown-statement"), "{block}: {seen:?}");
        assert_eq!(snapshot(&s).await, before, "{block}");
    }
}

/// A setting made in the startup message (here libpq's `options`, as
/// `PGOPTIONS` sends it) is held to the rules a `SET` would be: `role` is a
/// change of who the session is, refused before the session starts.
#[tokio::test]
async fn settings_in_the_startup_message_are_held_to_the_same_rules() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let connect = |options: &'static str| {
        let url = format!("{} options='{options}'", s.url("pg.readwrite", &token));
        async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        }
    };

    for (options, rule) in [
        ("-c role=postgres", "no-schema-or-privilege-changes"),
        ("--role=postgres", "no-schema-or-privilege-changes"),
        ("-c statement_timeout=5s -csession_authorization=postgres", "no-schema-or-privilege-changes"),
        ("-c standard_conforming_strings=off", "builtin:session-lexing"),
    ] {
        let e = connect(options).await.err().unwrap_or_else(|| panic!("{options:?} was let in"));
        let db = e.as_db_error().unwrap_or_else(|| panic!("{options:?}: {e}"));
        assert_eq!((db.code().code(), db.detail()), ("42501", Some(format!("rule: {rule}").as_str())), "{options:?}");
        assert!(db.message().starts_with("startup setting "), "{options:?}: {}", db.message());
    }
    let e = connect("-d 5").await.expect_err("a switch that is not a setting was let in");
    assert!(e.as_db_error().unwrap().message().contains("not a setting"), "{e}");

    // Settings the rules allow are made, presentation ones without asking.
    let client = connect(r"-c statement_timeout=5s -c search_path=public -c DateStyle=German").await.unwrap();
    let row = client.query_one("SELECT current_setting('statement_timeout'), current_setting('DateStyle')", &[]).await;
    let row = row.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("5s".to_owned(), "German, DMY".to_owned()));
}

/// Reads backend messages up to ReadyForQuery: each error as its SQLSTATE
/// and detail, each row's first column.
async fn answers(stream: &mut tokio::net::TcpStream) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let (tag, body) =
            tokio::time::timeout(std::time::Duration::from_secs(30), wire::read_message(stream)).await.unwrap();
        let field = |name: u8| {
            body.split(|b| *b == 0)
                .find_map(|f| f.strip_prefix(&[name]))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        match tag {
            b'Z' => return seen,
            b'E' => seen.push(format!("E:{} {}", field(b'C'), field(b'D'))),
            b'D' => seen.push(format!("D:{}", String::from_utf8_lossy(&body[6..]))),
            b'1' | b'2' | b'3' | b'C' => {}
            other => seen.push((other as char).to_string()),
        }
    }
}

/// What a session prepares is remembered up to a budget of text (16 MiB of
/// named statements): one prepared past it has no text the gateway could
/// check, so where rules apply its Bind is refused, while those before it
/// run. Room made by closing one is used again.
#[tokio::test]
async fn a_statement_prepared_past_the_text_budget_is_refused_where_rules_apply() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let mut stream = wire::raw_login(&s, "pg.readwrite", &token).await;
    let sync = wire::message(b'S', &[]);
    // Statements of just under 1 MiB each (the most command rules read): the
    // seventeenth passes 16 MiB.
    let padding = "x".repeat((1 << 20) - 100);
    for i in 0..17 {
        let sql = format!("SELECT {i} /* {padding} */");
        wire::send(&mut stream, &[wire::parse(&format!("s{i}"), &sql), sync.clone()]).await;
        assert_eq!(answers(&mut stream).await, Vec::<String>::new(), "s{i} is prepared");
    }
    let run = |name: &str| [wire::bind("", name, &[]), wire::execute("", 0), sync.clone()];
    wire::send(&mut stream, &run("s15")).await;
    assert_eq!(answers(&mut stream).await, ["D:15"]);
    wire::send(&mut stream, &run("s16")).await;
    assert_eq!(answers(&mut stream).await, ["E:42501 rule: builtin:unknown-statement"]);

    // Closed and prepared again once another is closed, it runs.
    let close = |name: &str| {
        let mut body = vec![b'S'];
        wire::cstr(&mut body, name);
        wire::message(b'C', &body)
    };
    wire::send(&mut stream, &[close("s0"), close("s16"), sync.clone()]).await;
    assert_eq!(answers(&mut stream).await, Vec::<String>::new());
    let sql = format!("SELECT 16 /* {padding} */");
    wire::send(&mut stream, &[wire::parse("s16", &sql), sync.clone()]).await;
    assert_eq!(answers(&mut stream).await, Vec::<String>::new());
    wire::send(&mut stream, &run("s16")).await;
    assert_eq!(answers(&mut stream).await, ["D:16"]);
}

/// Statement text awaiting the server's answer is bounded too: a batch
/// whose Parses hold more than 64 MiB before its Sync ends the session with
/// an error that says what to do.
#[tokio::test]
async fn a_batch_holding_more_statement_text_than_the_budget_ends_the_session() {
    let s = Stack::start().await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-7").await;
    s.grant_role("agent-7", "readwrite", 900).await;
    let mut stream = wire::raw_login(&s, "pg.readwrite", &token).await;
    // Each just under the 1 MiB command rules read: the 65th passes 64 MiB.
    let padding = "x".repeat((1 << 20) - 100);
    let parses: Vec<_> = (0..65).map(|i| wire::parse("", &format!("SELECT {i} /* {padding} */"))).collect();
    // Nothing after the last Parse: the gateway has read everything when it ends the session.
    wire::send(&mut stream, &parses).await;
    let (code, message) = wire::read_fatal(&mut stream).await;
    assert_eq!(code, "54000", "program_limit_exceeded");
    assert!(message.contains("more than 64 MiB") && message.contains("send a Sync"), "{message}");
}
