//! `propagation`: how long a change takes to be enforced on every worker.
//!
//! A control plane runs in-process with W workers (W = 1, 2, 4 by default),
//! each on its own bus connection (on NATS: its own `NatsBus::connect`, as
//! separate processes would have) and with its own Postgres gateway,
//! reconciling rarely so what is measured is the bus path: REST command →
//! append (commit) → outbox relay → bus → each worker's projection → what the
//! worker does with it. Two kinds of change:
//!
//! - **policy**: `PUT /v1/policy` with the example policy (a varying comment, so
//!   every round is a new version); timed from the moment the request is sent
//!   to the moment each worker has applied the new `seq`. The hook reads the
//!   projection for every statement, so applied is enforced.
//! - **revoke**: a grant is created and one session opened under it through
//!   every worker's gateway; then `POST /v1/grants/{id}/revoke` is sent and
//!   each session timed until the gateway has ended it (its client sees the
//!   FATAL and the connection close). This is revoke-to-enforced as a client
//!   sees it.
//!
//! Variants: `nats` (Postgres + NATS JetStream, a deployment), `memory`
//! (Postgres + the in-process bus, isolating the bus), `embedded` (SQLite +
//! in-process bus, what `airlock up` runs).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_control_plane::server;
use airlock_core::TenantId;
use airlock_data_plane::projection::Projection;
use airlock_data_plane::worker;
use airlock_proto::bus::{Bus, MemoryBus, NatsBus, NatsOptions, RecordKey};
use anyhow::Context as _;
use serde::Serialize;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EXAMPLE_POLICY;
use crate::report::{self, Document, Host, Stats, Table};

const WORKER_TOKEN: &str = "loadtest-worker-secret";
/// How long one round may take before the run is declared stuck.
const ROUND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the workers get to load their first snapshot.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The connection the revoke rounds' sessions go through, its role and their subject.
const CONNECTION: &str = "prop";
const ROLE: &str = "reader";
const SUBJECT: &str = "loadtest-revoke";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Worker counts: a deployment with each, one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 4])]
    pub workers: Vec<usize>,
    /// Measured policy changes per deployment.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Measured revocations per deployment (each with a session on every worker); 0 skips them.
    #[arg(long, default_value_t = 100)]
    pub revoke_rounds: usize,
    /// Unmeasured rounds of each kind first (connection pools, cold caches).
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Pause between rounds, in milliseconds (0: back to back).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// The workers' reconcile timer, in seconds: large, so propagation measures the bus.
    #[arg(long, default_value_t = 60)]
    pub reconcile_every_s: u64,
    /// Variants to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Variant::Nats, Variant::Memory, Variant::Embedded])]
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Postgres + NATS JetStream (a deployment).
    Nats,
    /// Postgres + the in-process bus.
    Memory,
    /// SQLite + the in-process bus (`airlock up`).
    Embedded,
}

impl Variant {
    /// What runs, for tables.
    fn label(self) -> &'static str {
        match self {
            Variant::Nats => "nats+postgres",
            Variant::Memory => "memory+postgres",
            Variant::Embedded => "memory+sqlite",
        }
    }
}

/// The name `--variants` takes (clap renders defaults with it).
impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Nats => "nats",
            Variant::Memory => "memory",
            Variant::Embedded => "embedded",
        })
    }
}

#[derive(Debug, Serialize)]
struct Parameters {
    workers: Vec<usize>,
    rounds: usize,
    revoke_rounds: usize,
    warmup: usize,
    interval_ms: u64,
    reconcile_every_s: u64,
    variants: Vec<Variant>,
    policy_bytes: usize,
}

#[derive(Debug, Serialize)]
struct DeploymentResult {
    variant: Variant,
    label: String,
    workers: usize,
    policy: PolicyResult,
    revoke: Option<RevokeResult>,
    /// What the workers counted over the whole run (warm-up included): records
    /// that arrived twice, gaps noticed and records backfilled from the control
    /// plane instead of arriving over the bus. Gaps or backfills mean some
    /// changes did not travel over the bus alone.
    worker_counters: Vec<WorkerCounters>,
}

