//! `kill -9` of `airlock up` with a live gateway session leaves its session role
//! on the target; the restarted worker (same id) sweeps it on start, and closes
//! the session in the log from what its recording spool held.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airlock_testkit::eventually;
use airlock_testkit::pg::TestDb;
use serde_json::{Value, json};
use support::admin_client;
use support::process::{Proc, free_addr, wait_ready};

/// The template role is cluster-wide: dropped at the end, with any session role
/// of this worker a failed run left (the database goes with `TestDb`).
struct Cleanup {
    url: String,
    template: String,
    worker: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        support::drop_roles(&self.url, &self.worker, std::slice::from_ref(&self.template));
    }
}

/// Session roles of `worker` on the server, by the comment the gateway puts on them.
async fn roles_of(admin: &tokio_postgres::Client, worker: &str) -> Vec<String> {
    admin
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'airlock\\_%' AND shobj_description(oid, 'pg_authid') LIKE '%' || $1 || '%'",
            &[&format!("worker={worker} ")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn role_exists(admin: &tokio_postgres::Client, role: &str) -> bool {
    !admin.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap().is_empty()
}

/// Waits until the worker at `health` has applied the log's head.
async fn worker_caught_up(api: &str, admin_token: &str, health: SocketAddr) {
    let http = reqwest::Client::new();
    let page: Value = http
        .get(format!("{api}/v1/events?from_seq=1&limit=1"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let head = page["head_seq"].as_u64().unwrap();
    eventually(Duration::from_secs(20), &format!("the worker to apply seq {head}"), || async {
        let Ok(r) = reqwest::get(format!("http://{health}/healthz")).await else { return false };
        let health: Value = r.json().await.unwrap_or_default();
        health["applied"].as_object().is_some_and(|a| a.values().any(|s| s.as_u64() >= Some(head)))
    })
    .await;
}

/// The session that ran as `role`, once the log has its end.
async fn session_of(api: &str, admin_token: &str, role: &str) -> Value {
    let found = std::sync::Mutex::new(Value::Null);
    eventually(Duration::from_secs(20), &format!("the session of {role} to be closed in the log"), || async {
        let Ok(r) = reqwest::Client::new().get(format!("{api}/v1/sessions")).bearer_auth(admin_token).send().await
        else {
            return false;
        };
        let page: Value = r.json().await.unwrap_or_default();
        let session = page["sessions"].as_array().and_then(|all| all.iter().find(|s| s["target_role"] == role));
        match session {
            Some(s) if !s["closed_at"].is_null() => {
                *found.lock().unwrap() = s.clone();
                true
            }
            _ => false,
        }
    })
    .await;
    found.into_inner().unwrap()
}

async fn connect(pg: SocketAddr, db: &str, token: &str) -> tokio_postgres::Client {
    let url =
        format!("host=127.0.0.1 port={} user=pg.readonly password={token} dbname={db} sslmode=disable", pg.port());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `airlock up` as a child process in front of a fresh database with a table
/// and a template role, the connection `pg` registered, a grant and a token
/// for subject `survivor`.
struct Deployment {
    /// First, so it is dropped first: it sweeps the roles through the database `db` holds.
    _cleanup: Cleanup,
    db: TestDb,
    admin: tokio_postgres::Client,
    worker_id: String,
    dir: PathBuf,
    args: Vec<String>,
    env: [(&'static str, String); 2],
    url: String,
    admin_token: String,
    token: String,
    pg: SocketAddr,
    health: SocketAddr,
}

impl Deployment {
    async fn start() -> (Deployment, Proc) {
        let db = TestDb::create().await.unwrap();
        let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
        let worker_id = format!("restart-{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(format!("airlock-restart-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cleanup = Cleanup {
            url: db.url().to_owned(),
            template: template.clone(),
            worker: worker_id.clone(),
            dir: dir.clone(),
        };
        let admin = admin_client(db.url()).await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {template} NOLOGIN;
                 CREATE TABLE people (id int PRIMARY KEY, name text);
                 INSERT INTO people VALUES (1, 'café');
                 GRANT SELECT ON people TO {template};"
            ))
            .await
            .unwrap();

        let data = dir.join("data");
        let (api, grpc, pg, health) = (free_addr(), free_addr(), free_addr(), free_addr());
        let args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--api-addr".into(),
            api.to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
            "--pg-addr".into(),
            pg.to_string(),
        ];
        let env = [("AIRLOCK_WORKER__ADMIN_ADDR", health.to_string()), ("AIRLOCK_WORKER__ID", worker_id.clone())];
        let up = Proc::spawn("up", &dir, &args, &env);
        let url = format!("http://{api}");
        wait_ready(&format!("{url}/readyz")).await;
        wait_ready(&format!("http://{health}/readyz")).await;
        let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();

        let http = reqwest::Client::new();
        let post = |path: &str, body: Value| {
            let request = http.post(format!("{url}{path}")).bearer_auth(&admin_token).json(&body);
            async move {
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 201, "{body}");
                body
            }
        };
        post(
            "/v1/connections",
            json!({
                "name": "pg", "kind": "postgres", "address": "127.0.0.1:5432", "database": db.name(), "tls": "disable",
                "admin_credential": {"user": "postgres", "password": ""},
                "roles": {"readonly": template},
            }),
        )
        .await;
        let token = post("/v1/tokens", json!({"subject": "survivor", "groups": ["agents"]})).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        post(
            "/v1/grants",
            json!({"subject": "survivor", "connection": "pg", "role": "readonly", "ttl_seconds": 900, "reason": "test"}),
        )
        .await;
        worker_caught_up(&url, &admin_token, health).await;
        let d =
            Deployment { db, admin, worker_id, dir, args, env, url, admin_token, token, pg, health, _cleanup: cleanup };
        (d, up)
    }

    /// `airlock up` again on the same data directory and ports.
    async fn restart(&self, name: &str) -> Proc {
        let up = Proc::spawn(name, &self.dir, &self.args, &self.env);
        wait_ready(&format!("{}/readyz", self.url)).await;
        wait_ready(&format!("http://{}/readyz", self.health)).await;
        up
    }
}

#[tokio::test]
async fn after_kill_9_and_a_restart_no_session_role_of_the_worker_is_left() {
    let (d, mut up) = Deployment::start().await;
    let Deployment { db, admin, worker_id, url, admin_token, token, pg, health, .. } = &d;
    let (url, admin_token, health, pg) = (url.as_str(), admin_token.as_str(), *health, *pg);

    // A live session: its role exists, carrying this worker's id.
    let client = connect(pg, db.name(), token).await;
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert!(role.starts_with("airlock_"), "{role}");
    assert_eq!(roles_of(admin, worker_id).await, vec![role.clone()]);

    // kill -9: nothing gets to drop the role.
    up.kill();
    eventually(Duration::from_secs(5), "the client to see its session end", || async { client.is_closed() }).await;
    assert!(role_exists(admin, &role).await, "the role {role} was dropped although the worker was killed");
    assert_eq!(roles_of(admin, worker_id).await, vec![role.clone()]);

    // The same worker id, restarted on the same data directory, sweeps it.
    let _up = d.restart("up-again").await;
    eventually(Duration::from_secs(15), "the restarted worker to sweep the leftover role", || async {
        roles_of(admin, worker_id).await.is_empty()
    })
    .await;
    assert!(!role_exists(admin, &role).await);

    // The killed session is closed in the log by the restart, from what its recording spool held.
    let killed = session_of(url, admin_token, &role).await;
    assert_eq!(killed["close_reason"], "worker restarted", "{killed}");
    assert_eq!(killed["outcome"], "terminated", "{killed}");
    assert!(killed["bytes_from_client"].as_u64() > Some(0), "{killed}");

    // And a fresh session works, with a role of its own that goes when it ends.
    worker_caught_up(url, admin_token, health).await;
    let client = connect(pg, db.name(), token).await;
    let row = client.query_one("SELECT current_user, name FROM people WHERE id = $1", &[&1i32]).await.unwrap();
    let fresh: String = row.get(0);
    assert!(fresh.starts_with("airlock_") && fresh != role, "{fresh}");
    assert_eq!(row.get::<_, String>(1), "café");
    assert_eq!(roles_of(admin, worker_id).await, vec![fresh]);
    drop(client);
    eventually(Duration::from_secs(10), "the fresh session's role to be dropped", || async {
        roles_of(admin, worker_id).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_graceful_stop_closes_its_sessions_in_the_log() {
    let (d, up) = Deployment::start().await;
    let client = connect(d.pg, d.db.name(), &d.token).await;
    let role: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);

    // SIGTERM: the worker stops first, ending the session, and the log gets its close before the rest stops.
    let mut up = up;
    let status = std::process::Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (_stopped, exited) = tokio::task::spawn_blocking(move || {
        let exited = up.child.wait();
        (up, exited)
    })
    .await
    .unwrap();
    let exited = exited.unwrap();
    assert!(exited.success(), "{exited:?}");
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    assert!(roles_of(&d.admin, &d.worker_id).await.is_empty(), "a session role outlived a graceful stop");

    let _up = d.restart("up-again").await;
    let closed = session_of(&d.url, &d.admin_token, &role).await;
    // The stop reaches the relay through the shutdown or through the end of recording, whichever first.
    let reason = closed["close_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("shutting down"), "{closed}");
    assert_eq!(closed["outcome"], "terminated", "{closed}");
}
