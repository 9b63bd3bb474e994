//! Real Postgres clients through the gateway: pgbench in every query mode,
//! psycopg 3, node-postgres, and tokio-postgres (and raw frames) pipelining.
//! The client packages are installed by `scripts/test`; a missing one fails
//! the test and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use airlock_data_plane::postgres::hook::{SessionContext, Statement, StatementHook, Verdict};
use airlock_testkit::eventually;
use serde_json::{Value, json};
use support::wire::{
    bind, cstr, execute, message, parse, query, raw_login, read_fatal, read_message, read_until_ready, run_named, send,
};
use support::{Stack, admin_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL: &str = "run scripts/test, which installs the client packages the tests need";

/// Runs a client process off the runtime's thread: the gateway it talks to runs on this runtime.
async fn run(mut cmd: Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL}"))
}

/// pgbench from PATH, or Debian's versioned directory (postgresql-contrib / postgresql-NN).
fn pgbench() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("pgbench")).find(|p| p.is_file()))
        .unwrap_or_default();
    let debian = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    };
    on_path.or_else(debian).unwrap_or_else(|| panic!("pgbench is not installed: {INSTALL}"))
}

/// The pgbench tables in the target, made by the admin; the readwrite template may use them.
async fn pgbench_tables(s: &Stack) {
    let out = run({
        let mut cmd = Command::new(pgbench());
        cmd.args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", s.db.name()])
            .env("PGSSLMODE", "disable");
        cmd
    })
    .await;
    assert!(out.status.success(), "pgbench -i failed: {out:?}");
    let admin = admin_client(s.db.url()).await;
    let rw = format!("{}_rw", s.template);
    // The harness's default privileges already cover tables the admin creates later.
    for table in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"] {
        let ok: bool = admin
            .query_one("SELECT has_table_privilege($1, $2, 'SELECT, INSERT, UPDATE, DELETE')", &[&rw, &table])
            .await
            .unwrap()
            .get(0);
        assert!(ok, "{rw} has no rights on {table} by default privileges");
    }
    admin
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO {rw}"
        ))
        .await
        .unwrap();
}

/// pgbench through the gateway as `pg.readwrite`, with the token as the password.
async fn pgbench_through_gateway(s: &Stack, token: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(pgbench());
    cmd.args(["-n", "-c", "4", "-j", "2", "-t", "50"])
        .args(args)
        .arg(format!("host=127.0.0.1 port={} user=pg.readwrite dbname={} sslmode=disable", s.pg.port(), s.db.name()))
        .env("PGPASSWORD", token);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench {args:?} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("number of failed transactions: 0 "), "pgbench {args:?}:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of transactions actually processed: 200/200"),
        "pgbench {args:?}:\n{stdout}\n{stderr}"
    );
    stdout
}

