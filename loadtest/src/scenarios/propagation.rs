//! `propagation`: how long a policy change takes to reach every worker.
//!
//! A control plane runs in-process with W workers, each on its own bus
//! connection (on NATS: its own `NatsBus::connect`, as separate processes would
//! have), reconciling rarely so what is measured is the bus path: REST command
//! → append (commit) → outbox relay → bus → each worker's projection. Each round
//! sends `PUT /v1/policy` with the example policy (a varying comment, so every
//! round is a new version) and times, from the moment the request is sent:
//! the REST round trip, and the moment each worker has applied the new `seq`.
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
use airlock_proto::bus::{Bus, MemoryBus, NatsBus, NatsOptions};
use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EXAMPLE_POLICY;
use crate::report::{self, Document, Host, Stats, Table};

const WORKER_TOKEN: &str = "loadtest-worker-secret";
/// How long one round may take before the run is declared stuck.
const ROUND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the workers get to load their first snapshot.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Workers started in-process, each with its own bus connection.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Measured policy changes per variant.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Unmeasured policy changes first (connection pools, JIT-free but cold caches).
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
    workers: usize,
    rounds: usize,
    warmup: usize,
    interval_ms: u64,
    reconcile_every_s: u64,
    variants: Vec<Variant>,
    policy_bytes: usize,
}

#[derive(Debug, Serialize)]
struct VariantResult {
    variant: Variant,
    label: String,
    /// Send → full response read.
    rest_round_trip: Stats,
    /// Send → the last worker has applied the new seq.
    applied_all_workers: Stats,
    /// Response read → the last worker has applied it. Negative when the bus
    /// beat the HTTP response to the client.
    bus_delivery: Stats,
    /// Send → this worker has applied it, per worker.
    per_worker: Vec<Stats>,
    /// What the workers counted over the whole run (warm-up included): records
    /// that arrived twice, gaps noticed and records backfilled from the control
    /// plane instead of arriving over the bus. Gaps or backfills mean some
    /// changes did not travel over the bus alone.
    worker_counters: Vec<WorkerCounters>,
    /// The raw samples in milliseconds, per round: [rest, all, bus, worker 0, worker 1, ...].
    samples_ms: Vec<Vec<f64>>,
}

