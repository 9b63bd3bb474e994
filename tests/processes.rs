//! The `airlock` binary as users run it: `airlock up` with the CLI verbs, and a
//! control plane with two gateway processes on Postgres and NATS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use airlock_testkit::eventually;
use base64::Engine;
use serde_json::Value;
use support::process::{BIN, Proc, TempDir, free_addr, wait_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
const CONNECTION: &str = r#"{"name": "pg-local", "kind": "postgres", "address": "127.0.0.1:5432", "database": "app",
 "tls": "prefer",
 "admin_credential": {"user": "postgres", "password": ""},
 "roles": {"readonly": "app_readonly", "readwrite": "app_readwrite"}}"#;
const POLICY: &str = include_str!("../core/testdata/example-policy.yaml");

/// Runs a client verb against `url` with `token`.
fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("AIRLOCK_URL", url).env("AIRLOCK_TOKEN", token).output().unwrap()
}

/// `airlock up`'s arguments for its data directory and addresses.
fn up_args(data: &std::path::Path, api: SocketAddr, grpc: SocketAddr, pg: SocketAddr) -> Vec<String> {
    let data = data.to_str().unwrap().to_owned();
    let [api, grpc, pg] = [api, grpc, pg].map(|a| a.to_string());
    ["up", "--data-dir", &data, "--api-addr", &api, "--grpc-addr", &grpc, "--pg-addr", &pg].map(str::to_owned).to_vec()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn airlock_up_quick_start_with_the_cli() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let (api, grpc, worker) = (free_addr(), free_addr(), free_addr());
    let args =
        ["up", "--data-dir", data.to_str().unwrap(), "--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string()];
    let env = [("AIRLOCK_WORKER__ADMIN_ADDR", worker.to_string())];
    // Started with the common soft limit of open files (children inherit it; this test runs in a process of its own).
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let low = Rlimit { current: limit.maximum.map(|m| m.min(1024)), maximum: limit.maximum };
    setrlimit(Resource::Nofile, low).unwrap();
    let mut up = Proc::spawn("up", &dir.0, &args, &env);
    setrlimit(Resource::Nofile, limit).unwrap();
    let url = format!("http://{api}");
    wait_ready(&format!("{url}/readyz")).await;
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();

    // A gateway holds descriptors per session: it raised its soft open-files limit to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", up.child.id())).unwrap();
    let open_files: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().skip(3).take(2).collect();
    assert_eq!(open_files[0], open_files[1], "{limits}");

    // The web UI is served beside the API.
    let page = reqwest::get(format!("{url}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("<title>Airlock</title>"));
    // `events --follow` prints events as they are appended.
    let follow_env = [("AIRLOCK_URL", url.clone()), ("AIRLOCK_TOKEN", token.clone())];
    let follow = Proc::spawn("follow", &dir.0, &["events", "--follow"], &follow_env);

    std::fs::write(dir.0.join("connection.json"), CONNECTION).unwrap();
    std::fs::write(dir.0.join("policy.yaml"), POLICY).unwrap();
    let out = cli(&url, &token, &["connections", "add", dir.0.join("connection.json").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&url, &token, &["policy", "apply", dir.0.join("policy.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("applied policy version 1"), "{}", stdout(&out));
    let out = cli(&url, &token, &["connections", "list"]);
    assert!(stdout(&out).contains("pg-local  postgres  127.0.0.1:5432  app"), "{}", stdout(&out));
    let out = cli(&url, &token, &["events"]);
    assert!(stdout(&out).contains("policy_applied"), "{}", stdout(&out));
    eventually(Duration::from_secs(10), "events --follow to print the policy", || async {
        std::fs::read_to_string(&follow.log).is_ok_and(|l| l.contains("policy_applied"))
    })
    .await;
    drop(follow);
    let out = cli(&url, &token, &["verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("chain intact: 5 events verified"), "{}", stdout(&out));

    // The in-process worker applied everything.
    eventually(Duration::from_secs(10), "the worker to apply seq 5", || async {
        let Ok(response) = reqwest::get(format!("http://{worker}/healthz")).await else { return false };
        let health: Value = response.json().await.unwrap_or_default();
        health["applied"].as_object().is_some_and(|a| a.values().any(|s| s == 5))
    })
    .await;

    // A bad token is refused with a clear message.
    let out = cli(&url, "alk_wrong", &["connections", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");

    // A restart keeps the state and the admin token.
    up.kill();
    let mut up = Proc::spawn("up-again", &dir.0, &args, &env);
    wait_ready(&format!("{url}/readyz")).await;
    assert_eq!(std::fs::read_to_string(data.join("admin.token")).unwrap().trim(), token);
    let out = cli(&url, &token, &["connections", "list"]);
    assert!(stdout(&out).contains("pg-local"), "{out:?}");

    // Edit one stored event behind Airlock's back: verify names it.
    let db = format!("sqlite://{}", data.join("airlock.db").display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db).await.unwrap();
    sqlx::query("UPDATE events SET actor = 'someone-else' WHERE seq = 4").execute(&mut conn).await.unwrap();
    let out = cli(&url, &token, &["verify"]);
    assert!(!out.status.success(), "verify passed on a tampered log: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("seq 4"), "{out:?}");
    // A deleted event too, by the seq where the chain breaks.
    sqlx::query("DELETE FROM events WHERE seq = 2").execute(&mut conn).await.unwrap();
    let out = cli(&url, &token, &["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("seq 3"), "{out:?}");
    drop(conn);

    // And Airlock refuses to start on a log with a hole in it.
    up.kill();
    let out = Command::new(BIN).args(args).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected seq 2, got 3"), "{stderr}");
}

#[tokio::test]
async fn a_policy_applied_over_rest_reaches_two_gateway_processes() {
    let dir = TempDir::new();
    let db = airlock_testkit::pg::TestDb::create().await.unwrap();
    let prefix = airlock_testkit::nats::unique_prefix();
    let _stream = airlock_testkit::nats::StreamCleanup(format!("{}_EVENTS", prefix.to_uppercase()));
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let common = vec![
        ("AIRLOCK_BUS__NATS_URL", airlock_testkit::nats::nats_url()),
        ("AIRLOCK_BUS__PREFIX", prefix.clone()),
        ("AIRLOCK_WORKER__TOKEN", "cluster-secret".to_owned()),
    ];
    let (api, grpc) = (free_addr(), free_addr());
    let mut cp_env = common.clone();
    cp_env.push(("AIRLOCK_DATABASE__URL", db.url().to_owned()));
    cp_env.push(("AIRLOCK_SECRETS__MASTER_KEY", key));
    cp_env.push(("AIRLOCK_DATA_DIR", dir.0.join("cp").display().to_string()));
    let _cp = Proc::spawn(
        "control-plane",
        &dir.0,
        &["control-plane", "--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string()],
        &cp_env,
    );
    let url = format!("http://{api}");
    wait_ready(&format!("{url}/readyz")).await;

    let gateway = |name: &str, admin: SocketAddr| {
        let pg = free_addr().to_string();
        let args = [
            "gateway",
            "--control-plane-url",
            &format!("http://{grpc}"),
            "--admin-addr",
            &admin.to_string(),
            "--pg-addr",
            &pg,
        ];
        let mut env = common.clone();
        env.push(("AIRLOCK_DATA_DIR", dir.0.join(name).display().to_string()));
        Proc::spawn(name, &dir.0, &args, &env)
    };
    let (a1, a2) = (free_addr(), free_addr());
    let _g1 = gateway("gateway-1", a1);
    let mut g2 = gateway("gateway-2", a2);
    for admin in [a1, a2] {
        wait_ready(&format!("http://{admin}/readyz")).await;
    }

    let token = std::fs::read_to_string(dir.0.join("cp/admin.token")).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let tenants: Value =
        http.get(format!("{url}/v1/tenants")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let tenant = tenants[0]["id"].as_str().unwrap().to_owned();
    let apply = |doc: String| {
        let request = http
            .put(format!("{url}/v1/policy"))
            .bearer_auth(&token)
            .header("content-type", "application/yaml")
            .body(doc);
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success());
            response.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
        }
    };
    let applied_by = |admin: SocketAddr, seq: u64| {
        let tenant = tenant.clone();
        async move {
            eventually(Duration::from_secs(20), &format!("gateway {admin} to apply seq {seq}"), || {
                let tenant = tenant.clone();
                async move {
                    let Ok(r) = reqwest::get(format!("http://{admin}/healthz")).await else { return false };
                    let health: Value = r.json().await.unwrap_or_default();
                    health["applied"][&tenant].as_u64() == Some(seq)
                }
            })
            .await
        }
    };

    let seq = apply(POLICY.to_owned()).await;
    applied_by(a1, seq).await;
    applied_by(a2, seq).await;

    // A gateway that was down catches up when it comes back.
    g2.kill();
    let seq = apply(format!("# while gateway-2 is down\n{POLICY}")).await;
    applied_by(a1, seq).await;
    let _g2 = gateway("gateway-2-again", a2);
    applied_by(a2, seq).await;
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn access_is_requested_approved_and_denied_from_the_cli() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let (api, grpc, worker, pg) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args = up_args(&data, api, grpc, pg);
    let env = [("AIRLOCK_WORKER__ADMIN_ADDR", worker.to_string())];
    let _up = Proc::spawn("up", &dir.0, &args, &env);
    let url = format!("http://{api}");
    wait_ready(&format!("{url}/readyz")).await;
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();
    std::fs::write(dir.0.join("connection.json"), CONNECTION).unwrap();
    std::fs::write(dir.0.join("policy.yaml"), POLICY).unwrap();
    assert!(
        cli(&url, &admin, &["connections", "add", dir.0.join("connection.json").to_str().unwrap()]).status.success()
    );
    assert!(cli(&url, &admin, &["policy", "apply", dir.0.join("policy.yaml").to_str().unwrap()]).status.success());
    let mint = |subject: &str, group: &str| {
        let out = cli(&url, &admin, &["token", "--subject", subject, "--group", group, "--ttl", "1h"]);
        assert!(out.status.success(), "{out:?}");
        stdout(&out).trim().to_owned()
    };
    let (agent, alice) = (mint("agent-7", "agents"), mint("alice", "dba"));

    // Policy grants read access at once.
    let out = cli(&url, &agent, &["request", "pg-local", "--role", "readonly", "--ttl", "10m"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("granted role readonly on pg-local"), "{stderr}");
    assert!(stderr.contains("rule agents-read"), "{stderr}");
    // Longer than the rule allows: refused, naming the limit.
    let out = cli(&url, &agent, &["request", "pg-local", "--role", "readonly", "--ttl", "2h"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule agents-read allows at most 3600s"), "{out:?}");

    // Writes wait for a DBA; the requester waits with --wait.
    let waiting = |reason: &str| {
        Command::new(BIN)
            .args(["request", "pg-local", "--role", "readwrite", "--ttl", "10m", "--reason", reason, "--wait"])
            .env("AIRLOCK_URL", &url)
            .env("AIRLOCK_TOKEN", &agent)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pending_review = || async {
        let found = std::sync::Mutex::new(String::new());
        eventually(Duration::from_secs(10), "the request to wait for alice", || async {
            let out = cli(&url, &alice, &["reviews", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let first = list.as_array().and_then(|a| a.first()).and_then(|r| r["id"].as_str()).map(str::to_owned);
            first.map(|id| *found.lock().unwrap() = id).is_some()
        })
        .await;
        found.into_inner().unwrap()
    };
    let child = waiting("apply the orders migration");
    let id = pending_review().await;
    let out = cli(&url, &agent, &["approve", &id]);
    assert!(!out.status.success(), "the requester approved their own request: {out:?}");
    let out = cli(&url, &alice, &["approve", &id, "--comment", "looks fine"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("is approved (1 of 1 approvals)"), "{}", stdout(&out));
    let done = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(done.status.success(), "{done:?}");
    assert_eq!(stdout(&done).trim(), id);
    assert!(String::from_utf8_lossy(&done.stderr).contains("granted role readwrite"), "{done:?}");

    let child = waiting("drop everything");
    let id = pending_review().await;
    let out = cli(&url, &alice, &["deny", &id, "--comment", "not today"]);
    assert!(out.status.success(), "{out:?}");
    let done = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(!done.status.success(), "a denied request exited zero: {done:?}");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("was denied by alice: not today"), "{stderr}");

    let out = cli(&url, &agent, &["grants"]);
    let listed = stdout(&out);
    assert_eq!(listed.lines().filter(|l| l.contains("active")).count(), 2, "{listed}");
}

/// The data path does not need the control plane: with it killed, a gateway
/// process keeps serving sessions, opens new ones, and the log gets every
/// session's open and close once the control plane is back.
#[tokio::test]
async fn sessions_while_the_control_plane_is_down_reach_the_log_once_it_is_back() {
    let Target { db: target, template, worker_id, admin: _, _roles } = Target::create("cp-down").await;
    let mut cluster = Cluster::start().await;
    let (_gateway, pg, _) = cluster.gateway("gateway", &worker_id, &[]).await;
    let (url, admin_token) = (cluster.url.clone(), cluster.admin_token.clone());
    let http = reqwest::Client::new();
    let target_at = ("127.0.0.1:5432", "disable");
    let token = grant_on_target(&url, &admin_token, target_at, target.name(), &template, "steady").await;
    let (before, before_role) = first_session(pg, &token, target.name()).await;

    // The control plane is killed: a live session goes on, ends, and a new one opens and ends.
    cluster.control_plane.kill();
    before.simple_query("SELECT 1").await.unwrap();
    drop(before);
    let (during, during_role) =
        session_through(pg, &token, target.name()).await.expect("a session while the control plane is down");
    during.simple_query("SELECT 2").await.unwrap();
    drop(during);

    // Back on the same database: the log gets both sessions, each opened and closed once.
    cluster.restart_control_plane().await;
    let sessions = || async {
        let Ok(r) = http.get(format!("{url}/v1/sessions")).bearer_auth(&admin_token).send().await else {
            return Vec::new();
        };
        let page: Value = r.json().await.unwrap_or_default();
        page["sessions"].as_array().cloned().unwrap_or_default()
    };
    eventually(Duration::from_secs(30), "both sessions to be closed in the log", || async {
        let all = sessions().await;
        [&before_role, &during_role]
            .iter()
            .all(|role| all.iter().any(|s| s["target_role"] == role.as_str() && s["outcome"] == "completed"))
    })
    .await;
    let page = cluster.get("/v1/events?from_seq=1&limit=1000").await;
    let kinds: Vec<&str> = page["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "session_opened").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "session_closed").count(), 2, "{kinds:?}");
}

/// A gateway asked to stop while it cannot finish (the target takes the
/// drop of a session's role and never answers) exits at its `stop_timeout`,
/// or at once when asked a second time, saying what it left; the role is
/// then dropped by the next start.
#[tokio::test]
async fn a_stop_that_cannot_finish_ends_at_its_limit_or_at_a_second_signal() {
    let Target { db: target, template, worker_id, admin, _roles } = Target::create("stop").await;
    // The gateway reaches the target, its admin connections included, through a proxy that can hold what is sent.
    let proxy = airlock_testkit::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await.unwrap();
    let cluster = Cluster::start().await;
    let address = proxy.addr().to_string();
    let token =
        grant_on_target(&cluster.url, &cluster.admin_token, (&address, "disable"), target.name(), &template, "agent")
            .await;
    let roles = || members_of(&admin, &template);
    let stop_with_a_hung_drop = |name: &'static str, stop_timeout: &'static str| {
        let (cluster, proxy, token, target) = (&cluster, &proxy, &token, &target);
        let worker_id = worker_id.clone();
        async move {
            let env = [("AIRLOCK_STOP_TIMEOUT", stop_timeout.to_owned())];
            let (gateway, pg, _) = cluster.gateway(name, &worker_id, &env).await;
            let (client, role) = first_session(pg, token, target.name()).await;
            client.simple_query("SELECT 1").await.unwrap();
            proxy.pause();
            let asked = std::time::Instant::now();
            signal(&gateway, "TERM");
            (gateway, role, asked, client)
        }
    };

    // At its limit: it waits for the drop until then, then exits, failing.
    let (mut gateway, left, asked, _client) = stop_with_a_hung_drop("gateway-1", "4s").await;
    let exited = wait_exit(&mut gateway, Duration::from_secs(30)).await;
    assert!(asked.elapsed() >= Duration::from_secs(4), "exited {:?} after SIGTERM", asked.elapsed());
    assert!(!exited.success(), "{exited:?}");
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(log.contains("the gateway did not stop within 4s: leaving"), "{log}");
    assert_eq!(roles().await, vec![left], "the role whose drop hung is still there");
    proxy.resume();

    // At a second signal: at once, however long the limit.
    let (mut gateway, _, _, _client) = stop_with_a_hung_drop("gateway-2", "10m").await;
    eventually(Duration::from_secs(10), "the gateway to begin its stop", || async {
        std::fs::read_to_string(&gateway.log).unwrap_or_default().contains("shutting down")
    })
    .await;
    signal(&gateway, "TERM");
    let exited = wait_exit(&mut gateway, Duration::from_secs(20)).await;
    assert!(!exited.success(), "{exited:?}");
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(log.contains("asked again to stop: leaving"), "{log}");
    proxy.resume();

    // The next start drops what the stops left.
    let _gateway = cluster.gateway("gateway-3", &worker_id, &[]).await;
    eventually(Duration::from_secs(20), "the roles the stops left to be dropped", || async {
        roles().await.is_empty()
    })
    .await;
}

/// A gateway with `worker.drain_timeout` lets its sessions go on once asked
/// to stop, refusing new logins as Postgres does while it shuts down
/// (57P03) and reporting itself not ready, and stops as soon as the last one
/// ends; a session still open when the drain runs out is ended as at any
/// stop.
#[tokio::test]
async fn a_draining_gateway_lets_its_sessions_finish_and_refuses_new_ones() {
    let Target { db: target, template, worker_id, admin, _roles } = Target::create("drain").await;
    let cluster = Cluster::start().await;
    let token = grant_on_target(
        &cluster.url,
        &cluster.admin_token,
        ("127.0.0.1:5432", "disable"),
        target.name(),
        &template,
        "agent",
    )
    .await;

    // Drained to its end. A session open when the stop comes goes on, and a
    // login under way then goes on to a session, which outlives the first;
    // a new login is refused; the stop ends with the last session.
    let env = [("AIRLOCK_WORKER__DRAIN_TIMEOUT", "5m".to_owned()), ("AIRLOCK_STOP_TIMEOUT", "10m".to_owned())];
    let (mut gateway, pg, health) = cluster.gateway("gateway-1", &worker_id, &env).await;
    let (open, open_role) = first_session(pg, &token, target.name()).await;
    let mut under_way = tokio::net::TcpStream::connect(pg).await.unwrap();
    // A GSSENCRequest, which the gateway always declines: the answer shows
    // the login under way.
    under_way.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    let mut declined = [0u8; 1];
    under_way.read_exact(&mut declined).await.unwrap();
    assert_eq!(&declined, b"N");
    signal(&gateway, "TERM");
    eventually(Duration::from_secs(10), "the gateway to report itself not ready", || async {
        reqwest::get(format!("http://{health}/readyz")).await.is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    let row = open.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), open_role, "the open session goes on while the gateway drains");
    let refused = session_through(pg, &token, target.name()).await.unwrap_err();
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW), "{refused}");
    let message = refused.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.starts_with("the gateway is shutting down"), "{refused:?}");
    // The open session ends; its role goes (the drain waits for that too).
    drop(open);
    eventually(Duration::from_secs(10), "the open session's role to be dropped", || async {
        !members_of(&admin, &template).await.contains(&open_role)
    })
    .await;
    let config: tokio_postgres::Config =
        format!("user=pg.readonly password={token} dbname={} sslmode=disable", target.name()).parse().unwrap();
    let (client, conn) = config.connect_raw(under_way, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let role: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert!(role.starts_with("airlock_") && role != open_role, "{role}");
    client.simple_query("SELECT 1").await.unwrap();
    assert!(gateway.child.try_wait().unwrap().is_none(), "the gateway stopped with a session open");
    drop(client);
    let exited = wait_exit(&mut gateway, Duration::from_secs(30)).await;
    assert!(exited.success(), "{exited:?}");
    assert!(members_of(&admin, &template).await.is_empty(), "the session's role outlived the stop");

    // Drained until it ran out: the session still open is ended then.
    let env = [("AIRLOCK_WORKER__DRAIN_TIMEOUT", "2s".to_owned())];
    let (mut gateway, pg, _) = cluster.gateway("gateway-2", &worker_id, &env).await;
    let (client, _) = first_session(pg, &token, target.name()).await;
    signal(&gateway, "TERM");
    let exited = wait_exit(&mut gateway, Duration::from_secs(30)).await;
    assert!(exited.success(), "{exited:?}");
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(log.contains("draining over: ending the sessions still open"), "{log}");
    assert!(members_of(&admin, &template).await.is_empty(), "the session's role outlived the stop");

    // A revocation during a drain ends the session as at any time, and the
    // gateway, with no client left, stops then, long before its drain runs out.
    let env = [("AIRLOCK_WORKER__DRAIN_TIMEOUT", "5m".to_owned()), ("AIRLOCK_STOP_TIMEOUT", "10m".to_owned())];
    let (mut gateway, pg, health) = cluster.gateway("gateway-3", &worker_id, &env).await;
    let (client, _) = first_session(pg, &token, target.name()).await;
    signal(&gateway, "TERM");
    eventually(Duration::from_secs(10), "the gateway to report itself not ready", || async {
        reqwest::get(format!("http://{health}/readyz")).await.is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    let grants = cluster.get("/v1/grants").await;
    let grant = grants[0]["id"].as_str().unwrap().to_owned();
    let revoked = reqwest::Client::new()
        .post(format!("{}/v1/grants/{grant}/revoke", cluster.url))
        .bearer_auth(&cluster.admin_token)
        .json(&serde_json::json!({"reason": "incident"}))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    eventually(Duration::from_secs(5), "the revoked session to end", || async {
        client.simple_query("SELECT 1").await.is_err()
    })
    .await;
    let exited = wait_exit(&mut gateway, Duration::from_secs(30)).await;
    assert!(exited.success(), "{exited:?}");
    assert!(members_of(&admin, &template).await.is_empty(), "the session's role outlived the stop");
}

/// The roles that are members of `template`: its sessions' roles.
async fn members_of(admin: &tokio_postgres::Client, template: &str) -> Vec<String> {
    let rows = admin
        .query(
            "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
             JOIN pg_roles t ON t.oid = m.roleid WHERE t.rolname = $1",
            &[&template],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Sends `SIG{name}` to `process`.
fn signal(process: &Proc, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &process.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// How `process` exited, waiting at most `within`.
async fn wait_exit(process: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < within, "{} did not exit within {within:?}", process.log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A control plane (SQLite, NATS) and what gateway processes need to join it.
struct Cluster {
    control_plane: Proc,
    url: String,
    grpc: SocketAddr,
    admin_token: String,
    common: Vec<(&'static str, String)>,
    cp_args: Vec<String>,
    cp_env: Vec<(&'static str, String)>,
    _stream: airlock_testkit::nats::StreamCleanup,
    /// Last: removed once the processes are gone.
    dir: TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = TempDir::new();
        let prefix = airlock_testkit::nats::unique_prefix();
        let stream = airlock_testkit::nats::StreamCleanup(format!("{}_EVENTS", prefix.to_uppercase()));
        let (api, grpc) = (free_addr(), free_addr());
        let common = vec![
            ("AIRLOCK_BUS__NATS_URL", airlock_testkit::nats::nats_url()),
            ("AIRLOCK_BUS__PREFIX", prefix),
            ("AIRLOCK_WORKER__TOKEN", "cluster-secret".to_owned()),
            // The gateway checks Airlock's own tokens as issued by the control plane's public URL.
            ("AIRLOCK_PUBLIC_URL", format!("http://{api}")),
        ];
        let mut cp_env = common.clone();
        cp_env.push(("AIRLOCK_DATABASE__URL", format!("sqlite://{}", dir.0.join("airlock.db").display())));
        cp_env.push(("AIRLOCK_SECRETS__MASTER_KEY", base64::engine::general_purpose::STANDARD.encode([5u8; 32])));
        cp_env.push(("AIRLOCK_DATA_DIR", dir.0.join("cp").display().to_string()));
        let cp_args = ["control-plane", "--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string()]
            .map(str::to_owned)
            .to_vec();
        let control_plane = Proc::spawn("control-plane", &dir.0, &cp_args, &cp_env);
        let url = format!("http://{api}");
        wait_ready(&format!("{url}/readyz")).await;
        let admin_token = std::fs::read_to_string(dir.0.join("cp/admin.token")).unwrap().trim().to_owned();
        Cluster { control_plane, url, grpc, admin_token, common, cp_args, cp_env, _stream: stream, dir }
    }

    /// What the REST API answers to a GET of `path` with the admin token.
    async fn get(&self, path: &str) -> Value {
        let response =
            reqwest::Client::new().get(format!("{}{path}", self.url)).bearer_auth(&self.admin_token).send().await;
        response.unwrap().json().await.unwrap()
    }

    /// Starts the control plane again on the same database, after a kill.
    async fn restart_control_plane(&mut self) {
        self.control_plane = Proc::spawn("control-plane-again", &self.dir.0, &self.cp_args, &self.cp_env);
        wait_ready(&format!("{}/readyz", self.url)).await;
    }

    /// A gateway process (worker `worker_id`, without recording), once ready;
    /// the addresses of its Postgres listener and its health endpoint.
    async fn gateway(
        &self,
        name: &str,
        worker_id: &str,
        env: &[(&'static str, String)],
    ) -> (Proc, SocketAddr, SocketAddr) {
        let (health, pg) = (free_addr(), free_addr());
        let mut gw_env = self.common.clone();
        gw_env.push(("AIRLOCK_DATA_DIR", self.dir.0.join(name).display().to_string()));
        gw_env.push(("AIRLOCK_WORKER__ID", worker_id.to_owned()));
        gw_env.push(("AIRLOCK_WORKER__RECORDING__ENABLED", "false".to_owned()));
        gw_env.extend(env.iter().cloned());
        let args = [
            "gateway",
            "--control-plane-url",
            &format!("http://{}", self.grpc),
            "--admin-addr",
            &health.to_string(),
            "--pg-addr",
            &pg.to_string(),
        ];
        let gateway = Proc::spawn(name, &self.dir.0, &args, &gw_env);
        wait_ready(&format!("http://{health}/readyz")).await;
        (gateway, pg, health)
    }
}

/// A session through the gateway listening at `pg`, to `database` with
/// `token`; with the name of its session role.
async fn session_through(
    pg: SocketAddr,
    token: &str,
    database: &str,
) -> Result<(tokio_postgres::Client, String), tokio_postgres::Error> {
    let url = format!(
        "host=127.0.0.1 port={} user=pg.readonly password={token} dbname={database} sslmode=disable",
        pg.port()
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let role: String = client.query_one("SELECT current_user", &[]).await?.get(0);
    Ok((client, role))
}

/// The first session the gateway at `pg` admits, once it has the grant.
async fn first_session(pg: SocketAddr, token: &str, database: &str) -> (tokio_postgres::Client, String) {
    let first = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(20), "the gateway to admit the grant", || async {
        let session = session_through(pg, token, database).await.ok();
        let admitted = session.is_some();
        *first.lock().unwrap() = session;
        admitted
    })
    .await;
    first.into_inner().unwrap().unwrap()
}

/// `airlock up` with its REST API on every interface: refused in cleartext,
/// served over TLS with a certificate; the CLI checks that certificate
/// against `AIRLOCK_CA_FILE` and keeps the token off cleartext to another
/// machine.
#[tokio::test]
async fn the_rest_api_off_loopback_serves_tls_and_the_cli_checks_it() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.0.join("api.crt"), dir.0.join("api.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let (grpc, worker, pg) = (free_addr(), free_addr(), free_addr());
    let api = SocketAddr::from(([0, 0, 0, 0], free_addr().port()));
    let args = up_args(&data, api, grpc, pg);
    let mut env = vec![("AIRLOCK_WORKER__ADMIN_ADDR", worker.to_string())];
    let refused = Command::new(BIN)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("AIRLOCK_RECORDER__ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("the REST API would listen on {api} (api.addr) without TLS")), "{stderr}");
    assert!(stderr.contains("set api.tls_cert_file and api.tls_key_file"), "{stderr}");

    env.push(("AIRLOCK_API__TLS_CERT_FILE", cert.display().to_string()));
    env.push(("AIRLOCK_API__TLS_KEY_FILE", key.display().to_string()));
    let up = Proc::spawn("up", &dir.0, &args, &env);
    let url = format!("https://127.0.0.1:{}", api.port());
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pair.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    eventually(Duration::from_secs(60), "the REST API to be ready over TLS", || async {
        https.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    // It says where it is once all of it is up.
    eventually(Duration::from_secs(30), "airlock up to print its addresses", || async {
        // The last line: how to trust the certificate.
        std::fs::read_to_string(&up.log).is_ok_and(|l| l.contains("and AIRLOCK_CA_FILE=<the CA of api.tls_cert_file>"))
    })
    .await;
    let printed = std::fs::read_to_string(&up.log).unwrap();
    assert!(printed.contains(&format!("REST API and web UI  {url}\n")), "{printed}");
    assert!(printed.contains(&format!("export AIRLOCK_URL={url} ")), "{printed}");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();

    let cli_with = |url: &str, ca: Option<&std::path::Path>, args: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(args).env("AIRLOCK_URL", url).env("AIRLOCK_TOKEN", &token).env_remove("AIRLOCK_CA_FILE");
        if let Some(ca) = ca {
            command.env("AIRLOCK_CA_FILE", ca);
        }
        command.env_remove("AIRLOCK_CLEARTEXT_OFF_LOOPBACK").output().unwrap()
    };
    std::fs::write(dir.0.join("connection.json"), CONNECTION).unwrap();
    let out = cli_with(&url, Some(&cert), &["connections", "add", dir.0.join("connection.json").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = cli_with(&url, Some(&cert), &["connections", "list"]);
    assert!(stdout(&out).contains("pg-local  postgres  127.0.0.1:5432  app"), "{out:?}");

    // Without the CA the certificate is not trusted, and says so.
    let out = cli_with(&url, None, &["connections", "list"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    // A CA file that holds no certificate is named.
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let out = cli_with(&url, Some(&empty), &["connections", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("empty.pem holds no PEM certificate"), "{stderr}");
    // Cleartext to the TLS port gets nothing.
    let out = cli_with(&format!("http://127.0.0.1:{}", api.port()), None, &["connections", "list"]);
    assert!(!out.status.success() && !stdout(&out).contains("pg-local"), "{out:?}");
    // Cleartext to another machine is refused before anything is sent (a
    // documentation address: nothing answers there).
    let out = cli_with("http://192.0.2.1:8080", None, &["connections", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("AIRLOCK_TOKEN would cross the network readable"), "{stderr}");
}

/// The control plane's gRPC and the recorder's, between processes, over TLS:
/// the worker token, the target's admin credential and the session's bytes
/// never cross in the clear. Cleartext off loopback is refused on both sides.
#[tokio::test]
async fn internal_grpc_runs_over_tls_between_processes() {
    let dir = TempDir::new();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.0.join("grpc.crt"), dir.0.join("grpc.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let target = airlock_testkit::pg::TestDb::create().await.unwrap();
    let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
    let worker_id = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let _roles = DropRoles(target.url().to_owned(), worker_id.clone(), template.clone());
    support::admin_client(target.url()).await.batch_execute(&format!("CREATE ROLE {template} NOLOGIN")).await.unwrap();
    let prefix = airlock_testkit::nats::unique_prefix();
    let _stream = airlock_testkit::nats::StreamCleanup(format!("{}_EVENTS", prefix.to_uppercase()));
    let api = free_addr();
    let common = vec![
        ("AIRLOCK_BUS__NATS_URL", airlock_testkit::nats::nats_url()),
        ("AIRLOCK_BUS__PREFIX", prefix.clone()),
        ("AIRLOCK_WORKER__TOKEN", "cluster-secret".to_owned()),
        ("AIRLOCK_PUBLIC_URL", format!("http://{api}")),
    ];

    // On every interface: without a certificate the control plane does not start.
    let grpc = std::net::SocketAddr::from(([0, 0, 0, 0], free_addr().port()));
    let mut cp_env = common.clone();
    cp_env.push(("AIRLOCK_DATABASE__URL", format!("sqlite://{}", dir.0.join("airlock.db").display())));
    cp_env.push(("AIRLOCK_SECRETS__MASTER_KEY", base64::engine::general_purpose::STANDARD.encode([6u8; 32])));
    cp_env.push(("AIRLOCK_DATA_DIR", dir.0.join("cp").display().to_string()));
    let cp_args = ["control-plane", "--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string()];
    let refused = Command::new(BIN).args(cp_args).envs(cp_env.iter().map(|(k, v)| (k, v))).output().unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("would listen on {grpc} (api.grpc_addr) without TLS")), "{stderr}");
    cp_env.push(("AIRLOCK_API__GRPC_TLS_CERT_FILE", cert.display().to_string()));
    cp_env.push(("AIRLOCK_API__GRPC_TLS_KEY_FILE", key.display().to_string()));
    let _cp = Proc::spawn("control-plane", &dir.0, &cp_args, &cp_env);
    let url = format!("http://{api}");
    wait_ready(&format!("{url}/readyz")).await;

    let recorder = free_addr();
    let mut rec_env = common.clone();
    rec_env.push(("AIRLOCK_DATA_DIR", dir.0.join("rec").display().to_string()));
    // The recorder likewise, off loopback.
    let everywhere = std::net::SocketAddr::from(([0, 0, 0, 0], recorder.port())).to_string();
    let refused = Command::new(BIN)
        .arg("recorder")
        .envs(rec_env.iter().map(|(k, v)| (k, v)))
        .env("AIRLOCK_RECORDER__ADDR", &everywhere)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("set recorder.tls_cert_file and recorder.tls_key_file"), "{stderr}");
    rec_env.push(("AIRLOCK_RECORDER__ADDR", recorder.to_string()));
    rec_env.push(("AIRLOCK_RECORDER__TLS_CERT_FILE", cert.display().to_string()));
    rec_env.push(("AIRLOCK_RECORDER__TLS_KEY_FILE", key.display().to_string()));
    let _rec = Proc::spawn("recorder", &dir.0, &["recorder"], &rec_env);
    // Its health check over TLS, on HTTP/1.1 (which it offers beside gRPC's HTTP/2).
    let http1 = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pair.cert.pem().as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let healthz = format!("https://localhost:{}/healthz", recorder.port());
    eventually(Duration::from_secs(60), "the recorder's health check over TLS", || async {
        http1
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success() && r.version() == reqwest::Version::HTTP_11)
    })
    .await;

    let (health, pg) = (free_addr(), free_addr());
    let mut gw_env = common.clone();
    gw_env.push(("AIRLOCK_DATA_DIR", dir.0.join("gateway").display().to_string()));
    gw_env.push(("AIRLOCK_WORKER__ID", worker_id.clone()));
    gw_env.push(("AIRLOCK_WORKER__RECORDING__RECORDER_URL", format!("https://localhost:{}", recorder.port())));
    gw_env.push(("AIRLOCK_WORKER__TARGET_CA_FILE", "/etc/ssl/certs/ssl-cert-snakeoil.pem".to_owned()));
    let gw_args = |control_plane: String| {
        [
            "gateway",
            "--control-plane-url",
            &control_plane,
            "--admin-addr",
            &health.to_string(),
            "--pg-addr",
            &pg.to_string(),
        ]
        .map(str::to_owned)
    };
    // A control plane on another host over cleartext: the gateway does not start.
    let refused = Command::new(BIN)
        .args(gw_args("http://airlock-control-plane.invalid:8081".to_owned()))
        .envs(gw_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cleartext gRPC to another machine"), "{stderr}");
    // One that trusts another CA does not take the control plane's certificate.
    let stranger = dir.0.join("stranger.crt");
    std::fs::write(&stranger, rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap().cert.pem())
        .unwrap();
    let mut wary_env = gw_env.clone();
    wary_env.push(("AIRLOCK_WORKER__GRPC_CA_FILE", stranger.display().to_string()));
    let wary = Proc::spawn("wary-gateway", &dir.0, &gw_args(format!("https://localhost:{}", grpc.port())), &wary_env);
    eventually(Duration::from_secs(20), "the gateway to refuse the certificate", || async {
        std::fs::read_to_string(&wary.log).is_ok_and(|l| l.contains("invalid peer certificate"))
    })
    .await;
    let ready = reqwest::get(format!("http://{health}/readyz")).await.map(|r| r.status().as_u16());
    assert_ne!(ready.ok(), Some(200), "ready without the control plane's snapshot");
    drop(wary);
    gw_env.push(("AIRLOCK_WORKER__GRPC_CA_FILE", cert.display().to_string()));
    let _gateway = Proc::spawn("gateway", &dir.0, &gw_args(format!("https://localhost:{}", grpc.port())), &gw_env);
    wait_ready(&format!("http://{health}/readyz")).await;

    // A session through the gateway: its role was made with the admin
    // credential the gateway fetched over TLS, and its bytes reach the
    // recorder over TLS.
    let admin_token = std::fs::read_to_string(dir.0.join("cp/admin.token")).unwrap().trim().to_owned();
    // The target too, checked for its name: this machine's Postgres serves a
    // certificate for localhost, which the gateway is given as its CA.
    let target_at = ("localhost:5432", "verify-full");
    let token = grant_on_target(&url, &admin_token, target_at, target.name(), &template, "tls").await;
    let dsn = format!(
        "host=127.0.0.1 port={} user=pg.readonly password={token} dbname={} sslmode=disable",
        pg.port(),
        target.name()
    );
    let client = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(20), "the gateway to admit the grant", || async {
        let Ok((c, conn)) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await else { return false };
        tokio::spawn(conn);
        *client.lock().unwrap() = Some(c);
        true
    })
    .await;
    let client = client.into_inner().unwrap().unwrap();
    let row = client
        .query_one("SELECT 'over-tls-marker'::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("over-tls-marker".to_owned(), true));
    drop(client);
    let recordings = dir.0.join("rec/recorder/recordings");
    eventually(Duration::from_secs(30), "the recorder to store the session", || async {
        walk(&recordings).iter().any(|f| f.to_string_lossy().contains("manifest"))
    })
    .await;
}

/// Registers `database` on the machine's Postgres, reached at `(address,
/// tls)`, as connection `pg`, whose readonly sessions are members of
/// `template`, and grants it to `subject` for 15 minutes; returns a token of
/// `subject`'s.
async fn grant_on_target(
    url: &str,
    admin_token: &str,
    (address, tls): (&str, &str),
    database: &str,
    template: &str,
    subject: &str,
) -> String {
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{url}{path}")).bearer_auth(admin_token).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    post(
        "/v1/connections",
        serde_json::json!({
            "name": "pg", "kind": "postgres", "address": address, "database": database,
            "tls": tls, "admin_credential": {"user": "postgres", "password": ""},
            "roles": {"readonly": template},
        }),
    )
    .await;
    let token = post("/v1/tokens", serde_json::json!({"subject": subject})).await["token"].as_str().unwrap().to_owned();
    post(
        "/v1/grants",
        serde_json::json!({"subject": subject, "connection": "pg", "role": "readonly", "ttl_seconds": 900}),
    )
    .await;
    token
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

/// A database on the machine's Postgres with a role template for its
/// sessions, and a worker id whose leftovers are dropped at the end.
struct Target {
    db: airlock_testkit::pg::TestDb,
    template: String,
    worker_id: String,
    admin: tokio_postgres::Client,
    _roles: DropRoles,
}

impl Target {
    async fn create(worker: &str) -> Target {
        let db = airlock_testkit::pg::TestDb::create().await.unwrap();
        let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
        let worker_id = format!("{worker}-{}", uuid::Uuid::new_v4().simple());
        let _roles = DropRoles(db.url().to_owned(), worker_id.clone(), template.clone());
        let admin = support::admin_client(db.url()).await;
        admin.batch_execute(&format!("CREATE ROLE {template} NOLOGIN")).await.unwrap();
        Target { db, template, worker_id, admin, _roles }
    }
}

/// Drops the template role and any session role of the worker a failed run left.
struct DropRoles(String, String, String);

impl Drop for DropRoles {
    fn drop(&mut self) {
        support::drop_roles(&self.0, &self.1, std::slice::from_ref(&self.2));
    }
}
