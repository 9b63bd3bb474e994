//! The bus against a NATS server of the test's own that serves TLS and asks
//! for a password, and then one that also verifies client certificates: the
//! bus connects only when it trusts the server and the server takes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_proto::EventRecord;
use airlock_proto::bus::{Bus, NatsBus, NatsOptions, RecordKey, StartAt};
use airlock_testkit::eventually;
use futures::StreamExt as _;

/// A certificate authority, and certificates it signed, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("airlock-nats-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir, ca };
        std::fs::write(pki.path("ca.crt"), AsRef::<rcgen::Certificate>::as_ref(&pki.ca).pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `{name}.crt` and `{name}.key` for `names`, signed by the CA.
    fn issue(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_file, key_file) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A nats-server with JetStream on a port of its own, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    async fn start(pki: &Pki, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port, pki, extra).await
    }

    /// On `port`, keeping its streams where a server on that port before it did.
    async fn start_on(port: u16, pki: &Pki, extra: &[&str]) -> Self {
        let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"]);
        let store = pki.path(&format!("js-{port}"));
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", store.to_str().unwrap()])
            .args(["--tls", "--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()])
            .args(["--user", "airlock", "--pass", "bus-password"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test installs it)");
        eventually(Duration::from_secs(20), "nats-server to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Self { child, port }
    }

    /// Stops it as an operator would (SIGTERM), so that it writes what its
    /// streams hold before it exits.
    async fn stop(mut self) {
        let stopped = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(stopped.success());
        eventually(Duration::from_secs(20), "nats-server to exit", || {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            async move { exited }
        })
        .await;
    }

    fn url(&self, password: &str) -> String {
        format!("nats://airlock:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nats-server binary: on the PATH, or where Debian puts it.
fn nats_server() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

fn options(url: String, ca: Option<&Path>) -> NatsOptions {
    let mut options = NatsOptions::new(url, "airlock", RecordKey::from_worker_token("worker-secret"));
    options.ca_file = ca.map(Path::to_owned);
    options
}

async fn connect(options: &NatsOptions) -> anyhow::Result<NatsBus> {
    tokio::time::timeout(Duration::from_secs(30), NatsBus::connect(options)).await.unwrap()
}

/// Why connecting with `options` fails.
async fn refusal(options: &NatsOptions) -> String {
    match connect(options).await {
        Ok(_) => panic!("connected to {}", options.url),
        Err(e) => format!("{e:#}"),
    }
}

/// A record published on `bus` arrives on a subscription of it.
async fn round_trip(bus: &NatsBus) {
    let mut records = bus.subscribe(StartAt::Beginning).await.unwrap();
    let record = EventRecord { tenant_id: "t1".into(), seq: 1, actor: "over-tls".into(), ..Default::default() };
    bus.publish(&record).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), records.next()).await.unwrap().unwrap();
    assert_eq!(got, record);
}

#[tokio::test]
async fn the_bus_reaches_nats_over_tls_with_a_password() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]).await;
    let ca = pki.path("ca.crt");

    round_trip(&connect(&options(server.url("bus-password"), Some(&ca))).await.unwrap()).await;

    // The system's roots do not vouch for the server: refused at once, not retried.
    let err = refusal(&options(server.url("bus-password"), None)).await;
    assert!(err.contains("the TLS handshake with NATS failed: IO error: invalid peer certificate"), "{err}");
    // Nor does another CA.
    let stranger = Pki::new();
    let err = refusal(&options(server.url("bus-password"), Some(&stranger.path("ca.crt")))).await;
    assert!(err.contains("the TLS handshake with NATS failed: IO error: invalid peer certificate"), "{err}");
    // A wrong password is refused by the server.
    let err = refusal(&options(server.url("wrong"), Some(&ca))).await;
    assert!(err.contains("authorization violation"), "{err}");
    // A CA file with no certificate in it is named.
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = refusal(&options(server.url("bus-password"), Some(&empty))).await;
    assert!(err.contains("bus.nats_ca_file") && err.contains("empty.pem holds no PEM certificate"), "{err}");
}

#[tokio::test]
async fn a_server_that_verifies_clients_takes_the_bus_with_its_certificate() {
    let pki = Pki::new();
    let ca = pki.path("ca.crt");
    let server = Server::start(&pki, &["--tlsverify", "--tlscacert", ca.to_str().unwrap()]).await;

    // Without a client certificate the server ends the handshake.
    let err = refusal(&options(server.url("bus-password"), Some(&ca))).await;
    assert!(err.contains("the TLS handshake with NATS failed"), "{err}");
    let mut with_certificate = options(server.url("bus-password"), Some(&ca));
    with_certificate.client_cert = Some(pki.issue("worker", &["airlock-worker"]));
    round_trip(&connect(&with_certificate).await.unwrap()).await;
}

/// The worker's certificate is renewed by a new CA, and the server restarts
/// trusting only that CA: the bus, reconnecting, presents the renewed
/// certificate from the same files, with no restart of its own.
#[tokio::test]
async fn a_renewed_client_certificate_is_presented_when_the_bus_reconnects() {
    let pki = Pki::new();
    let ca = pki.path("ca.crt");
    let server = Server::start(&pki, &["--tlsverify", "--tlscacert", ca.to_str().unwrap()]).await;
    let mut options = options(server.url("bus-password"), Some(&ca));
    let (cert, key) = pki.issue("worker", &["airlock-worker"]);
    options.client_cert = Some((cert.clone(), key.clone()));
    let bus = connect(&options).await.unwrap();
    round_trip(&bus).await;

    let port = server.port;
    server.stop().await;
    let renewing = Pki::new();
    let (new_cert, new_key) = renewing.issue("worker", &["airlock-worker"]);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let client_ca = renewing.path("ca.crt");
    let _server = Server::start_on(port, &pki, &["--tlsverify", "--tlscacert", client_ca.to_str().unwrap()]).await;

    let record = EventRecord { tenant_id: "t1".into(), seq: 2, actor: "renewed".into(), ..Default::default() };
    eventually(Duration::from_secs(60), "the bus to publish through the restarted server", || async {
        bus.publish(&record).await.is_ok()
    })
    .await;
    let mut records = bus.subscribe(StartAt::Beginning).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let got = tokio::time::timeout(Duration::from_secs(20), records.next()).await.unwrap().unwrap();
        seen.push(got.actor);
    }
    assert_eq!(seen, ["over-tls", "renewed"]);
}

/// Nothing listening: tried again while the stream opens, then an error that
/// says what the last attempt met rather than only that the stream timed out.
#[tokio::test]
async fn an_unreachable_server_is_named_in_the_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = refusal(&options(format!("nats://airlock:secret-password@127.0.0.1:{port}"), None)).await;
    assert!(err.contains("NATS was not reached (") && err.contains("creating JetStream stream"), "{err}");
    assert!(!err.contains("secret-password"), "{err}");
}