async fn no_session_roles_left(s: &Stack) {
    eventually(Duration::from_secs(10), "every session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_in_every_query_mode() {
    let s = Stack::start().await;
    pgbench_tables(&s).await;
    let token = s.token("bench").await;
    s.grant_role("bench", "readwrite", 900).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench_through_gateway(&s, &token, &["-S", "-M", mode]).await;
        assert!(out.contains(&format!("query mode: {mode}")), "{out}");
        assert!(out.contains("<builtin: select only>"), "{out}");
        no_session_roles_left(&s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_in_every_query_mode() {
    let s = Stack::start().await;
    pgbench_tables(&s).await;
    let token = s.token("bench").await;
    s.grant_role("bench", "readwrite", 900).await;
    let admin = admin_client(s.db.url()).await;
    for (i, mode) in ["simple", "extended", "prepared"].into_iter().enumerate() {
        let out = pgbench_through_gateway(&s, &token, &["-M", mode]).await;
        assert!(out.contains(&format!("query mode: {mode}")), "{out}");
        assert!(out.contains("<builtin: TPC-B (sort of)>"), "{out}");
        // Every transaction committed on the target: one history row each.
        let n: i64 = admin.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
        assert_eq!(n, 200 * (i as i64 + 1), "after -M {mode}");
        no_session_roles_left(&s).await;
    }
    // The branch balances add up to the history's deltas: no statement was lost or repeated.
    let row = admin
        .query_one("SELECT (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1));
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The one JSON line a client script prints; a script that finds its driver missing exits 2.
fn script_json(out: &Output, driver: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stdout.contains("\"missing\"") {
        panic!("{driver} is not installed ({}): {INSTALL}", stdout.trim());
    }
    assert!(out.status.success(), "the {driver} script failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output from the {driver} script: {stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON from the {driver} script ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_parameters_prepared_statements_a_large_result_and_errors() {
    let s = Stack::start().await;
    let token = s.token("py").await;
    s.grant_role("py", "readwrite", 900).await;
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("psycopg_check.py")).arg(s.url("pg.readwrite", &token));
    let out = run(cmd).await;
    let v = script_json(&out, "psycopg (python3)");
    assert!(v["current_user"].as_str().unwrap().starts_with("airlock_"), "{v}");
    assert_eq!(v["param"], "café", "{v}");
    assert_eq!(v["params_many"], serde_json::json!(["ab", 42]), "{v}");
    assert_eq!(v["prepared"], serde_json::json!([0, 2, 4, 6, 8]), "{v}");
    assert!(v["prepared_on_server"].as_i64().unwrap() >= 1, "psycopg did not prepare on the server: {v}");
    assert_eq!(v["server_cursor_rows"], 100_000, "{v}");
    assert_eq!(v["server_cursor_last"], 100_000, "{v}");
    assert_eq!(v["server_cursor_width"], 100, "{v}");
    assert_eq!(v["large_rows"], 100_000, "{v}");
    assert_eq!(v["inside_tx"], 1, "{v}");
    assert_eq!(v["after_rollback"], 0, "{v}");
    assert_eq!(v["after_commit"], "committed", "{v}");
    assert_eq!(v["error"], "42P01", "{v}");
    assert_eq!(v["error_in_tx"], "22012", "{v}");
    assert_eq!(v["after_error"], 3, "{v}");
    assert_eq!(v["status_idle"], true, "{v}");
    let admin = admin_client(s.db.url()).await;
    let ids: Vec<i32> =
        admin.query("SELECT id FROM people ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![1, 2, 101]);
    no_session_roles_left(&s).await;
}

/// psycopg evicting statements from its cache with `DEALLOCATE name`, by the
/// simple query and in pipeline mode by the extended protocol, where command
/// rules apply: the statements it keeps run by name, and are not refused as
/// unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_evicting_cached_statements_keeps_the_rest_usable_under_rules() {
    let s = Stack::start().await;
    s.apply_policy(PEOPLE_WRITES_DENIED).await;
    let token = s.token("py").await;
    s.grant_role("py", "readwrite", 900).await;
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("psycopg_evict.py")).arg(s.url("pg.readwrite", &token));
    let out = run(cmd).await;
    let v = script_json(&out, "psycopg (python3)");
    let expected = serde_json::json!([100, 101, 102, 103, 201, 202, 203]);
    assert_eq!(v["plain"], expected, "{v}");
    assert_eq!(v["pipeline"], expected, "{v}");
    no_session_roles_left(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_parameters_named_statements_a_large_result_and_errors() {
    let s = Stack::start().await;
    let token = s.token("js").await;
    s.grant_role("js", "readwrite", 900).await;
    let dir = clients_dir().join("node");
    assert!(dir.join("node_modules/pg").is_dir(), "node-postgres is not installed in {}: {INSTALL}", dir.display());
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("check.js"))
        .current_dir(&dir)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", s.pg.port().to_string())
        .env("PGUSER", "pg.readwrite")
        .env("PGPASSWORD", &token)
        .env("PGDATABASE", s.db.name())
        .env("PGSSLMODE", "disable");
    let out = run(cmd).await;
    let v = script_json(&out, "node-postgres (node)");
    assert!(v["current_user"].as_str().unwrap().starts_with("airlock_"), "{v}");
    assert_eq!(v["param"], "Zoë", "{v}");
    assert_eq!(v["params_many"], serde_json::json!(["ab", 42]), "{v}");
    assert_eq!(v["prepared"], serde_json::json!([0, 2, 4, 6, 8]), "{v}");
    assert_eq!(v["prepared_on_server"], 1, "{v}");
    assert_eq!(v["large_rows"], 100_000, "{v}");
    assert_eq!(v["large_last"], 100_000, "{v}");
    assert_eq!(v["large_width"], 100, "{v}");
    assert_eq!(v["concurrent"], serde_json::json!([1, 2, 3, 4, 5]), "{v}");
    assert_eq!(v["after_rollback"], 0, "{v}");
    assert_eq!(v["error"], "42P01", "{v}");
    assert_eq!(v["error_prepared"], "42P01", "{v}");
    assert_eq!(v["after_error"], 2, "{v}");
    assert_eq!(v["prepared_after_error"], 42, "{v}");
    no_session_roles_left(&s).await;
}

#[tokio::test]
async fn tokio_postgres_pipelines_twenty_queries_on_one_client() {
    let s = Stack::start().await;
    let token = s.token("rs").await;
    s.grant("rs", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    // Issued together, the requests go out back to back before the first answer.
    let statement = client.prepare("SELECT $1::int, repeat('y', $1::int)").await.unwrap();
    let queries = (0..20i32).map(|i| {
        let (client, statement) = (&client, &statement);
        async move {
            if i % 2 == 0 {
                client.query(statement, &[&i]).await
            } else {
                client
                    .query_typed("SELECT $1::int, repeat('y', $1::int)", &[(&i, tokio_postgres::types::Type::INT4)])
                    .await
            }
        }
    });
    let results = futures::future::join_all(queries).await;
    for (i, rows) in results.into_iter().enumerate() {
        let rows = rows.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0), i as i32);
        assert_eq!(rows[0].get::<_, String>(1), "y".repeat(i));
    }
    // An error in the middle of a pipeline fails that query only.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1", &[]),
        client.query_one("SELECT * FROM nowhere", &[]),
        client.query_one("SELECT name FROM people WHERE id = 2", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(support::sqlstate(&b.unwrap_err()), "42P01");
    assert_eq!(c.unwrap().get::<_, String>(0), "Zoë");
}

/// Writes held for a review nobody gives: refused after a second.
const WRITES_NEED_REVIEW: &str = "version: 1\ncommands:\n  - name: writes-need-review\n    match: { kinds: [write] }\n    \
     action: { review: { approvers: { groups: [dba] }, timeout: 1s } }\n";

/// A raw `pg.readwrite` session, under `policy` when given.
async fn raw_readwrite(s: &Stack, policy: Option<&str>) -> tokio::net::TcpStream {
    if let Some(policy) = policy {
        s.apply_policy(policy).await;
    }
    let token = s.token("raw").await;
    s.grant_role("raw", "readwrite", 900).await;
    raw_login(s, "pg.readwrite", &token).await
}

/// A raw `pg` session where the names in `people` are masked.
async fn raw_masked(s: &Stack) -> tokio::net::TcpStream {
    s.apply_policy("version: 1\nmasking:\n  - name: names\n    columns: [public.people.name]\n    strategy: redact\n")
        .await;
    let token = s.token("raw").await;
    s.grant("raw", 900).await;
    raw_login(s, "pg", &token).await
}

/// `raw_readwrite`, once `ddl` has run in the session.
async fn raw_readwrite_with(s: &Stack, policy: Option<&str>, ddl: &str) -> tokio::net::TcpStream {
    let mut stream = raw_readwrite(s, policy).await;
    send(&mut stream, &[query(ddl)]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:CREATE TABLE"]);
    stream
}

/// How many rows `people` has, read directly.
async fn people(s: &Stack) -> i64 {
    let admin = admin_client(s.db.url()).await;
    admin.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0)
}

/// Binds and runs `statement` in a batch of its own, and checks that the
/// gateway refused it (`why`) and `people` kept its two rows.
async fn assert_run_refused(s: &Stack, stream: &mut tokio::net::TcpStream, statement: &str, why: &str) {
    send(stream, &[bind("", statement, &[]), execute("", 0), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(stream).await;
    assert_eq!(seen, ["E:42501"], "{why}");
    assert_eq!(people(s).await, 2);
}

#[tokio::test]
async fn a_statement_name_cannot_be_made_to_stand_for_other_text() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_NEED_REVIEW)).await;
    let send = |batch: Vec<Vec<u8>>| batch.concat();

    // A write is prepared (it is held at each Bind, not at Parse), then a Parse of
    // harmless text under the same name is discarded after a refusal: the server
    // still holds the write, and so must the gateway.
    stream
        .write_all(&send(vec![
            parse("", "DELETE FROM people WHERE id = 1"),
            parse("x", "SELEC broken"),
            parse("", "SELECT 1"),
            message(b'S', &[]),
        ]))
        .await
        .unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"], "the refusal and nothing after it");
    stream.write_all(&send(vec![bind("", "", &[]), execute("", 0), message(b'S', &[])])).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "the bound write was held, and refused when nobody approved it");
    assert_eq!(people(&s).await, 2);

    // A named statement cannot be re-prepared: the server keeps the first text.
    stream
        .write_all(&send(vec![
            parse("s", "DELETE FROM people WHERE id = 2"),
            message(b'S', &[]),
            parse("s", "SELECT 1"),
            message(b'S', &[]),
            bind("", "s", &[]),
            execute("", 0),
            message(b'S', &[]),
        ]))
        .await
        .unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P05"], "Postgres refuses the second Parse");
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "the Bind is decided on the text the server holds");
    assert_eq!(people(&s).await, 2);

    // A Parse the server refuses leaves nothing under its name: the next Parse
    // of the name is what a Bind runs, and is decided on that text.
    stream.write_all(&send(vec![parse("w", "SELECT * FROM no_such_table"), message(b'S', &[])])).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    stream.write_all(&run_named("w", "DELETE FROM people WHERE id = 1")).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"], "the write was held, and refused when nobody approved it");
    assert_eq!(people(&s).await, 2);

    // The same, sent at once: the gateway cannot know yet which text the name
    // will hold, so the Bind is refused.
    stream
        .write_all(&send(vec![
            parse("v", "SELECT * FROM no_such_table"),
            message(b'S', &[]),
            run_named("v", "DELETE FROM people WHERE id = 1"),
        ]))
        .await
        .unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"]);
    assert_eq!(people(&s).await, 2);

    // After DEALLOCATE the name is free again; a new Parse of it is decided on its own text.
    stream.write_all(&query("DEALLOCATE s")).await.unwrap();
    read_until_ready(&mut stream).await;
    stream.write_all(&run_named("s", "DELETE FROM people WHERE id = 2")).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"]);
    assert_eq!(people(&s).await, 2);
}

/// A session no rule looks at could run any SQL, some of which (a DO block's
/// dynamic SQL) may replace prepared statements where the gateway cannot see.
/// When command rules come to apply to it, the session ends, saying why; the
/// next one is held to them from its start.
#[tokio::test]
async fn a_session_that_ran_unchecked_ends_when_command_rules_arrive() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, None).await;
    send(&mut stream, &[parse("w", "SELECT 1"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    // Replaced unseen: the words are built at run time.
    send(
        &mut stream,
        &[query("DO $$ BEGIN EXECUTE 'DEALL' || 'OCATE w'; EXECUTE 'PREP' || 'ARE w AS DELETE FROM people'; END $$")],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:DO"]);

    s.apply_policy(PEOPLE_WRITES_DENIED).await;
    let (code, message_text) = read_fatal(&mut stream).await;
    assert_eq!(code, "42501");
    assert_eq!(message_text, "command rules now cover this connection; reconnect to continue under them");
    assert_eq!(people(&s).await, 2);

    let mut stream = raw_login(&s, "pg.readwrite", &s.token("raw").await).await;
    send(&mut stream, &[run_named("w", "DELETE FROM people")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42501"], "the write is refused at its Parse");
    send(&mut stream, &[run_named("r", "SELECT name FROM people WHERE id = 1")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2", "D:café", "C:SELECT 1"]);
    assert_eq!(people(&s).await, 2);
}

/// A Parse of the unnamed statement that the server skips (an earlier
/// message of its batch failed) leaves the statement it had; a Bind sent
/// after the batch's Sync, before the server answered, would run that one. The
/// gateway cannot know which text it runs, so where rules apply it refuses it.
#[tokio::test]
async fn an_unnamed_statement_is_not_taken_from_a_parse_the_server_may_have_skipped() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_NEED_REVIEW)).await;
    // A write is prepared: allowed, since each Bind of it is held.
    send(&mut stream, &[parse("", "DELETE FROM people WHERE id = 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    // The server fails the first Parse and skips the second, then binds the write.
    send(
        &mut stream,
        &[
            parse("a", "SELECT * FROM no_such_table"),
            parse("", "SELECT 1"),
            message(b'S', &[]),
            bind("", "", &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "the Bind is refused, not run as SELECT 1");
    assert_eq!(people(&s).await, 2);
    // Once answered, the unnamed statement is known again.
    send(&mut stream, &[run_named("", "SELECT 1")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "D:1", "C:SELECT 1"]);
}

/// A ReadyForQuery answers the batches up to its Sync, not the Parse sent
/// after it: when the server then fails that Parse, the gateway must forget
/// the text, or a later Parse of the name (which the server takes, the name
/// being free) would keep standing for it.
#[tokio::test]
async fn a_failed_parse_sent_after_a_sync_leaves_no_text_behind() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[message(b'S', &[]), parse("w", "SELECT * FROM no_such_table")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert!(seen.is_empty(), "{seen:?}");
    send(&mut stream, &[message(b'S', &[]), run_named("w", "DELETE FROM people WHERE id = 1")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"], "the write was held, and refused when nobody approved it");
    assert_eq!(people(&s).await, 2);
}

/// After an error in a batch the server skips everything up to its Sync,
/// simple queries too, with no ReadyForQuery for them: the gateway could no
/// longer tell which answer belongs to which statement. A simple query sent
/// inside an extended-protocol batch ends the session (no driver sends one);
/// after the batch's Sync it runs.
#[tokio::test]
async fn a_simple_query_inside_an_extended_batch_ends_the_session() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("a", "SELECT 1"), message(b'S', &[]), query("SELECT 2")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["T", "D:2", "C:SELECT 1"]);
    send(&mut stream, &[parse("b", "SELECT * FROM no_such_table"), query("DELETE FROM people")]).await;
    // The Parse's error may come first; the gateway's FATAL ends the session.
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "08P01", "{why}");
    assert_eq!(people(&s).await, 2);
}

/// A Parse the server would refuse before reading it as a statement (here,
/// a byte after its parameter types) leaves the unnamed statement it had: the
/// gateway must not take its text as the statement's, so it refuses it, in
/// sessions no rule inspects too.
#[tokio::test]
async fn a_parse_with_bytes_after_its_parameter_types_is_refused() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, None).await;
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, "SELECT 1");
    body.extend_from_slice(&[0, 0, 7]);
    send(&mut stream, &[message(b'P', &body), message(b'S', &[])]).await;
    let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream)).await.unwrap();
    assert_eq!(tag, b'E');
    let field = |name: u8| body.split(|b| *b == 0).find_map(|f| f.strip_prefix(&[name])).unwrap();
    let shown = String::from_utf8_lossy(&body);
    assert_eq!(field(b'C'), b"08P01", "{shown}");
    // The gateway's refusal, not the server's (which is an ERROR, and the session goes on).
    assert_eq!(field(b'V'), b"FATAL", "{shown}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty(), "nothing after the refusal: {}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn several_parse_bind_execute_before_one_sync_are_answered_in_order() {
    let s = Stack::start().await;
    let token = s.token("raw").await;
    s.grant("raw", 900).await;
    let mut stream = raw_login(&s, "pg.readonly", &token).await;

    // One write: a named statement bound twice into two portals, unnamed ones,
    // a portal executed in two steps, an error, then what follows the error is
    // skipped until the one Sync.
    let mut batch = Vec::new();
    batch.extend(parse("s1", "SELECT name FROM people WHERE id = $1"));
    batch.extend(bind("p1", "s1", &["1"]));
    batch.extend(bind("p2", "s1", &["2"]));
    batch.extend(execute("p2", 0));
    batch.extend(execute("p1", 0));
    batch.extend(parse("", "SELECT g::text FROM generate_series(1, 3) g"));
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 2));
    batch.extend(execute("", 0));
    batch.extend(message(b'S', &[]));
    batch.extend(parse("", "SELECT 1 / g FROM generate_series(0, 0) g"));
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 0));
    batch.extend(parse("", "SELECT 'skipped'"));
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 0));
    batch.extend(message(b'S', &[]));
    batch.extend(bind("", "s1", &["2"]));
    batch.extend(execute("", 0));
    batch.extend(message(b'S', &[]));
    stream.write_all(&batch).await.unwrap();

    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(
        seen,
        [
            "1",
            "2",
            "2",
            "D:Zoë",
            "C:SELECT 1",
            "D:café",
            "C:SELECT 1",
            "1",
            "2",
            "D:1",
            "D:2",
            "s",
            "D:3",
            "C:SELECT 1"
        ],
        "the first pipeline"
    );
    assert_eq!(status, b'I');
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "E:22012"], "the failing pipeline");
    assert_eq!(status, b'I');
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["2", "D:Zoë", "C:SELECT 1"], "the statement outlives the error");
    stream.write_all(&message(b'X', &[])).await.unwrap();
    drop(stream);
    no_session_roles_left(&s).await;
}

