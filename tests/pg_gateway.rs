//! The Postgres gateway with real clients (tokio-postgres, psql) in front and a
//! real Postgres behind: tokens, grants, session roles, revocation, expiry,
//! cancel, encodings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_testkit::eventually;
use airlock_testkit::proxy::TcpProxy;
use serde_json::json;
use support::{Stack, admin_client, sqlstate, wire};

#[tokio::test]
async fn a_granted_agent_reads_through_a_role_made_for_its_session() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let user: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert!(user.starts_with("airlock_"), "{user}");
    assert_eq!(s.session_roles().await, vec![user.clone()]);
    // Extended protocol with parameters, through the gateway.
    let row = client.query_one("SELECT name FROM people WHERE id = $1", &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "café");
    let statement = client.prepare("SELECT count(*) FROM people WHERE id > $1").await.unwrap();
    for _ in 0..3 {
        let n: i64 = client.query_one(&statement, &[&0i32]).await.unwrap().get(0);
        assert_eq!(n, 2);
    }
    // The role has the template's rights and no more.
    let e = client.execute("INSERT INTO people VALUES (3, 'x')", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Errors pass through and the session goes on.
    let e = client.query("SELECT * FROM nowhere", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    let n: i64 = client.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    drop(client);
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

/// A CI job logs in with its provider's OIDC token: the gateway fetches the
/// issuer's keys on first use and admits the job under its grant.
#[tokio::test]
async fn an_oidc_token_from_a_trusted_issuer_is_a_password() {
    use airlock_testkit::oidc::{AUDIENCE, OidcIssuer};

    let idp = OidcIssuer::start().await.unwrap();
    let s = Stack::start().await;
    let (status, body) =
        s.post("/v1/issuers", json!({"name": "ci", "issuer_url": idp.url(), "audience": AUDIENCE})).await;
    assert_eq!(status, 201, "{body}");
    s.grant("repo:acme/app:ref:refs/heads/main", 900).await;
    s.settle().await;
    let token = idp.token(&idp.claims("repo:acme/app:ref:refs/heads/main"));
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let user: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert!(user.starts_with("airlock_"), "{user}");
    assert_eq!(idp.jwks_fetches(), 1);
    drop(client);

    // Its signature altered: refused, and said why.
    let token = idp.token(&idp.claims("repo:acme/app:ref:refs/heads/main"));
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{flipped}{}", &signature[1..]);
    let e = s.connect("pg.readonly", &forged).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(message.contains("invalid token signature"), "{message}");
}

/// The gateway's side of a client's connection has TCP keepalive on: a client
/// host that vanishes is found out, and its session ended, long before its
/// grant would end it. (The kernel arms the keepalive timer on an idle
/// socket that has it: `/proc/net/tcp` shows that timer, hours long.)
#[tokio::test]
async fn a_clients_connection_has_tcp_keepalive_on_the_gateways_side() {
    let s = Stack::start().await;
    let token = s.token("ka-job").await;
    s.grant("ka-job", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let port = format!(":{:04X} ", s.pg.port());
    let armed = |table: &str| {
        std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state ESTABLISHED, timer kind 2 ("another timer") for longer than a minute.
            let (Some(local), Some(state), Some(timer)) = (fields.get(1), fields.get(3), fields.get(5)) else {
                return false;
            };
            let (kind, ticks) = timer.split_once(':').unwrap_or_default();
            format!("{local} ").ends_with(&port)
                && *state == "01"
                && kind == "02"
                && u64::from_str_radix(ticks, 16).is_ok_and(|t| t > 60 * 100)
        })
    };
    eventually(Duration::from_secs(10), "the gateway's socket to show a keepalive timer", || async {
        armed("/proc/net/tcp") || armed("/proc/net/tcp6")
    })
    .await;
    drop(client);
}

/// A session role logs in to the target with the password the gateway made
/// for it (SCRAM), not under the trust that the test Postgres extends to its
/// admin: without that password the target refuses the role.
#[tokio::test]
async fn a_session_role_logs_in_with_its_own_scram_password() {
    let s = Stack::start().await;
    let token = s.token("scram-job").await;
    s.grant("scram-job", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let role: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert!(role.starts_with("airlock_"), "{role}");
    let verifier: String = admin_client(s.db.url())
        .await
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "not a SCRAM verifier");

    let (database, admin_url) = s.target();
    let mut direct: tokio_postgres::Config = admin_url.parse().unwrap();
    direct.user(&role).password("not-its-password").dbname(&database);
    let e = direct.connect(tokio_postgres::NoTls).await.err().unwrap_or_else(|| {
        panic!(
            "the test Postgres let {role} in without its password: run scripts/test, which asks members of \
             {} for SCRAM in pg_hba.conf",
            support::SCRAM_LOGINS
        )
    });
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    // The session goes on meanwhile.
    client.simple_query("SELECT 1").await.unwrap();
}

/// A session outlives the runtime the gateway was started on (as when `airlock
/// up` stops and gives up waiting for its sessions): its timers go on working,
/// so a login stalled at the password prompt is still told that its deadline
/// passed, instead of the session thread panicking on a timer whose driver
/// is gone.
#[test]
fn a_stalled_login_is_timed_out_after_the_main_runtime_is_gone() {
    use std::io::{Read, Write};
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = main.block_on(Stack::start_with_gateway(|g| g.login_timeout = Duration::from_secs(2)));
    let mut client = std::net::TcpStream::connect(s.pg).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    client.write_all(&wire::startup_message("pg.readonly", s.db.name())).unwrap();
    // The prompt comes from the session thread: the session is there now.
    let mut prompt = [0u8; 9];
    client.read_exact(&mut prompt).unwrap();
    assert_eq!(prompt, [b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
    main.shutdown_background();

    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("the gateway closed the stalled login");
    assert_eq!(rest.first(), Some(&b'E'), "no error before the close: {rest:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("C57014\0"), "{text}");
    assert!(text.contains("canceling authentication due to timeout"), "{text}");
    drop(s);
}

/// A client that connects and stalls (before its startup message, in its TLS
/// handshake, or at the password prompt) is told why and closed once the
/// login deadline passes; one that logged in may idle past it.
#[tokio::test]
async fn a_login_that_stalls_is_closed_at_its_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start_with_gateway(|g| g.login_timeout = Duration::from_secs(2)).await;
    let token = s.token("slow-job").await;
    s.grant("slow-job", 900).await;
    let logged_in = s.connect("pg.readonly", &token).await.unwrap();

    /// Everything the gateway sends until it closes, waiting far longer than the deadline.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut all))
            .await
            .expect("the gateway kept a stalled login open")
            .unwrap();
        all
    }
    /// The one FATAL a stalled login gets: its code and message.
    fn fatal(bytes: &[u8]) -> (String, String) {
        assert_eq!(bytes.first(), Some(&b'E'), "{bytes:?}");
        let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 1 + len, "more than one message: {bytes:?}");
        let field = |tag: u8| {
            bytes[5..]
                .split(|b| *b == 0)
                .find_map(|f| f.strip_prefix(&[tag]))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(field(b'S').as_deref(), Some("FATAL"));
        (field(b'C').unwrap(), field(b'M').unwrap())
    }

    // Three clients stall at once: silent from the start, at the password
    // prompt, and in the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    let mut prompted = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    prompted.write_all(&wire::startup_message("pg.readonly", s.db.name())).await.unwrap();
    let mut handshaking = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    handshaking.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let (silent, prompted, handshaking) =
        tokio::join!(until_closed(&mut silent), until_closed(&mut prompted), until_closed(&mut handshaking));

    let (code, message) = fatal(&silent);
    assert_eq!(code, "57014");
    assert_eq!(message, "canceling authentication due to timeout: the login did not finish within 2 s");
    // AuthenticationCleartextPassword, then the FATAL.
    assert_eq!(prompted.get(..9), Some(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3][..]), "{prompted:?}");
    let (code, message) = fatal(&prompted[9..]);
    assert_eq!(code, "57014");
    assert!(message.starts_with("canceling authentication due to timeout"), "{message}");
    // Closed, with nothing said after the SSLRequest's answer: not in the clear.
    assert_eq!(handshaking, b"S");

    // The session that logged in before all of that, over two seconds ago, is still served.
    assert!(!logged_in.is_closed());
    logged_in.simple_query("SELECT 1").await.unwrap();
}

/// One address holds at most `max_logins_per_address` logins in progress:
/// the next client is told so (over TLS too), and a slot frees when a login
/// ends, refused or admitted. Sessions already logged in do not count.
#[tokio::test]
async fn one_address_holds_a_bounded_number_of_logins_in_progress() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start_with_gateway(|g| g.max_logins_per_address = 2).await;
    let token = s.token("busy-job").await;
    s.grant("busy-job", 900).await;
    let logged_in = s.connect("pg.readonly", &token).await.unwrap();

    // Two logins wait at the password prompt: both counted by then.
    let mut first = wire::prompted_login(&s, "pg.readonly").await;
    let mut second = wire::prompted_login(&s, "pg.readonly").await;
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert_eq!(message, "too many logins in progress from 127.0.0.1 (at most 2 at once); try again shortly");
    // A client over TLS is told inside TLS, where it reads the refusal (an
    // error in place of the answer to its SSLRequest it would not show).
    let conninfo =
        format!("host=127.0.0.1 port={} user=pg.readonly dbname={} sslmode=require", s.pg.port(), s.db.name());
    let mut psql = Command::new("psql");
    psql.arg(conninfo).args(["-X", "-At", "-c", "SELECT 1"]).env("PGPASSWORD", &token);
    let out = tokio::task::spawn_blocking(move || psql.output().unwrap()).await.unwrap();
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("FATAL:  too many logins in progress from 127.0.0.1 (at most 2 at once)"), "{said}");

    // A refused login frees its slot by the time its client reads the refusal...
    first.write_all(&wire::password("not-a-token")).await.unwrap();
    let (code, _) = wire::read_fatal(&mut first).await;
    assert_eq!(code, "28000");
    let mut third = wire::prompted_login(&s, "pg.readonly").await;
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    // ...and an admitted one by the time its client is ready for queries.
    for stream in [&mut second, &mut third] {
        stream.write_all(&wire::password(&token)).await.unwrap();
        let (_, status) = wire::read_until_ready(stream).await;
        assert_eq!(status, b'I');
    }
    let fourth = s.connect("pg.readonly", &token).await.unwrap();

    for client in [&logged_in, &fourth] {
        client.simple_query("SELECT 1").await.unwrap();
    }
    // The worker's metrics count the refusals and the sessions.
    assert_eq!(s.metric("airlock_gateway_logins_refused_past_the_cap_total").await, 3);
    assert_eq!(s.metric("airlock_gateway_sessions").await, 4);
    assert_eq!(s.metric("airlock_gateway_sessions_started_total").await, 4);
}

