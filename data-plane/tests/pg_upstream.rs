//! The gateway's upstream handshake against the Postgres on this machine
//! (127.0.0.1:5432), and against scripted servers for the password methods:
//! the test Postgres trusts 127.0.0.1 connections but for members of
//! `scram_logins_test` (`scripts/test`), so most roles are never asked for a
//! password. The scripted servers check proofs against the verifiers the real
//! server stored for real roles (pg_authid), so the SCRAM and MD5 arithmetic
//! is Postgres's, not ours.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::connection::TargetTls;
use airlock_data_plane::postgres::protocol::backend::{BackendMessage, decode_backend};
use airlock_data_plane::postgres::protocol::encode::{self, Report};
use airlock_data_plane::postgres::protocol::frame::{Frame, parse_frame};
use airlock_data_plane::postgres::protocol::frontend::{
    FrontendMessage, decode_frontend, decode_password, decode_sasl_initial_response,
};
use airlock_data_plane::postgres::protocol::sqlstate;
use airlock_data_plane::postgres::protocol::startup::{Startup, parse_startup};
use airlock_data_plane::postgres::roles::{RoleError, RoleManager, TlsChoice};
use airlock_data_plane::postgres::scram;
use airlock_data_plane::postgres::upstream::{self, Upstream, UpstreamError, UpstreamOptions};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes, BytesMut};
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PG: &str = "127.0.0.1:5432";

fn opts(tls: TargetTls) -> UpstreamOptions {
    let mut o = UpstreamOptions::new(PG, "postgres", "", "postgres");
    o.tls = tls;
    o.connect_timeout = Duration::from_secs(10);
    o
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
}

/// Reads server messages until ReadyForQuery, starting with what the handshake left over.
async fn read_until_ready(up: &mut Upstream) -> Vec<BackendMessage> {
    let mut out = Vec::new();
    loop {
        while let Some(frame) = parse_frame(&mut up.leftover, 1 << 30).unwrap() {
            let msg = decode_backend(&frame).unwrap();
            let done = matches!(msg, BackendMessage::ReadyForQuery { .. });
            out.push(msg);
            if done {
                return out;
            }
        }
        assert_ne!(up.stream.read_buf(&mut up.leftover).await.unwrap(), 0, "server closed");
    }
}

async fn simple_query(up: &mut Upstream, sql: &[u8]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::new();
    encode::query(&mut buf, sql).unwrap();
    up.stream.write_all(&buf).await.unwrap();
    read_until_ready(up).await
}