#[derive(Debug, Serialize)]
struct PolicyResult {
    /// Send → full response read.
    rest_round_trip: Stats,
    /// Send → the last worker has applied the new seq.
    applied_all_workers: Stats,
    /// Response read → the last worker has applied it. Negative when the bus
    /// beat the HTTP response to the client.
    bus_delivery: Stats,
    /// Send → this worker has applied it, per worker.
    per_worker: Vec<Stats>,
    /// The raw samples in milliseconds, per round: [rest, all, bus, worker 0, worker 1, ...].
    samples_ms: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
struct RevokeResult {
    /// Send → full response read (`POST /v1/grants/{id}/revoke`).
    rest_round_trip: Stats,
    /// Send → the last worker's session has been ended.
    enforced_all_workers: Stats,
    /// Send → the session through this worker has been ended, per worker.
    per_worker: Vec<Stats>,
    /// Sessions that ended without the gateway's revocation message (there should be none).
    other_endings: Vec<String>,
    /// The raw samples in milliseconds, per round: [rest, all, worker 0, worker 1, ...].
    samples_ms: Vec<Vec<f64>>,
}

/// Runs the scenario and writes `propagation.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!args.workers.is_empty() && args.workers.iter().all(|w| *w > 0), "--workers must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let mut results = Vec::new();
    for variant in &args.variants {
        for &workers in &args.workers {
            eprintln!("  {}: starting a control plane and {workers} workers", variant.label());
            let result = run_deployment(*variant, workers, args)
                .await
                .with_context(|| format!("variant {} with {workers} workers", variant.label()))?;
            eprintln!(
                "  {} W={workers}: policy applied on all p50 {} ms, p99 {} ms{}",
                variant.label(),
                report::ms(result.policy.applied_all_workers.p50_ms),
                report::ms(result.policy.applied_all_workers.p99_ms),
                result.revoke.as_ref().map_or_else(String::new, |r| format!(
                    "; revoke enforced on all p50 {} ms, p99 {} ms",
                    report::ms(r.enforced_all_workers.p50_ms),
                    report::ms(r.enforced_all_workers.p99_ms)
                ))
            );
            results.push(result);
        }
    }