/// Logins in progress from every address together are bounded too: many
/// sources, each under its own cap, cannot hold every socket the gateway has.
#[tokio::test]
async fn logins_in_progress_are_bounded_across_addresses() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start_with_gateway(|g| g.max_logins = 2).await;
    let token = s.token("busy-job").await;
    s.grant("busy-job", 900).await;
    // A client from another loopback address (each one of 127/8 is this machine).
    let (pg, database) = (s.pg, s.db.name().to_owned());
    let from = |address: &'static str| {
        let database = database.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{address}:0").parse().unwrap()).unwrap();
            let mut stream = socket.connect(pg).await.unwrap();
            stream.write_all(&wire::startup_message("pg.readonly", &database)).await.unwrap();
            stream
        }
    };
    let mut first = from("127.0.0.2").await;
    let (tag, _) = wire::read_message(&mut first).await;
    assert_eq!(tag, b'R', "a password request");
    let mut second = from("127.0.0.3").await;
    let (tag, _) = wire::read_message(&mut second).await;
    assert_eq!(tag, b'R', "a password request");

    let mut third = from("127.0.0.4").await;
    let (code, message) = wire::read_fatal(&mut third).await;
    assert_eq!(code, "53300");
    assert_eq!(message, "too many logins in progress at this gateway (at most 2 at once); try again shortly");

    // A login that ends frees its slot.
    first.write_all(&wire::password(&token)).await.unwrap();
    let (_, status) = wire::read_until_ready(&mut first).await;
    assert_eq!(status, b'I');
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(s.metric("airlock_gateway_logins_refused_past_the_cap_total").await, 1);
    drop(second);
}