/// The single value of a one-row, one-column result.
async fn scalar(up: &mut Upstream, sql: &str) -> Bytes {
    let messages = simple_query(up, sql.as_bytes()).await;
    messages
        .into_iter()
        .find_map(|m| match m {
            BackendMessage::DataRow(mut cells) if cells.len() == 1 => cells.pop().unwrap(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no value for {sql}"))
}

// --- the real server ---

#[tokio::test]
async fn plaintext_login_runs_a_query() {
    let mut o = opts(TargetTls::Disable);
    o.params = vec![
        (b"application_name".to_vec(), b"airlock-upstream-test".to_vec()),
        (b"client_encoding".to_vec(), b"LATIN1".to_vec()),
        // A client's user never reaches the server.
        (b"user".to_vec(), b"nobody".to_vec()),
    ];
    let mut up = upstream::connect(&o).await.unwrap();
    assert!(!up.stream.is_tls());
    let upstream::UpstreamStream::Plain(tcp) = &up.stream else { panic!("not plain TCP") };
    assert!(socket2::SockRef::from(tcp).keepalive().unwrap(), "a vanished target is found out");
    assert_eq!(up.ready_status, b'I');
    assert!(up.parameter(b"server_version").unwrap().starts_with(b"15"));
    assert_eq!(up.parameter(b"application_name"), Some(&b"airlock-upstream-test"[..]));
    assert_eq!(up.parameter(b"client_encoding"), Some(&b"LATIN1"[..]));
    let key = up.backend_key.clone().unwrap();
    assert_eq!(key.secret_key.len(), 4);

    let messages = simple_query(&mut up, b"select 1").await;
    let [BackendMessage::RowDescription(fields), row, done, ready] = &messages[..] else { panic!("{messages:?}") };
    assert_eq!((&fields[0].name[..], fields[0].type_oid), (&b"?column?"[..], 23));
    assert_eq!(*row, BackendMessage::DataRow(vec![Some(Bytes::from_static(b"1"))]));
    assert_eq!(*done, BackendMessage::CommandComplete { tag: Bytes::from_static(b"SELECT 1") });
    assert_eq!(*ready, BackendMessage::ReadyForQuery { status: b'I' });

    assert_eq!(scalar(&mut up, "select current_user").await, &b"postgres"[..]);
    assert_eq!(scalar(&mut up, "select pg_backend_pid()::text").await, key.pid.to_string().as_bytes());
    // LATIN1 both ways: 0xE9 in, 0xE9 out, and the server saw one character.
    assert_eq!(
        simple_query(&mut up, b"select 'caf\xe9'::text, length('caf\xe9')").await[1],
        BackendMessage::DataRow(vec![Some(Bytes::from_static(b"caf\xe9")), Some(Bytes::from_static(b"4"))])
    );
}

#[tokio::test]
async fn prefer_and_require_negotiate_tls() {
    for mode in [TargetTls::Prefer, TargetTls::Require] {
        let mut up = upstream::connect(&opts(mode)).await.unwrap();
        assert!(up.stream.is_tls(), "{mode:?}");
        assert_eq!(
            scalar(&mut up, "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await,
            &b"true"[..]
        );
    }
}

/// The server's ssl_cert_file: Debian's self-signed snakeoil, CN=localhost, DNS:localhost.
const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn server_cert_roots() -> Arc<RootCertStore> {
    // As the gateway loads `worker.target_ca_file`.
    upstream::target_roots(Some(std::path::Path::new(SERVER_CERT))).unwrap().for_mode(TargetTls::VerifyFull).unwrap()
}

#[tokio::test]
async fn target_roots_come_from_a_readable_file_or_serve_verify_full_only() {
    let dir = std::env::temp_dir().join(format!("airlock-target-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = format!("{:#}", upstream::target_roots(Some(&empty)).unwrap_err());
    assert!(err.contains("holds no PEM certificate"), "{err}");
    let damaged = dir.join("damaged.pem");
    std::fs::write(&damaged, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let err = format!("{:#}", upstream::target_roots(Some(&damaged)).unwrap_err());
    assert!(err.contains("1 of its certificates cannot be read"), "{err}");
    let err = format!("{:#}", upstream::target_roots(Some(&dir.join("missing.pem"))).unwrap_err());
    assert!(err.contains("missing.pem"), "{err}");
    // A file's roots serve every mode that checks a chain, as libpq's root file does.
    let file = upstream::target_roots(Some(std::path::Path::new(SERVER_CERT))).unwrap();
    for mode in [TargetTls::Require, TargetTls::VerifyCa, TargetTls::VerifyFull] {
        assert!(file.for_mode(mode).is_some(), "{mode:?}");
    }
    assert!(file.for_mode(TargetTls::Prefer).is_none());
    // The system's serve verify-full only: under verify-ca any certificate of
    // any public CA would pass, whatever name it carries.
    let system = upstream::target_roots(None).unwrap();
    assert!(system.for_mode(TargetTls::VerifyCa).is_none());
    assert!(system.for_mode(TargetTls::Require).is_none());
    let mut o = opts(TargetTls::VerifyCa);
    o.root_certs = system.for_mode(TargetTls::VerifyCa);
    let err = upstream::connect(&o).await.unwrap_err().to_string();
    assert!(err.contains("set worker.target_ca_file (the system's roots serve verify-full only)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn unrelated_roots() -> Arc<RootCertStore> {
    let ca = rcgen::generate_simple_self_signed(vec!["someone-else".to_string()]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    Arc::new(roots)
}

#[tokio::test]
async fn verify_modes_check_the_certificate() {
    let mut o = opts(TargetTls::VerifyCa);
    assert!(matches!(upstream::connect(&o).await.unwrap_err(), UpstreamError::TlsConfig(_)), "no roots");

    o.root_certs = Some(server_cert_roots());
    let mut up = upstream::connect(&o).await.unwrap();
    assert!(up.stream.is_tls());
    assert_eq!(scalar(&mut up, "select 1").await, &b"1"[..]);

    o.root_certs = Some(unrelated_roots());
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Tls(e) if e.to_string().contains("UnknownIssuer")), "{err}");

    // verify-full checks the name too: the certificate names only DNS:localhost.
    let mut o = opts(TargetTls::VerifyFull);
    o.root_certs = Some(server_cert_roots());
    o.server_name = Some("localhost".into());
    let mut up = upstream::connect(&o).await.unwrap();
    assert_eq!(scalar(&mut up, "select 1").await, &b"1"[..]);
    for name in [None, Some("db.example.com")] {
        // None: the address's host, 127.0.0.1, which the certificate does not name.
        o.server_name = name.map(Into::into);
        let err = upstream::connect(&o).await.unwrap_err();
        assert!(matches!(&err, UpstreamError::Tls(e) if e.to_string().contains("not valid for name")), "{err}");
    }
}

#[tokio::test]
async fn wrong_database_is_refused_with_the_servers_sqlstate() {
    let mut o = opts(TargetTls::Disable);
    o.database = "airlock_no_such_database".into();
    let err = upstream::connect(&o).await.unwrap_err();
    let UpstreamError::Refused { sqlstate, message, fields } = &err else { panic!("{err}") };
    assert_eq!(sqlstate, sqlstate::INVALID_CATALOG_NAME);
    assert_eq!(message, "database \"airlock_no_such_database\" does not exist");
    assert_eq!(fields.severity().unwrap(), &b"FATAL"[..]);
}

#[tokio::test]
async fn unknown_role_is_refused() {
    let mut o = opts(TargetTls::Prefer);
    o.user = "airlock_no_such_role".into();
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Refused { sqlstate, .. } if sqlstate == "28000"), "{err}");
}

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    for mode in [TargetTls::Disable, TargetTls::Require] {
        let o = opts(mode);
        let mut up = upstream::connect(&o).await.unwrap();
        let key = up.backend_key.clone().unwrap();
        let mut buf = BytesMut::new();
        encode::query(&mut buf, b"select pg_sleep(30)").unwrap();
        up.stream.write_all(&buf).await.unwrap();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        upstream::cancel(&o, &key).await.unwrap();
        let messages = read_until_ready(&mut up).await;
        let error = messages
            .iter()
            .find_map(|m| match m {
                BackendMessage::ErrorResponse(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{messages:?}"));
        assert_eq!(error.code().unwrap(), sqlstate::QUERY_CANCELED.as_bytes());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// A cancel goes to the address the session reached, its certificate
/// checked for the name the session was opened with, not for the address.
#[tokio::test]
async fn a_cancel_goes_to_the_address_reached_and_checks_the_name() {
    let mut o = opts(TargetTls::VerifyFull);
    o.address = o.address.replace("127.0.0.1", "localhost");
    o.root_certs = Some(server_cert_roots());
    let mut up = upstream::connect(&o).await.unwrap();
    let key = up.backend_key.clone().unwrap();
    let reached = up.stream.peer_addr().unwrap();
    assert!(reached.ip().is_loopback());
    let mut buf = BytesMut::new();
    encode::query(&mut buf, b"select pg_sleep(30)").unwrap();
    up.stream.write_all(&buf).await.unwrap();
    let admin = admin().await;
    airlock_testkit::eventually(Duration::from_secs(10), "the query to run", || async {
        let running = "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'";
        admin.query_opt(running, &[&key.pid]).await.unwrap().is_some()
    })
    .await;
    // Named otherwise, the certificate (for localhost) does not do.
    let mut elsewhere = o.clone();
    elsewhere.server_name = Some("db.example.com".into());
    let err = upstream::cancel(&elsewhere.for_cancel(reached), &key).await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Tls(e) if e.to_string().contains("not valid for name")), "{err}");
    let cancel = o.for_cancel(reached);
    assert_eq!(cancel.address, reached.to_string());
    upstream::cancel(&cancel, &key).await.unwrap();
    let messages = read_until_ready(&mut up).await;
    let cancelled = messages.iter().any(
        |m| matches!(m, BackendMessage::ErrorResponse(e) if e.code().unwrap() == sqlstate::QUERY_CANCELED.as_bytes()),
    );
    assert!(cancelled, "{messages:?}");
}

#[tokio::test]
async fn connect_failures() {
    // Nothing listens on port 1.
    let mut o = opts(TargetTls::Disable);
    o.address = "127.0.0.1:1".into();
    assert!(matches!(upstream::connect(&o).await.unwrap_err(), UpstreamError::Connect { .. }));
    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut o = opts(TargetTls::Disable);
    o.address = listener.local_addr().unwrap().to_string();
    o.connect_timeout = Duration::from_millis(300);
    let hold = tokio::spawn(async move {
        let _held = listener.accept().await;
        std::future::pending::<()>().await
    });
    assert!(matches!(upstream::connect(&o).await.unwrap_err(), UpstreamError::Timeout(_)));
    hold.abort();
}

// --- scripted servers for the password methods ---

trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}

struct Peer {
    stream: Box<dyn PeerIo>,
    buf: BytesMut,
}

impl Peer {
    async fn startup(&mut self) -> Startup {
        loop {
            if let Some(s) = parse_startup(&mut self.buf).unwrap() {
                return s;
            }
            assert_ne!(self.stream.read_buf(&mut self.buf).await.unwrap(), 0);
        }
    }

    async fn message(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, 1 << 20).unwrap() {
                return Some(f);
            }
            if self.stream.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn password_body(&mut self) -> Bytes {
        match decode_frontend(&self.message().await.unwrap()).unwrap() {
            FrontendMessage::Password(body) => body,
            other => panic!("{other:?}"),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn auth(&mut self, code: i32, data: &[u8]) {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        self.send(Frame::new(b'R', &body).unwrap().raw()).await;
    }

    async fn refuse(&mut self, user: &str) {
        let mut out = BytesMut::new();
        let report =
            Report::fatal(sqlstate::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""));
        encode::error_response(&mut out, &report);
        self.send(&out).await;
    }

    /// AuthenticationOk and the session setup, then `extra` in the same write.
    async fn welcome(&mut self, extra: &[u8]) {
        let mut out = BytesMut::new();
        encode::authentication_ok(&mut out);
        encode::parameter_status(&mut out, b"server_version", b"15.20").unwrap();
        encode::backend_key_data(&mut out, 4242, &[7; 4]).unwrap();
        encode::ready_for_query(&mut out, b'I');
        out.put_slice(extra);
        self.send(&out).await;
    }
}

/// A one-connection server running `script`; returns options pointing at it.
async fn scripted<F, Fut>(user: &str, password: &str, script: F) -> (UpstreamOptions, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    scripted_on(Ipv4Addr::LOCALHOST.into(), user, password, script).await
}

/// `scripted`, listening on `ip`.
async fn scripted_on<F, Fut>(
    ip: IpAddr,
    user: &str,
    password: &str,
    script: F,
) -> (UpstreamOptions, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (listener, mut o) = listening(ip, user, password).await;
    o.tls = TargetTls::Disable;
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(Peer { stream: Box::new(stream), buf: BytesMut::new() }).await;
    });
    (o, task)
}

/// A listener on `ip`, and options to log in there as `user`.
async fn listening(ip: IpAddr, user: &str, password: &str) -> (TcpListener, UpstreamOptions) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let mut o = UpstreamOptions::new(listener.local_addr().unwrap().to_string(), user, password, "app");
    o.connect_timeout = Duration::from_secs(5);
    (listener, o)
}

/// `scripted_on`, behind TLS: the server answers the SSLRequest and runs
/// `script` over TLS with `acceptor`'s certificate.
async fn scripted_tls_on<F, Fut>(
    ip: IpAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    user: &str,
    password: &str,
    script: F,
) -> (UpstreamOptions, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (listener, o) = listening(ip, user, password).await;
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while buf.len() < 8 {
            assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0);
        }
        assert_eq!(parse_startup(&mut buf).unwrap(), Some(Startup::SslRequest));
        assert!(buf.is_empty(), "bytes before the TLS handshake");
        stream.write_all(b"S").await.unwrap();
        let tls = acceptor.accept(stream).await.unwrap();
        script(Peer { stream: Box::new(tls), buf }).await;
    });
    (o, task)
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new().chain_update(k.map(|b| b ^ 0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(k.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

/// A role created on the real server with `password_encryption = method`,
/// and the verifier Postgres stored for it. Dropped on drop.
struct Role {
    name: String,
    verifier: String,
}

async fn make_role(method: &str, password: &str) -> Role {
    let name = format!("airlock_test_{}_{}", method.replace('-', "_"), rand::random::<u32>());
    let db = admin().await;
    db.batch_execute(&format!("SET password_encryption = '{method}'; CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
        .await
        .unwrap();
    let verifier: String =
        db.query_one("select rolpassword from pg_authid where rolname = $1", &[&name]).await.unwrap().get(0);
    Role { name, verifier }
}

/// A role whose logins the test Postgres checks by SCRAM (a member of
/// `scram_logins_test`, which `scripts/test` keeps out of its trust rule),
/// with `password` (a verifier is stored as it is) and `attributes`.
async fn make_scram_role(kind: &str, password: &str, attributes: &str) -> Role {
    let name = format!("airlock_test_{kind}_{}", rand::random::<u32>());
    let db = admin().await;
    db.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE scram_logins_test NOLOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE {name} LOGIN {attributes} PASSWORD '{password}' IN ROLE scram_logins_test"
    ))
    .await
    .unwrap();
    let verifier: String =
        db.query_one("select rolpassword from pg_authid where rolname = $1", &[&name]).await.unwrap().get(0);
    Role { name, verifier }
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { admin().await.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await.unwrap() });
        })
        .join()
        .unwrap();
    }
}

/// How the scripted SCRAM server misbehaves, if at all.
#[derive(Clone, Copy, PartialEq)]
enum ScramServer {
    Honest,
    /// Does not know the password: a wrong ServerKey signs the final message.
    Impostor,
    /// Says AuthenticationOk right after the client's proof, with no SASLFinal.
    SkipsFinal,
}

/// A SCRAM-SHA-256 server (RFC 5802/7677) holding Postgres's stored verifier
/// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
async fn scram_server(mut peer: Peer, verifier: String, behaviour: ScramServer) {
    let startup = peer.startup().await;
    assert_eq!(startup.last_param(b"database"), Some(&b"app"[..]));
    let (head, keys) = verifier.strip_prefix("SCRAM-SHA-256$").unwrap().split_once('$').unwrap();
    let (iterations, salt) = head.split_once(':').unwrap();
    let (stored_key, server_key) = keys.split_once(':').unwrap();
    let stored_key = B64.decode(stored_key).unwrap();
    let mut server_key = B64.decode(server_key).unwrap();
    if behaviour == ScramServer::Impostor {
        server_key[0] ^= 1;
    }

    peer.auth(10, b"SCRAM-SHA-256\0\0").await;
    let (mechanism, first) = decode_sasl_initial_response(&peer.password_body().await).unwrap();
    assert_eq!(&mechanism[..], b"SCRAM-SHA-256");
    let first = String::from_utf8(first.unwrap().to_vec()).unwrap();
    let client_first_bare = first.strip_prefix("n,,").expect("no channel binding");
    let client_nonce = client_first_bare.split_once(",r=").unwrap().1;
    let nonce = format!("{client_nonce}{}", B64.encode(rand::random::<[u8; 18]>()));
    let server_first = format!("r={nonce},s={salt},i={iterations}");
    peer.auth(11, server_first.as_bytes()).await;

    let final_msg = String::from_utf8(peer.password_body().await.to_vec()).unwrap();
    let (without_proof, proof) = final_msg.rsplit_once(",p=").unwrap();
    assert_eq!(without_proof, format!("c=biws,r={nonce}"));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = B64.decode(proof).unwrap().iter().zip(signature).map(|(p, s)| p ^ s).collect();
    if Sha256::digest(&client_key)[..] != stored_key[..] {
        let user = String::from_utf8_lossy(startup.last_param(b"user").unwrap()).into_owned();
        peer.refuse(&user).await;
        return;
    }
    if behaviour != ScramServer::SkipsFinal {
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        peer.auth(12, format!("v={}", B64.encode(server_signature)).as_bytes()).await;
    }
    peer.welcome(b"Zleftover").await;
    let _ = peer.message().await;
}

#[tokio::test]
async fn scram_sha_256_against_a_postgres_verifier() {
    let role = make_role("scram-sha-256", "correct horse").await;
    assert!(role.verifier.starts_with("SCRAM-SHA-256$4096:"));

    let verifier = role.verifier.clone();
    let (o, server) =
        scripted(&role.name, "correct horse", move |p| scram_server(p, verifier, ScramServer::Honest)).await;
    let up = upstream::connect(&o).await.unwrap();
    assert_eq!(up.parameter(b"server_version"), Some(&b"15.20"[..]));
    assert_eq!(up.backend_key.as_ref().map(|k| k.pid), Some(4242));
    assert_eq!(&up.leftover[..], b"Zleftover", "bytes after ReadyForQuery are handed over");
    drop(up);
    server.await.unwrap();

    let verifier = role.verifier.clone();
    let (o, server) =
        scripted(&role.name, "wrong horse", move |p| scram_server(p, verifier, ScramServer::Honest)).await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Refused { sqlstate, .. } if sqlstate == "28P01"), "{err}");
    assert!(!err.to_string().contains("wrong horse"));
    server.await.unwrap();

    let verifier = role.verifier.clone();
    let (o, server) =
        scripted(&role.name, "correct horse", move |p| scram_server(p, verifier, ScramServer::Impostor)).await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Scram(_)), "{err}");
    server.abort();

    let verifier = role.verifier.clone();
    let (o, server) =
        scripted(&role.name, "correct horse", move |p| scram_server(p, verifier, ScramServer::SkipsFinal)).await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Unexpected { .. }), "{err}");
    server.abort();
}

