//! The Postgres gateway with real clients (tokio-postgres, psql) in front and a
//! real Postgres behind: tokens, grants, session roles, revocation, expiry,
//! cancel, encodings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::bus::MemoryBus;
use airlock_testkit::eventually;
use airlock_testkit::pg::TestDb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A control plane and one worker with its Postgres gateway, in process, in
/// front of a fresh database with a template role and a table.
struct Stack {
    api: String,
    admin: String,
    pg: SocketAddr,
    db: TestDb,
    template: String,
    worker_id: String,
    dir: std::path::PathBuf,
    projection: Arc<airlock_data_plane::Projection>,
    cancel: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

impl Stack {
    async fn start() -> Stack {
        let db = TestDb::create().await.unwrap();
        let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_client(db.url()).await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {template} NOLOGIN;
                 CREATE TABLE people (id int PRIMARY KEY, name text);
                 INSERT INTO people VALUES (1, 'café'), (2, 'Zoë');
                 GRANT SELECT ON people TO {template};"
            ))
            .await
            .unwrap();

        let dir = std::env::temp_dir().join(format!("airlock-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bus = Arc::new(MemoryBus::new());
        let api_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let public_url = format!("http://{api_addr}");
        let identity = airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() };
        let cp = airlock_control_plane::server::start(
            airlock_control_plane::server::Options {
                database_url: format!("sqlite://{}", dir.join("airlock.db").display()),
                master_key: [3; 32],
                public_url: public_url.clone(),
                api_addr,
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                worker_token: "w".into(),
                identity: identity.clone(),
                admin_token_file: Some(dir.join("admin.token")),
            },
            bus.clone(),
            cancel.clone(),
            &tracker,
        )
        .await
        .unwrap();
        let worker_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        let worker = airlock_data_plane::start(
            airlock_data_plane::Options {
                control_plane_url: format!("http://{}", cp.grpc_addr),
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
                    gateway: airlock_data_plane::postgres::gateway::GatewayOptions {
                        worker_id: worker_id.clone(),
                        ..Default::default()
                    },
                }),
            },
            bus,
            cancel.clone(),
            &tracker,
        )
        .await
        .unwrap();
        let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        let projection = worker.projection.clone();
        let stack = Stack {
            api: public_url,
            admin,
            pg: worker.pg_addr.unwrap(),
            db,
            template,
            worker_id,
            dir,
            projection,
            cancel,
        };
        let (host_db, _) = stack.target();
        let connection = json!({
            "name": "pg", "kind": "postgres", "address": "127.0.0.1:5432", "database": host_db, "tls": "disable",
            "admin_credential": {"user": "postgres", "password": ""},
            "roles": {"readonly": stack.template},
        });
        let (status, body) = stack.post("/v1/connections", connection).await;
        assert_eq!(status, 201, "{body}");
        stack
    }

    /// Waits until the worker has applied everything the log holds (a change
    /// reaches workers in milliseconds, not instantly).
    async fn settle(&self) {
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
        let tenant = tenants[0]["id"].as_str().unwrap().parse().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.projection.wait_for(&tenant, head)).await.unwrap();
    }

    /// The target database's name, and the admin URL.
    fn target(&self) -> (String, String) {
        (self.db.name().to_owned(), self.db.url().to_owned())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, subject: &str) -> String {
        let (status, body) = self.post("/v1/tokens", json!({"subject": subject, "groups": ["agents"]})).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn grant(&self, subject: &str, ttl: u64) -> String {
        let body =
            json!({"subject": subject, "connection": "pg", "role": "readonly", "ttl_seconds": ttl, "reason": "test"});
        let (status, body) = self.post("/v1/grants", body).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn url(&self, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname={} sslmode=disable",
            self.pg.port(),
            self.db.name()
        )
    }

    async fn connect(&self, user: &str, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.url(user, token), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Session roles this stack's worker has on the server.
    async fn session_roles(&self) -> Vec<String> {
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

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_owned()).unwrap_or_else(|| format!("no db error: {e}"))
}

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
    assert!(s.session_roles().await.is_empty());
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

/// Runs psql off the runtime's thread: the gateway it talks to runs on this runtime.
async fn psql(s: &Stack, token: &str, extra_env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.arg(format!("host=127.0.0.1 port={} user=pg.readonly dbname={} sslmode=require", s.pg.port(), s.db.name()))
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
