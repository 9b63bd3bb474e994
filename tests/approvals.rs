//! Just-in-time access end to end, as deployed: the control plane on a
//! Postgres event log, NATS between it and two gateway workers, approvals from
//! Slack (a stand-in that checks what Slack checks; the interactions are
//! signed exactly as Slack signs them), and a real Postgres behind the gateways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::bus::{Bus, NatsBus, NatsOptions, RecordKey};
use airlock_testkit::eventually;
use airlock_testkit::pg::TestDb;
use airlock_testkit::slack::{SlackStandIn, interaction_body, sign_interaction};
use serde_json::{Value, json};
use support::admin_client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BOT_TOKEN: &str = "xoxb-1111-2222-test";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const CHANNEL: &str = "C0APPROVALS";

struct Deployment {
    /// The role template a grant's session role is made a member of.
    role: String,
    api: String,
    admin: String,
    tenant: String,
    gateways: Vec<SocketAddr>,
    target: TestDb,
    _log: TestDb,
    _stream: airlock_testkit::nats::StreamCleanup,
    cancel: CancellationToken,
    dir: std::path::PathBuf,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The template role is cluster-wide: it goes with the database.
        support::drop_roles(self.target.url(), "none", std::slice::from_ref(&self.role));
    }
}

impl Deployment {
    async fn start() -> Deployment {
        let target = TestDb::create().await.unwrap();
        let role = format!("tpl_e2e_{}", uuid::Uuid::new_v4().simple());
        admin_client(target.url())
            .await
            .batch_execute(&format!(
                "CREATE ROLE {role} NOLOGIN;
                 CREATE TABLE orders (id int PRIMARY KEY, total int);
                 INSERT INTO orders VALUES (1, 10), (2, 20);
                 GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {role};"
            ))
            .await
            .unwrap();

        let log = TestDb::create().await.unwrap();
        let nats = NatsOptions::new(
            airlock_testkit::nats::nats_url(),
            airlock_testkit::nats::unique_prefix(),
            RecordKey::from_worker_token("cluster-secret"),
        );
        let bus = NatsBus::connect(&nats).await.unwrap();
        let stream = airlock_testkit::nats::StreamCleanup(bus.stream_name().to_owned());
        let dir = std::env::temp_dir().join(format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Bound here and handed over: the tokens' issuer names its address.
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api_listener.local_addr().unwrap();
        let public_url = format!("http://{api_addr}");
        let identity = airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() };
        let cp = airlock_control_plane::server::start_on(
            api_listener,
            airlock_control_plane::server::Options {
                database_url: log.url().to_owned(),
                master_key: [5; 32],
                public_url: public_url.clone(),
                api_addr,
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                api_tls: None,
                tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
                api_cleartext_off_loopback: false,
                grpc_tls: None,
                grpc_cleartext_off_loopback: false,
                worker_token: "cluster-secret".into(),
                identity: identity.clone(),
                admin_token_file: Some(dir.join("admin.token")),
                reissue_admin_token: false,
                clock: airlock_core::clock::system(),
                recordings: None,
                console: Default::default(),
            },
            Arc::new(bus),
            cancel.clone(),
            &tracker,
        )
        .await
        .unwrap();
        let mut gateways = Vec::new();
        for i in 0..2 {
            let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&nats).await.unwrap());
            let worker = airlock_data_plane::start(
                airlock_data_plane::Options {
                    control_plane_url: format!("http://{}", cp.grpc_addr),
                    grpc_tls: Default::default(),
                    worker_token: "cluster-secret".into(),
                    admin_addr: "127.0.0.1:0".parse().unwrap(),
                    reconcile_every: Duration::from_secs(60),
                    identity: identity.clone(),
                    postgres: Some(airlock_data_plane::PostgresOptions {
                        listen: "127.0.0.1:0".parse().unwrap(),
                        tls: None,
                        gateway: airlock_data_plane::postgres::gateway::GatewayOptions {
                            worker_id: format!("e2e-{i}-{}", uuid::Uuid::new_v4().simple()),
                            ..Default::default()
                        },
                        hook: None,
                        recording: None,
                    }),
                },
                bus,
                cancel.clone(),
                &tracker,
            )
            .await
            .unwrap();
            gateways.push(worker.pg_addr.unwrap());
        }
        let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        let mut d = Deployment {
            role,
            api: public_url,
            admin: admin_token,
            tenant: String::new(),
            gateways,
            target,
            _log: log,
            _stream: stream,
            cancel,
            dir,
        };
        let tenants = d.get("/v1/tenants", &d.admin.clone()).await;
        d.tenant = tenants[0]["id"].as_str().unwrap().to_owned();
        d
    }

    async fn send(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = reqwest::Client::new().request(method, format!("{}{path}", self.api)).bearer_auth(token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, token, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }

    async fn token(&self, subject: &str, groups: &[&str]) -> String {
        let (status, body) = self.post("/v1/tokens", &self.admin, json!({"subject": subject, "groups": groups})).await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// POSTs a Slack interaction signed with `secret` at `timestamp`.
    async fn slack_click(&self, body: &[u8], secret: &str, timestamp: i64) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/integrations/slack/interactions", self.api))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp.to_string())
            .header("x-slack-signature", sign_interaction(secret.as_bytes(), timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A session through gateway `i`, with the moment it was closed on us.
    async fn session(&self, i: usize, token: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<Instant>) {
        let url = format!(
            "host=127.0.0.1 port={} user=pg-e2e.readwrite password={token} dbname={} sslmode=disable",
            self.gateways[i].port(),
            self.target.name()
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = connection.await;
            Instant::now()
        });
        (client, closed)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn requested_approved_in_slack_used_through_either_worker_and_revoked_everywhere() {
    let d = Deployment::start().await;
    let slack = SlackStandIn::start(BOT_TOKEN).await.unwrap();
    let connection = json!({
        "name": "pg-e2e", "kind": "postgres", "address": "127.0.0.1:5432", "database": d.target.name(),
        "tls": "disable", "admin_credential": {"user": "postgres", "password": ""},
        "roles": {"readwrite": d.role},
    });
    let (status, body) = d.post("/v1/connections", &d.admin, connection).await;
    assert_eq!(status, 201, "{body}");
    let policy = r#"
version: 1
access:
  - name: agents-write
    principals: { groups: [agents] }
    connections: [pg-e2e]
    roles: [readwrite]
    max_ttl: 30m
    approval: { approvers: { groups: [dba] }, quorum: 1 }
"#;
    let r = reqwest::Client::new()
        .put(format!("{}/v1/policy", d.api))
        .bearer_auth(&d.admin)
        .header("content-type", "application/yaml")
        .body(policy)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let slack_config = json!({
        "team_id": "T0TEAM", "channel": CHANNEL, "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
        "api_base_url": slack.base_url(),
        "users": {"U0ALICE": {"subject": "alice", "groups": ["dba"]}, "U0EVE": {"subject": "eve", "groups": ["dev"]}},
    });
    let (status, body) = d.send(reqwest::Method::PUT, "/v1/integrations/slack", &d.admin, Some(slack_config)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(BOT_TOKEN) && !body.to_string().contains(SIGNING_SECRET), "{body}");

    // The agent asks; a DBA must approve.
    let agent = d.token("agent-7", &["agents"]).await;
    let (status, request) = d
        .post(
            "/v1/access-requests",
            &agent,
            json!({"connection": "pg-e2e", "role": "readwrite", "ttl_seconds": 600, "reason": "fix order 2"}),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    assert_eq!(request["state"], "pending");
    let id = request["id"].as_str().unwrap().to_owned();

    // The review appears in the channel with Approve and Deny.
    let posted = slack.wait_for_message(0, Duration::from_secs(10)).await.unwrap();
    assert_eq!(posted.method, "chat.postMessage");
    assert_eq!(posted.channel, CHANNEL);
    let buttons: Vec<&Value> = posted
        .blocks
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().unwrap())
        .collect();
    let value = format!("{}:{id}", d.tenant);
    assert_eq!(buttons.len(), 2, "{}", posted.blocks);
    assert!(buttons.iter().all(|b| b["value"] == value.as_str()), "{}", posted.blocks);
    let text = posted.blocks.to_string();
    assert!(text.contains("agent-7") && text.contains("fix order 2") && text.contains("pg-e2e"), "{text}");

    let click_from = |team: &str, user: &str, action: &str| {
        interaction_body(user, user, team, action, &value, CHANNEL, &posted.ts, "https://hooks.slack.com/actions/x")
    };
    let click = |user: &str, action: &str| click_from("T0TEAM", user, action);
    let approve = click("U0ALICE", "airlock_approve");
    // Forged, stale, unmapped and unauthorized presses decide nothing.
    let (status, _) = d.slack_click(&approve, "not-the-signing-secret", now()).await;
    assert_eq!(status, 401, "a forged signature");
    let (status, _) = d.slack_click(&approve, SIGNING_SECRET, now() - 301).await;
    assert_eq!(status, 401, "a five-minute-old signature");
    let (status, _) = d.slack_click(&click_from("T0OTHER", "U0ALICE", "airlock_approve"), SIGNING_SECRET, now()).await;
    assert_eq!(status, 401, "another workspace, even with the app's signature");
    let (status, body) = d.slack_click(&click("U0STRANGER", "airlock_approve"), SIGNING_SECRET, now()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not mapped"), "{body}");
    let (status, _) = d.slack_click(&click("U0EVE", "airlock_approve"), SIGNING_SECRET, now()).await;
    assert!(status == 403 || status == 404, "eve is no approver: {status}");
    let still = d.get(&format!("/v1/access-requests/{id}"), &agent).await;
    assert_eq!(still["state"], "pending");
    assert_eq!(still["review"]["decisions"].as_array().unwrap().len(), 0);

    // Alice approves from Slack.
    let (status, body) = d.slack_click(&approve, SIGNING_SECRET, now()).await;
    assert_eq!(status, 200, "{body}");
    let granted = d.get(&format!("/v1/access-requests/{id}"), &agent).await;
    assert_eq!(granted["state"], "active");
    assert_eq!(granted["review"]["decisions"][0]["by"], "alice");
    assert_eq!(granted["review"]["decisions"][0]["via"], "slack");
    // The message says so, and its buttons are gone.
    let mut updated = None;
    for i in 1..4 {
        let m = slack.wait_for_message(i, Duration::from_secs(10)).await.unwrap();
        if m.method == "chat.update" && !m.blocks.to_string().contains("airlock_approve") {
            updated = Some(m);
            break;
        }
    }
    let updated = updated.expect("the message is updated with the outcome");
    assert_eq!(updated.ts, posted.ts);
    assert!(updated.blocks.to_string().contains("alice"), "{}", updated.blocks);
    assert!(slack.rejected().is_empty(), "Slack refused a call: {:?}", slack.rejected());

    // The grant works through either worker.
    let mut sessions = Vec::new();
    for i in 0..2 {
        let (client, closed) = eventually_connect(&d, i, &agent).await;
        client.execute("UPDATE orders SET total = total + 1 WHERE id = 2", &[]).await.unwrap();
        sessions.push((client, closed));
    }
    let total: i32 = admin_client(d.target.url())
        .await
        .query_one("SELECT total FROM orders WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 22);

    // Revoked: the session on each worker ends within a second.
    let revoked_at = Instant::now();
    let (status, body) = d.post(&format!("/v1/grants/{id}/revoke"), &d.admin, json!({"reason": "done"})).await;
    assert_eq!(status, 200, "{body}");
    for (i, (client, closed)) in sessions.into_iter().enumerate() {
        let closed_at = tokio::time::timeout(Duration::from_secs(5), closed).await.unwrap().unwrap();
        let after = closed_at.duration_since(revoked_at);
        eprintln!("worker {i}: session ended {after:?} after the revocation was acknowledged");
        assert!(after < Duration::from_secs(1), "the session on worker {i} outlived the revocation by {after:?}");
        assert!(client.is_closed());
    }
    // And the roles made for them go (the client hears of the revocation first, the drop follows).
    let target = admin_client(d.target.url()).await;
    eventually(Duration::from_secs(10), "the revoked sessions' roles to be dropped", || async {
        let members: i64 = target
            .query_one(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles t ON t.oid = m.roleid WHERE t.rolname = $1",
                &[&d.role],
            )
            .await
            .unwrap()
            .get(0);
        members == 0
    })
    .await;
    let refused = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=pg-e2e.readwrite password={agent} dbname={} sslmode=disable",
            d.gateways[0].port(),
            d.target.name()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .unwrap();
    let message = refused.as_db_error().unwrap().message();
    assert!(message.contains(&format!("grant {id} was revoked by")), "{message}");
}

/// Connects once the worker has the grant (it arrives over NATS in milliseconds).
async fn eventually_connect(
    d: &Deployment,
    i: usize,
    token: &str,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<Instant>) {
    let url = format!(
        "host=127.0.0.1 port={} user=pg-e2e.readwrite password={token} dbname={} sslmode=disable",
        d.gateways[i].port(),
        d.target.name()
    );
    eventually(Duration::from_secs(10), "the worker to admit the agent", || async {
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_ok()
    })
    .await;
    d.session(i, token).await
}