/// A session role's login: the gateway made its verifier and kept the salted
/// password, which the login uses instead of hashing the password again.
#[tokio::test]
async fn scram_with_the_salted_password_of_a_verifier_the_gateway_made() {
    let (verifier, salted) = scram::verifier(b"correct horse");
    let login = |password: &'static str, behaviour, salted: Option<scram::SaltedPassword>| {
        let verifier = verifier.clone();
        async move {
            let (mut o, server) = scripted("airlock_x", password, move |p| scram_server(p, verifier, behaviour)).await;
            o.salted = salted;
            (upstream::connect(&o).await, server)
        }
    };

    let (up, server) = login("correct horse", ScramServer::Honest, Some(salted.clone())).await;
    assert_eq!(&up.unwrap().leftover[..], b"Zleftover");
    server.await.unwrap();

    // The salted form alone logs in: the password was not hashed again.
    let (up, server) = login("a password never hashed", ScramServer::Honest, Some(salted.clone())).await;
    up.expect("the login used the verifier's salted password");
    server.await.unwrap();

    // A server naming another salt does not hold this verifier: refused
    // before any proof is sent, even with the right password.
    let (_, other) = scram::verifier(b"correct horse");
    let (up, server) = login("correct horse", ScramServer::Honest, Some(other)).await;
    let err = up.unwrap_err();
    assert!(err.to_string().contains("not the verifier's the gateway made"), "{err}");
    server.abort();

    // A server that does not hold the verifier is found out as before, and
    // one that skips its final message too.
    let (up, server) = login("correct horse", ScramServer::Impostor, Some(salted.clone())).await;
    let err = up.unwrap_err();
    assert!(matches!(err, UpstreamError::Scram(_)), "{err}");
    server.abort();
    let (up, server) = login("correct horse", ScramServer::SkipsFinal, Some(salted)).await;
    let err = up.unwrap_err();
    assert!(matches!(err, UpstreamError::Unexpected { .. }), "{err}");
    server.abort();
}