#[tokio::test]
async fn a_failed_parse_leaves_no_mask_behind() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    // Refused by the server: the name stays free, whatever the gateway read in it.
    stream.write_all(&[parse("s1", "SELECT 'x'::text FROM no_such_table"), message(b'S', &[])].concat()).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    stream.write_all(&run_named("s1", "SELECT upper(name) FROM people WHERE id = 1")).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "D:[redacted]", "C:SELECT 1"]);
}

/// A batch sent in pieces, as a driver's pipeline sends it: the server's error
/// on the first piece arrives before the rest is sent. The server skips the
/// rest up to the Sync; the masked session goes on, its later results masked.
#[tokio::test]
async fn a_masked_batch_sent_after_its_error_came_back_goes_on() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    stream
        .write_all(&[parse("", "SELECT 1/0"), bind("", "", &[]), execute("", 0), message(b'H', &[])].concat())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|tag| *tag != b'E') {
        seen.push(tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream)).await.unwrap().0);
    }
    assert_eq!(seen, b"1E", "ParseComplete, then the error (planning the Bind divides by zero)");
    // The rest of the batch, which the server skips, then its Sync.
    stream
        .write_all(
            &[parse("", "SELECT name FROM people WHERE id = 1"), bind("", "", &[]), execute("", 0), message(b'S', &[])]
                .concat(),
        )
        .await
        .unwrap();
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (Vec::<String>::new(), b'I'));
    // The next batch's rows are masked.
    stream.write_all(&run_named("again", "SELECT name FROM people WHERE id = 1")).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "D:[redacted]", "C:SELECT 1"]);
}

#[tokio::test]
async fn a_sync_sent_during_a_copy_does_not_shift_later_results() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    stream.write_all(&query("CREATE TEMP TABLE t (x text)")).await.unwrap();
    read_until_ready(&mut stream).await;
    stream.write_all(&query("COPY t FROM STDIN")).await.unwrap();
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'G');
    // The server ignores a Sync while it reads copy data, and answers it with nothing.
    stream.write_all(&[message(b'S', &[]), message(b'c', &[])].concat()).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:COPY 0"]);
    stream.write_all(&query("SELECT 1/0")).await.unwrap();
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:22012"]);
    for _ in 0..2 {
        stream.write_all(&query("SELECT upper(name) FROM people WHERE id = 1")).await.unwrap();
        let (seen, _) = read_until_ready(&mut stream).await;
        assert_eq!(seen, ["T", "D:[redacted]", "C:SELECT 1"]);
        stream.write_all(&query("SELECT 'plain'")).await.unwrap();
        let (seen, _) = read_until_ready(&mut stream).await;
        assert_eq!(seen, ["T", "D:plain", "C:SELECT 1"]);
    }
}

/// Writes to `people` held for a review nobody gives; everything else allowed.
const PEOPLE_WRITES_NEED_REVIEW: &str = "version: 1\ncommands:\n  - name: people-writes-need-review\n    \
     match: { kinds: [write], tables: [people] }\n    \
     action: { review: { approvers: { groups: [dba] }, timeout: 1s } }\n";