/// Runs the scenario and writes `propagation.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let mut results = Vec::new();
    for variant in &args.variants {
        eprintln!("  {}: starting a control plane and {} workers", variant.label(), args.workers);
        let result = run_variant(*variant, args).await.with_context(|| format!("variant {}", variant.label()))?;
        eprintln!(
            "  {}: applied on all workers p50 {} ms, p99 {} ms",
            variant.label(),
            report::ms(result.applied_all_workers.p50_ms),
            report::ms(result.applied_all_workers.p99_ms)
        );
        results.push(result);
    }

    let mut table = Table::new(&["variant", "measure (ms)", "n", "p50", "p90", "p99", "max", "mean"]);
    for r in &results {
        let mut lines = vec![
            ("REST round trip (PUT /v1/policy)".to_owned(), r.rest_round_trip),
            (format!("sent -> applied on all {} workers", r.per_worker.len()), r.applied_all_workers),
            ("bus delivery (response -> last worker)".to_owned(), r.bus_delivery),
        ];
        for (i, s) in r.per_worker.iter().enumerate() {
            lines.push((format!("  sent -> applied on worker {i}"), *s));
        }
        for (name, s) in lines {
            table.row(vec![
                r.label.clone(),
                name,
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
        "{} workers, each on its own bus connection; reconcile every {} s, so changes reach them over the bus.",
        args.workers, args.reconcile_every_s
    )];
    for r in &results {
        let gaps: u64 = r.worker_counters.iter().map(|c| c.gaps).sum();
        let backfilled: u64 = r.worker_counters.iter().map(|c| c.backfilled).sum();
        let duplicates: u64 = r.worker_counters.iter().map(|c| c.duplicates).sum();
        notes.push(format!(
            "{}: workers noticed {gaps} gaps, backfilled {backfilled} records, ignored {duplicates} duplicates{}",
            r.label,
            if gaps + backfilled == 0 { " (every change arrived over the bus)" } else { "" }
        ));
    }
    notes.extend([
        "Client, control plane, workers, Postgres and NATS share this host's cores; figures include their \
         scheduling on each other."
            .to_owned(),
        "Bus delivery is measured from the client's reading of the response, so it can be negative when the \
         bus beat the HTTP response back to the client."
            .to_owned(),
    ]);
    println!("propagation: PUT /v1/policy -> applied on every worker\n");
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
            workers: args.workers,
            rounds: args.rounds,
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
    dir: PathBuf,
    db: Option<airlock_testkit::pg::TestDb>,
    nats_stream: Option<String>,
}

impl Deployment {
    async fn start(variant: Variant, args: &Args) -> anyhow::Result<Deployment> {
        let dir = std::env::temp_dir().join(format!("airlock-loadtest-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut deployment = Deployment {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            base: String::new(),
            admin_token: String::new(),
            projections: Vec::new(),
            dir,
            db: None,
            nats_stream: None,
        };
        // Fill in the rest; on an error, still clean up what was made.
        match deployment.start_parts(variant, args).await {
            Ok(()) => Ok(deployment),
            Err(e) => {
                deployment.stop().await;
                Err(e)
            }
        }
    }

    async fn start_parts(&mut self, variant: Variant, args: &Args) -> anyhow::Result<()> {
        let database_url = match variant {
            Variant::Nats | Variant::Memory => {
                let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
                let url = db.url().to_owned();
                self.db = Some(db);
                url
            }
            Variant::Embedded => format!("sqlite://{}", self.dir.join("airlock.db").display()),
        };
        let nats = NatsOptions {
            url: airlock_testkit::nats::nats_url(),
            prefix: airlock_testkit::nats::unique_prefix(),
            ..NatsOptions::default()
        };
        let memory: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let control_plane_bus: Arc<dyn Bus> = match variant {
            Variant::Nats => {
                let bus = NatsBus::connect(&nats).await.context("connecting to NATS")?;
                self.nats_stream = Some(bus.stream_name().to_owned());
                Arc::new(bus)
            }
            Variant::Memory | Variant::Embedded => memory.clone(),
        };

        // The public URL must be known before binding; take a free port first.
        let api_addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let public_url = format!("http://{api_addr}");
        let token_file = self.dir.join("admin.token");
        let options = server::Options {
            database_url,
            master_key: [7; 32],
            public_url: public_url.clone(),
            api_addr,
            grpc_addr: "127.0.0.1:0".parse()?,
            worker_token: WORKER_TOKEN.into(),
            identity: airlock_identity::VerifierOptions { own_issuer: public_url.clone(), ..Default::default() },
            admin_token_file: Some(token_file.clone()),
            reissue_admin_token: false,
            clock: airlock_core::clock::system(),
            recordings: None,
            console: Default::default(),
        };
        let running = server::start(options, control_plane_bus, self.cancel.clone(), &self.tracker).await?;
        self.base = public_url;
        self.admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();

        for _ in 0..args.workers {
            let bus: Arc<dyn Bus> = match variant {
                Variant::Nats => Arc::new(NatsBus::connect(&nats).await.context("connecting a worker to NATS")?),
                Variant::Memory | Variant::Embedded => memory.clone(),
            };
            let options = worker::Options {
                control_plane_url: format!("http://{}", running.grpc_addr),
                worker_token: WORKER_TOKEN.into(),
                admin_addr: "127.0.0.1:0".parse()?,
                reconcile_every: Duration::from_secs(args.reconcile_every_s.max(1)),
                identity: Default::default(),
                postgres: None,
            };
            let w = worker::start(options, bus, self.cancel.clone(), &self.tracker).await?;
            self.projections.push(w.projection);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.projections.iter().all(|p| p.is_ready()) {
            anyhow::ensure!(Instant::now() < deadline, "the workers were not ready after {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn stop(self) {
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
        if let Some(db) = self.db
            && let Err(e) = db.drop_db().await
        {
            eprintln!("warning: failed to drop the test database: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// The timings of one round.
struct Round {
    rest: Duration,
    all: Duration,
    bus_ms: f64,
    per_worker: Vec<Duration>,
}

async fn run_variant(variant: Variant, args: &Args) -> anyhow::Result<VariantResult> {
    let deployment = Deployment::start(variant, args).await?;
    let measured = measure(&deployment, args).await;
    let worker_counters: Vec<WorkerCounters> = deployment.projections.iter().map(|p| WorkerCounters::of(p)).collect();
    deployment.stop().await;
    let rounds = measured?;

    let workers = args.workers;
    let rest: Vec<Duration> = rounds.iter().map(|r| r.rest).collect();
    let all: Vec<Duration> = rounds.iter().map(|r| r.all).collect();
    let bus: Vec<f64> = rounds.iter().map(|r| r.bus_ms).collect();
    let per_worker = (0..workers)
        .map(|i| {
            let samples: Vec<Duration> = rounds.iter().filter_map(|r| r.per_worker.get(i).copied()).collect();
            Stats::of_durations(&samples)
        })
        .collect();
    let to_ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let samples_ms = rounds
        .iter()
        .map(|r| {
            let mut row = vec![to_ms(r.rest), to_ms(r.all), r.bus_ms];
            row.extend(r.per_worker.iter().map(|d| to_ms(*d)));
            row
        })
        .collect();
    Ok(VariantResult {
        variant,
        label: variant.label().to_owned(),
        rest_round_trip: Stats::of_durations(&rest),
        applied_all_workers: Stats::of_durations(&all),
        bus_delivery: Stats::of_ms(bus),
        per_worker,
        worker_counters,
        samples_ms,
    })
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

async fn measure(d: &Deployment, args: &Args) -> anyhow::Result<Vec<Round>> {
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/v1/tenants", d.base)).bearer_auth(&d.admin_token).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET /v1/tenants answered {}", response.status());
    let tenants: Vec<TenantView> = response.json().await.context("reading GET /v1/tenants")?;
    let first = tenants.first().context("GET /v1/tenants listed no tenant")?;
    let tenant = TenantId::from_str(&first.id).map_err(|e| anyhow::anyhow!("tenant id {}: {e}", first.id))?;
    let mut seq = first.seq;
    // The workers' snapshots may predate the tenant's last events; let them catch up.
    for p in &d.projections {
        tokio::time::timeout(ROUND_TIMEOUT, p.wait_for(&tenant, seq))
            .await
            .context("the workers did not catch up with the tenant's head")?;
    }

    let mut rounds = Vec::with_capacity(args.rounds);
    for i in 0..args.warmup + args.rounds {
        let round = tokio::time::timeout(ROUND_TIMEOUT, one_round(&client, d, tenant, seq, i))
            .await
            .with_context(|| format!("round {i} did not finish within {ROUND_TIMEOUT:?}"))??;
        seq += 1;
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
/// (the new seq is the head + 1: nothing else writes to the tenant), so a worker
/// that applies the change before the response arrives is timed when it applied
/// it, not when we got round to asking.
async fn one_round(
    client: &reqwest::Client,
    d: &Deployment,
    tenant: TenantId,
    head: u64,
    i: usize,
) -> anyhow::Result<Round> {
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
    Ok(Round {
        rest: answered.duration_since(t0),
        all: last.saturating_duration_since(t0),
        bus_ms,
        per_worker: applied.iter().map(|t| t.saturating_duration_since(t0)).collect(),
    })
}