#[tokio::test]
async fn md5_against_a_postgres_verifier() {
    let role = make_role("md5", "s3cret").await;
    assert!(role.verifier.starts_with("md5"));
    let salt = [0x01, 0x02, 0x03, 0x04];
    // What a real server expects: md5(stored hash hex || salt), computed by Postgres.
    let expected: String = admin()
        .await
        .query_one(
            "select 'md5' || md5(convert_to(substr(rolpassword, 4), 'UTF8') || '\\x01020304'::bytea) from pg_authid where rolname = $1",
            &[&role.name],
        )
        .await
        .unwrap()
        .get(0);

    for (password, accepted) in [("s3cret", true), ("S3cret", false)] {
        let expected = expected.clone();
        let (o, server) = scripted(&role.name, password, move |mut peer| async move {
            peer.startup().await;
            peer.auth(5, &salt).await;
            let sent = decode_password(&peer.password_body().await).unwrap();
            if sent == expected.as_bytes() {
                peer.welcome(b"").await;
            } else {
                peer.refuse("x").await;
            }
            let _ = peer.message().await;
        })
        .await;
        let result = upstream::connect(&o).await;
        assert_eq!(result.is_ok(), accepted, "{password}: {:?}", result.err());
        match result {
            Err(e) => assert!(matches!(e, UpstreamError::Refused { ref sqlstate, .. } if sqlstate == "28P01")),
            // Closing the session lets the server's script finish.
            Ok(up) => drop(up),
        }
        server.await.unwrap();
    }
}

#[tokio::test]
async fn cleartext_password() {
    let (o, server) = scripted("u", "pa ss", |mut peer| async move {
        peer.startup().await;
        peer.auth(3, b"").await;
        assert_eq!(decode_password(&peer.password_body().await).unwrap(), &b"pa ss"[..]);
        peer.welcome(b"").await;
        let _ = peer.message().await;
    })
    .await;
    upstream::connect(&o).await.unwrap();
    server.await.unwrap();
}

/// A role the gateway made holds a SCRAM verifier: a target asking for its
/// password as MD5, or in cleartext without TLS, is not the server that holds
/// it, and never sees the password.
#[tokio::test]
async fn a_session_roles_password_is_not_sent_as_md5_or_in_cleartext_without_tls() {
    let (_, salted) = scram::verifier(b"one-time");
    for (code, data, named) in [(3, &b""[..], "cleartext"), (5, &b"salt"[..], "MD5")] {
        let (mut o, server) = scripted("airlock_x", "one-time", move |mut peer| async move {
            peer.startup().await;
            peer.auth(code, data).await;
            // The gateway hangs up instead of answering.
            let mut rest = Vec::new();
            let _ = peer.stream.read_to_end(&mut rest).await;
            assert!(!rest.windows(8).any(|w| w == b"one-time"), "the password was sent");
            assert!(rest.is_empty() || rest.first() == Some(&b'X'), "the gateway answered: {rest:?}");
        })
        .await;
        o.salted = Some(salted.clone());
        let err = upstream::connect(&o).await.unwrap_err();
        assert!(matches!(&err, UpstreamError::UnsupportedAuth(m) if m.contains(named)), "{err}");
        server.await.unwrap();
    }
}

/// The same password asked for in cleartext over TLS goes only to a target
/// whose certificate was checked for its name: under `prefer` or `require`
/// whoever answers could be anyone, under `verify-ca` any server the CA
/// vouches for, and could log in as the role with it.
#[tokio::test]
async fn a_session_roles_password_goes_in_cleartext_only_to_a_checked_certificate() {
    let (_, salted) = scram::verifier(b"one-time");
    cleartext_over_tls(
        Ipv4Addr::LOCALHOST.into(),
        "one-time",
        Some(salted),
        Login::Session,
        "not checked for its name",
    )
    .await;
}

/// A stored password (the static credential) asked for in cleartext goes to
/// a target on this machine (`cleartext_password` above), or to one that
/// proved its name. To a target elsewhere over plain TCP, or over TLS that
/// takes any certificate, it is never sent: whoever is on the path could read
/// it, or answer in the target's place and keep it.
#[tokio::test]
async fn a_stored_password_goes_in_cleartext_off_this_machine_only_to_a_checked_certificate() {
    let ip = off_loopback_ip();
    refused_in_cleartext_off_this_machine(ip, Login::Session, "stored-secret").await;
    cleartext_over_tls(ip, "stored-secret", None, Login::Session, "off this machine").await;
}

/// The admin credential, which makes the session roles, keeps to the same
/// rule on its own connections: its password in cleartext goes to a target
/// on this machine, or to one that proved its name, and never anywhere else.
#[tokio::test]
async fn the_admin_password_goes_in_cleartext_off_this_machine_only_to_a_checked_certificate() {
    let (o, server) = scripted("admin", "admin-secret", |mut peer| async move {
        peer.startup().await;
        peer.auth(3, b"").await;
        assert_eq!(decode_password(&peer.password_body().await).unwrap(), &b"admin-secret"[..]);
        peer.welcome(b"").await;
        let _ = peer.stream.read_to_end(&mut Vec::new()).await;
    })
    .await;
    log_in(Login::Admin, &o).await.expect("on this machine the password is sent");
    server.await.unwrap();

    let ip = off_loopback_ip();
    refused_in_cleartext_off_this_machine(ip, Login::Admin, "admin-secret").await;
    cleartext_over_tls(ip, "admin-secret", None, Login::Admin, "off this machine").await;
}