    let mut table = Table::new(&["variant", "W", "measure (ms)", "n", "p50", "p90", "p99", "max", "mean"]);
    for r in &results {
        let mut lines = vec![
            ("policy: REST round trip", r.policy.rest_round_trip),
            ("policy: sent -> applied on all", r.policy.applied_all_workers),
            ("policy: bus delivery", r.policy.bus_delivery),
        ];
        if let Some(revoke) = &r.revoke {
            lines.push(("revoke: REST round trip", revoke.rest_round_trip));
            lines.push(("revoke: sent -> sessions ended", revoke.enforced_all_workers));
        }
        for (name, s) in lines {
            table.row(vec![
                r.label.clone(),
                r.workers.to_string(),
                name.to_owned(),
                s.count.to_string(),
                report::ms(s.p50_ms),
                report::ms(s.p90_ms),
                report::ms(s.p99_ms),
                report::ms(s.max_ms),
                report::ms(s.mean_ms),
            ]);
        }
    }
    let mut notes = vec![format!(
        "W workers in-process, each on its own bus connection and with its own Postgres gateway; reconcile every \
         {} s, so changes reach them over the bus. Per-worker figures are in the JSON.",
        args.reconcile_every_s
    )];
    notes.push(
        "policy: PUT /v1/policy; 'applied on all' is send -> the last worker's projection holds the new seq \
         (statements are decided from the projection, so applied is enforced). 'bus delivery' is response read \
         -> last worker applied (negative when the bus beat the HTTP response)."
            .to_owned(),
    );
    notes.push(
        "revoke: one session per worker under a fresh grant, then POST /v1/grants/{id}/revoke; 'sessions \
         ended' is send -> the last session's connection closed after the gateway's FATAL, as its client saw \
         it."
        .to_owned(),
    );
    for r in &results {
        let gaps: u64 = r.worker_counters.iter().map(|c| c.gaps).sum();
        let backfilled: u64 = r.worker_counters.iter().map(|c| c.backfilled).sum();
        let duplicates: u64 = r.worker_counters.iter().map(|c| c.duplicates).sum();
        notes.push(format!(
            "{} W={}: workers noticed {gaps} gaps, backfilled {backfilled} records, ignored {duplicates} \
             duplicates{}",
            r.label,
            r.workers,
            if gaps + backfilled == 0 { " (every change arrived over the bus)" } else { "" }
        ));
        if let Some(revoke) = &r.revoke
            && !revoke.other_endings.is_empty()
        {
            notes.push(format!(
                "{} W={}: {} sessions ended otherwise than by the revocation: {}",
                r.label,
                r.workers,
                revoke.other_endings.len(),
                revoke.other_endings.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    notes.push(
        "Client, control plane, workers, Postgres and NATS share this host's cores; figures include their \
         scheduling on each other."
            .to_owned(),
    );
    println!("propagation: a change -> enforced on every worker\n");
    print!("{}", table.render());
    println!();
    for n in &notes {
        println!("note: {n}");
    }
    let doc = Document {
        scenario: "propagation",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            workers: args.workers.clone(),
            rounds: args.rounds,
            revoke_rounds: args.revoke_rounds,
            warmup: args.warmup,
            interval_ms: args.interval_ms,
            reconcile_every_s: args.reconcile_every_s,
            variants: args.variants.clone(),
            policy_bytes: EXAMPLE_POLICY.len(),
        },
        notes,
        results,
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// One control plane and its workers, and what to remove afterwards.
struct Deployment {
    cancel: CancellationToken,
    tracker: TaskTracker,
    base: String,
    admin_token: String,
    projections: Vec<Arc<Projection>>,
    /// Each worker's Postgres gateway.
    gateways: Vec<std::net::SocketAddr>,
    dir: PathBuf,
    db: Option<airlock_testkit::pg::TestDb>,
    /// The database the gateways front, and the template role of their sessions.
    target: Option<airlock_testkit::pg::TestDb>,
    template: Option<String>,
    nats_stream: Option<String>,
}

impl Deployment {
    async fn start(variant: Variant, workers: usize, args: &Args) -> anyhow::Result<Deployment> {
        let dir = std::env::temp_dir().join(format!("airlock-loadtest-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut deployment = Deployment {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            base: String::new(),
            admin_token: String::new(),
            projections: Vec::new(),
            gateways: Vec::new(),
            dir,
            db: None,
            target: None,
            template: None,
            nats_stream: None,
        };
        // Fill in the rest; on an error, still clean up what was made.
        match deployment.start_parts(variant, workers, args).await {
            Ok(()) => Ok(deployment),
            Err(e) => {
                deployment.stop().await;
                Err(e)
            }
        }
    }

    async fn start_parts(&mut self, variant: Variant, workers: usize, args: &Args) -> anyhow::Result<()> {
        let database_url = match variant {
            Variant::Nats | Variant::Memory => {
                let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
                let url = db.url().to_owned();
                self.db = Some(db);
                url
            }
            Variant::Embedded => format!("sqlite://{}", self.dir.join("airlock.db").display()),
        };
        // The gateways' target: a database of its own and a template role for the sessions.
        let target = airlock_testkit::pg::TestDb::create().await.context("creating the target database")?;
        let template = format!("prop_tpl_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::postgres::PgConnection::connect(target.url()).await.context("connecting to the target")?;
        sqlx::raw_sql(&format!("CREATE ROLE {template} NOLOGIN")).execute(&mut admin).await?;
        admin.close().await?;
        self.target = Some(target);
        self.template = Some(template);

        let nats = NatsOptions::new(
            airlock_testkit::nats::nats_url(),
            airlock_testkit::nats::unique_prefix(),
            RecordKey::from_worker_token(WORKER_TOKEN),
        );
        let memory: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let control_plane_bus: Arc<dyn Bus> = match variant {
            Variant::Nats => {
                let bus = NatsBus::connect(&nats).await.context("connecting to NATS")?;
                self.nats_stream = Some(bus.stream_name().to_owned());
                Arc::new(bus)
            }
            Variant::Memory | Variant::Embedded => memory.clone(),
        };

        // The public URL names the API's address: bound here and handed over.
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let public_url = format!("http://{api_addr}");
        let token_file = self.dir.join("admin.token");
        let identity = airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() };
        let options = server::Options {
            database_url,
            master_key: [7; 32],
            public_url: public_url.clone(),
            api_addr,
            grpc_addr: "127.0.0.1:0".parse()?,
            api_tls: None,
            tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
            api_cleartext_off_loopback: false,
            grpc_tls: None,
            grpc_cleartext_off_loopback: false,
            worker_token: WORKER_TOKEN.into(),
            identity: identity.clone(),
            admin_token_file: Some(token_file.clone()),
            reissue_admin_token: false,
            clock: airlock_core::clock::system(),
            recordings: None,
            console: Default::default(),
        };
        let running =
            server::start_on(api_listener, options, control_plane_bus, self.cancel.clone(), &self.tracker).await?;
        self.base = public_url;
        self.admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();

        let run_id = uuid::Uuid::new_v4().simple().to_string();
        for i in 0..workers {
            let bus: Arc<dyn Bus> = match variant {
                Variant::Nats => Arc::new(NatsBus::connect(&nats).await.context("connecting a worker to NATS")?),
                Variant::Memory | Variant::Embedded => memory.clone(),
            };
            // A gateway per worker, as `airlock gateway` runs one, on a session thread of its own.
            // Sessions are not recorded: this measures what a revocation takes, not recording.
            let postgres = airlock_data_plane::PostgresOptions {
                listen: "127.0.0.1:0".parse()?,
                tls: None,
                gateway: airlock_data_plane::postgres::gateway::GatewayOptions {
                    // Unique: a starting worker sweeps the roles its id left, and these run side by side.
                    worker_id: format!("loadtest-{run_id}-{i}"),
                    session_threads: 1,
                    ..Default::default()
                },
                hook: None,
                recording: None,
            };
            let options = worker::Options {
                control_plane_url: format!("http://{}", running.grpc_addr),
                grpc_tls: Default::default(),
                worker_token: WORKER_TOKEN.into(),
                admin_addr: "127.0.0.1:0".parse()?,
                reconcile_every: Duration::from_secs(args.reconcile_every_s.max(1)),
                identity: identity.clone(),
                postgres: Some(postgres),
            };
            let w = worker::start(options, bus, self.cancel.clone(), &self.tracker).await?;
            self.projections.push(w.projection);
            self.gateways.push(w.pg_addr.context("the worker started no gateway")?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.projections.iter().all(|p| p.is_ready()) {
            anyhow::ensure!(Instant::now() < deadline, "the workers were not ready after {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn stop(self) {
        // The workers first: a stopping gateway drops its session roles.
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.is_err() {
            eprintln!("warning: some tasks did not stop within 10 s");
        }
        if let Some(stream) = &self.nats_stream
            && let Err(e) = airlock_testkit::nats::delete_stream(stream).await
        {
            eprintln!("warning: failed to {e:#}");
        }
        for db in [self.db, self.target].into_iter().flatten() {
            if let Err(e) = db.drop_db().await {
                eprintln!("warning: failed to drop a test database: {e:#}");
            }
        }
        if let Some(template) = self.template {
            let drop_role = async {
                let mut admin = sqlx::postgres::PgConnection::connect(&airlock_testkit::pg::admin_url()).await?;
                sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {template}")).execute(&mut admin).await?;
                admin.close().await?;
                anyhow::Ok(())
            };
            if let Err(e) = drop_role.await {
                eprintln!("warning: failed to drop role {template}: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn client(&self) -> Api<'_> {
        Api { http: reqwest::Client::new(), base: &self.base, token: &self.admin_token }
    }
}

/// The control plane's REST API with the admin token.
struct Api<'a> {
    http: reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Api<'_> {
    /// POSTs `body` and returns the answer's JSON, or an error naming the call and the answer.
    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let response =
            self.http.post(format!("{}{path}", self.base)).bearer_auth(self.token).json(&body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "POST {path} answered {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("reading the answer to POST {path}"))
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
struct WorkerCounters {
    applied: u64,
    duplicates: u64,
    gaps: u64,
    backfilled: u64,
}

impl WorkerCounters {
    fn of(p: &Projection) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let c = p.counters();
        Self {
            applied: c.applied.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            gaps: c.gaps.load(Relaxed),
            backfilled: c.backfilled.load(Relaxed),
        }
    }
}

/// The timings of one policy round.
struct PolicyRound {
    rest: Duration,
    all: Duration,
    bus_ms: f64,
    per_worker: Vec<Duration>,
}

/// The timings of one revoke round.
struct RevokeRound {
    rest: Duration,
    all: Duration,
    per_worker: Vec<Duration>,
    /// How sessions ended when not by the revocation's FATAL.
    other_endings: Vec<String>,
}

async fn run_deployment(variant: Variant, workers: usize, args: &Args) -> anyhow::Result<DeploymentResult> {
    let deployment = Deployment::start(variant, workers, args).await?;
    let measured = async {
        let (tenant, head) = catch_up(&deployment).await?;
        let policy = measure_policy(&deployment, args, tenant, head).await?;
        let revoke = if args.revoke_rounds > 0 { Some(measure_revoke(&deployment, args).await?) } else { None };
        anyhow::Ok((policy, revoke))
    }
    .await;
    let worker_counters: Vec<WorkerCounters> = deployment.projections.iter().map(|p| WorkerCounters::of(p)).collect();
    deployment.stop().await;
    let (policy, revoke) = measured?;
    Ok(DeploymentResult {
        variant,
        label: variant.label().to_owned(),
        workers,
        policy: summarize_policy(&policy, workers),
        revoke: revoke.map(|r| summarize_revoke(r, workers)),
        worker_counters,
    })
}

fn to_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_worker_stats(workers: usize, samples: impl Fn(usize) -> Vec<Duration>) -> Vec<Stats> {
    (0..workers).map(|i| Stats::of_durations(&samples(i))).collect()
}

fn summarize_policy(rounds: &[PolicyRound], workers: usize) -> PolicyResult {
    let rest: Vec<Duration> = rounds.iter().map(|r| r.rest).collect();
    let all: Vec<Duration> = rounds.iter().map(|r| r.all).collect();
    let bus: Vec<f64> = rounds.iter().map(|r| r.bus_ms).collect();
    let samples_ms = rounds
        .iter()
        .map(|r| {
            let mut row = vec![to_ms(r.rest), to_ms(r.all), r.bus_ms];
            row.extend(r.per_worker.iter().map(|d| to_ms(*d)));
            row
        })
        .collect();
    PolicyResult {
        rest_round_trip: Stats::of_durations(&rest),
        applied_all_workers: Stats::of_durations(&all),
        bus_delivery: Stats::of_ms(bus),
        per_worker: per_worker_stats(workers, |i| rounds.iter().filter_map(|r| r.per_worker.get(i).copied()).collect()),
        samples_ms,
    }
}

fn summarize_revoke(rounds: Vec<RevokeRound>, workers: usize) -> RevokeResult {
    let rest: Vec<Duration> = rounds.iter().map(|r| r.rest).collect();
    let all: Vec<Duration> = rounds.iter().map(|r| r.all).collect();
    let samples_ms = rounds
        .iter()
        .map(|r| {
            let mut row = vec![to_ms(r.rest), to_ms(r.all)];
            row.extend(r.per_worker.iter().map(|d| to_ms(*d)));
            row
        })
        .collect();
    RevokeResult {
        rest_round_trip: Stats::of_durations(&rest),
        enforced_all_workers: Stats::of_durations(&all),
        per_worker: per_worker_stats(workers, |i| rounds.iter().filter_map(|r| r.per_worker.get(i).copied()).collect()),
        samples_ms,
        other_endings: rounds.into_iter().flat_map(|r| r.other_endings).collect(),
    }
}

#[derive(serde::Deserialize)]
struct TenantView {
    id: String,
    seq: u64,
}

#[derive(serde::Deserialize)]
struct PolicyView {
    seq: u64,
}

/// The default tenant and its head, once every worker has applied it.
async fn catch_up(d: &Deployment) -> anyhow::Result<(TenantId, u64)> {
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/v1/tenants", d.base)).bearer_auth(&d.admin_token).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET /v1/tenants answered {}", response.status());
    let tenants: Vec<TenantView> = response.json().await.context("reading GET /v1/tenants")?;
    let first = tenants.first().context("GET /v1/tenants listed no tenant")?;
    let tenant = TenantId::from_str(&first.id).map_err(|e| anyhow::anyhow!("tenant id {}: {e}", first.id))?;
    // The workers' snapshots may predate the tenant's last events; let them catch up.
    for p in &d.projections {
        tokio::time::timeout(ROUND_TIMEOUT, p.wait_for(&tenant, first.seq))
            .await
            .context("the workers did not catch up with the tenant's head")?;
    }
    Ok((tenant, first.seq))
}

async fn measure_policy(d: &Deployment, args: &Args, tenant: TenantId, head: u64) -> anyhow::Result<Vec<PolicyRound>> {
    let client = reqwest::Client::new();
    let mut rounds = Vec::with_capacity(args.rounds);
    for (i, seq) in (0..args.warmup + args.rounds).zip(head..) {
        let round = tokio::time::timeout(ROUND_TIMEOUT, policy_round(&client, d, tenant, seq, i))
            .await
            .with_context(|| format!("policy round {i} did not finish within {ROUND_TIMEOUT:?}"))??;
        if i >= args.warmup {
            rounds.push(round);
        }
        if args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    Ok(rounds)
}

/// One policy change. The workers' waits are armed before the request is sent
/// (the new seq is the head + 1: nothing else writes to the tenant while
/// policy rounds run), so a worker that applies the change before the response
/// arrives is timed when it applied it, not when we got round to asking.
async fn policy_round(
    client: &reqwest::Client,
    d: &Deployment,
    tenant: TenantId,
    head: u64,
    i: usize,
) -> anyhow::Result<PolicyRound> {
    let expected = head + 1;
    let body = format!("{EXAMPLE_POLICY}\n# loadtest round {i}\n");
    let applied = futures::future::join_all(d.projections.iter().map(|p| async move {
        p.wait_for(&tenant, expected).await;
        Instant::now()
    }));
    let request = async {
        let t0 = Instant::now();
        let response = client
            .put(format!("{}/v1/policy", d.base))
            .bearer_auth(&d.admin_token)
            .header("content-type", "application/yaml")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        let answered = Instant::now();
        anyhow::ensure!(status.is_success(), "PUT /v1/policy answered {status}: {text}");
        let view: PolicyView = serde_json::from_str(&text).context("reading the PUT /v1/policy response")?;
        anyhow::Ok((t0, answered, view.seq))
    };
    // Biased: `applied` is polled first, so every wait has subscribed before the
    // request future takes t0 and sends.
    let (applied, request) = tokio::join!(biased; applied, request);
    let (t0, answered, seq) = request?;
    anyhow::ensure!(seq == expected, "the policy change got seq {seq}, expected {expected}: another writer?");
    let last = applied.iter().max().copied().unwrap_or(answered);
    let bus_ms = if last >= answered {
        last.duration_since(answered).as_secs_f64() * 1000.0
    } else {
        -(answered.duration_since(last).as_secs_f64() * 1000.0)
    };
    Ok(PolicyRound {
        rest: answered.duration_since(t0),
        all: last.saturating_duration_since(t0),
        bus_ms,
        per_worker: applied.iter().map(|t| t.saturating_duration_since(t0)).collect(),
    })
}

async fn measure_revoke(d: &Deployment, args: &Args) -> anyhow::Result<Vec<RevokeRound>> {
    let api = d.client();
    let target = d.target.as_ref().context("no target database")?;
    let template = d.template.as_deref().context("no template role")?;
    let options = sqlx::postgres::PgConnectOptions::from_str(target.url()).context("parsing the target's URL")?;
    let address = format!("{}:{}", options.get_host(), options.get_port());
    api.post(
        "/v1/connections",
        serde_json::json!({
            "name": CONNECTION, "kind": "postgres", "address": address, "database": target.name(),
            "tls": "disable", "admin_credential": {"user": "postgres", "password": ""},
            "roles": {ROLE: template},
        }),
    )
    .await?;
    let token = api.post("/v1/tokens", serde_json::json!({"subject": SUBJECT, "ttl_seconds": 3600})).await?;
    let token = token.get("token").and_then(|t| t.as_str()).context("POST /v1/tokens returned no token")?.to_owned();
    let mut rounds = Vec::with_capacity(args.revoke_rounds);
    for i in 0..args.warmup + args.revoke_rounds {
        let round = tokio::time::timeout(ROUND_TIMEOUT, revoke_round(d, &api, target.name(), &token))
            .await
            .with_context(|| format!("revoke round {i} did not finish within {ROUND_TIMEOUT:?}"))??;
        if i >= args.warmup {
            rounds.push(round);
        }
        if args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    Ok(rounds)
}

/// A session through one gateway: the moment its connection ended, and how.
struct Session {
    _client: tokio_postgres::Client,
    ended: tokio::task::JoinHandle<(Instant, String)>,
}

/// Opens a session through `gateway`, retrying while the grant has not reached that worker yet.
async fn open_session(gateway: std::net::SocketAddr, database: &str, token: &str) -> anyhow::Result<Session> {
    let url = format!(
        "host={} port={} user={CONNECTION}.{ROLE} password={token} dbname={database} sslmode=disable",
        gateway.ip(),
        gateway.port()
    );
    loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                let ended = tokio::spawn(async move {
                    let how = match connection.await {
                        Ok(()) => "closed without an error".to_owned(),
                        Err(e) => e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned()),
                    };
                    (Instant::now(), how)
                });
                client.simple_query("SELECT 1").await.context("a first statement through the gateway")?;
                return Ok(Session { _client: client, ended });
            }
            // 42501: the worker has not applied the grant yet.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e).context("opening a session through the gateway"),
        }
    }
}

/// Grant, a session through every worker, then the revocation, timed until every session has ended.
async fn revoke_round(d: &Deployment, api: &Api<'_>, database: &str, token: &str) -> anyhow::Result<RevokeRound> {
    let grant = api
        .post(
            "/v1/grants",
            serde_json::json!({"subject": SUBJECT, "connection": CONNECTION, "role": ROLE, "ttl_seconds": 600}),
        )
        .await?;
    let id = grant.get("id").and_then(|v| v.as_str()).context("POST /v1/grants returned no id")?.to_owned();
    let sessions = futures::future::try_join_all(d.gateways.iter().map(|g| open_session(*g, database, token))).await?;
    let t0 = Instant::now();
    api.post(&format!("/v1/grants/{id}/revoke"), serde_json::json!({"reason": "loadtest"})).await?;
    let rest = t0.elapsed();
    let mut per_worker = Vec::with_capacity(sessions.len());
    let mut other_endings = Vec::new();
    for s in sessions {
        let (at, how) = s.ended.await.context("a session's connection task failed")?;
        if !how.contains("revoked") {
            other_endings.push(how);
        }
        per_worker.push(at.saturating_duration_since(t0));
    }
    let all = per_worker.iter().max().copied().unwrap_or_default();
    Ok(RevokeRound { rest, all, per_worker, other_endings })
}