/// A client may start TLS at once instead of with an SSLRequest (libpq 17's
/// `sslnegotiation=direct`), naming the protocol by ALPN: it logs in and
/// works inside TLS. One that names no protocol is refused inside TLS with
/// 08P01 (Postgres refuses it too, closing without a word).
#[tokio::test]
async fn a_client_may_start_tls_directly_naming_postgres_by_alpn() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let pem = std::fs::read(s.dir.join("gateway.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let connect = |alpn: Vec<Vec<u8>>| {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
        config.alpn_protocols = alpn;
        let (pg, database) = (s.pg, s.db.name().to_owned());
        async move {
            let tcp = tokio::net::TcpStream::connect(pg).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
            tls.write_all(&wire::startup_message("pg.readonly", &database)).await.unwrap();
            tls
        }
    };

    let mut tls = connect(vec![b"postgresql".to_vec()]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    assert_eq!(wire::read_message(&mut tls).await, (b'R', 3i32.to_be_bytes().to_vec()), "a password request");
    tls.write_all(&wire::password(&token)).await.unwrap();
    while wire::read_message(&mut tls).await.0 != b'Z' {}
    tls.write_all(&wire::query("SELECT current_user LIKE 'airlock\\_%'")).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let (tag, body) = wire::read_message(&mut tls).await;
        match tag {
            b'D' => seen.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["t"], "a session under its own role, inside TLS");

    let mut bare = connect(Vec::new()).await;
    let (tag, body) = wire::read_message(&mut bare).await;
    assert_eq!(tag, b'E');
    let said = String::from_utf8_lossy(&body);
    assert!(said.contains("C08P01") && said.contains("ALPN"), "{said}");
}

/// A request for encryption is answered once, as Postgres answers it: a
/// client may ask for GSSAPI encryption, then TLS, but one asking again is
/// refused (0A000, as Postgres refuses it) rather than answered in a loop.
#[tokio::test]
async fn each_request_for_encryption_is_answered_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start().await;
    let gssenc = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    let mut twice = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    twice.write_all(&gssenc).await.unwrap();
    assert_eq!(twice.read_u8().await.unwrap(), b'N');
    twice.write_all(&gssenc).await.unwrap();
    let (code, message) = wire::read_fatal(&mut twice).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("0A000", "GSSENCRequest sent again, or inside TLS, after encryption was negotiated")
    );

    // libpq's order when it has Kerberos credentials: GSSAPI encryption
    // refused, then TLS, accepted.
    let mut in_turn = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    in_turn.write_all(&gssenc).await.unwrap();
    assert_eq!(in_turn.read_u8().await.unwrap(), b'N');
    in_turn.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    assert_eq!(in_turn.read_u8().await.unwrap(), b'S');
}

#[tokio::test]
async fn bad_tokens_and_missing_grants_are_refused_with_the_right_sqlstate() {
    let s = Stack::start().await;
    let e = s.connect("pg.readonly", "not-a-token").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    assert!(e.as_db_error().unwrap().message().contains("invalid access token"), "{e}");

    let token = s.token("ci-job-42").await;
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(e.as_db_error().unwrap().message().contains("no grant for ci-job-42 on pg"), "{e}");
    let e = s.connect("nope.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(e.as_db_error().unwrap().message().contains("no connection named nope"), "{e}");

    let grant = s.grant("ci-job-42", 900).await;
    // The role can be left out when the grant is for one role.
    s.connect("pg", &token).await.unwrap();
    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "rotation"})).await;
    assert_eq!(status, 200);
    s.settle().await;
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(e.as_db_error().unwrap().message().contains("was revoked by api-key:admin: rotation"), "{e}");
    // The role of the session that was let in goes when that session ends, after its client left.
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

/// A login right after a grant whose event the bus lost, with nothing after
/// it: the gateway finds its worker behind the log and has it fetch what it
/// lacks, instead of refusing logins until the worker next compares heads
/// (once a minute here, longer than this test runs).
#[tokio::test]
async fn a_login_right_after_a_grant_the_bus_lost_is_admitted() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.settle().await;
    // Loaded, with its first comparison of heads behind it: the next one is
    // a minute away, so nothing but the login's request fetches the grant.
    eventually(Duration::from_secs(10), "the worker to load", || async { s.projection.is_ready() }).await;
    s.bus.lose(true);
    let body =
        json!({"subject": "ci-job-42", "connection": "pg", "role": "readonly", "ttl_seconds": 900, "reason": "test"});
    let (status, body) = s.post("/v1/grants", body).await;
    assert_eq!(status, 201, "{body}");
    let (tenant, head) = s.log_head().await;
    assert!(s.projection.seq(&tenant) < head, "the grant reached the worker over the bus");
    // The gateway waits only briefly for its worker: on a busy machine the
    // first login may be refused before the fetch lands; each refused login
    // asks for it again.
    let user = std::sync::Mutex::new(String::new());
    eventually(Duration::from_secs(15), "a login under the grant", || async {
        let Ok(client) = s.connect("pg.readonly", &token).await else { return false };
        let row = client.query_one("SELECT current_user", &[]).await.unwrap();
        *user.lock().unwrap() = row.get(0);
        true
    })
    .await;
    let user = user.into_inner().unwrap();
    assert!(user.starts_with("airlock_"), "{user}");
    let backfilled = s.projection.counters().backfilled.load(std::sync::atomic::Ordering::Relaxed);
    assert!(backfilled >= 1, "the worker fetched the grant from the log");
}

#[tokio::test]
async fn revocation_ends_a_live_session_within_a_second() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    let grant = s.grant("ci-job-42", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.batch_execute("BEGIN; SELECT * FROM people;").await.unwrap();
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);

    let revoked_at = Instant::now();
    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
    assert_eq!(status, 200);
    // The gateway sends a FATAL and closes: the client sees it as soon as it looks.
    eventually(Duration::from_secs(5), "the session to end", || async { client.is_closed() }).await;
    let ended = revoked_at.elapsed();
    assert!(ended < Duration::from_secs(1), "the session outlived its grant by {ended:?}");
    let e = client.query("SELECT 1", &[]).await.unwrap_err();
    assert!(e.is_closed(), "{e}");
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
    let admin = admin_client(s.db.url()).await;
    let left = admin.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap();
    assert!(left.is_empty());
}