/// Writes to `people` refused; everything else allowed.
const PEOPLE_WRITES_DENIED: &str = "version: 1\ncommands:\n  - name: no-people-writes\n    \
     match: { kinds: [write], tables: [people] }\n    action: deny\n";

/// `COPY table FROM STDIN` in the extended protocol, with the Sync drivers
/// send along with the Execute.
fn copy_from_stdin(table: &str) -> Vec<u8> {
    let sql = format!("COPY {table} FROM STDIN");
    [parse("", &sql), bind("", "", &[]), execute("", 0), message(b'S', &[])].concat()
}

/// Starts `COPY table FROM STDIN` in the extended protocol, with the Sync
/// drivers send along with the Execute, and reads up to the CopyInResponse.
async fn start_copy(stream: &mut tokio::net::TcpStream, table: &str) {
    send(stream, &[copy_from_stdin(table)]).await;
    let mut seen = Vec::new();
    loop {
        let (tag, _) = tokio::time::timeout(Duration::from_secs(10), read_message(stream)).await.unwrap();
        if tag == b'G' {
            break;
        }
        seen.push(tag as char);
    }
    assert_eq!(seen, ['1', '2']);
}

/// The bypass the gateway's count of ReadyForQuery guards against: the
/// unnamed statement holds a write, and a Parse of harmless text in its place
/// fails. Refused when the count is right; run as `SELECT 1` when not.
async fn assert_unnamed_write_still_held(s: &Stack, stream: &mut tokio::net::TcpStream) {
    send(stream, &[parse("", "DELETE FROM people WHERE id = 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(stream).await;
    assert_eq!(seen, ["1"]);
    send(
        stream,
        &[message(b'S', &[]), parse("a", "SELECT * FROM no_such_table"), parse("", "SELECT 1"), message(b'S', &[])],
    )
    .await;
    let (seen, _) = read_until_ready(stream).await;
    assert!(seen.is_empty(), "{seen:?}");
    let (seen, _) = read_until_ready(stream).await;
    assert_eq!(seen, ["E:42P01"]);
    send(stream, &[bind("", "", &[]), execute("", 0), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(stream).await;
    assert_eq!(seen, ["E:42501"], "the bound write is held, and refused when nobody approves it");
    assert_eq!(people(s).await, 2);
}

/// Only the Syncs sent before the CopyDone that ends a COPY are ignored by the
/// server; those after it, even with a second CopyDone among them, are
/// answered.
#[tokio::test]
async fn syncs_after_the_copy_done_are_answered() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_NEED_REVIEW), "CREATE TEMP TABLE t (x text)").await;
    start_copy(&mut stream, "t").await;
    send(&mut stream, &[message(b'c', &[]), message(b'S', &[]), message(b'S', &[]), message(b'c', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:COPY 0"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_unnamed_write_still_held(&s, &mut stream).await;
}

fn copy_data(text: &str) -> Vec<u8> {
    message(b'd', text.as_bytes())
}

/// A COPY the server ends with an error, on bad data, after Syncs the client
/// sent before and after that data: the server ignored the ones it read
/// before the error and answered the others. The gateway asks the server
/// which, and the session goes on in step.
#[tokio::test]
async fn a_copy_that_fails_among_syncs_leaves_the_session_in_step() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_NEED_REVIEW), "CREATE TEMP TABLE n (x int)").await;

    // Extended protocol: the Sync sent with the Execute is read before the
    // data, and ignored; the three after the bad row are answered.
    start_copy(&mut stream, "n").await;
    let sync = message(b'S', &[]);
    send(&mut stream, &[copy_data("1\nnot a number\n"), sync.clone(), sync.clone(), message(b'c', &[]), sync.clone()])
        .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:22P02"]);
    for _ in 0..2 {
        let (seen, _) = read_until_ready(&mut stream).await;
        assert!(seen.is_empty(), "{seen:?}");
    }
    assert_unnamed_write_still_held(&s, &mut stream).await;

    // A simple query: its own ReadyForQuery comes with the error; the Sync
    // sent before the data is ignored, the one after it answered.
    send(&mut stream, &[query("COPY n FROM STDIN")]).await;
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'G');
    send(&mut stream, &[sync.clone(), copy_data("x\n"), sync.clone(), message(b'c', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:22P02"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_unnamed_write_still_held(&s, &mut stream).await;

    // Inside a transaction block, which the error aborts.
    send(&mut stream, &[query("BEGIN")]).await;
    read_until_ready(&mut stream).await;
    start_copy(&mut stream, "n").await;
    send(&mut stream, &[copy_data("oops\n"), message(b'c', &[]), sync.clone()]).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (vec!["E:22P02".to_owned()], b'E'));
    send(&mut stream, &[query("ROLLBACK")]).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (vec!["C:ROLLBACK".to_owned()], b'I'));
    assert_unnamed_write_still_held(&s, &mut stream).await;

    // The error arrives while the client is still sending data: the server
    // skips what follows up to the client's next Sync, a statement too.
    start_copy(&mut stream, "n").await;
    send(&mut stream, &[copy_data("oops\n")]).await;
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'E');
    send(&mut stream, &[message(b'c', &[]), run_named("", "INSERT INTO n VALUES (42)")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert!(seen.is_empty(), "skipped: {seen:?}");
    send(&mut stream, &[query("SELECT count(*) FROM n")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["T", "D:0", "C:SELECT 1"]);
    assert_unnamed_write_still_held(&s, &mut stream).await;
}

/// With masking, the responses to what the client pipelined after a failed
/// COPY (here a Close the server skips) stay matched to their statements.
#[tokio::test]
async fn a_failed_copy_keeps_masking_in_step() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    send(&mut stream, &[query("CREATE TEMP TABLE n (x int)")]).await;
    read_until_ready(&mut stream).await;
    send(&mut stream, &[parse("s1", "SELECT 1"), message(b'S', &[])]).await;
    read_until_ready(&mut stream).await;
    start_copy(&mut stream, "n").await;
    let mut close = vec![b'S'];
    cstr(&mut close, "s1");
    send(&mut stream, &[copy_data("bad\n"), message(b'c', &[]), message(b'C', &close), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:22P02"], "the Close was skipped with the rest of the batch");
    for _ in 0..2 {
        send(&mut stream, &[query("SELECT upper(name) FROM people WHERE id = 1")]).await;
        let (seen, _) = read_until_ready(&mut stream).await;
        assert_eq!(seen, ["T", "D:[redacted]", "C:SELECT 1"]);
        send(&mut stream, &[run_named("s1", "SELECT 'plain'")]).await;
        let (seen, _) = read_until_ready(&mut stream).await;
        assert_eq!(seen, ["E:42P05"], "s1 still exists: its Close was skipped");
    }
}

/// Pipelines the gateway cannot follow around a COPY end the session with
/// an error that says why, before anything runs out of step.
#[tokio::test]
async fn copy_pipelines_the_gateway_cannot_follow_end_the_session() {
    let s = Stack::start().await;
    let sync = message(b'S', &[]);

    // A statement sent after the one that starts a copy, before its
    // CopyInResponse.
    let mut stream = raw_readwrite_with(&s, None, "CREATE TEMP TABLE t (x text)").await;
    send(&mut stream, &[copy_from_stdin("t"), run_named("", "SELECT 1")]).await;
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "0A000", "{why}");
    assert!(why.contains("wait for the copy's CopyInResponse"), "{why}");

    // A statement sent while the server reads copy data.
    let mut stream = raw_readwrite_with(&s, None, "CREATE TEMP TABLE t (x text)").await;
    start_copy(&mut stream, "t").await;
    send(&mut stream, &[copy_data("a\n"), parse("", "DELETE FROM people")]).await;
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "08P01", "{why}");
    assert!(why.contains("only CopyData"), "{why}");

    // Another message among the Syncs before the server began reading: had
    // the copy failed before it, the server would have run it.
    let mut stream = raw_readwrite_with(&s, None, "CREATE TEMP TABLE t (x text)").await;
    send(&mut stream, &[copy_from_stdin("t"), parse("p", "SELECT 1"), sync]).await;
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "0A000", "{why}");
    assert!(why.contains("cannot tell which of them the server ignored"), "{why}");
    assert_eq!(people(&s).await, 2);
}

/// A client that pipelines Parse messages without end, which the server
/// does not answer (here it is busy; after an error it would skip them up to
/// a Sync that never comes), cannot make the gateway remember them without
/// end.
#[tokio::test]
async fn unanswered_messages_are_bounded() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    let mut batch = query("SELECT pg_sleep(5)");
    // One more than the gateway keeps track of.
    for i in 0..16_385 {
        batch.extend_from_slice(&parse(&format!("s{i}"), "SELECT 1"));
    }
    stream.write_all(&batch).await.unwrap();
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "54000", "{why}");
    assert!(why.contains("send a Sync"), "{why}");
}