/// A target on `ip` (not loopback) asks over plain TCP for `password` in
/// cleartext: the login is refused, saying why, and the password never sent.
async fn refused_in_cleartext_off_this_machine(ip: IpAddr, login: Login, password: &'static str) {
    let (o, server) = scripted_on(ip, "app_user", password, move |mut peer| async move {
        peer.startup().await;
        peer.auth(3, b"").await;
        let mut rest = Vec::new();
        let _ = peer.stream.read_to_end(&mut rest).await;
        assert!(!rest.windows(password.len()).any(|w| w == password.as_bytes()), "the password was sent");
    })
    .await;
    let err = log_in(login, &o).await.unwrap_err();
    assert!(err.contains("off this machine"), "{err}");
    assert!(!err.contains(password), "{err}");
    server.await.unwrap();
}

/// Who logs in to a scripted target: a session (`upstream::connect`), or the
/// admin connection that makes session roles (`RoleManager`).
#[derive(Debug, Clone, Copy)]
enum Login {
    Session,
    Admin,
}

/// Logs in as `login` with what `o` says; the error is why it refused to
/// authenticate (any other failure fails the test).
async fn log_in(login: Login, o: &UpstreamOptions) -> Result<(), String> {
    match login {
        Login::Session => match upstream::connect(o).await {
            Ok(up) => {
                assert_eq!(up.stream.is_tls(), o.tls != TargetTls::Disable);
                Ok(())
            }
            Err(UpstreamError::UnsupportedAuth(why)) => Err(why),
            Err(other) => panic!("{other}"),
        },
        Login::Admin => {
            let address: std::net::SocketAddr = o.address.parse().unwrap();
            let mut config = tokio_postgres::Config::new();
            config
                .host(o.server_name.as_deref().unwrap_or("localhost"))
                .hostaddr(address.ip())
                .port(address.port())
                .user(&o.user)
                .password(&o.password)
                .dbname(&o.database)
                .connect_timeout(o.connect_timeout);
            let tls = match o.tls {
                TargetTls::Disable => {
                    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    TlsChoice::Disable
                }
                mode => {
                    config.ssl_mode(if mode == TargetTls::Prefer {
                        tokio_postgres::config::SslMode::Prefer
                    } else {
                        tokio_postgres::config::SslMode::Require
                    });
                    let config = upstream::client_config(mode, o.root_certs.clone()).unwrap();
                    TlsChoice::Rustls { config, names_checked: mode.verifies_name() }
                }
            };
            match RoleManager::connect(config, tls).await {
                Ok(_) => Ok(()),
                Err(RoleError::Connect(why)) => Err(why),
                Err(other) => panic!("{other}"),
            }
        }
    }
}

/// This machine's address on its route out (not loopback): a target there
/// is, to the gateway, a target elsewhere.
fn off_loopback_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing: it only picks the route.
    probe.connect("203.0.113.1:9").expect("this test needs an address other than loopback (a default route)");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// `o` toward a scripted target under `mode`, its certificate (made by
/// `localhost_acceptor`) chaining to `roots` and named `localhost`.
fn toward_localhost(o: &mut UpstreamOptions, mode: TargetTls, roots: &Arc<RootCertStore>) {
    o.tls = mode;
    o.root_certs = Some(roots.clone());
    o.server_name = Some("localhost".into());
}

/// A TLS acceptor with a new self-signed certificate for `localhost`, and
/// roots that trust it.
fn localhost_acceptor() -> (tokio_rustls::TlsAcceptor, Arc<RootCertStore>) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pair.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pair.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(pair.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(server_config)), Arc::new(roots))
}

/// Over TLS the admin login is bound to the certificate the gateway saw
/// (SCRAM-SHA-256-PLUS): the real target takes it directly, and refuses it
/// when an impostor in the middle, showing its own certificate, relays it.
/// The same relay passes a login that needs no proof: the refusal is the
/// binding's doing.
#[tokio::test]
async fn the_admin_login_is_bound_to_the_targets_certificate() {
    let role = make_scram_role("admin", "admin-secret", "CREATEROLE").await;
    let at = |address: String| {
        let mut o = UpstreamOptions::new(address, &role.name, "admin-secret", "postgres");
        o.tls = TargetTls::Require;
        o.server_name = Some("localhost".into());
        o.connect_timeout = Duration::from_secs(10);
        o
    };

    log_in(Login::Admin, &at(PG.to_owned())).await.expect("the target takes the bound login");

    let (relay, relaying) = impostor_in_the_middle().await;
    let err = log_in(Login::Admin, &at(relay.to_string())).await.expect_err(
        "the relayed admin login was let in (does the test Postgres ask members of scram_logins_test for SCRAM? \
         scripts/test sets that up)",
    );
    assert!(err.contains("channel binding"), "{err}");
    let mut trusted = opts(TargetTls::Require);
    trusted.address = relay.to_string();
    let session = upstream::connect(&trusted).await.expect("the relay passes a login without a proof");
    assert!(session.stream.is_tls());
    relaying.abort();
}

/// Sessions' logins over TLS are bound too: a stored password's and a
/// session role's (with the salted password of the verifier the gateway
/// made), which the real target takes directly and refuses through an
/// impostor in the middle.
#[tokio::test]
async fn a_sessions_login_is_bound_to_the_targets_certificate() {
    let (verifier, salted) = scram::verifier(b"made-by-the-gateway");
    let made = make_scram_role("made", &verifier, "").await;
    let stored = make_scram_role("stored", "stored-secret", "").await;
    let (relay, relaying) = impostor_in_the_middle().await;
    // The stored password with a salt cache too, as a static credential logs in.
    let cache = Some(Arc::new(scram::SaltCache::default()));
    let logins = [
        (&made.name, "made-by-the-gateway", Some(salted), None),
        (&stored.name, "stored-secret", None, None),
        (&stored.name, "stored-secret", None, cache),
    ];
    for (user, password, salted, salt_cache) in logins {
        for (address, through_impostor) in [(PG.to_owned(), false), (relay.to_string(), true)] {
            let mut o = UpstreamOptions::new(address, user, password, "postgres");
            o.tls = TargetTls::Require;
            o.salted = salted.clone();
            o.salt_cache = salt_cache.clone();
            o.connect_timeout = Duration::from_secs(10);
            match upstream::connect(&o).await {
                Ok(up) if !through_impostor => assert!(up.stream.is_tls()),
                Err(UpstreamError::Refused { message, .. }) if through_impostor => {
                    assert!(message.contains("channel binding"), "{user}: {message}");
                }
                Ok(_) => panic!("{user}: the relayed login was let in"),
                Err(e) => panic!("{user} (through the impostor: {through_impostor}): {e}"),
            }
        }
    }
    relaying.abort();
}