/// A client that stops reading a long result holds the gateway's write to it
/// (TCP keepalive does not end that: the client's kernel still answers). Its
/// grant still ends it: revoked, the session ends and its role is dropped.
#[tokio::test]
async fn revocation_ends_a_session_whose_client_stopped_reading() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    let grant = s.grant("ci-job-42", 900).await;
    let mut stream = wire::raw_login(&s, "pg.readonly", &token).await;
    // About 100 MB of rows, never read.
    stream.write_all(&wire::query("SELECT repeat('x', 1000) FROM generate_series(1, 100000)")).await.unwrap();
    let admin = admin_client(s.db.url()).await;
    // The target's backend waits to write: every buffer between it and the client is full.
    eventually(Duration::from_secs(20), "the session's backend to wait on its client", || async {
        let waiting = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND usename LIKE 'airlock\\_%' AND wait_event = 'ClientWrite'";
        admin.query(waiting, &[]).await.unwrap().len() == 1
    })
    .await;

    let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
    let backends = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND usename LIKE 'airlock\\_%'";
    assert!(admin.query(backends, &[]).await.unwrap().is_empty(), "the session's backend is gone");
    drop(stream);
}

/// A session writing a long statement to a target busy streaming a result
/// passes the result on as it goes (reading ahead while its write waits), in
/// passes that each end sooner than its write looks at the grant. A client
/// reading as fast as the target writes keeps those passes going for as long
/// as the result lasts; its grant still ends the session: revoked, it ends
/// with a FATAL that says so.
#[tokio::test]
async fn revocation_ends_a_session_whose_write_to_the_target_streams_a_result_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Passes of 64 KiB: many, each short, while the client keeps reading.
    let s = Stack::start_with_gateway(|o| o.read_ahead_limit = 64 << 10).await;
    let token = s.token("ci-job-42").await;
    let grant = s.grant("ci-job-42", 900).await;
    let (mut from_gateway, mut to_gateway) = wire::raw_login(&s, "pg.readonly", &token).await.into_split();
    // A copy out that would run for hours, then a statement longer than the
    // sockets between the gateway and the target hold: the target reads it
    // only once the copy has ended.
    // (In the select list, the series streams; in FROM it would be made whole first.)
    let copy = wire::query("COPY (SELECT repeat('x', 4000) || generate_series(1, 1000000000)) TO STDOUT");
    let long = wire::query(&format!("SELECT 1 -- {}", "x".repeat(24 << 20)));
    let writer = tokio::spawn(async move {
        to_gateway.write_all(&copy).await.unwrap();
        to_gateway.write_all(&long).await.unwrap();
        to_gateway
    });

    // Reads as fast as it can; returns the first FATAL's message, if any.
    let mut buf = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    let mut read_total = 0usize;
    let mut revoked_at = None;
    let fatal = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = from_gateway.read(&mut chunk).await.unwrap();
            if n == 0 {
                return None;
            }
            read_total += n;
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while let Some(header) = buf.get(at..at + 5) {
                let len = usize::try_from(i32::from_be_bytes(header[1..5].try_into().unwrap())).unwrap();
                let Some(body) = buf.get(at + 5..at + 1 + len) else { break };
                if header[0] == b'E' {
                    return Some(String::from_utf8_lossy(body).into_owned());
                }
                at += 1 + len;
            }
            buf.drain(..at);
            // Once the gateway has taken the long statement and keeps passing
            // the copy on while it writes it, the grant is revoked.
            if revoked_at.is_none() && writer.is_finished() && read_total > 16 << 20 {
                let (status, _) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({"reason": "incident"})).await;
                assert_eq!(status, 200);
                revoked_at = Some(Instant::now());
            }
        }
    })
    .await
    .expect("the session went on streaming 30 s after its grant was revoked");
    let revoked_at = revoked_at.expect("the grant was revoked before the session ended");
    let fatal = fatal.expect("a FATAL before the connection closed");
    assert!(fatal.contains("FATAL") && fatal.contains("revoked"), "{fatal}");
    let ended = revoked_at.elapsed();
    assert!(ended < Duration::from_secs(5), "the session outlived its grant by {ended:?}");
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

/// A row far longer than the gateway keeps of one goes through as it
/// arrives: the client reads it whole, and the gateway's memory grows by a
/// small part of it, not by the row.
#[tokio::test]
async fn a_very_long_row_goes_through_without_being_held_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LONG: usize = 64_000_000;
    let s = Stack::start_full(None, support::Recording::Off, Default::default(), |_| {}).await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let mut stream = wire::raw_login(&s, "pg.readonly", &token).await;
    // The most this process (the gateway, and the test reading) has held.
    let peak_kib = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let before = peak_kib();
    stream.write_all(&wire::query(&format!("SELECT repeat('x', {LONG})"))).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let tag = stream.read_u8().await.unwrap();
        let len = usize::try_from(stream.read_i32().await.unwrap()).unwrap() - 4;
        if tag == b'D' {
            // Read and counted, never kept.
            let (mut left, mut xs) = (len, 0usize);
            while left > 0 {
                let n = stream.read(&mut chunk[..left.min(1 << 20)]).await.unwrap();
                assert!(n > 0, "the row was cut short");
                xs += chunk[..n].iter().filter(|b| **b == b'x').count();
                left -= n;
            }
            seen.push(format!("D:{xs}"));
            continue;
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.unwrap();
        seen.push((tag as char).to_string());
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(seen, ["T".to_owned(), format!("D:{LONG}"), "C".to_owned(), "Z".to_owned()]);
    let grew_mib = (peak_kib() - before) / 1024;
    assert!(grew_mib < 24, "the gateway's process grew by {grew_mib} MiB to pass on a row of {} MiB", LONG >> 20);
    // The session goes on as before.
    let (rows, status) = {
        stream.write_all(&wire::query("SELECT 1")).await.unwrap();
        wire::read_until_ready(&mut stream).await
    };
    assert_eq!((rows, status), (vec!["T".to_owned(), "D:1".to_owned(), "C:SELECT 1".to_owned()], b'I'));
}