/// A Parse sent after the server's error has come back, before the batch's
/// Sync, is skipped like the rest of the batch: the name it would have taken
/// stays free, and the text the gateway read in it stands for nothing.
#[tokio::test]
async fn a_parse_skipped_after_an_error_already_relayed_leaves_no_text_behind() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("a", "SELECT * FROM no_such_table"), message(b'H', &[])]).await;
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'E');
    send(&mut stream, &[parse("w", "SELECT 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert!(seen.is_empty(), "skipped: {seen:?}");
    // The name is free: the server takes this Parse.
    send(&mut stream, &[parse("w", "DELETE FROM people WHERE id = 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    assert_run_refused(&s, &mut stream, "w", "the bound write is held, and refused when nobody approves it").await;
}

/// A statement refused between the start of a COPY and its data, sent
/// before the server said it reads copy data: the server fails the copy on
/// the message sent in the refused one's place, as it would on the refused
/// one, after a Sync it may or may not have read. The gateway cannot tell,
/// and ends the session.
#[tokio::test]
async fn a_refusal_among_a_copys_pipelined_data_ends_the_session() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_DENIED), "CREATE TEMP TABLE t (x text)").await;
    send(
        &mut stream,
        &[
            copy_from_stdin("t"),
            parse("w", "DELETE FROM people"),
            copy_data("a\n"),
            message(b'c', &[]),
            message(b'S', &[]),
        ],
    )
    .await;
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "0A000", "{why}");
    assert_eq!(people(&s).await, 2);
}

/// A statement held for review after a COPY, when the copy fails during the
/// review: the server skips what follows the failed copy up to the client's
/// next Sync, so the held statement is skipped too, whatever its review says.
#[tokio::test]
async fn a_statement_held_behind_a_failed_copy_is_skipped_with_it() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_NEED_REVIEW), "CREATE TEMP TABLE n (x int)").await;
    send(&mut stream, &[parse("w", "DELETE FROM people WHERE id = 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    start_copy(&mut stream, "n").await;
    send(
        &mut stream,
        &[copy_data("bad\n"), message(b'c', &[]), bind("", "w", &[]), execute("", 0), message(b'S', &[])],
    )
    .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:22P02"], "the copy's error, and nothing of the skipped statement");
    send(&mut stream, &[query("SELECT count(*) FROM n")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["T", "D:0", "C:SELECT 1"]);
    assert_eq!(people(&s).await, 2);
}

/// An error in one batch of a pipeline leaves the statements prepared in
/// the next batches known: the server goes on with them after the Sync.
#[tokio::test]
async fn statements_prepared_after_a_failed_batch_stay_known() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(
        &mut stream,
        &[parse("a", "SELECT * FROM no_such_table"), message(b'S', &[]), parse("s1", "SELECT 1"), message(b'S', &[])],
    )
    .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42P01"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    send(&mut stream, &[bind("", "s1", &[]), execute("", 0), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["2", "D:1", "C:SELECT 1"], "decided on its text, not refused as unknown");
}

/// A statement held for review while the COPY sent before it begins: once
/// the review ends, neither the statement nor the query that refuses it may
/// go to a server reading copy data.
#[tokio::test]
async fn a_review_that_ends_during_a_copy_ends_the_session() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_NEED_REVIEW), "CREATE TEMP TABLE t (x text)").await;
    send(&mut stream, &[query("COPY t FROM STDIN"), query("DELETE FROM people")]).await;
    let (code, why) = read_fatal(&mut stream).await;
    assert_eq!(code, "08P01", "{why}");
    assert!(why.contains("only CopyData"), "{why}");
    assert_eq!(people(&s).await, 2);
}