/// A stored password (a static credential's) is hashed at its first SCRAM
/// login through its salt cache and not at the next, bound or not, against
/// the real target; a wrong one is refused all the same, and one SASLprep
/// might change still logs in, hashed by postgres-protocol's client.
#[tokio::test]
async fn a_stored_password_is_hashed_at_its_first_login_only() {
    let stored = make_scram_role("cached", "stored-secret", "").await;
    let cache = Arc::new(scram::SaltCache::default());
    let login = |password: &str, tls: TargetTls, cache: Arc<scram::SaltCache>| {
        let mut o = UpstreamOptions::new(PG, stored.name.clone(), password, "postgres");
        o.tls = tls;
        o.salt_cache = Some(cache);
        o.connect_timeout = Duration::from_secs(10);
        async move { upstream::connect(&o).await }
    };
    for tls in [TargetTls::Disable, TargetTls::Require, TargetTls::Disable] {
        let mut up = login("stored-secret", tls, cache.clone()).await.unwrap();
        assert_eq!(up.stream.is_tls(), tls == TargetTls::Require);
        assert_eq!(scalar(&mut up, "SELECT current_user").await, stored.name.as_bytes());
    }
    assert_eq!(cache.hashed(), 1, "logins after the first hashed the password again");

    let wrong = login("stored-secreT", TargetTls::Disable, cache.clone()).await.err().unwrap();
    assert!(matches!(wrong, UpstreamError::Refused { ref sqlstate, .. } if sqlstate == "28P01"), "{wrong}");
    let mut up = login("stored-secret", TargetTls::Disable, cache.clone()).await.unwrap();
    assert_eq!(scalar(&mut up, "SELECT 1").await, &b"1"[..]);
    assert_eq!(cache.hashed(), 3, "the wrong password was hashed, then the right one again");

    // A target whose verifier takes more iterations than a session role's
    // login would do (Postgres 16's `scram_iterations`), hashed all the same.
    let (verifier, _) = scram::verifier_with(b"many-rounds", 200_000);
    let slow = make_scram_role("slow", &verifier, "").await;
    let mut o = UpstreamOptions::new(PG, slow.name.clone(), "many-rounds", "postgres");
    o.tls = TargetTls::Disable;
    o.salt_cache = Some(Arc::new(scram::SaltCache::default()));
    upstream::connect(&o).await.unwrap();

    let unicode = make_scram_role("unicode", "p\u{e4}ssw\u{f6}rd", "").await;
    let fresh = Arc::new(scram::SaltCache::default());
    let mut o = UpstreamOptions::new(PG, unicode.name.clone(), "p\u{e4}ssw\u{f6}rd", "postgres");
    o.tls = TargetTls::Disable;
    o.salt_cache = Some(fresh.clone());
    upstream::connect(&o).await.unwrap();
    assert_eq!(fresh.hashed(), 0, "left to a client that normalizes it");
}

/// To a target elsewhere without `verify-full` only a login bound to the
/// target's certificate goes, and here the real Postgres checks its proof:
/// reached at an address other than loopback through a plain TCP relay (TLS
/// runs end to end), the admin, a session role (with the salted password of
/// its verifier) and a stored password (hashed per login, and through a salt
/// cache) all log in under `prefer` and `require`.
#[tokio::test]
async fn a_bound_login_to_a_real_target_elsewhere_is_taken() {
    let admin = make_scram_role("admin", "admin-secret", "CREATEROLE").await;
    let (verifier, salted) = scram::verifier(b"made-by-the-gateway");
    let made = make_scram_role("made", &verifier, "").await;
    let stored = make_scram_role("stored", "stored-secret", "").await;
    let relay = airlock_testkit::proxy::TcpProxy::start_on(off_loopback_ip(), PG.parse().unwrap()).await.unwrap();
    // Hashed at the first login through it, reused bound at the next.
    let cache = Arc::new(scram::SaltCache::default());
    for mode in [TargetTls::Prefer, TargetTls::Require] {
        let at = |user: &str, password: &str| {
            let mut o = UpstreamOptions::new(relay.addr().to_string(), user, password, "postgres");
            o.tls = mode;
            o.connect_timeout = Duration::from_secs(10);
            o
        };
        log_in(Login::Admin, &at(&admin.name, "admin-secret"))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: the admin login was refused: {e}"));
        let mut session_role = at(&made.name, "made-by-the-gateway");
        session_role.salted = Some(salted.clone());
        let mut cached = at(&stored.name, "stored-secret");
        cached.salt_cache = Some(cache.clone());
        for o in [session_role, at(&stored.name, "stored-secret"), cached] {
            log_in(Login::Session, &o).await.unwrap_or_else(|e| panic!("{mode:?} {}: refused: {e}", o.user));
        }
    }
    assert_eq!(cache.hashed(), 1, "the second login through the cache hashed the password again");
}

/// An impostor in the middle: it takes TLS with a certificate of its own and
/// relays what it reads, over TLS of its own, to the real target.
async fn impostor_in_the_middle() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (acceptor, _) = localhost_acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await.unwrap();
                client.write_all(b"S").await.unwrap();
                let mut client = acceptor.accept(client).await.unwrap();
                let mut server = tokio::net::TcpStream::connect(PG).await.unwrap();
                server.write_all(&request).await.unwrap();
                let mut answer = [0u8; 1];
                server.read_exact(&mut answer).await.unwrap();
                assert_eq!(&answer, b"S", "the test Postgres must serve TLS");
                let connector =
                    tokio_rustls::TlsConnector::from(upstream::client_config(TargetTls::Require, None).unwrap());
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut server = connector.connect(name, server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (address, task)
}