/// A target that does not answer holds up the logins to it alone: while the
/// gateway waits for its admin connection, a login to another target goes
/// through.
#[tokio::test]
async fn a_target_that_does_not_answer_holds_up_no_other_targets_logins() {
    let s = Stack::start().await;
    // Takes the connection and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = granted_at(&s, "silent", silent.local_addr().unwrap(), "agent-9").await;
    let stuck = tokio::spawn({
        let url = s.url("silent.readonly", &token);
        async move { tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map(|_| ()) }
    });
    // The gateway is opening the silent target's admin connection.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(10), silent.accept()).await.unwrap().unwrap();

    let other = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    // Well inside the 10 s the silent target's login may take.
    let client = tokio::time::timeout(Duration::from_secs(6), s.connect("pg.readonly", &other))
        .await
        .expect("a login waited for another target's admin connection")
        .unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert!(!stuck.is_finished(), "the silent target's login is still waiting");
    stuck.abort();
}

/// A second connection to the same target is swept when the gateway first
/// opens its admin connections, while a session through the first one runs:
/// that session's role is this run's, and is left.
#[tokio::test]
async fn a_sweep_while_serving_leaves_the_live_sessions_roles() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);

    let other = granted_at(&s, "pg-again", POSTGRES.parse().unwrap(), "agent-9").await;
    let second = s.connect("pg-again.readonly", &other).await.unwrap();
    second.query_one("SELECT 1", &[]).await.unwrap();
    client.query_one("SELECT 1", &[]).await.expect("the first session goes on");
    assert!(s.session_roles().await.contains(&role), "the live session's role was swept");
}

/// A Flush opens no batch: a simple query after a lone one runs, as it does
/// on Postgres, whether the gateway inspects the session's statements or not.
#[tokio::test]
async fn a_simple_query_after_a_lone_flush_runs() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let flush_then_query = [wire::message(b'H', &[]), wire::query("SELECT 7")];
    let mut unchecked = wire::raw_login(&s, "pg.readonly", &token).await;
    wire::send(&mut unchecked, &flush_then_query).await;
    assert_eq!(
        wire::read_until_ready(&mut unchecked).await,
        (vec!["T".into(), "D:7".into(), "C:SELECT 1".into()], b'I')
    );

    s.apply_policy("version: 1\ncommands:\n  - name: no-ddl\n    match: { kinds: [ddl] }\n    action: deny\n").await;
    let mut checked = wire::raw_login(&s, "pg.readonly", &token).await;
    wire::send(&mut checked, &flush_then_query).await;
    assert_eq!(wire::read_until_ready(&mut checked).await, (vec!["T".into(), "D:7".into(), "C:SELECT 1".into()], b'I'));
}

#[tokio::test]
async fn a_session_ends_when_its_grant_expires() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 2).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    eventually(Duration::from_secs(6), "the session to end at the grant's end", || async { client.is_closed() }).await;
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("has expired"), "{e}");
}

/// A session outlives the grant it began under when another grant admits it,
/// and then ends when that one does, by the worker's own clock: the control
/// plane's clock is set an hour back here, so no recorded expiry says so.
#[tokio::test]
async fn a_session_a_second_grant_keeps_ends_at_that_grants_end() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    let long = s.grant("ci-job-42", 900).await;
    s.grant("ci-job-42", 10).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    s.clock.advance(-3600);
    let (status, _) = s.post(&format!("/v1/grants/{long}/revoke"), json!({"reason": "rotated"})).await;
    assert_eq!(status, 200);
    // The worker has the revocation, and the second grant keeps the session.
    s.settle().await;
    client.query_one("SELECT 1", &[]).await.expect("the second grant admits the session");
    eventually(Duration::from_secs(15), "the session to end at the second grant's end", || async {
        client.is_closed()
    })
    .await;
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_cancel_reaches_the_right_backend() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let cancel = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let e = client.query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    // The session is still usable.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

async fn psql(s: &Stack, token: &str, extra_env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    psql_with(s, "pg.readonly", token, extra_env, args).await
}

async fn psql_as(s: &Stack, user: &str, token: &str, args: &[&str]) -> std::process::Output {
    psql_with(s, user, token, &[], args).await
}

