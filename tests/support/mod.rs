//! A control plane and a worker with its Postgres gateway, in process, in front
//! of a fresh database: the harness of the gateway's end-to-end tests.

#![allow(dead_code)]

pub mod process;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_proto::EventRecord;
use airlock_proto::bus::{Bus, MemoryBus, RecordStream, StartAt};
use airlock_testkit::pg::TestDb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A control plane and one worker with its Postgres gateway, in process, in
/// front of a fresh database with a template role and a table.
pub struct Stack {
    pub api: String,
    pub admin: String,
    pub pg: SocketAddr,
    /// The worker's health and metrics endpoint.
    pub health: SocketAddr,
    /// How the stack's worker was started (`second_worker` starts another alike).
    pub worker_options: airlock_data_plane::Options,
    pub db: TestDb,
    pub template: String,
    pub worker_id: String,
    pub dir: std::path::PathBuf,
    pub projection: Arc<airlock_data_plane::Projection>,
    pub cancel: CancellationToken,
    pub control_plane: Arc<airlock_control_plane::service::ControlPlane>,
    /// The control plane's clock; tests move it to expire grants and reviews.
    pub clock: airlock_core::clock::ManualClock,
    /// The recorder the worker records to, when it runs (`Recording::Recorder`).
    pub recorder: Option<airlock_recorder::Started>,
    /// The recorder's store, read back.
    pub recordings: airlock_recorder::Recordings,
    /// The bus between the control plane and the worker.
    pub bus: Arc<LossyBus>,
    /// The worker's gRPC link to the control plane, where a test cuts or
    /// stalls it (`start_with_control_plane_link`).
    pub control_plane_link: Option<airlock_testkit::proxy::TcpProxy>,
}

/// An in-process bus that a test can make lose what the control plane
/// publishes, as a NATS outage would: the worker then learns of the log's
/// changes only by asking the control plane.
#[derive(Default)]
pub struct LossyBus {
    inner: MemoryBus,
    losing: AtomicBool,
}

impl LossyBus {
    /// From now on, drops (`true`) or delivers (`false`) every published record.
    pub fn lose(&self, losing: bool) {
        self.losing.store(losing, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Bus for LossyBus {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        if self.losing.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.publish(record).await
    }

    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream> {
        self.inner.subscribe(start).await
    }

    async fn publish_cancel(&self, cancel: airlock_proto::bus::CancelRequest) -> anyhow::Result<()> {
        self.inner.publish_cancel(cancel).await
    }

    async fn subscribe_cancels(&self) -> anyhow::Result<airlock_proto::bus::CancelStream> {
        self.inner.subscribe_cancels().await
    }
}

/// How the stack's worker records sessions.
#[derive(Debug, Clone)]
pub enum Recording {
    /// To a recorder started in process beside it (every stack but those that say otherwise).
    Recorder,
    /// To a recorder started in process, in strict mode: nothing the client
    /// sends reaches the target before the recorder stored it.
    Strict,
    /// To a recorder nobody runs, with a spool this many bytes large; strict
    /// sessions wait half a second for it.
    Unreachable { spool_max_bytes: u64, strict: bool },
    /// To a recorder someone else runs (`airlock recorder` as a child process),
    /// with the worker token `w`.
    External { url: String },
    /// Not at all (`worker.recording` off): what a test measures is the relay alone.
    Off,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The template roles are cluster-wide: drop them with the database.
        drop_roles(self.db.url(), &self.worker_id, &[self.template.clone(), format!("{}_rw", self.template)]);
    }
}

/// Cleanup that must run even when a test fails, from `Drop` (which cannot
/// await): sweeps `worker`'s session roles (sessions still open when the test
/// returned never got to drop theirs; this is what a restarted worker does),
/// then drops the cluster-wide template roles. Bounded: the test's runtime is
/// blocked meanwhile, so the stack's own connections to the database cannot
/// finish what they were doing; they are ended first, which rolls back
/// anything they held locked.
pub fn drop_roles(url: &str, worker: &str, templates: &[String]) {
    let (url, worker, templates) = (url.to_owned(), worker.to_owned(), templates.to_vec());
    let cleanup = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let cleanup = async {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    )
                    .await;
            }
            if let Ok(config) = url.parse::<tokio_postgres::Config>() {
                use airlock_data_plane::postgres::roles::{RoleManager, TlsChoice};
                if let Ok(manager) = RoleManager::connect(config, TlsChoice::Disable).await {
                    let _ = manager.sweep(&worker, "").await;
                }
            }
            let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else { return };
            tokio::spawn(conn);
            for template in &templates {
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP OWNED BY {template}; DROP ROLE IF EXISTS {template};"
                    ))
                    .await;
            }
        };
        if rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), cleanup).await }).is_err() {
            eprintln!("warning: cleaning up the test's roles took over 30 s; some may be left");
        }
    });
    if cleanup.join().is_err() {
        eprintln!("warning: cleaning up the test's roles failed; some may be left");
    }
}