/// To a target elsewhere whose certificate was not checked for its name, a
/// password (the admin's, a stored one) goes only into a login bound to that
/// certificate: a target that asks for MD5, or offers SCRAM without
/// SCRAM-SHA-256-PLUS (as one relaying the login to the real target would),
/// is refused, and nothing sent.
#[tokio::test]
async fn a_login_to_an_unchecked_target_elsewhere_must_be_bound() {
    let ip = off_loopback_ip();
    let (acceptor, roots) = localhost_acceptor();
    let asks: [(i32, &'static [u8], &str); 2] =
        [(5, &[1, 2, 3, 4], "MD5"), (10, b"SCRAM-SHA-256\0\0", "does not offer SCRAM-SHA-256-PLUS")];
    for (code, body, refusal) in asks {
        for (login, mode) in [Login::Admin, Login::Session]
            .into_iter()
            .flat_map(|l| [TargetTls::Prefer, TargetTls::Require, TargetTls::VerifyCa].map(|m| (l, m)))
        {
            let (mut o, server) =
                scripted_tls_on(ip, acceptor.clone(), "admin", "admin-secret", move |mut peer| async move {
                    peer.startup().await;
                    peer.auth(code, body).await;
                    let mut rest = Vec::new();
                    let _ = peer.stream.read_to_end(&mut rest).await;
                    assert!(rest.is_empty(), "{mode:?}: the gateway answered {rest:?}");
                })
                .await;
            toward_localhost(&mut o, mode, &roots);
            let err = log_in(login, &o).await.expect_err("logged in");
            assert!(err.contains(refusal), "{login:?} {mode:?}: {err}");
            server.await.unwrap();
        }
    }
}

/// To a target elsewhere whose certificate was not checked for its name
/// (`prefer`, `require`, `verify-ca`), a SCRAM login (a session's with a
/// stored password, with or without its salt cache, or a session role's, and
/// the admin connection's) sends no proof for fewer iterations than
/// Postgres's default: whoever answered could guess the password from it
/// cheaply. At the default count, or to a target
/// that proved its name (`verify-full`), the proof goes.
#[tokio::test]
async fn a_low_iteration_count_gets_no_proof_from_an_unchecked_target_elsewhere() {
    let ip = off_loopback_ip();
    let (acceptor, roots) = localhost_acceptor();
    let (_, salted) = scram::verifier(b"stored-secret");
    let keys = [(None, None), (None, Some(Arc::new(scram::SaltCache::default()))), (Some(salted), None)];
    let modes = [TargetTls::Prefer, TargetTls::Require, TargetTls::VerifyCa, TargetTls::VerifyFull];
    for ((salted, salt_cache), mode) in keys.iter().flat_map(|k| modes.map(|m| (k.clone(), m))) {
        for iterations in [1u32, 4095, 4096] {
            let allowed = iterations >= scram::ITERATIONS || mode == TargetTls::VerifyFull;
            // A session role's login stops there all the same: a random salt
            // is not its verifier's.
            let proof_sent = allowed && salted.is_none();
            let (mut o, server) = scripted_tls_on(ip, acceptor.clone(), "app_user", "stored-secret", move |peer| {
                challenge_with(peer, iterations, proof_sent, "app_user")
            })
            .await;
            toward_localhost(&mut o, mode, &roots);
            o.salted = salted.clone();
            o.salt_cache = salt_cache.clone();
            match upstream::connect(&o).await {
                Err(UpstreamError::UnsupportedAuth(why)) if !allowed => {
                    assert!(why.contains(&format!("SCRAM with {iterations} iterations")), "{why}");
                }
                Err(UpstreamError::Refused { .. }) if proof_sent => {}
                Err(UpstreamError::Scram(why)) if allowed && !proof_sent => {
                    assert!(why.contains("not the verifier"), "{why}");
                }
                other => panic!("{mode:?} i={iterations}, salted {}: {:?}", salted.is_some(), other.err()),
            }
            server.await.unwrap();
        }
    }
    // The admin connection's login (tokio-postgres behind the gateway's
    // guard) alike.
    for mode in modes {
        for iterations in [1u32, 4095, 4096] {
            let allowed = iterations >= scram::ITERATIONS || mode == TargetTls::VerifyFull;
            let (mut o, server) = scripted_tls_on(ip, acceptor.clone(), "admin", "admin-secret", move |peer| {
                challenge_with(peer, iterations, allowed, "admin")
            })
            .await;
            toward_localhost(&mut o, mode, &roots);
            let err = log_in(Login::Admin, &o).await.expect_err("the script lets no one in");
            let refused_here = err.contains(&format!("SCRAM with {iterations} iterations"));
            assert_eq!(refused_here, !allowed, "admin, {mode:?} i={iterations}: {err}");
            server.await.unwrap();
        }
    }
}

/// A target's side of a SCRAM-SHA-256-PLUS login that names `iterations`:
/// the client's proof is read and the login refused when `proof_sent`,
/// and nothing more may come from the client.
async fn challenge_with(mut peer: Peer, iterations: u32, proof_sent: bool, user: &'static str) {
    peer.startup().await;
    peer.auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").await;
    let (mechanism, first) = decode_sasl_initial_response(&peer.password_body().await).unwrap();
    assert_eq!(&mechanism[..], b"SCRAM-SHA-256-PLUS");
    let first = String::from_utf8(first.unwrap().to_vec()).unwrap();
    let nonce = first.split_once(",r=").unwrap().1.to_owned();
    let salt = B64.encode(rand::random::<[u8; 16]>());
    peer.auth(11, format!("r={nonce}srv,s={salt},i={iterations}").as_bytes()).await;
    if proof_sent {
        let last = String::from_utf8(peer.password_body().await.to_vec()).unwrap();
        assert!(last.contains(",p="), "{last}");
        peer.refuse(user).await;
    }
    let mut rest = Vec::new();
    let _ = peer.stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "i={iterations}: the client answered {rest:?}");
}

/// A target on `ip`, with a certificate for `localhost`, asks for the
/// password in cleartext under each TLS mode: only `verify-full` sends it,
/// every other mode is refused with an error containing `refusal`.
async fn cleartext_over_tls(
    ip: IpAddr,
    password: &'static str,
    salted: Option<scram::SaltedPassword>,
    login: Login,
    refusal: &str,
) {
    let (acceptor, roots) = localhost_acceptor();
    for (mode, sent) in [
        (TargetTls::Prefer, false),
        (TargetTls::Require, false),
        (TargetTls::VerifyCa, false),
        (TargetTls::VerifyFull, true),
    ] {
        let acceptor = acceptor.clone();
        let (mut o, server) = scripted_tls_on(ip, acceptor, "app_user", password, move |mut peer| async move {
            peer.startup().await;
            peer.auth(3, b"").await;
            if sent {
                assert_eq!(decode_password(&peer.password_body().await).unwrap(), password.as_bytes());
                peer.welcome(b"").await;
            }
            // Until the gateway hangs up, which it may do without TLS's close_notify.
            let mut rest = Vec::new();
            let _ = peer.stream.read_to_end(&mut rest).await;
            let leaked = rest.windows(password.len()).any(|w| w == password.as_bytes());
            assert!(!leaked, "{mode:?}: the password was sent");
        })
        .await;
        toward_localhost(&mut o, mode, &roots);
        o.salted = salted.clone();
        let result = log_in(login, &o).await;
        if sent {
            result.unwrap_or_else(|e| panic!("{login:?} {mode:?}: {e}"));
        } else {
            let err = result.err().unwrap_or_else(|| panic!("{login:?} {mode:?}: connected"));
            assert!(err.contains(refusal), "{login:?} {mode:?}: {err}");
        }
        server.await.unwrap();
    }
}

#[tokio::test]
async fn unsupported_authentication_is_named() {
    let (o, server) = scripted("u", "p", |mut peer| async move {
        peer.startup().await;
        peer.auth(7, b"").await;
        let _ = peer.message().await;
    })
    .await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert_eq!(err.to_string(), "the target asks for authentication the gateway does not support: GSSAPI");
    drop(err);
    server.await.unwrap();

    let (o, server) = scripted("u", "p", |mut peer| async move {
        peer.startup().await;
        peer.auth(10, b"SCRAM-SHA-256-PLUS\0OAUTHBEARER\0\0").await;
        let _ = peer.message().await;
    })
    .await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(err.to_string().contains("SCRAM-SHA-256-PLUS only, and this login cannot be bound (plain TCP"), "{err}");
    server.await.unwrap();
}

/// Under `prefer`, whoever answers at a target's address elsewhere may refuse
/// TLS in its place: a stored password then goes neither as MD5 nor by SCRAM,
/// which over plain TCP cannot be bound, and nothing is sent.
#[tokio::test]
async fn under_prefer_a_target_elsewhere_that_refuses_tls_gets_no_relayable_login() {
    let ip = off_loopback_ip();
    let asks: [(i32, &'static [u8], &str); 2] =
        [(5, &[1, 2, 3, 4], "MD5"), (10, b"SCRAM-SHA-256\0\0", "the connection to the target is not TLS")];
    for (code, body, refusal) in asks {
        let (mut o, server) = scripted_on(ip, "app_user", "stored-secret", move |mut peer| async move {
            assert_eq!(peer.startup().await, Startup::SslRequest);
            peer.send(b"N").await;
            assert!(matches!(peer.startup().await, Startup::Startup { .. }));
            peer.auth(code, body).await;
            let mut rest = Vec::new();
            let _ = peer.stream.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "the gateway answered {rest:?}");
        })
        .await;
        o.tls = TargetTls::Prefer;
        let err = log_in(Login::Session, &o).await.expect_err("logged in");
        assert!(err.contains(refusal), "{err}");
        server.await.unwrap();
    }
}

#[tokio::test]
async fn server_refusing_tls() {
    for (mode, ok) in [(TargetTls::Require, false), (TargetTls::Prefer, true)] {
        let (mut o, server) = scripted("u", "p", |mut peer| async move {
            assert_eq!(peer.startup().await, Startup::SslRequest);
            peer.send(b"N").await;
            assert!(matches!(peer.startup().await, Startup::Startup { .. }));
            peer.welcome(b"").await;
            let _ = peer.message().await;
        })
        .await;
        o.tls = mode;
        let result = upstream::connect(&o).await;
        assert_eq!(result.is_ok(), ok, "{mode:?}: {:?}", result.as_ref().err());
        if !ok {
            assert!(matches!(result.unwrap_err(), UpstreamError::TlsUnavailable));
            server.abort();
        } else {
            assert!(!result.unwrap().stream.is_tls());
            server.await.unwrap();
        }
    }
}

#[tokio::test]
async fn malformed_server_messages_are_errors() {
    // A ParameterStatus whose declared length stops inside its name.
    let (o, server) = scripted("u", "p", |mut peer| async move {
        peer.startup().await;
        let mut out = BytesMut::new();
        encode::authentication_ok(&mut out);
        out.put_slice(b"S\0\0\0\x06ab\0value\0");
        peer.send(&out).await;
        let _ = peer.message().await;
    })
    .await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Protocol(_)), "{err}");
    server.await.unwrap();

    // A negative length.
    let (o, server) = scripted("u", "p", |mut peer| async move {
        peer.startup().await;
        peer.send(b"R\xff\xff\xff\xf0").await;
        let _ = peer.message().await;
    })
    .await;
    let err = upstream::connect(&o).await.unwrap_err();
    assert_eq!(err.to_string(), "the target sent an invalid message: invalid message length -16 for message 'R'");
    server.await.unwrap();
}