/// Runs psql off the runtime's thread: the gateway it talks to runs on this runtime.
async fn psql_with(
    s: &Stack,
    user: &str,
    token: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.arg(format!("host=127.0.0.1 port={} user={user} dbname={} sslmode=require", s.pg.port(), s.db.name()))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"])
        .args(args)
        .env("PGPASSWORD", token);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

#[tokio::test]
async fn psql_over_tls_with_a_transaction_copy_and_a_latin1_client() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;

    let out = psql(
        &s,
        &token,
        &[],
        &[
            "-c",
            "BEGIN",
            "-c",
            "SELECT name FROM people ORDER BY id",
            "-c",
            "COMMIT",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("café\nZoë"), "{text}");

    // \copy out streams COPY TO STDOUT through the gateway.
    let file = s.dir.join("people.csv");
    let out = psql(&s, &token, &[], &["-c", &format!("\\copy people TO '{}' CSV", file.display())]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "1,café\n2,Zoë\n");

    // \copy in streams COPY FROM STDIN, for a role that may write.
    let writer = s.token("loader").await;
    s.grant_role("loader", "readwrite", 900).await;
    std::fs::write(s.dir.join("more.csv"), "3,Émile\n4,Ødegaard\n").unwrap();
    let out = psql_as(
        &s,
        "pg.readwrite",
        &writer,
        &["-c", &format!("\\copy people FROM '{}' CSV", s.dir.join("more.csv").display())],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let admin = admin_client(s.db.url()).await;
    let n: i64 = admin.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
    assert_eq!(n, 4);

    // A LATIN1 client gets LATIN1 bytes: nothing on the way re-encodes text.
    let out =
        psql(&s, &token, &[("PGCLIENTENCODING", "LATIN1")], &["-c", "SELECT name FROM people WHERE id = 1"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"caf\xe9\n");

    // An error mid-transaction, as psql reports it.
    let out = psql(&s, &token, &[], &["-c", "BEGIN; SELECT 1/0; COMMIT;"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("division by zero"), "{out:?}");
}

/// Refuses statements that mention DROP: enough to see a refusal travel the
/// simple and the extended protocol.
struct NoDrops;

impl airlock_data_plane::postgres::hook::StatementHook for NoDrops {
    fn check(
        &self,
        _session: &airlock_data_plane::postgres::hook::SessionContext,
        statement: airlock_data_plane::postgres::hook::Statement<'_>,
    ) -> airlock_data_plane::postgres::hook::Verdict {
        use airlock_data_plane::postgres::hook::{Statement, Verdict};
        let sql = match statement {
            Statement::Query { sql } | Statement::Parse { sql, .. } => sql,
            _ => return Verdict::Allow,
        };
        if String::from_utf8_lossy(sql).to_ascii_uppercase().contains("DROP") {
            Verdict::Deny { rule: "no-drops".into(), message: "DROP is not allowed here".into() }
        } else {
            Verdict::Allow
        }
    }
}

#[tokio::test]
async fn a_refusal_from_the_statement_hook_reaches_the_client_and_the_session_goes_on() {
    let s = Stack::start_with_hook(std::sync::Arc::new(NoDrops)).await;
    let token = s.token("ci-job-42").await;
    s.grant_role("ci-job-42", "readwrite", 900).await;
    let client = s.connect("pg.readwrite", &token).await.unwrap();
    // Simple protocol.
    let e = client.batch_execute("DROP TABLE people").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(e.as_db_error().unwrap().message(), "DROP is not allowed here");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("rule: no-drops"));
    client.batch_execute("SELECT 1").await.unwrap();
    // Extended protocol: the refused Parse and what follows it up to Sync are discarded.
    let e = client.query("DROP TABLE people", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let n: i64 = client.query_one("SELECT count(*) FROM people WHERE id > $1", &[&0i32]).await.unwrap().get(0);
    assert_eq!(n, 2, "the table is still there and the session still works");
}

#[tokio::test]
async fn sessions_are_recorded_with_who_where_how_long_and_how_much() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    let grant = s.grant("ci-job-42", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.query("SELECT * FROM people", &[]).await.unwrap();
    drop(client);
    let events = || async {
        let r = reqwest::Client::new().get(format!("{}/v1/events?from_seq=0", s.api)).bearer_auth(&s.admin);
        let page: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
        page["events"].as_array().unwrap().clone()
    };
    eventually(Duration::from_secs(10), "the session's close to be recorded", || async {
        events().await.iter().any(|e| e["type"] == "session_closed")
    })
    .await;
    let all = events().await;
    let opened = all.iter().find(|e| e["type"] == "session_opened").unwrap();
    assert_eq!(opened["data"]["session"]["subject"], "ci-job-42");
    assert_eq!(opened["data"]["session"]["grant_id"], json!(grant));
    assert!(opened["data"]["session"]["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(opened["data"]["session"]["target_role"].as_str().unwrap().starts_with("airlock_"));
    let closed = all.iter().find(|e| e["type"] == "session_closed").unwrap();
    assert_eq!(closed["data"]["session_id"], opened["data"]["session"]["id"]);
    assert!(closed["data"]["bytes_from_client"].as_u64().unwrap() > 0);
    assert!(closed["data"]["bytes_to_client"].as_u64().unwrap() > 0);
    assert!(closed["data"]["duration_ms"].as_u64().is_some());
}

/// Every session of a static-credential connection logs in as its one user,
/// by SCRAM with its stored password (the user is one the test Postgres
/// checks by SCRAM, as a member of `scram_logins_test`).
#[tokio::test]
async fn a_static_credential_connection_logs_in_as_its_one_user() {
    let s = Stack::start().await;
    let user = format!("airlock_test_static_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE scram_logins_test NOLOGIN;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {user} LOGIN PASSWORD 'static-secret' IN ROLE scram_logins_test"
        ))
        .await
        .unwrap();
    /// Drops the user at the end, failing or not (never panicking in a drop).
    struct DropUser(String, String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            let (url, user) = (self.0.clone(), self.1.clone());
            let dropped = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                let drop_user = format!("DROP ROLE IF EXISTS {user}");
                let _ = rt.block_on(async { admin_client(&url).await.batch_execute(&drop_user).await });
            });
            let _ = dropped.join();
        }
    }
    let _user = DropUser(s.db.url().to_owned(), user.clone());
    let connection = json!({
        "name": "pg-static", "kind": "postgres", "address": "127.0.0.1:5432", "database": s.db.name(), "tls": "disable",
        "static_credential": {"user": user, "password": "static-secret"},
    });
    let (status, body) = s.post("/v1/connections", connection).await;
    assert_eq!(status, 201, "{body}");
    let token = s.token("ci-job-42").await;
    let grant = json!({"subject": "ci-job-42", "connection": "pg-static", "role": "shared", "ttl_seconds": 900});
    let (status, body) = s.post("/v1/grants", grant).await;
    assert_eq!(status, 201, "{body}");
    s.settle().await;
    // Two sessions: the second logs in with the password as the first hashed it.
    for _ in 0..2 {
        let client = s.connect("pg-static.shared", &token).await.unwrap();
        let current: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
        assert_eq!(current, user);
    }
    assert!(s.session_roles().await.is_empty(), "no session role is made for a static credential");
}

#[tokio::test]
async fn psql_verifies_the_gateways_certificate_with_verify_full() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let conninfo = format!(
        "host=localhost port={} user=pg.readonly dbname={} sslmode=verify-full sslrootcert={}",
        s.pg.port(),
        s.db.name(),
        s.dir.join("gateway.crt").display()
    );
    let mut cmd = Command::new("psql");
    cmd.arg(&conninfo).args(["-X", "-At", "-c", "SELECT 1"]).env("PGPASSWORD", &token);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"1\n");
    // Against roots that never signed the gateway's certificate, verification fails.
    let untrusted = conninfo.replace(
        &format!("sslrootcert={}", s.dir.join("gateway.crt").display()),
        "sslrootcert=/etc/ssl/certs/ca-certificates.crt",
    );
    assert_ne!(untrusted, conninfo);
    let mut cmd = Command::new("psql");
    cmd.arg(untrusted).args(["-X", "-At", "-c", "SELECT 1"]).env("PGPASSWORD", &token);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(!out.status.success(), "verify-full accepted a certificate it cannot trust: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"), "{out:?}");
}

