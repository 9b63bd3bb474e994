//! Masking through the real gateway against the real Postgres: what a client
//! sees of masked columns and of sensitive values, in text and binary formats,
//! by the simple and the extended protocol, and what happens to the ways
//! around it (expressions, views, unions, whole-row values, filters, COPY,
//! error messages).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use support::wire::{
    bind, bind_binary, bind_binary_of, execute, message, parse, query, raw_login, read_until_ready, send,
};
use support::{Stack, admin_client, sqlstate};
use tokio_postgres::SimpleQueryMessage;

const POLICY: &str = r#"
version: 1
masking:
  - name: pii
    columns: ["*.*.email", "public.customers.ssn", "public.accounts.ssn"]
    strategy: redact
  - name: cards
    columns: ["public.customers.card"]
    detectors: [credit_card, email, national_id]
    strategy: partial
"#;

const CARD: &str = "4111 1111 1111 1111";

/// The target's tables: customers with personal data, orders that carry an
/// `ssn` column no rule names, a view that renames a masked column, and a
/// table that inherits one.
async fn tables(s: &Stack) {
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, card text,
                                     notes text, balance bigint, profile jsonb);
             INSERT INTO customers VALUES
               (1, 'Ana', 'ana@example.com', '123-45-6789', '{CARD}',
                'call ana@example.com, card {CARD}', 4111111111111111, '{{\"mail\": \"ana@example.com\"}}'),
               (2, 'Bo', 'bo@example.org', '987-65-4321', '5500 0000 0000 0004', 'no secrets here', 12, '{{}}');
             CREATE TABLE orders (id int, ssn text);
             INSERT INTO orders VALUES (1, '555555555');
             CREATE VIEW contacts AS SELECT id, email AS contact, name FROM customers;
             CREATE VIEW contacts2 AS SELECT contact AS who FROM contacts;
             CREATE TABLE accounts (id int, ssn text);
             CREATE TABLE accounts_eu () INHERITS (accounts);
             INSERT INTO accounts_eu VALUES (1, '123-45-6789');
             GRANT SELECT ON customers, orders, contacts, contacts2, accounts, accounts_eu TO {t}, {t}_rw;",
            t = s.template
        ))
        .await
        .unwrap();
}

async fn masked_stack() -> (Stack, tokio_postgres::Client, String) {
    let s = Stack::start().await;
    tables(&s).await;
    s.apply_policy(POLICY).await;
    let token = s.token("agent-9").await;
    s.grant("agent-9", 900).await;
    let client = s.connect("pg", &token).await.unwrap();
    (s, client, token)
}

/// Makes `table` (its name and columns), which the session may write to;
/// returns an admin connection to look at it with.
async fn written_table(s: &Stack, table: &str) -> tokio_postgres::Client {
    let admin = admin_client(s.db.url()).await;
    let name = table.split_whitespace().next().unwrap();
    admin
        .batch_execute(&format!("CREATE TABLE {table}; GRANT INSERT, SELECT ON {name} TO {}", s.template))
        .await
        .unwrap();
    admin
}