/// Debian's pgbouncer (1.18; `scripts/test` installs it) in front of the
/// Postgres on this machine: TLS with a self-signed certificate, SCRAM-SHA-256
/// only (it offers no SCRAM-SHA-256-PLUS before 1.21), for `users`, each with
/// the secret pgbouncer keeps for it (a password, or a SCRAM verifier, with
/// which it logs in to Postgres in the client's stead).
struct Bouncer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Bouncer {
    fn start(users: &[(&str, &str)]) -> Bouncer {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(path("cert.pem"), pair.cert.pem()).unwrap();
        std::fs::write(path("key.pem"), pair.signing_key.serialize_pem()).unwrap();
        let userlist: String = users.iter().map(|(user, secret)| format!("\"{user}\" \"{secret}\"\n")).collect();
        std::fs::write(path("userlist.txt"), userlist).unwrap();
        let addr = airlock_testkit::free_addr();
        let ini = format!(
            "[databases]\npostgres = host=127.0.0.1 port=5432 dbname=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\n\
             client_tls_sslmode = require\nclient_tls_cert_file = {dir}/cert.pem\nclient_tls_key_file = {dir}/key.pem\n\
             server_tls_sslmode = disable\nlogfile = {dir}/pgbouncer.log\n",
            port = addr.port(),
            dir = dir.path().display(),
        );
        std::fs::write(path("pgbouncer.ini"), ini).unwrap();
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is installed: run scripts/test, which installs it");
        let mut command = std::process::Command::new(bin);
        // pgbouncer refuses to run as root: then as postgres, which must read the directory.
        if std::process::Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0\n") {
            let chown = std::process::Command::new("chown").arg("-R").arg("postgres:").arg(dir.path()).status();
            assert!(chown.unwrap().success());
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(path("pgbouncer.ini"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut bouncer = Bouncer { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                let log = std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log")).unwrap_or_default();
                panic!("pgbouncer exited with {status}: {log}");
            }
            assert!(Instant::now() < deadline, "pgbouncer did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Listening, and not some other process on the port it was given.
        assert!(matches!(bouncer.child.try_wait(), Ok(None)), "pgbouncer exited");
        bouncer
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target that takes TLS but offers only SCRAM-SHA-256 (pgbouncer before
/// 1.21; libpq's `channel_binding=require` is refused there, which checks
/// that) gets a login that is not bound to its certificate and says the
/// gateway could have bound it (`y,,`), from each of the gateway's SCRAM
/// clients: a session role's (with the salted password the gateway made),
/// a stored password's through a salt cache, and one without. A real server
/// takes them all. (It would take `n,,` as well: which header each client
/// sends there is unit-tested.)
#[tokio::test]
async fn scram_over_tls_to_a_target_that_offers_no_binding_logs_in_unbound() {
    let stored = make_scram_role("bouncer", "stored horse", "").await;
    let (verifier, salted) = scram::verifier(b"made horse");
    let made = make_scram_role("bouncer", &verifier, "").await;
    let bouncer = Bouncer::start(&[(&stored.name, "stored horse"), (&made.name, &verifier)]);
    let libpq = |binding: &str| {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} dbname=postgres sslmode=require channel_binding={binding}",
            bouncer.addr.port(),
            stored.name
        );
        let mut psql = std::process::Command::new("psql");
        psql.arg(conninfo).args(["-XAtc", "SELECT 1"]).env("PGPASSWORD", "stored horse").env("LC_ALL", "C");
        psql.output().expect("psql runs")
    };
    let out = libpq("require");
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not offer"), "pgbouncer offers -PLUS: {out:?}");
    assert!(libpq("prefer").status.success());
    let options = |user: &str, password: &str| {
        let mut o = UpstreamOptions::new(bouncer.addr.to_string(), user, password, "postgres");
        o.tls = TargetTls::Require;
        o.connect_timeout = Duration::from_secs(10);
        o
    };
    let mut logins = Vec::new();
    let mut session_role = options(&made.name, "made horse");
    session_role.salted = Some(salted);
    logins.push(("a session role's", session_role));
    let mut cached = options(&stored.name, "stored horse");
    cached.salt_cache = Some(Arc::new(scram::SaltCache::default()));
    logins.push(("a stored password's, cached", cached.clone()));
    logins.push(("a stored password's, cached, again", cached));
    logins.push(("a stored password's", options(&stored.name, "stored horse")));
    for (what, o) in logins {
        let mut up = upstream::connect(&o).await.unwrap_or_else(|e| panic!("{what} login: {e}"));
        assert_eq!(scalar(&mut up, "SELECT current_user").await, o.user.as_bytes(), "{what}");
    }
    // pgbouncer says 08P01 where Postgres says 28P01.
    let wrong = options(&stored.name, "wrong horse");
    let e = upstream::connect(&wrong).await.unwrap_err();
    assert!(matches!(&e, UpstreamError::Refused { .. }) && !e.to_string().contains("wrong horse"), "{e}");
}