/// A renewed certificate written over the gateway's files is served from the
/// next handshake on, without a restart: psql verifies it against the new
/// root, and no longer against the old one.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let s = Stack::start_with_gateway(|g| g.tls_reload_every = Duration::from_millis(100)).await;
    let token = s.token("ci-job-42").await;
    s.grant("ci-job-42", 900).await;
    let psql = |root: std::path::PathBuf| {
        let conninfo = format!(
            "host=localhost port={} user=pg.readonly dbname={} sslmode=verify-full sslrootcert={}",
            s.pg.port(),
            s.db.name(),
            root.display()
        );
        let mut cmd = Command::new("psql");
        cmd.arg(conninfo).args(["-X", "-At", "-c", "SELECT 1"]).env("PGPASSWORD", &token);
        async move { tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap() }
    };
    let before = s.dir.join("before.crt");
    std::fs::copy(s.dir.join("gateway.crt"), &before).unwrap();
    let out = psql(before.clone()).await;
    assert!(out.status.success(), "{out:?}");

    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let after = s.dir.join("after.crt");
    std::fs::write(&after, renewed.cert.pem()).unwrap();
    std::fs::write(s.dir.join("gateway.crt"), renewed.cert.pem()).unwrap();
    std::fs::write(s.dir.join("gateway.key"), renewed.signing_key.serialize_pem()).unwrap();
    eventually(Duration::from_secs(10), "psql to verify the renewed certificate", || {
        let login = psql(after.clone());
        async move { login.await.status.success() }
    })
    .await;
    let out = psql(before).await;
    assert!(!out.status.success(), "the old certificate is still served: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"), "{out:?}");
}

#[tokio::test]
async fn a_moved_clock_expires_the_grant_and_ends_the_session() {
    let s = Stack::start().await;
    let token = s.token("ci-job-42").await;
    let grant = s.grant("ci-job-42", 600).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    // The control plane's clock passes the grant's end: it records the expiry,
    // and the worker ends the session on that event, long before its own clock would.
    s.clock.advance(601);
    s.control_plane.expire_due().await.unwrap();
    eventually(Duration::from_secs(5), "the session to end on the recorded expiry", || async { client.is_closed() })
        .await;
    eventually(Duration::from_secs(10), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
    let (status, body) = s.post(&format!("/v1/grants/{grant}/revoke"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().ends_with("is already expired"), "{body}");
    let e = s.connect("pg.readonly", &token).await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("has expired"), "{e}");
}

#[tokio::test]
async fn a_session_role_the_target_could_not_drop_is_dropped_once_the_target_is_back() {
    let s = Stack::start().await;
    let proxy = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let token = granted_at(&s, "flaky", proxy.addr(), "ci-job-9").await;
    let client = s.connect("flaky.readonly", &token).await.unwrap();
    assert_eq!(s.metric("airlock_gateway_session_roles_awaiting_drop").await, 0);
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert_eq!(s.session_roles().await, vec![role.clone()]);

    // The target goes away mid-session: the session ends, and its role cannot be dropped then.
    proxy.cut();
    assert!(client.simple_query("SELECT 1").await.is_err());
    eventually(Duration::from_secs(10), "the client to see its session end", || async { client.is_closed() }).await;
    assert_eq!(s.session_roles().await, vec![role.clone()], "the role went while the target was away");
    // The worker's metrics show it waiting.
    eventually(Duration::from_secs(10), "the metrics to show a role awaiting its drop", || async {
        s.metric("airlock_gateway_session_roles_awaiting_drop").await == 1
    })
    .await;
    assert_eq!(s.metric("airlock_gateway_sessions").await, 0);

    // Back: the gateway tries again and the role goes.
    proxy.restore();
    every_role_dropped(&s, Duration::from_secs(20)).await;
}

/// Waits for every session role to be dropped, then for the metrics to count
/// none awaiting its drop (counted until the retry that dropped it has
/// finished with it, just after).
async fn every_role_dropped(s: &Stack, within: Duration) {
    eventually(within, "every session role to be dropped once its target answers", || async {
        s.session_roles().await.is_empty()
    })
    .await;
    eventually(Duration::from_secs(10), "the metrics to show no role awaiting its drop", || async {
        s.metric("airlock_gateway_session_roles_awaiting_drop").await == 0
    })
    .await;
}

/// A target that does not answer holds up neither another target's drops
/// nor more than one of its own tries at a time: with three session roles
/// waiting on a stalled target (each try there waits out the admin
/// connection's 10 s connect timeout), a role on another target goes at the
/// next round once that target is back; the stalled one's go once it answers.
#[tokio::test]
async fn a_stalled_target_does_not_hold_up_another_targets_drops() {
    let s = Stack::start().await;
    let stalled = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let token = granted_at(&s, "stalled", stalled.addr(), "ci-job-31").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.connect("stalled.readonly", &token).await.unwrap());
    }
    let mut waiting = Vec::new();
    for client in &clients {
        waiting.push(client.query_one("SELECT current_user", &[]).await.unwrap().get::<_, String>(0));
    }
    stalled.stall();
    // Told at once that the target is lost, not after its role's drop has waited out the timeout.
    for client in &clients {
        eventually(Duration::from_secs(5), "the client to see its session end", || async { client.is_closed() }).await;
    }
    // Each session's own drop waits out the connect timeout, side by side
    // (not one after the other), then leaves its role for later.
    eventually(Duration::from_secs(20), "three roles awaiting their drop", || async {
        s.metric("airlock_gateway_session_roles_awaiting_drop").await == 3
    })
    .await;

    // A role on another target, queued behind them; that target comes back at once.
    let back = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let token = granted_at(&s, "back", back.addr(), "ci-job-32").await;
    let client = s.connect("back.readonly", &token).await.unwrap();
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    back.cut();
    eventually(Duration::from_secs(10), "the client to see its session end", || async { client.is_closed() }).await;
    eventually(Duration::from_secs(10), "four roles awaiting their drop", || async {
        s.metric("airlock_gateway_session_roles_awaiting_drop").await == 4
    })
    .await;
    back.restore();
    // Tried one after the other, the stalled target's three tries (30 s) come first.
    eventually(Duration::from_secs(12), "the role on the target that is back to be dropped", || async {
        !s.session_roles().await.contains(&role)
    })
    .await;
    let mut left = s.session_roles().await;
    left.sort();
    waiting.sort();
    assert_eq!(left, waiting, "a role on the stalled target went while it did not answer");

    stalled.restore();
    every_role_dropped(&s, Duration::from_secs(40)).await;
}