async fn row_count(admin: &tokio_postgres::Client, table: &str) -> i64 {
    admin.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

/// The rows a simple query returns, as text (`None` for NULL).
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

const R: Option<&str> = Some("[redacted]");

#[tokio::test]
async fn masked_columns_are_masked_however_they_are_read() {
    let (_s, client, _) = masked_stack().await;
    let cases: &[(&str, Vec<Option<String>>)] = &[
        // Named columns, star, aliases: Postgres names the origin; the catalog decides.
        ("SELECT id, name, email, ssn FROM customers WHERE id = 1", row(&[Some("1"), Some("Ana"), R, R])),
        ("SELECT email AS e, c.ssn AS s FROM customers c WHERE id = 2", row(&[R, R])),
        ("SELECT x FROM (SELECT email AS x FROM customers WHERE id = 1) s", row(&[R])),
        ("WITH c AS (SELECT ssn FROM customers WHERE id = 1) SELECT * FROM c", row(&[R])),
        // Computed from masked columns: lineage decides.
        ("SELECT upper(email) FROM customers WHERE id = 1", row(&[R])),
        ("SELECT email || '' FROM customers WHERE id = 1", row(&[R])),
        ("SELECT substr(ssn, 1, 3) FROM customers WHERE id = 1", row(&[R])),
        ("SELECT email::varchar(100) FROM customers WHERE id = 1", row(&[R])),
        ("SELECT coalesce(NULL, ssn) FROM customers WHERE id = 1", row(&[R])),
        // Computed values are redacted whole, NULL too: NULL or not would be a bit per row.
        ("SELECT nullif(substr(ssn, 1, 1), '1') FROM customers WHERE id = 1", row(&[R])),
        ("SELECT CASE WHEN id = 1 THEN ssn END FROM customers WHERE id = 1", row(&[R])),
        ("SELECT (SELECT email FROM customers WHERE id = 1)", row(&[R])),
        ("SELECT * FROM (SELECT id, lower(email) AS m FROM customers WHERE id = 1) s", row(&[Some("1"), R])),
        // Whole rows carry every column; json is masked as JSON.
        ("SELECT row_to_json(c) FROM customers c WHERE id = 1", row(&[Some("\"[redacted]\"")])),
        ("SELECT to_jsonb(c.*) FROM customers c WHERE id = 1", row(&[Some("\"[redacted]\"")])),
        ("SELECT c::text FROM customers c WHERE id = 1", row(&[R])),
        ("SELECT json_agg(email) FROM customers", row(&[Some("\"[redacted]\"")])),
        // A union's columns have no origin: every branch counts.
        (
            "SELECT name FROM customers WHERE id = 1 UNION ALL SELECT email FROM customers WHERE id = 1",
            [row(&[R]), row(&[R])].concat(),
        ),
        // A view that renames a masked column.
        ("SELECT contact, name FROM contacts WHERE id = 1", row(&[R, Some("Ana")])),
        ("SELECT contact || '' FROM contacts WHERE id = 1", row(&[R])),
        ("SELECT upper(who) FROM contacts2 LIMIT 1", row(&[R])),
        // A table that inherits a masked column, read under its own name.
        ("SELECT ssn FROM accounts_eu", row(&[R])),
        ("SELECT ssn FROM accounts", row(&[R])),
        ("SELECT ssn || '' FROM accounts_eu", row(&[R])),
        // What no rule names is left alone.
        ("SELECT count(*), max(id) FROM customers", row(&[Some("2"), Some("2")])),
        ("SELECT ssn FROM orders WHERE id = 1", row(&[Some("555555555")])),
        ("SELECT name FROM customers WHERE id = 2", row(&[Some("Bo")])),
        // Partial masks keep the last four; detectors read every text value.
        ("SELECT card FROM customers WHERE id = 1", row(&[Some("**** **** **** 1111")])),
        ("SELECT notes FROM customers WHERE id = 1", row(&[Some("call ***@******e.com, card **** **** **** 1111")])),
        ("SELECT 'my ssn is 123-45-6789'", row(&[Some("my ssn is ***-**-6789")])),
        // A card number in an integer column cannot be shown masked as a number: NULL.
        ("SELECT balance FROM customers WHERE id = 1", row(&[None])),
        ("SELECT balance FROM customers WHERE id = 2", row(&[Some("12")])),
        ("SELECT profile FROM customers WHERE id = 1", row(&[Some("{\"mail\": \"***@******e.com\"}")])),
    ];
    let mut failures = Vec::new();
    for (sql, expected) in cases {
        match rows(&client, sql).await {
            Ok(got) => {
                let flat: Vec<Option<String>> = got.into_iter().flatten().collect();
                if &flat != expected {
                    failures.push(format!("{sql}\n   got {flat:?}\n  want {expected:?}"));
                }
            }
            Err(e) => failures.push(format!("{sql}: {e:?}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test]
async fn filters_copies_and_exports_of_masked_columns_are_refused() {
    let (s, client, token) = masked_stack().await;
    let cases: &[(&str, &str)] = &[
        ("SELECT id FROM customers WHERE ssn LIKE '12%'", "pii"),
        ("SELECT id FROM customers WHERE upper(email) = 'ANA@EXAMPLE.COM'", "pii"),
        ("SELECT id FROM customers ORDER BY email", "pii"),
        ("SELECT c.id FROM customers c JOIN orders o ON o.ssn = c.ssn", "pii"),
        ("SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn > '5')", "pii"),
        ("SELECT count(*) FROM customers GROUP BY email", "pii"),
        ("SELECT id FROM customers WHERE card LIKE '4%'", "cards"),
        ("SELECT id FROM contacts WHERE contact LIKE 'a%'", "pii"),
        ("SELECT id FROM accounts_eu WHERE ssn LIKE '1%'", "pii"),
        ("COPY customers TO STDOUT", "builtin:masked-export"),
        ("COPY (SELECT email FROM customers) TO STDOUT", "builtin:masked-export"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT ssn FROM customers", "builtin:masked-export"),
        ("CREATE TEMP TABLE leak AS SELECT ssn FROM customers", "pii"),
        ("SELECT email INTO TEMP leak FROM customers", "pii"),
        // What the gateway would read differently from Postgres, or could not follow later.
        (r#"SELECT upper(U&"em\0061il") FROM customers"#, "builtin:unreadable-statement"),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS SETOF customers LANGUAGE sql AS 'SELECT * FROM customers'",
            "builtin:masked-code",
        ),
        ("SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'", "builtin:masked-statistics"),
        ("CREATE TEMP VIEW leak AS SELECT email FROM customers", "pii"),
    ];
    let mut failures = Vec::new();
    for (sql, rule) in cases {
        match client.simple_query(sql).await {
            Ok(_) => failures.push(format!("{sql} ran; {rule} should refuse it")),
            Err(e) => {
                let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_owned();
                if sqlstate(&e) != "42501" || detail != format!("rule: {rule}") {
                    failures.push(format!("{sql}: expected 42501 by {rule}, got {} {detail:?}", sqlstate(&e)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // COPY of what is not masked runs, and the detectors read its rows.
    use futures::StreamExt;
    let stream = client.copy_out("COPY (SELECT id, notes FROM customers ORDER BY id) TO STDOUT").await.unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let text: String = chunks.into_iter().map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap()).collect();
    assert_eq!(text, "1\tcall ***@******e.com, card **** **** **** 1111\n2\tno secrets here\n");

    // A rule may allow filters instead: the same statement then runs.
    s.apply_policy(&POLICY.replace("    strategy: redact\n", "    strategy: redact\n    on_filter: allow\n")).await;
    let fresh = s.connect("pg", &token).await.unwrap();
    let got = rows(&fresh, "SELECT id, ssn FROM customers WHERE ssn LIKE '12%'").await.unwrap();
    assert_eq!(got, vec![row(&[Some("1"), R])]);
}

#[tokio::test]
async fn copy_from_stdin_keeps_every_later_result_masked() {
    let (_s, client, _) = masked_stack().await;
    client.batch_execute("CREATE TEMP TABLE sink (x text)").await.unwrap();
    // tokio-postgres sends a Sync after the Execute that starts the copy, which
    // the server ignores while it reads copy data.
    use futures::SinkExt;
    let sink = client.copy_in::<_, &'static [u8]>("COPY sink FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(b"hello\n".as_slice()).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let e = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    for _ in 0..2 {
        assert_eq!(
            rows(&client, "SELECT upper(email), ssn || '' FROM customers WHERE id = 1").await.unwrap(),
            vec![row(&[R, R])]
        );
        assert_eq!(rows(&client, "SELECT 1").await.unwrap(), vec![row(&[Some("1")])]);
    }
    let r = client.query_one("SELECT upper(email) FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, &str>(0), "[redacted]");

    // A copy the server ends early, on bad data, leaves the session in step too.
    client.batch_execute("CREATE TEMP TABLE numbers (n int)").await.unwrap();
    let sink = client.copy_in::<_, &'static [u8]>("COPY numbers FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    let failed = async {
        sink.send(b"1\nnot a number\n".as_slice()).await?;
        sink.finish().await
    }
    .await;
    let failed = failed.unwrap_err();
    assert_eq!(sqlstate(&failed), "22P02", "{failed:?}");
    let r = client.query_one("SELECT upper(email) FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, &str>(0), "[redacted]");
    assert_eq!(rows(&client, "SELECT 'plain'").await.unwrap(), vec![row(&[Some("plain")])]);
}

#[tokio::test]
async fn error_messages_do_not_quote_masked_values() {
    let (_s, client, _) = masked_stack().await;
    let e = client.simple_query("SELECT ssn::int FROM customers WHERE id = 1").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22P02");
    assert!(!format!("{db:?}").contains("6789"), "{db:?}");
    assert!(db.message().contains("withheld"), "{db:?}");
    // An error of a statement that reads nothing masked keeps its text, with
    // the detectors' reading.
    let e = client.simple_query("SELECT 'card 4111111111111111'::int").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert!(db.message().contains("************1111"), "{db:?}");
    // The session goes on.
    assert_eq!(rows(&client, "SELECT name FROM customers WHERE id = 1").await.unwrap(), vec![row(&[Some("Ana")])]);
}

#[tokio::test]
async fn binary_results_are_masked_or_refused() {
    let (_s, client, _) = masked_stack().await;
    // tokio-postgres asks for every result in binary format.
    let r =
        client.query_one("SELECT id, email, ssn, card, notes FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);
    assert_eq!(r.get::<_, &str>(1), "[redacted]");
    assert_eq!(r.get::<_, &str>(2), "[redacted]");
    assert_eq!(r.get::<_, &str>(3), "**** **** **** 1111");
    assert_eq!(r.get::<_, &str>(4), "call ***@******e.com, card **** **** **** 1111");
    let r = client.query_one("SELECT upper(email), balance FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, &str>(0), "[redacted]");
    assert_eq!(r.get::<_, Option<i64>>(1), Some(4_111_111_111_111_111), "binary integers are not read by detectors");
    let r = client.query_one("SELECT profile, row_to_json(c) FROM customers c WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, serde_json::Value>(0), serde_json::json!({"mail": "***@******e.com"}));
    assert_eq!(r.get::<_, serde_json::Value>(1), serde_json::json!("[redacted]"));
    // An array in binary cannot be read by the detectors: refused, not passed.
    let e = client.query("SELECT array_agg(notes) FROM customers", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:masked-binary"));
    // Refused before it runs: a write whose result would be refused commits
    // nothing, and its transaction fails on the server as the client is told.
    client.batch_execute("CREATE TEMP TABLE jotted (notes text[])").await.unwrap();
    let write = "INSERT INTO jotted VALUES (ARRAY['call ana@example.com']) RETURNING notes";
    let e = client.query(write, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:masked-binary"));
    assert_eq!(rows(&client, "SELECT count(*) FROM jotted").await.unwrap(), vec![row(&[Some("0")])]);
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(sqlstate(&client.query(write, &[]).await.unwrap_err()), "42501");
    let aborted = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&aborted), "25P02", "the server failed the transaction too: {aborted:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // The same write in text format is masked, not refused, and commits.
    assert_eq!(
        rows(&client, write).await.unwrap(),
        vec![row(&[Some("{\"call ***@******e.com\"}")])],
        "the array read by the detectors in text"
    );
    assert_eq!(rows(&client, "SELECT count(*) FROM jotted").await.unwrap(), vec![row(&[Some("1")])]);
    // The session goes on, and a prepared statement run many times stays masked.
    let statement = client.prepare("SELECT email FROM customers WHERE id = $1").await.unwrap();
    for id in [1i32, 2, 1] {
        assert_eq!(client.query_one(&statement, &[&id]).await.unwrap().get::<_, &str>(0), "[redacted]");
    }
    let e = client.query("SELECT id FROM customers WHERE email = $1", &[&"ana@example.com"]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: pii"));
}

/// What libpq sends for a binary result (psycopg's binary cursors): the
/// client describes the portal itself. It is told of the refusal once, and
/// the write does not run; nor does a write after an error in its batch.
#[tokio::test]
async fn a_binary_result_that_cannot_be_masked_is_refused_once_and_runs_nothing() {
    let (s, _client, token) = masked_stack().await;
    let admin = written_table(&s, "jotted_raw (notes text[])").await;
    let mut stream = raw_login(&s, "pg", &token).await;
    let write = "INSERT INTO jotted_raw VALUES (ARRAY['call ana@example.com']) RETURNING notes";
    let describe_portal = message(b'D', b"P\0");
    send(&mut stream, &[parse("", write), bind_binary_of(""), describe_portal, execute("", 0), message(b'S', &[])])
        .await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (vec!["1".to_owned(), "2".to_owned(), "E:42501".to_owned()], b'I'), "one error");
    // An error before it in the batch: the server skips it, and so the Describe
    // the gateway holds it behind.
    let failing = [parse("", "SELECT 1/0"), bind("", "", &[]), execute("", 0)];
    let held = [parse("w", write), bind_binary_of("w"), execute("", 0), message(b'S', &[])];
    send(&mut stream, &[failing.concat(), held.concat()]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "E:22012"], "the division fails as it is planned, at its Bind");
    // The session goes on.
    send(&mut stream, &[parse("", "SELECT 1"), bind_binary_of(""), execute("", 0), message(b'S', &[])]).await;
    let (seen, _) = read_until_ready(&mut stream).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    let count = row_count(&admin, "jotted_raw").await;
    assert_eq!(count, 0, "a refused or skipped write ran");
}

/// A Describe of a portal whose binary result cannot be masked fails its
/// batch on the server as it does for the client: a write bound after it in
/// the same batch (whose text results need no description) does not run, and
/// the transaction is failed on both sides.
#[tokio::test]
async fn nothing_after_a_refused_describe_in_its_batch_runs() {
    let (s, _client, token) = masked_stack().await;
    let admin = written_table(&s, "jotted_after (n int)").await;
    let mut stream = raw_login(&s, "pg", &token).await;
    let batch = |n: &str| {
        [
            parse("", "SELECT ARRAY['call ana@example.com']"),
            bind_binary("p1", ""),
            parse(&format!("w{n}"), &format!("INSERT INTO jotted_after VALUES ({n})")),
            bind("p2", &format!("w{n}"), &[]),
            message(b'D', b"Pp1\0"),
            execute("p2", 0),
            message(b'S', &[]),
        ]
    };
    send(&mut stream, &batch("1")).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "1", "2", "E:42501"]);
    assert_eq!(status, b'I');
    // In a transaction: the client is told it failed, and so it has.
    send(&mut stream, &[query("BEGIN")]).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["C:BEGIN".to_owned()], b'T'));
    send(&mut stream, &batch("2")).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(seen.last().map(String::as_str), Some("E:42501"), "{seen:?}");
    assert_eq!(status, b'E', "the transaction failed on the server as the client was told");
    send(&mut stream, &[query("COMMIT")]).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["C:ROLLBACK".to_owned()], b'I'));
    let count = row_count(&admin, "jotted_after").await;
    assert_eq!(count, 0, "a write after a refused Describe ran");
    // The portal bound in a batch not answered yet when its Describe comes:
    // described as a portal nothing is known of (every computed column
    // redacted), so answered; its own Execute waits for a description by its
    // statement, which refuses it before it runs.
    send(&mut stream, &[query("BEGIN")]).await;
    assert_eq!(read_until_ready(&mut stream).await.1, b'T');
    let [select, bind_p1, write, bind_p2, describe, execute_p2, sync] = batch("3");
    send(&mut stream, &[select, bind_p1, sync.clone(), write, bind_p2, describe, execute_p2, sync.clone()]).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["1".to_owned(), "2".to_owned()], b'T'));
    assert_eq!(read_until_ready(&mut stream).await, (["1", "2", "T", "C:INSERT 0 1"].map(String::from).to_vec(), b'T'));
    send(&mut stream, &[execute("p1", 0), sync]).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["E:42501".to_owned()], b'E'));
    send(&mut stream, &[query("ROLLBACK")]).await;
    assert_eq!(read_until_ready(&mut stream).await.1, b'I');
    // A portal whose Describe was held and let through answers that Describe,
    // its Execute and a second Describe as asked, its rows masked.
    send(
        &mut stream,
        &[
            parse("", "SELECT 'call ana@example.com'::text"),
            bind_binary("p3", ""),
            message(b'D', b"Pp3\0"),
            execute("p3", 0),
            message(b'D', b"Pp3\0"),
            message(b'S', &[]),
        ],
    )
    .await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!(seen, ["1", "2", "T", "D:call ***@******e.com", "C:SELECT 1", "T"], "{status}");
}

/// A COPY out in binary format is refused by its text, before it runs: the
/// detectors could not read its rows. In a batch, what follows it is skipped
/// with it, as after any refused statement.
#[tokio::test]
async fn a_binary_copy_is_refused_before_it_runs_with_the_rest_of_its_batch() {
    let (s, client, token) = masked_stack().await;
    let admin = written_table(&s, "jotted_copy (n int)").await;
    let copy = "COPY (INSERT INTO jotted_copy VALUES (1) RETURNING 'call ana@example.com') TO STDOUT (FORMAT binary)";
    let e = client.batch_execute(copy).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: builtin:masked-binary"));
    let mut stream = raw_login(&s, "pg", &token).await;
    let batch = [
        parse("", copy),
        bind("", "", &[]),
        execute("", 0),
        parse("", "INSERT INTO jotted_copy VALUES (1)"),
        bind("", "", &[]),
        execute("", 0),
        message(b'S', &[]),
    ];
    send(&mut stream, &batch).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["E:42501".to_owned()], b'I'));
    let count = row_count(&admin, "jotted_copy").await;
    assert_eq!(count, 0, "the refused binary COPY, or the write after it, ran");
}

/// A cursor is a portal too: one declared by SQL under the name of a portal
/// the gateway saw bound (closed by SQL first) is what an Execute of that
/// name runs. Fetched so, its rows come as text, and the detectors read them:
/// the gateway's knowledge of the portal bound before gives nothing away. (A
/// `BINARY` cursor is refused where rules have detectors.)
#[tokio::test]
async fn a_cursor_declared_under_a_bound_portals_name_is_still_masked() {
    let (s, _client, token) = masked_stack().await;
    let mut stream = raw_login(&s, "pg", &token).await;
    send(&mut stream, &[query("BEGIN")]).await;
    assert_eq!(read_until_ready(&mut stream).await, (vec!["C:BEGIN".to_owned()], b'T'));
    send(&mut stream, &[parse("", "SELECT 'nothing to mask'::text"), bind("p", "", &[]), message(b'S', &[])]).await;
    assert_eq!(read_until_ready(&mut stream).await.0, ["1", "2"]);
    for sql in ["CLOSE p", "DECLARE p CURSOR FOR SELECT ARRAY['call ana@example.com']"] {
        send(&mut stream, &[parse("", sql), bind("", "", &[]), execute("", 0), message(b'S', &[])]).await;
        let (seen, _) = read_until_ready(&mut stream).await;
        assert_eq!(seen.len(), 3, "{sql}: {seen:?}");
    }
    send(&mut stream, &[execute("p", 0), message(b'S', &[])]).await;
    let (seen, status) = read_until_ready(&mut stream).await;
    assert_eq!((seen, status), (vec![r#"D:{"call ***@******e.com"}"#.to_owned(), "C:SELECT 1".to_owned()], b'T'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_sees_masked_values_in_text_and_binary() {
    let (s, _client, token) = masked_stack().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_masking.py");
    let conninfo = s.url("pg", &token);
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(conninfo).output())
        .await
        .unwrap()
        .expect("python3 runs: run scripts/test, which installs psycopg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psycopg script failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["text"], serde_json::json!([1, "[redacted]", "[redacted]", "**** **** **** 1111"]), "{v}");
    assert_eq!(v["binary"], serde_json::json!([1, "[redacted]", "[redacted]", "**** **** **** 1111"]), "{v}");
    assert_eq!(v["prepared"], serde_json::json!(["[redacted]", "[redacted]", "[redacted]"]), "{v}");
    assert_eq!(v["binary_array"], "42501", "{v}");
    assert_eq!(v["filter"], "42501", "{v}");
    assert_eq!(v["after"], "Ana", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_masked_values_and_copies_what_is_not_masked() {
    let (s, _client, token) = masked_stack().await;
    let psql = |args: Vec<String>| {
        let mut cmd = Command::new("psql");
        cmd.arg(format!("host=127.0.0.1 port={} user=pg dbname={} sslmode=require", s.pg.port(), s.db.name()))
            .args(["-X", "-At", "-F", "|"])
            .args(args)
            .env("PGPASSWORD", &token);
        async move { tokio::task::spawn_blocking(move || cmd.output().expect("psql runs")).await.unwrap() }
    };
    let out = psql(vec!["-c".into(), "SELECT id, email, card, upper(ssn) FROM customers ORDER BY id".into()]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1|[redacted]|**** **** **** 1111|[redacted]\n2|[redacted]|**** **** **** 0004|[redacted]\n"
    );
    // \copy out of what is not masked runs, read by the detectors; of a masked table, refused.
    let out = psql(vec!["-c".into(), r"\copy (SELECT id, notes FROM customers ORDER BY id) TO STDOUT".into()]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\tcall ***@******e.com, card **** **** **** 1111\n2\tno secrets here\n"
    );
    let out = psql(vec!["-c".into(), r"\copy customers TO STDOUT".into()]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("masked-export") && !String::from_utf8_lossy(&out.stdout).contains('@'), "{stderr}");
}