/// A refused extended-protocol message fails its batch on the server as a
/// failed statement would: what ran before it in the batch is rolled back,
/// and a transaction block is aborted.
#[tokio::test]
async fn a_refused_message_fails_its_batch_on_the_server() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, Some(PEOPLE_WRITES_DENIED), "CREATE TEMP TABLE t (x int)").await;

    // The batch's implicit transaction is rolled back.
    send(
        &mut stream,
        &[
            parse("", "INSERT INTO t VALUES (1)"),
            bind("", "", &[]),
            execute("", 0),
            parse("w", "DELETE FROM people"),
            bind("", "w", &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(
        (seen, status),
        (vec!["1".to_owned(), "2".to_owned(), "C:INSERT 0 1".to_owned(), "E:42501".to_owned()], b'I')
    );
    send(&mut stream, &[query("SELECT count(*) FROM t")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["T", "D:0", "C:SELECT 1"]);

    // A transaction block is aborted: its COMMIT rolls back.
    send(&mut stream, &[query("BEGIN")]).await;
    read_until_ready(&mut stream).await;
    send(&mut stream, &[run_named("", "INSERT INTO t VALUES (2)")]).await;
    read_until_ready(&mut stream).await;
    send(&mut stream, &[parse("w2", "DELETE FROM people"), message(b'S', &[])]).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (vec!["E:42501".to_owned()], b'E'));
    send(&mut stream, &[query("COMMIT")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:ROLLBACK"]);
    send(&mut stream, &[query("SELECT count(*) FROM t")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["T", "D:0", "C:SELECT 1"]);
    assert_eq!(people(&s).await, 2);

    // The session goes on, and the refusal's name is not left behind.
    send(&mut stream, &[run_named("", "SELECT 1")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "D:1", "C:SELECT 1"]);
}

/// A client that goes away while the gateway waits for a probe's answer
/// (here behind a long statement the client sent after its failed COPY)
/// ends the session then, not when the probe is answered.
#[tokio::test]
async fn a_client_gone_during_a_probe_ends_the_session() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite_with(&s, None, "CREATE TEMP TABLE n (x int)").await;
    start_copy(&mut stream, "n").await;
    send(&mut stream, &[copy_data("bad\n"), message(b'c', &[]), message(b'S', &[]), query("SELECT pg_sleep(60)")])
        .await;
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'E', "the copy's error");
    drop(stream);
    no_session_roles_left(&s).await;
}

/// Writes and utility statements (`DEALLOCATE` among them) held for a review
/// that waits long enough for a test to give it.
const WRITES_AND_UTILITIES_NEED_APPROVAL: &str = "version: 1\ncommands:\n  - name: writes-and-utilities-need-review\n    \
     match: { kinds: [write, utility] }\n    \
     action: { review: { approvers: { groups: [dba] }, timeout: 10m } }\n";

/// Decides the first review pending for `approver`, once there is one.
async fn decide_pending(s: &Stack, approver: &str, approve: bool) {
    let review = s.pending_review(approver).await;
    let id = review["id"].as_str().unwrap();
    let (status, body) =
        s.post_as(&format!("/v1/reviews/{id}/decision"), approver, json!({ "approve": approve })).await;
    assert_eq!(status, 200, "{body}");
}

/// A simple query approved after its review changes the session's prepared
/// statements as one allowed at once would: after an approved DEALLOCATE, a
/// new Parse of the name is what a Bind of it runs, and it is decided on that
/// text, not on the text the name held before.
#[tokio::test]
async fn an_approved_deallocate_leaves_no_text_behind() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_AND_UTILITIES_NEED_APPROVAL)).await;
    let alice = s.token_in("alice", &["dba"]).await;
    send(&mut stream, &[parse("s", "SELECT 1"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);

    send(&mut stream, &[query("DEALLOCATE s")]).await;
    decide_pending(&s, &alice, true).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:DEALLOCATE"]);

    // The name now holds a write: a Bind of it is held, and denied.
    send(&mut stream, &[parse("s", "DELETE FROM people"), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1"]);
    send(&mut stream, &[bind("", "s", &[]), execute("", 0), message(b'S', &[])]).await;
    decide_pending(&s, &alice, false).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "the bound write was held, and refused when denied");
    assert_eq!(people(&s).await, 2);
}

/// A prepared statement whose text deallocates prepared statements does so
/// when it is executed, as such a query would: a new Parse of a name it freed
/// is then what a Bind of the name runs, and it is decided on that text.
#[tokio::test]
async fn an_executed_deallocate_leaves_no_text_behind() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    free_a_name_by_executing_a_prepared_deallocate(&mut stream).await;
    send(&mut stream, &[parse("s", "DELETE FROM people"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    assert_run_refused(
        &s,
        &mut stream,
        "s",
        "held as the write the name now holds, and refused when nobody approved it",
    )
    .await;
}

/// In pipeline mode psycopg evicts a statement with `DEALLOCATE name` sent by
/// the extended protocol: the unnamed statement and portal. Executing it
/// closes that name alone, and the portal, bound again to another statement,
/// closes nothing more.
#[tokio::test]
async fn a_deallocate_executed_by_the_extended_protocol_closes_its_name_alone() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("s1", "SELECT 1"), parse("s2", "SELECT 2"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "1"]);
    send(&mut stream, &[query("BEGIN")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:BEGIN"]);
    send(
        &mut stream,
        &[
            parse("", "DEALLOCATE s1"),
            bind("", "", &[]),
            execute("", 0),
            parse("s1", "SELECT 5"),
            bind("", "s2", &[]),
            execute("", 0),
            bind("", "s1", &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    assert_eq!(
        read_until_ready(&mut stream).await.0,
        ["1", "2", "C:DEALLOCATE", "1", "2", "D:2", "C:SELECT 1", "2", "D:5", "C:SELECT 1"]
    );
    send(&mut stream, &[query("COMMIT")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:COMMIT"]);
    // What the batch prepared after the DEALLOCATE stands once it is over.
    send(&mut stream, &[bind("", "s1", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "D:5", "C:SELECT 1"]);
    // The name freed and taken again holds what the server says.
    send(&mut stream, &[parse("", "DEALLOCATE s1"), bind("", "", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2", "C:DEALLOCATE"]);
    send(&mut stream, &[parse("s1", "DELETE FROM people"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    assert_run_refused(&s, &mut stream, "s1", "held as the write it now is, and refused when nobody approved it").await;
}

/// A client that pipelines a Bind past the Sync of its statement's Parse
/// (psycopg's and libpq's pipeline mode can) gets it run, decided on the text
/// the server's answer to the Parse says the name holds: the gateway waits
/// for that answer before it decides.
#[tokio::test]
async fn a_bind_pipelined_past_its_parse_is_decided_once_the_parse_is_answered() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(
        &mut stream,
        &[parse("s", "SELECT 7"), message(b'S', &[]), bind("", "s", &[]), execute("", 0), message(b'S', &[])],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "D:7", "C:SELECT 1"], "run, not refused");

    // The same with a write: held for review as the write it is, and refused.
    send(
        &mut stream,
        &[parse("w", "DELETE FROM people"), message(b'S', &[]), bind("", "w", &[]), execute("", 0), message(b'S', &[])],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42501"]);
    assert_eq!(people(&s).await, 2);

    // A Parse the server refuses (the name is taken) leaves the write there,
    // and that is what the Bind after it is decided on.
    send(
        &mut stream,
        &[parse("w", "SELECT 1"), message(b'S', &[]), bind("", "w", &[]), execute("", 0), message(b'S', &[])],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42P05"]);
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42501"]);
    assert_eq!(people(&s).await, 2);
}

/// The same where masking rules apply: the rows come masked as the text the
/// server's answer says the name holds (a statement the gateway does not
/// know is refused).
#[tokio::test]
async fn a_bind_pipelined_past_its_parse_is_masked_as_its_text() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    send(
        &mut stream,
        &[
            parse("m", "SELECT name, id FROM people WHERE id = 1"),
            message(b'S', &[]),
            bind("", "m", &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "D:[redacted]", "C:SELECT 1"]);
}

/// Drivers evict one statement from their cache with `DEALLOCATE name` (Rails,
/// psycopg on a libpq before 17): the other statements they prepared stay in
/// use, and must stay known to the gateway. The evicted name holds nothing
/// once the server says so, and a failed `DEALLOCATE` changes nothing.
#[tokio::test]
async fn deallocating_one_statement_by_name_leaves_the_others_known() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(
        &mut stream,
        &[parse("s1", "SELECT 1"), parse("s2", "SELECT 2"), parse("Up", "DELETE FROM people"), message(b'S', &[])],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "1", "1"]);

    send(&mut stream, &[query("DEALLOCATE S1;")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:DEALLOCATE"]);
    send(&mut stream, &[bind("", "s2", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "D:2", "C:SELECT 1"], "s2 is still known");

    // A DEALLOCATE that fails (in an aborted transaction) leaves the name as it was.
    send(&mut stream, &[query("BEGIN")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:BEGIN"]);
    send(&mut stream, &[query("SELECT 1/0")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:22012"]);
    send(&mut stream, &[query("deallocate prepare \"Up\"")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:25P02"]);
    send(&mut stream, &[query("ROLLBACK")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:ROLLBACK"]);
    assert_run_refused(&s, &mut stream, "Up", "still the write it was, held and refused when nobody approved it").await;

    // Deallocated for good, the name is free; what a Parse puts there next is decided on its own text.
    send(&mut stream, &[query("DEALLOCATE \"Up\"")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:DEALLOCATE"]);
    send(&mut stream, &[parse("Up", "SELECT 3"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    send(&mut stream, &[bind("", "Up", &[]), execute("", 0), bind("", "s2", &[]), execute("", 0), message(b'S', &[])])
        .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "D:3", "C:SELECT 1", "2", "D:2", "C:SELECT 1"]);
    assert_eq!(people(&s).await, 2);
}

/// Prepares `SELECT 1` as `s` and `DEALLOCATE s` as `d` (whose Parse frees
/// nothing: `s` is not prepared yet), then executes `d`.
async fn free_a_name_by_executing_a_prepared_deallocate(stream: &mut tokio::net::TcpStream) {
    send(stream, &[parse("d", "DEALLOCATE s"), parse("s", "SELECT 1"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(stream).await.0, ["1", "1"]);
    send(stream, &[bind("", "d", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(stream).await.0, ["2", "C:DEALLOCATE"]);
}

/// A portal bound to a statement that deallocates frees what it names when
/// it is executed, which may be after statements prepared since its Bind: a
/// name freed then and prepared anew is decided on its new text.
#[tokio::test]
async fn a_deallocating_portal_executed_later_leaves_no_text_behind() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("d", "DEALLOCATE t"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    send(&mut stream, &[bind("", "d", &[]), message(b'H', &[])]).await;
    assert_eq!(read_message(&mut stream).await.0, b'2');
    send(&mut stream, &[parse("t", "SELECT 1"), message(b'H', &[])]).await;
    assert_eq!(read_message(&mut stream).await.0, b'1');
    send(
        &mut stream,
        &[execute("", 0), parse("t", "DELETE FROM people"), bind("", "t", &[]), execute("", 0), message(b'S', &[])],
    )
    .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["C:DEALLOCATE", "1", "E:42501"], "the write the name now holds was held, and refused");
    assert_eq!(people(&s).await, 2);
}

/// Prepares `sql` as `s`, a name the server holds already (it fails the
/// Parse), and binds `s` in the next batch, sent before the Parse's answer.
async fn parse_taken_name_and_bind_it_before_the_answer(stream: &mut tokio::net::TcpStream, sql: &str) {
    send(stream, &[parse("s", sql), message(b'S', &[]), bind("", "s", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(stream).await.0, ["E:42P05"]);
}

/// A Close skipped after an error leaves the statement on the server: a Parse
/// of its name then fails there, and the name still holds the old statement.
#[tokio::test]
async fn a_close_skipped_after_an_error_leaves_the_statement_known() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("s", "DELETE FROM people"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    let close_s = message(b'C', b"Ss\0");
    send(&mut stream, &[parse("a", "SELECT * FROM no_such_table"), close_s, message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42P01"], "the Close is skipped");
    parse_taken_name_and_bind_it_before_the_answer(&mut stream, "SELECT 1").await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "refused until the answer says which statement the name holds");
    assert_eq!(people(&s).await, 2);
    // Answered, the name is known to hold the write still.
    assert_run_refused(&s, &mut stream, "s", "held as the write it is, and refused when nobody approved it").await;
}

/// A function may deallocate a statement by dynamic SQL, which no scan of the
/// session's text can see. A Parse of the freed name then succeeds, and a
/// Bind later in its batch runs the new text: it is decided on that text.
#[tokio::test]
async fn a_name_freed_where_the_gateway_cannot_see_is_decided_on_its_new_text() {
    let s = Stack::start().await;
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(
            "CREATE FUNCTION free_statement(n text) RETURNS void LANGUAGE plpgsql AS \
             $$ BEGIN EXECUTE 'DEALL' || 'OCATE ' || quote_ident(n); END $$",
        )
        .await
        .unwrap();
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    send(&mut stream, &[parse("s", "SELECT 1"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    send(&mut stream, &[query("SELECT free_statement('s')")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["T", "D:", "C:SELECT 1"]);
    send(&mut stream, &[run_named("s", "DELETE FROM people")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:42501"], "held as the write it is, and refused when nobody approved it");
    assert_eq!(people(&s).await, 2);
}

/// Where masking rules apply, a statement the gateway cannot know is not run:
/// here the name holds a value computed from a masked column (which no row
/// description tells), prepared by SQL, and the harmless text of a Parse the
/// server refused must not be what its rows are masked as.
#[tokio::test]
async fn a_name_the_gateway_cannot_know_is_not_masked_as_another_text() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    send(&mut stream, &[query("PREPARE s AS SELECT upper(name) FROM people WHERE id = 1")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:PREPARE"]);
    send(
        &mut stream,
        &[
            parse("s", "SELECT 'x'::text AS name"),
            message(b'S', &[]),
            bind("", "s", &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42P05"]);
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["E:42501"], "refused, and no name read unmasked");
    // Once the answer is in, the name is as unknown as one never prepared.
    send(&mut stream, &[bind("", "s", &[]), execute("", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["E:42501"]);
}

/// Postgres finds a statement by the first 63 bytes of its name: two longer
/// names that share them are one statement there. A Bind of such a name is
/// of a statement the gateway cannot know.
#[tokio::test]
async fn statement_names_the_server_cuts_short_are_not_taken_at_their_word() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(PEOPLE_WRITES_NEED_REVIEW)).await;
    let (a, b) = (format!("{}a", "x".repeat(63)), format!("{}b", "x".repeat(63)));
    let mut close_a = vec![b'S'];
    close_a.extend_from_slice(a.as_bytes());
    close_a.push(0);
    send(
        &mut stream,
        &[
            parse(&b, "SELECT 1"),
            message(b'C', &close_a),
            parse(&a, "DELETE FROM people"),
            bind("", &b, &[]),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "3", "1", "E:42501"], "refused: the server would run the DELETE");
    assert_eq!(people(&s).await, 2);
}

/// A Bind the server skips leaves the portal it would have replaced: here the
/// unnamed portal, bound to a read of a masked column before a savepoint, is
/// run after the rollback to it, and its rows are masked as that read's, not
/// as those of the harmless statement the skipped Bind named.
#[tokio::test]
async fn a_skipped_bind_leaves_its_portal_masked_as_before() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    send(
        &mut stream,
        &[
            parse("sy", "SELECT upper(name) FROM people WHERE id = 1"),
            parse("sx", "SELECT 'a'::text"),
            parse("sdiv", "SELECT 1 / floor(random())::int"),
            parse("sp", "SAVEPOINT a"),
            parse("rb", "ROLLBACK TO SAVEPOINT a"),
            message(b'S', &[]),
        ],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "1", "1", "1", "1"]);
    send(&mut stream, &[query("BEGIN"), bind("", "sy", &[]), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["C:BEGIN"]);
    assert_eq!(read_until_ready(&mut stream).await.0, ["2"]);
    send(&mut stream, &[bind("spp", "sp", &[]), execute("spp", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "C:SAVEPOINT"]);
    // Sent at once: the gateway forwards the last Execute before the error comes back.
    send(
        &mut stream,
        &[
            bind("e", "sdiv", &[]),
            execute("e", 0),
            bind("", "sx", &[]),
            message(b'S', &[]),
            bind("r", "rb", &[]),
            execute("r", 0),
            execute("", 0),
            message(b'S', &[]),
        ],
    )
    .await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "E:22012"], "the unnamed portal's Bind is skipped");
    assert_eq!(read_until_ready(&mut stream).await.0, ["2", "C:ROLLBACK", "D:[redacted]", "C:SELECT 1"]);
}

/// A portal bound to a statement that deallocates keeps that mark until its
/// transaction ends, even across a ReadyForQuery that answers an earlier
/// batch: executed later, it may free a name a Parse sent before it took, and
/// another portal may prepare the name anew, which a Bind then runs.
#[tokio::test]
async fn a_deallocating_portal_bound_after_a_sync_keeps_its_mark() {
    let s = Stack::start().await;
    let mut stream = raw_readwrite(&s, Some(WRITES_AND_UTILITIES_NEED_APPROVAL)).await;
    let alice = s.token_in("alice", &["dba"]).await;
    send(&mut stream, &[parse("pp", "PREPARE s2 AS DELETE FROM people"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    // Both Binds are approved and forwarded while the query before them still
    // runs: its ReadyForQuery comes back with their portals alive. (Binding a
    // statement that deallocates forgets every other: `d` is prepared after.)
    send(
        &mut stream,
        &[
            query("SELECT pg_sleep(3)"),
            bind("p", "pp", &[]),
            parse("d", "DEALLOCATE s2"),
            bind("q", "d", &[]),
            message(b'H', &[]),
        ],
    )
    .await;
    decide_pending(&s, &alice, true).await;
    decide_pending(&s, &alice, true).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["T", "D:", "C:SELECT 1"]);
    for answer in [b'2', b'1', b'2'] {
        assert_eq!(read_message(&mut stream).await.0, answer);
    }
    send(&mut stream, &[parse("s2", "SELECT 1"), execute("q", 0), execute("p", 0), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "C:DEALLOCATE", "C:PREPARE"]);
    assert_run_refused(&s, &mut stream, "s2", "the name holds what the portals left, which the gateway cannot know")
        .await;
}

/// Statements prepared while no masking rule covered a masked session carry
/// no mask: when rules cover it again, the session ends rather than read
/// their rows unmasked.
#[tokio::test]
async fn masking_rules_that_come_back_end_the_session() {
    let s = Stack::start().await;
    let mut stream = raw_masked(&s).await;
    s.apply_policy("version: 1\n").await;
    send(&mut stream, &[parse("s", "SELECT upper(name) FROM people WHERE id = 1"), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1"]);
    s.apply_policy("version: 1\nmasking:\n  - name: names\n    columns: [public.people.name]\n    strategy: redact\n")
        .await;
    let (code, text) = read_fatal(&mut stream).await;
    assert_eq!(code, "42501");
    assert!(text.starts_with("masking rules cover this connection again"), "{text}");
}

/// A masked session holds each row whole to mask it, up to a bound: a row
/// longer than that ends the session, found out from its header before it
/// is read whole; shorter ones go through.
#[tokio::test]
async fn a_row_longer_than_a_masked_session_holds_ends_it() {
    let s = Stack::start_with_gateway(|g| g.masked_message_max = 1 << 20).await;
    let mut stream = raw_masked(&s).await;
    send(&mut stream, &[query("SELECT repeat('x', 1000000)")]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen.len(), 3, "a row description, the row, its end");
    assert_eq!(seen[1].len(), 2 + 1_000_000, "the row whole");
    // What came before the long row (here a first statement's result, in
    // the same pipeline) still reaches the client.
    let run = |sql: &str| [parse("", sql), bind("", "", &[]), execute("", 0)].concat();
    send(&mut stream, &[run("SELECT 'first'"), run("SELECT repeat('x', 2000000)"), message(b'S', &[])]).await;
    let (before, code, text) = support::wire::read_to_fatal(&mut stream).await;
    let seen = String::from_utf8_lossy(&before);
    assert!(seen.contains("DC"), "the first result: {seen:?}");
    assert_eq!(before.iter().filter(|t| **t == b'D').count(), 1, "the long row does not reach the client: {seen:?}");
    assert_eq!(code, "54000");
    assert!(text.contains("more than the 1048576 bytes a masked session holds"), "{text}");
}

/// Holds the first call that passes through it (on a session thread) until
/// the test releases it, telling the test when that call came.
struct FirstCallHeld(std::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, std::sync::mpsc::Receiver<()>)>>);

impl FirstCallHeld {
    /// The hold, what says it was entered, and what releases it.
    fn new() -> (FirstCallHeld, tokio::sync::oneshot::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel();
        (FirstCallHeld(std::sync::Mutex::new(Some((entered_tx, held)))), entered, release)
    }

    fn hold(&self) {
        let first = self.0.lock().unwrap().take();
        if let Some((entered, release)) = first {
            let _ = entered.send(());
            let _ = release.recv_timeout(Duration::from_secs(30));
        }
    }
}

/// Masks (under no rule) while `masks` is set, and holds the start of the
/// first session in its catalog question until released, as a slow read of
/// the target's catalog would.
struct SlowStart {
    masks: std::sync::atomic::AtomicBool,
    pause: FirstCallHeld,
}

impl StatementHook for SlowStart {
    fn check(&self, _session: &SessionContext, _statement: Statement<'_>) -> Verdict {
        Verdict::Allow
    }

    fn masks(&self, _session: &SessionContext) -> bool {
        self.masks.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wants_catalog(&self, _session: &SessionContext) -> bool {
        self.pause.hold();
        false
    }
}

/// The rules change while a session is being set up, after the gateway
/// learnt whether they mask it: the change is not missed. Here masking
/// lapses then, and when it comes back the session ends, as it does for a
/// lapse later on.
#[tokio::test]
async fn a_change_of_rules_while_a_session_starts_is_not_missed() {
    let (pause, entered, release) = FirstCallHeld::new();
    let hook = std::sync::Arc::new(SlowStart { masks: std::sync::atomic::AtomicBool::new(true), pause });
    let s = Stack::start_with_hook(hook.clone()).await;
    let token = s.token("raw").await;
    s.grant("raw", 900).await;
    let mut stream = raw_login(&s, "pg", &token).await;
    tokio::time::timeout(Duration::from_secs(10), entered).await.unwrap().unwrap();
    // No rule masks it any more, and the projection says so before the relay starts.
    hook.masks.store(false, std::sync::atomic::Ordering::SeqCst);
    s.grant("someone-else", 900).await;
    s.settle().await;
    release.send(()).unwrap();
    send(&mut stream, &[query("SELECT 1")]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["T", "D:1", "C:SELECT 1"]);
    // Rules mask it again.
    hook.masks.store(true, std::sync::atomic::Ordering::SeqCst);
    s.grant("someone-else-again", 900).await;
    let (code, text) = read_fatal(&mut stream).await;
    assert_eq!(code, "42501");
    assert!(text.starts_with("masking rules cover this connection again"), "{text}");
}

/// Inspects nothing, and holds the first login it is asked about (once it
/// is admitted, before the session's role is made) until released: the
/// window a slow target opens while it makes the role.
struct SlowLogin(FirstCallHeld);

impl StatementHook for SlowLogin {
    fn check(&self, _session: &SessionContext, _statement: Statement<'_>) -> Verdict {
        Verdict::Allow
    }

    fn inspects(&self, _session: &SessionContext) -> bool {
        self.0.hold();
        false
    }
}

/// The grant is revoked after the login was admitted and before the relay
/// starts: what the client sent along with its password does not run.
#[tokio::test]
async fn a_grant_revoked_while_a_session_is_set_up_runs_nothing_it_sent() {
    let (pause, entered, release) = FirstCallHeld::new();
    let s = Stack::start_with_hook(std::sync::Arc::new(SlowLogin(pause))).await;
    let token = s.token("raw").await;
    let grant = s.grant("raw", 900).await;
    let mut stream = support::wire::prompted_login(&s, "pg").await;
    send(&mut stream, &[support::wire::password(&token), query("SELECT 'ran'")]).await;
    tokio::time::timeout(Duration::from_secs(10), entered).await.unwrap().unwrap();
    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
    assert_eq!(status, 200);
    s.settle().await;
    release.send(()).unwrap();
    let (seen, code, text) = support::wire::read_to_fatal(&mut stream).await;
    assert!(!seen.contains(&b'D'), "the query ran after the revocation: {:?}", String::from_utf8_lossy(&seen));
    assert_eq!(code, "42501");
    assert!(text.contains("revoked"), "{text}");
}

/// A client that pipelines queries faster than the target runs them, reading
/// the results as they come (as libpq's pipeline mode and psycopg's pipeline
/// do), gets every result, however far they outgrow the sockets' buffers. The
/// target stops reading queries while its results wait to be read, so the
/// gateway must go on reading it while its own write of queries waits.
#[tokio::test]
async fn a_pipeline_whose_results_outgrow_the_socket_buffers_gets_every_result() {
    pipeline_outgrowing_the_buffers(&Stack::start().await).await;
}

/// The same when what the gateway reads ahead fills up long before the write
/// it waits on is done (here 64 KiB; by default 8 MiB, which one client read
/// of short queries with long results also outgrows): the results read go
/// on to the client, and the write goes on after them.
#[tokio::test]
async fn a_pipeline_gets_every_result_when_the_read_ahead_fills() {
    let s = Stack::start_with_gateway(|g| g.read_ahead_limit = 64 * 1024).await;
    pipeline_outgrowing_the_buffers(&s).await;
}

/// The same over TLS, from libpq (pgbench's pipeline mode): 5,000 queries
/// of about 1 KiB sent before their Sync, with 4 KiB of result each. Every
/// write to a TLS client is flushed through its stream, which a full socket
/// must not stall.
#[tokio::test]
async fn a_pipeline_over_tls_whose_results_outgrow_the_socket_buffers_completes() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let script = std::env::temp_dir().join(format!("airlock-pipeline-{}.sql", std::process::id()));
    let one = format!("SELECT repeat('x', 4000) /* {} */;\n", "p".repeat(1000));
    std::fs::write(&script, format!("\\startpipeline\n{}\\endpipeline\n", one.repeat(5_000))).unwrap();
    let mut cmd = Command::new(pgbench());
    cmd.args(["-n", "-c", "1", "-t", "1", "-M", "extended", "-f"])
        .arg(&script)
        .arg(format!("host=127.0.0.1 port={} user=pg.readonly dbname={} sslmode=require", s.pg.port(), s.db.name()))
        .env("PGPASSWORD", &token);
    let out = tokio::time::timeout(Duration::from_secs(120), run(cmd)).await;
    let _ = std::fs::remove_file(&script);
    let out = out.expect("the pipeline stalled: the gateway stopped reading while it wrote");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("number of transactions actually processed: 1/1"), "{stdout}\n{stderr}");
}

/// 20,000 pipelined queries of about 1 KiB, with 4 KiB of result each.
async fn pipeline_outgrowing_the_buffers(s: &Stack) {
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let (reader, mut writer) = raw_login(s, "pg.readonly", &token).await.into_split();
    const QUERIES: usize = 20_000;
    let one = query(&format!("SELECT repeat('x', 4000) /* {} */", "p".repeat(1000)));
    let pipeline = one.repeat(QUERIES);
    let writing = tokio::spawn(async move { writer.write_all(&pipeline).await.map(|()| writer) });
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    let reading = async {
        let (mut ready, mut rows) = (0, 0);
        while ready < QUERIES {
            let tag = reader.read_u8().await.unwrap();
            let len = reader.read_i32().await.unwrap();
            let mut body = vec![0; usize::try_from(len - 4).unwrap()];
            reader.read_exact(&mut body).await.unwrap();
            match tag {
                b'Z' => ready += 1,
                b'D' => {
                    assert_eq!(body.len(), 2 + 4 + 4000, "a row whole and in place");
                    rows += 1;
                }
                b'E' => panic!("an error after {ready} queries: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
        rows
    };
    let rows = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the pipeline stalled: the gateway stopped reading the target while writing to it");
    assert_eq!(rows, QUERIES);
    writing.await.unwrap().unwrap();
}