/// The role group whose members the test Postgres asks for a password from
/// 127.0.0.1, where it trusts everyone else (`scripts/test` writes the rule):
/// the harness's role templates are in it, so every session role logs in
/// with the SCRAM password the gateway made for it, as on a real target.
pub const SCRAM_LOGINS: &str = "scram_logins_test";

pub async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

impl Stack {
    /// psql (`-X -At`) as `user` with `token` for its password, off the
    /// runtime's thread (the gateway runs on this runtime).
    pub async fn psql(&self, user: &str, token: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(format!(
            "host=127.0.0.1 port={} user={user} dbname={} sslmode=require",
            self.pg.port(),
            self.db.name()
        ))
        .args(["-X", "-At"])
        .args(args)
        .env("PGPASSWORD", token);
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }

    /// The first tenant, and the sessions the log says were opened, oldest
    /// first, once it says `count` were: workers send session events to the
    /// control plane after the fact, so a client that has exited may not be
    /// in the log yet.
    pub async fn opened_sessions(&self, count: usize) -> (airlock_core::TenantId, Vec<airlock_core::SessionId>) {
        let tenants = self.get_as("/v1/tenants", &self.admin).await;
        let tenant = tenants[0]["id"].as_str().unwrap().parse().unwrap();
        let opened = std::sync::Mutex::new(Vec::new());
        airlock_testkit::eventually(Duration::from_secs(10), &format!("{count} session_opened events"), || async {
            let page = self.get_as("/v1/events?from_seq=0", &self.admin).await;
            let found: Vec<airlock_core::SessionId> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "session_opened")
                .map(|e| e["data"]["session"]["id"].as_str().unwrap().parse().unwrap())
                .collect();
            let enough = found.len() >= count;
            *opened.lock().unwrap() = found;
            enough
        })
        .await;
        (tenant, opened.into_inner().unwrap())
    }

    /// The first review pending for `approver`, once there is one.
    pub async fn pending_review(&self, approver: &str) -> Value {
        let found = std::sync::Mutex::new(Value::Null);
        airlock_testkit::eventually(Duration::from_secs(10), "a review pending for the approver", || async {
            let list = self.get_as("/v1/reviews?pending_for_me=true", approver).await;
            match list.as_array().and_then(|a| a.first()) {
                Some(r) => {
                    *found.lock().unwrap() = r.clone();
                    true
                }
                None => false,
            }
        })
        .await;
        found.into_inner().unwrap()
    }

    pub async fn start() -> Stack {
        Self::start_with(None, Recording::Recorder).await
    }

    pub async fn start_with_hook(hook: Arc<dyn airlock_data_plane::postgres::hook::StatementHook>) -> Stack {
        Self::start_with(Some(hook), Recording::Recorder).await
    }

    /// `hook` `None`: the tenant's command rules, as a deployed gateway applies them.
    pub async fn start_with(
        hook: Option<Arc<dyn airlock_data_plane::postgres::hook::StatementHook>>,
        recording: Recording,
    ) -> Stack {
        Self::start_full(hook, recording, Default::default(), |_| {}).await
    }

    /// With the web console's settings (its OIDC sign-in).
    pub async fn start_with_console(console: airlock_control_plane::web::ConsoleOptions) -> Stack {
        Self::start_full(None, Recording::Recorder, console, |_| {}).await
    }

    /// With the gateway's options changed by `gateway` (after the harness sets its own).
    pub async fn start_with_gateway(
        gateway: impl FnOnce(&mut airlock_data_plane::postgres::gateway::GatewayOptions),
    ) -> Stack {
        Self::start_full(None, Recording::Recorder, Default::default(), gateway).await
    }

    pub async fn start_full(
        hook: Option<Arc<dyn airlock_data_plane::postgres::hook::StatementHook>>,
        recording: Recording,
        console: airlock_control_plane::web::ConsoleOptions,
        gateway: impl FnOnce(&mut airlock_data_plane::postgres::gateway::GatewayOptions),
    ) -> Stack {
        Self::start_linked(hook, recording, console, gateway, false).await
    }

    /// With the worker's gRPC calls to the control plane (credentials,
    /// reviews, session events) going through a proxy the test holds in
    /// `control_plane_link`. The bus does not go through it.
    pub async fn start_with_control_plane_link() -> Stack {
        Self::start_linked(None, Recording::Recorder, Default::default(), |_| {}, true).await
    }

    async fn start_linked(
        hook: Option<Arc<dyn airlock_data_plane::postgres::hook::StatementHook>>,
        recording: Recording,
        console: airlock_control_plane::web::ConsoleOptions,
        gateway: impl FnOnce(&mut airlock_data_plane::postgres::gateway::GatewayOptions),
        linked: bool,
    ) -> Stack {
        let db = TestDb::create().await.unwrap();
        let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_client(db.url()).await;
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {SCRAM_LOGINS} NOLOGIN;
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
                 CREATE ROLE {template} NOLOGIN IN ROLE {SCRAM_LOGINS};
                 CREATE ROLE {template}_rw NOLOGIN;
                 CREATE TABLE people (id int PRIMARY KEY, name text);
                 INSERT INTO people VALUES (1, 'café'), (2, 'Zoë');
                 GRANT SELECT ON people TO {template};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {template}_rw;
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {template}_rw;
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {template};"
            ))
            .await
            .unwrap();

        let dir = std::env::temp_dir().join(format!("airlock-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bus = Arc::new(LossyBus::default());
        // Bound here and handed over: the tokens' issuer names its address.
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api_listener.local_addr().unwrap();
        let public_url = format!("http://{api_addr}");
        let identity = airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() };
        let clock = airlock_core::clock::ManualClock::new();
        let worker_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        let recorder_config = airlock_recorder::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: Some(dir.join("recorder")),
            ..Default::default()
        };
        let (recorder, recording) = match recording {
            Recording::Recorder | Recording::Strict => {
                let started =
                    airlock_recorder::start(recorder_config.clone(), Some("w".into()), cancel.clone(), &tracker)
                        .await
                        .unwrap();
                let options = airlock_data_plane::recording::Options {
                    recorder_url: format!("http://{}", started.addr),
                    spool_dir: dir.join("spool"),
                    strict: matches!(recording, Recording::Strict),
                    reconnect_max_ms: 200,
                    ..Default::default()
                };
                (Some(started), Some(options))
            }
            Recording::External { url } => {
                let options = airlock_data_plane::recording::Options {
                    recorder_url: url,
                    spool_dir: dir.join("spool"),
                    reconnect_max_ms: 200,
                    ..Default::default()
                };
                (None, Some(options))
            }
            Recording::Unreachable { spool_max_bytes, strict } => {
                let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
                let options = airlock_data_plane::recording::Options {
                    recorder_url: format!("http://{nobody}"),
                    spool_dir: dir.join("spool"),
                    spool_max_bytes,
                    strict,
                    strict_timeout_ms: 500,
                    reconnect_max_ms: 200,
                    ..Default::default()
                };
                (None, Some(options))
            }
            Recording::Off => (None, None),
        };
        let recordings = airlock_recorder::Recordings::open(&recorder_config).unwrap();
        let cp = airlock_control_plane::server::start_on(
            api_listener,
            airlock_control_plane::server::Options {
                database_url: format!("sqlite://{}", dir.join("airlock.db").display()),
                master_key: [3; 32],
                public_url: public_url.clone(),
                api_addr,
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                api_tls: None,
                tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
                api_cleartext_off_loopback: false,
                grpc_tls: None,
                grpc_cleartext_off_loopback: false,
                worker_token: "w".into(),
                identity: identity.clone(),
                admin_token_file: Some(dir.join("admin.token")),
                reissue_admin_token: false,
                clock: Arc::new(clock.clone()),
                recordings: Some(airlock_control_plane::service::Recordings {
                    store: recordings.clone(),
                    trusted_key: recorder.as_ref().map(|r| r.public_key),
                }),
                console,
            },
            bus.clone(),
            cancel.clone(),
            &tracker,
        )
        .await
        .unwrap();
        let control_plane_link =
            if linked { Some(airlock_testkit::proxy::TcpProxy::start(cp.grpc_addr).await.unwrap()) } else { None };
        let grpc_addr = control_plane_link.as_ref().map_or(cp.grpc_addr, |link| link.addr());
        let worker_options = airlock_data_plane::Options {
            control_plane_url: format!("http://{grpc_addr}"),
            grpc_tls: Default::default(),
            worker_token: "w".into(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            reconcile_every: Duration::from_secs(60),
            identity,
            postgres: Some(airlock_data_plane::PostgresOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: Some(airlock_data_plane::postgres::tls::TlsSource::SelfSigned {
                    dir: dir.clone(),
                    names: vec!["localhost".into(), "127.0.0.1".into()],
                }),
                gateway: {
                    let mut options = airlock_data_plane::postgres::gateway::GatewayOptions {
                        worker_id: worker_id.clone(),
                        // Sessions on a session thread of their own, as `airlock up` runs them.
                        session_threads: 1,
                        ..Default::default()
                    };
                    gateway(&mut options);
                    options
                },
                hook,
                recording,
            }),
        };
        let worker =
            airlock_data_plane::start(worker_options.clone(), bus.clone(), cancel.clone(), &tracker).await.unwrap();
        let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        let projection = worker.projection.clone();
        let stack = Stack {
            api: public_url,
            admin,
            pg: worker.pg_addr.unwrap(),
            health: worker.admin_addr,
            worker_options,
            db,
            template,
            worker_id,
            dir,
            projection,
            cancel,
            control_plane: cp.control_plane.clone(),
            clock,
            recorder,
            recordings,
            bus,
            control_plane_link,
        };
        let (host_db, _) = stack.target();
        let connection = json!({
            "name": "pg", "kind": "postgres", "address": "127.0.0.1:5432", "database": host_db, "tls": "disable",
            "admin_credential": {"user": "postgres", "password": ""},
            "roles": {"readonly": stack.template, "readwrite": format!("{}_rw", stack.template)},
        });
        let (status, body) = stack.post("/v1/connections", connection).await;
        assert_eq!(status, 201, "{body}");
        stack
    }

    /// Waits until the worker has applied everything the log holds (a change
    /// reaches workers in milliseconds, not instantly).
    pub async fn settle(&self) {
        let (tenant, head) = self.log_head().await;
        tokio::time::timeout(Duration::from_secs(10), self.projection.wait_for(&tenant, head)).await.unwrap();
    }

    /// The tenant and the `seq` of the last event its log holds.
    pub async fn log_head(&self) -> (airlock_core::TenantId, u64) {
        let r =
            reqwest::Client::new().get(format!("{}/v1/events?from_seq=1&limit=1", self.api)).bearer_auth(&self.admin);
        let page: Value = r.send().await.unwrap().json().await.unwrap();
        let head = page["head_seq"].as_u64().unwrap();
        let tenants: Value = reqwest::Client::new()
            .get(format!("{}/v1/tenants", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (tenants[0]["id"].as_str().unwrap().parse().unwrap(), head)
    }

    /// The target database's name, and the admin URL.
    pub fn target(&self) -> (String, String) {
        (self.db.name().to_owned(), self.db.url().to_owned())
    }

    /// A POST as the tenant's admin.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_as(path, &self.admin, body).await
    }

    /// Applies a policy document and waits until the worker has it.
    pub async fn apply_policy(&self, yaml: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/v1/policy", self.api))
            .bearer_auth(&self.admin)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        self.settle().await;
    }

    /// A token for `subject` in `groups`.
    pub async fn token_in(&self, subject: &str, groups: &[&str]) -> String {
        let (status, body) = self.post("/v1/tokens", json!({"subject": subject, "groups": groups})).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// A GET with `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> Value {
        let r = reqwest::Client::new().get(format!("{}{path}", self.api)).bearer_auth(token).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A request as the tenant's admin, with a JSON body or none.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            reqwest::Client::new().request(method, format!("{}{path}", self.api)).bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A POST with `token`.
    pub async fn post_as(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn token(&self, subject: &str) -> String {
        let (status, body) = self.post("/v1/tokens", json!({"subject": subject, "groups": ["agents"]})).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn grant(&self, subject: &str, ttl: u64) -> String {
        self.grant_role(subject, "readonly", ttl).await
    }

    /// Grants `subject` `role` on `pg` and waits until the worker has the
    /// grant: a login right after it is then decided on it, however busy the
    /// machine (the gateway itself waits only briefly for a lagging worker).
    pub async fn grant_role(&self, subject: &str, role: &str, ttl: u64) -> String {
        let body = json!({"subject": subject, "connection": "pg", "role": role, "ttl_seconds": ttl, "reason": "test"});
        let (status, body) = self.post("/v1/grants", body).await;
        assert_eq!(status, 201, "{body}");
        self.settle().await;
        body["id"].as_str().unwrap().to_owned()
    }

    pub fn url(&self, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname={} sslmode=disable",
            self.pg.port(),
            self.db.name()
        )
    }

    pub async fn connect(&self, user: &str, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.url(user, token), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Another worker beside the stack's, on the same control plane and bus,
    /// with a Postgres gateway of its own (no session role of the stack's
    /// worker is its): that gateway's address.
    pub async fn second_worker(&self) -> SocketAddr {
        let mut options = self.worker_options.clone();
        options.admin_addr = "127.0.0.1:0".parse().unwrap();
        let pg = options.postgres.as_mut().unwrap();
        pg.listen = "127.0.0.1:0".parse().unwrap();
        pg.gateway.worker_id = format!("{}-second", self.worker_id);
        if let Some(recording) = pg.recording.as_mut() {
            recording.spool_dir = self.dir.join("spool-second");
        }
        let bus: Arc<dyn airlock_proto::bus::Bus> = self.bus.clone();
        let worker = airlock_data_plane::start(options, bus, self.cancel.clone(), &TaskTracker::new()).await.unwrap();
        worker.pg_addr.unwrap()
    }

    /// The value of `name` in the worker's `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.health)).await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name));
        line.and_then(|l| l.split_once(' ')?.1.parse().ok()).unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Session roles this stack's worker has on the server.
    pub async fn session_roles(&self) -> Vec<String> {
        let admin = admin_client(self.db.url()).await;
        let rows = admin
            .query(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'airlock\\_%' AND shobj_description(oid, 'pg_authid') LIKE '%' || $1 || '%'",
                &[&format!("worker={}", self.worker_id)],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_owned()).unwrap_or_else(|| format!("no db error: {e}"))
}
