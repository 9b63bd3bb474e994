//! Workers hold the same state as the log: from a snapshot, over the bus, and
//! through whatever the bus loses or repeats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::TenantId;
use airlock_proto::EventRecord;
use airlock_proto::bus::{Bus, MemoryBus, RecordStream, StartAt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A bus that drops the records whose `seq` is listed, and delivers every
/// other record twice.
struct Unreliable {
    inner: MemoryBus,
    drop_seqs: Mutex<BTreeSet<u64>>,
}

#[async_trait::async_trait]
impl Bus for Unreliable {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        // Every time: the control plane's relay may publish a record twice
        // (at least once), and a second copy would undo the loss.
        if self.drop_seqs.lock().unwrap().contains(&record.seq) {
            return Ok(());
        }
        self.inner.publish(record).await?;
        self.inner.publish(record).await
    }

    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream> {
        self.inner.subscribe(start).await
    }
}

struct Cluster {
    base: String,
    grpc: String,
    token: String,
    bus: Arc<dyn Bus>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn cluster(bus: Arc<dyn Bus>) -> Cluster {
    let dir = std::env::temp_dir().join(format!("airlock-sync-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let options = airlock_control_plane::server::Options {
        database_url: format!("sqlite://{}", dir.join("airlock.db").display()),
        master_key: [1; 32],
        public_url: "http://127.0.0.1".into(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        api_tls: None,
        tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
        api_cleartext_off_loopback: false,
        grpc_tls: None,
        grpc_cleartext_off_loopback: false,
        worker_token: "w".into(),
        identity: Default::default(),
        admin_token_file: Some(dir.join("admin.token")),
        reissue_admin_token: false,
        clock: airlock_core::clock::system(),
        recordings: None,
        console: Default::default(),
    };
    let running = airlock_control_plane::server::start(options, bus.clone(), cancel.clone(), &tracker).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    Cluster {
        base: format!("http://{}", running.api_addr),
        grpc: format!("http://{}", running.grpc_addr),
        token,
        bus,
        cancel,
        tracker,
        _dir: tempdir::Dir(dir),
    }
}

impl Cluster {
    async fn worker(&self, reconcile_every: Duration) -> airlock_data_plane::RunningWorker {
        let options = airlock_data_plane::Options {
            control_plane_url: self.grpc.clone(),
            grpc_tls: Default::default(),
            worker_token: "w".into(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            reconcile_every,
            identity: Default::default(),
            postgres: None,
        };
        airlock_data_plane::start(options, self.bus.clone(), self.cancel.clone(), &self.tracker).await.unwrap()
    }

    /// Applies a policy and returns (tenant, seq of the event).
    async fn apply_policy(&self, comment: &str) -> (TenantId, u64) {
        let doc = format!("# {comment}\nversion: 1\n");
        let response = reqwest::Client::new()
            .put(format!("{}/v1/policy", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(doc)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let body: serde_json::Value = response.json().await.unwrap();
        (self.tenant().await, body["seq"].as_u64().unwrap())
    }

    async fn tenant(&self) -> TenantId {
        let tenants: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/tenants", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tenants[0]["id"].as_str().unwrap().parse().unwrap()
    }
}

async fn applied(worker: &airlock_data_plane::RunningWorker, tenant: &TenantId, seq: u64) {
    tokio::time::timeout(Duration::from_secs(10), worker.projection.wait_for(tenant, seq))
        .await
        .unwrap_or_else(|_| panic!("the worker did not apply seq {seq}; it is at {}", worker.projection.seq(tenant)));
}

#[tokio::test]
async fn a_worker_starts_from_the_snapshot_and_follows_the_bus() {
    let c = cluster(Arc::new(MemoryBus::new())).await;
    let (tenant, first) = c.apply_policy("before the worker").await;
    let w = c.worker(Duration::from_secs(60)).await;
    applied(&w, &tenant, first).await;
    let (_, second) = c.apply_policy("after the worker").await;
    applied(&w, &tenant, second).await;
    let policy = w.projection.read(|t| t.get(&tenant).unwrap().policy.clone().unwrap());
    assert_eq!(policy.version, 2);
    assert!(policy.source.contains("after the worker"));
    // Its health endpoint reports the same seq, once the worker calls itself ready
    // (after the snapshot and a look at the log's heads).
    airlock_testkit::eventually(Duration::from_secs(10), "the worker to be ready", || async {
        w.projection.is_ready()
    })
    .await;
    let health: serde_json::Value =
        reqwest::get(format!("http://{}/healthz", w.admin_addr)).await.unwrap().json().await.unwrap();
    assert_eq!(health["applied"][tenant.to_string()], second);
    assert_eq!(health["ready"], true);
    let metrics = reqwest::get(format!("http://{}/metrics", w.admin_addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("airlock_worker_applied_seq{{tenant=\"{tenant}\"}} {second}")), "{metrics}");
}

#[tokio::test]
async fn a_gap_in_the_bus_is_backfilled_and_duplicates_change_nothing() {
    let bus = Arc::new(Unreliable { inner: MemoryBus::new(), drop_seqs: Mutex::new(BTreeSet::new()) });
    let c = cluster(bus.clone()).await;
    let w = c.worker(Duration::from_secs(60)).await;
    let (tenant, seq) = c.apply_policy("one").await;
    applied(&w, &tenant, seq).await;
    // The bus loses the next event; the one after reveals the gap.
    bus.drop_seqs.lock().unwrap().insert(seq + 1);
    let (_, lost) = c.apply_policy("two, lost on the bus").await;
    let (_, last) = c.apply_policy("three").await;
    assert_eq!((lost, last), (seq + 1, seq + 2));
    applied(&w, &tenant, last).await;
    assert!(w.projection.counters().backfilled.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(w.projection.counters().duplicates.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let version = w.projection.read(|t| t.get(&tenant).unwrap().policy.as_ref().unwrap().version);
    assert_eq!(version, 3, "each policy applied exactly once");
}

/// A worker that compares heads every `reconcile_every`, and a policy whose
/// event the bus lost with nothing after it: (cluster, worker, tenant, its seq).
async fn a_lost_last_event(reconcile_every: Duration) -> (Cluster, airlock_data_plane::RunningWorker, TenantId, u64) {
    let bus = Arc::new(Unreliable { inner: MemoryBus::new(), drop_seqs: Mutex::new(BTreeSet::new()) });
    let c = cluster(bus.clone()).await;
    let w = c.worker(reconcile_every).await;
    let (tenant, seq) = c.apply_policy("one").await;
    applied(&w, &tenant, seq).await;
    bus.drop_seqs.lock().unwrap().insert(seq + 1);
    let (_, lost) = c.apply_policy("lost, and nothing follows it").await;
    (c, w, tenant, lost)
}

#[tokio::test]
async fn a_lost_event_is_fetched_as_soon_as_someone_finds_the_log_ahead() {
    // A reconcile interval no test waits for.
    let (_c, w, tenant, lost) = a_lost_last_event(Duration::from_secs(3600)).await;
    // What a gateway does when a login is refused and the log's head is ahead.
    w.projection.want_reconcile();
    applied(&w, &tenant, lost).await;
}

#[tokio::test]
async fn a_lost_last_event_is_found_by_comparing_heads() {
    let (_c, w, tenant, lost) = a_lost_last_event(Duration::from_millis(100)).await;
    applied(&w, &tenant, lost).await;
}
