//! An in-process control plane on `127.0.0.1:0`, and a small REST client.

#![allow(dead_code)]

use std::sync::Arc;

use airlock_control_plane::server::{Options, Running, start};
use airlock_proto::bus::{Bus, MemoryBus};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const EXAMPLE_CONNECTION: &str = r#"{"name": "pg-local", "kind": "postgres", "address": "127.0.0.1:5432", "database": "app",
 "tls": "prefer",
 "admin_credential": {"user": "postgres", "password": ""},
 "roles": {"readonly": "app_readonly", "readwrite": "app_readwrite"}}"#;

pub const EXAMPLE_POLICY: &str = include_str!("../../../core/testdata/example-policy.yaml");

/// An HTTP client builder that trusts `ca` (PEM) and nothing else.
pub fn trusting(ca: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
}

pub struct Harness {
    pub running: Running,
    pub base: String,
    pub admin_token: String,
    pub dir: std::path::PathBuf,
    pub database_url: String,
    pub bus: Arc<dyn Bus>,
    /// Trusts the REST API's certificate when it serves TLS.
    pub client: reqwest::Client,
    cancel: CancellationToken,
    tracker: TaskTracker,
    _db: Option<airlock_testkit::pg::TestDb>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub enum Backend {
    Sqlite,
    Postgres,
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, Arc::new(MemoryBus::new())).await
    }

    pub async fn start_with(backend: Backend, bus: Arc<dyn Bus>) -> Harness {
        Self::start_full(backend, bus, airlock_core::clock::system()).await
    }

    /// With a clock the test moves.
    pub async fn start_with_clock(backend: Backend, clock: Arc<dyn airlock_core::clock::Clock>) -> Harness {
        Self::start_full(backend, Arc::new(MemoryBus::new()), clock).await
    }

    pub async fn start_full(
        backend: Backend,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn airlock_core::clock::Clock>,
    ) -> Harness {
        Self::start_console(backend, bus, clock, Default::default()).await
    }

    /// With the web console's settings.
    pub async fn start_console(
        backend: Backend,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn airlock_core::clock::Clock>,
        console: airlock_control_plane::web::ConsoleOptions,
    ) -> Harness {
        Self::start_options(backend, bus, clock, console, None).await
    }

    /// With the REST and gRPC APIs serving TLS with a certificate for
    /// `127.0.0.1` (`ca` is that certificate, PEM).
    pub async fn start_tls(tls: airlock_proto::transport::ServerTls, ca: &str) -> Harness {
        let tls = Some((tls, ca.to_owned()));
        Self::start_options(
            Backend::Sqlite,
            Arc::new(MemoryBus::new()),
            airlock_core::clock::system(),
            Default::default(),
            tls,
        )
        .await
    }

    async fn start_options(
        backend: Backend,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn airlock_core::clock::Clock>,
        console: airlock_control_plane::web::ConsoleOptions,
        tls: Option<(airlock_proto::transport::ServerTls, String)>,
    ) -> Harness {
        let dir = std::env::temp_dir().join(format!("airlock-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (database_url, db) = match backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.join("airlock.db").display()), None),
            Backend::Postgres => {
                let db = airlock_testkit::pg::TestDb::create().await.unwrap();
                (db.url().to_owned(), Some(db))
            }
        };
        // The public URL must be known before binding; bind the REST port first.
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_addr = api.local_addr().unwrap();
        drop(api);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = format!("{scheme}://{api_addr}");
        let client = match &tls {
            Some((_, ca)) => trusting(ca).build().unwrap(),
            None => reqwest::Client::new(),
        };
        let options = Options {
            database_url: database_url.clone(),
            master_key: [7; 32],
            public_url: public_url.clone(),
            api_addr,
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            api_tls: tls.as_ref().map(|(files, _)| files.clone()),
            tls_reload_every: std::time::Duration::from_millis(100),
            api_cleartext_off_loopback: false,
            grpc_tls: tls.as_ref().map(|(files, _)| files.clone()),
            grpc_cleartext_off_loopback: false,
            worker_token: "worker-secret".into(),
            identity: airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() },
            admin_token_file: Some(dir.join("admin.token")),
            reissue_admin_token: false,
            clock,
            recordings: Some(airlock_control_plane::service::Recordings {
                store: airlock_recorder::Recordings::open(&airlock_recorder::Config {
                    data_dir: Some(dir.join("recorder")),
                    ..Default::default()
                })
                .unwrap(),
                trusted_key: None,
            }),
            console,
        };
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let running = start(options, bus.clone(), cancel.clone(), &tracker).await.unwrap();
        let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        Harness { base: public_url, running, admin_token, dir, database_url, bus, client, cancel, tracker, _db: db }
    }

    /// Stops the server as a process stops it; whether all its tasks ended
    /// within `within`.
    pub async fn stop(&self, within: std::time::Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait()).await.is_ok()
    }

    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put_policy(&self, token: &str, yaml: &str) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/v1/policy", self.base))
            .bearer_auth(token)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn register_example_connection(&self, token: &str) -> Value {
        let (status, body) =
            self.post("/v1/connections", token, serde_json::from_str(EXAMPLE_CONNECTION).unwrap()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// An Airlock token for `subject` in `groups` (minted with `admin`'s token).
    pub async fn token(&self, admin: &str, subject: &str, groups: &[&str]) -> String {
        let (status, body) = self
            .post("/v1/tokens", admin, serde_json::json!({"subject": subject, "groups": groups, "ttl_seconds": 3600}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// A new tenant and its admin token.
    pub async fn create_tenant(&self, name: &str) -> (String, String) {
        let (status, body) = self.post("/v1/tenants", &self.admin_token, serde_json::json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["tenant"]["id"].as_str().unwrap().to_owned(), body["admin_token"].as_str().unwrap().to_owned())
    }
}