/// Clients reach workers through a load balancer, so a cancel request may
/// land on a worker other than the one holding the session: passed on over
/// the bus, it still cancels the statement.
#[tokio::test]
async fn a_cancel_sent_to_another_worker_reaches_the_session() {
    let s = Stack::start().await;
    let other = s.second_worker().await;
    let token = s.token("ci-job-15").await;
    s.grant("ci-job-15", 900).await;
    let client = s.connect("pg.readonly", &token).await.unwrap();
    let cancel = client.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let e = client.query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
        (sqlstate(&e), client)
    });
    let admin = admin_client(s.db.url()).await;
    eventually(Duration::from_secs(10), "the statement to run", || async {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND query = 'SELECT pg_sleep(30)'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        running == 1
    })
    .await;
    let to_the_other = tokio::net::TcpStream::connect(other).await.unwrap();
    cancel.cancel_query_raw(to_the_other, tokio_postgres::NoTls).await.unwrap();
    let (code, client) = tokio::time::timeout(Duration::from_secs(20), sleeping).await.unwrap().unwrap();
    assert_eq!(code, "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// An operator points a connection at another address (the old one gone):
/// sessions go on, because the gateway's admin connections follow it. Once
/// the connection is removed they close, so that the target can drop the
/// admin's role or the database.
#[tokio::test]
async fn admin_connections_follow_a_moved_connection_and_close_once_it_is_removed() {
    let s = Stack::start().await;
    let old = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let new = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let token = granted_at(&s, "moving", old.addr(), "ci-job-12").await;
    let session = |what: &'static str| {
        let (s, token) = (&s, &token);
        async move {
            let client = s.connect("moving.readonly", token).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            let n: i64 = client.query_one("SELECT count(*) FROM people", &[]).await.unwrap().get(0);
            assert_eq!(n, 2, "{what}");
            drop(client);
            eventually(Duration::from_secs(10), "the session role to be dropped", || async {
                s.session_roles().await.is_empty()
            })
            .await;
        }
    };
    session("a session at the first address").await;
    assert!(old.relaying() > 0, "the admin connections go through the first address");

    // Moved, with the same credential; the old address then stops answering.
    move_connection(&s, "moving", new.addr()).await;
    old.cut();
    session("a session after the move").await;
    assert!(new.relaying() > 0, "the admin connections go through the new address");

    // Removed: nothing of it stays open.
    let (status, body) = s.send(reqwest::Method::DELETE, "/v1/connections/moving", None).await;
    assert_eq!(status, 204, "{body}");
    s.settle().await;
    eventually(Duration::from_secs(10), "the removed connection's admin connections to close", || async {
        new.relaying() == 0
    })
    .await;
}

/// A session role whose drop failed is dropped on the target it was made on,
/// also when its connection was pointed elsewhere meanwhile (here at an
/// address that does not answer).
#[tokio::test]
async fn a_session_role_left_behind_is_dropped_where_it_was_made_after_a_move() {
    let s = Stack::start().await;
    let old = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    let new = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    left_behind(&s, "moving", &old, "ci-job-13").await;

    move_connection(&s, "moving", new.addr()).await;
    new.cut();
    old.restore();
    eventually(Duration::from_secs(20), "the session role to be dropped where it was made", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

/// A session role whose drop failed is dropped once its target is back, also
/// when its connection was removed meanwhile (whose credential the control
/// plane no longer hands out).
#[tokio::test]
async fn a_session_role_left_behind_is_dropped_after_its_connection_is_removed() {
    let s = Stack::start().await;
    let proxy = TcpProxy::start(POSTGRES.parse().unwrap()).await.unwrap();
    left_behind(&s, "leaving", &proxy, "ci-job-14").await;

    let (status, body) = s.send(reqwest::Method::DELETE, "/v1/connections/leaving", None).await;
    assert_eq!(status, 204, "{body}");
    s.settle().await;
    proxy.restore();
    eventually(Duration::from_secs(20), "the session role to be dropped", || async {
        s.session_roles().await.is_empty()
    })
    .await;
}

const POSTGRES: &str = "127.0.0.1:5432";

/// The body of a connection `name` to the stack's database at `address`.
fn connection_at(s: &Stack, name: &str, address: std::net::SocketAddr) -> serde_json::Value {
    json!({
        "name": name, "kind": "postgres", "address": address.to_string(), "database": s.db.name(),
        "tls": "disable", "roles": {"readonly": s.template},
    })
}

/// Registers `name` at `address` (the admin logging in as postgres) and
/// grants `subject` its readonly role: `subject`'s token.
async fn granted_at(s: &Stack, name: &str, address: std::net::SocketAddr, subject: &str) -> String {
    let mut connection = connection_at(s, name, address);
    connection["admin_credential"] = json!({"user": "postgres", "password": ""});
    let (status, body) = s.post("/v1/connections", connection).await;
    assert_eq!(status, 201, "{body}");
    let token = s.token(subject).await;
    let grant = json!({"subject": subject, "connection": name, "role": "readonly", "ttl_seconds": 900});
    let (status, body) = s.post("/v1/grants", grant).await;
    assert_eq!(status, 201, "{body}");
    s.settle().await;
    token
}

/// A session on `name` at `proxy` (registered and granted to `subject`)
/// whose target goes away under it: the session ends, its role stays.
async fn left_behind(s: &Stack, name: &str, proxy: &TcpProxy, subject: &str) {
    let token = granted_at(s, name, proxy.addr(), subject).await;
    let client = s.connect(&format!("{name}.readonly"), &token).await.unwrap();
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    proxy.cut();
    eventually(Duration::from_secs(10), "the client to see its session end", || async { client.is_closed() }).await;
    assert_eq!(s.session_roles().await, vec![role], "the role went while its target was away");
}

/// Points `name` at `address`, keeping its credential.
async fn move_connection(s: &Stack, name: &str, address: std::net::SocketAddr) {
    let path = format!("/v1/connections/{name}");
    let (status, body) = s.send(reqwest::Method::PUT, &path, Some(connection_at(s, name, address))).await;
    assert_eq!(status, 200, "{body}");
    s.settle().await;
}
