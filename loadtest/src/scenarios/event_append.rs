//! `event-append`: how fast the event log takes appends, straight through
//! `Store::open(...).event_log()`, the way command handlers append: one event per
//! append, each append its own transaction (head row lock, events + outbox
//! inserts, head update, commit).
//!
//! For each backend (Postgres on a fresh database, SQLite in a temp file), each
//! event size (a `PolicyApplied` carrying the example policy, a small
//! `ConnectionRemoved`) and each concurrency C: C writers each on its own
//! tenant, and (C > 1) C writers on ONE tenant, which the log serializes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_control_plane::eventlog::{EventLog, ExpectedVersion};
use airlock_control_plane::store::Store;
use airlock_core::event::stream;
use airlock_core::{ConnectionId, Event, TenantId};
use anyhow::Context as _;
use serde::Serialize;

use super::EXAMPLE_POLICY;
use crate::report::{self, Document, Host, Stats, Table};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Appends per combination (split across its writers), unless --max-seconds runs out first.
    #[arg(long, default_value_t = 5000)]
    pub events: usize,
    /// Time budget per combination, in seconds: writers stop early when it runs
    /// out (Postgres's fsync per commit makes 5000 single-writer appends take
    /// half a minute on a slow disk). 0: no budget, always append --events.
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds: f64,
    /// Writer counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8])]
    pub concurrency: Vec<usize>,
    /// Backends to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Backend::Postgres, Backend::Sqlite])]
    pub backends: Vec<Backend>,
    /// Event sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Size::Policy, Size::Small])]
    pub sizes: Vec<Size>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// Which event each append carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// `PolicyApplied` with the example policy document (about 1 KB of YAML).
    Policy,
    /// `ConnectionRemoved`: an id and a name.
    Small,
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Size::Policy => "policy",
            Size::Small => "small",
        })
    }
}

#[derive(Debug, Serialize)]
struct Parameters {
    events: usize,
    max_seconds: f64,
    concurrency: Vec<usize>,
    backends: Vec<Backend>,
    sizes: Vec<Size>,
    /// Encoded payload bytes of one event of each size.
    payload_bytes: Vec<(Size, usize)>,
}

#[derive(Debug, Serialize)]
struct Row {
    backend: Backend,
    size: Size,
    writers: usize,
    tenants: usize,
    events: usize,
    wall_s: f64,
    events_per_s: f64,
    latency: Stats,
}

/// Runs the scenario and writes `event-append.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    anyhow::ensure!(args.concurrency.iter().all(|c| *c > 0), "--concurrency values must be at least 1");
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let mut notes = vec![
        "One event per append; every append is one transaction, as commands append.".to_owned(),
        "Writers each on their own tenant append in parallel; writers on one tenant queue on its head \
         (Postgres: SELECT ... FOR UPDATE on tenant_heads; SQLite: one writer connection for everything)."
            .to_owned(),
        "No outbox relay runs: the outbox grows by one row per event, as it does until the relay catches up."
            .to_owned(),
    ];
    let budget = (args.max_seconds > 0.0).then(|| Duration::from_secs_f64(args.max_seconds));
    if let Some(b) = budget {
        notes.push(format!(
            "Each combination stops after {} events or {:.1} s, whichever comes first; `events` is what was \
             appended.",
            args.events,
            b.as_secs_f64()
        ));
    }
    let mut rows = Vec::new();
    for backend in &args.backends {
        let (store, cleanup, durability) = open(*backend).await?;
        notes.push(durability);
        let log = store.event_log();
        warm_up(&log).await?;
        for size in &args.sizes {
            for &writers in &args.concurrency {
                let mut shapes = vec![writers];
                if writers > 1 {
                    shapes.push(1);
                }
                for tenants in shapes {
                    let row = measure(&log, *backend, *size, writers, tenants, args.events, budget).await?;
                    eprintln!(
                        "  {backend} {size} writers={writers} tenants={tenants}: {:.0} events/s",
                        row.events_per_s
                    );
                    rows.push(row);
                }
            }
        }
        store.close().await;
        cleanup.finish().await?;
    }

    let mut table =
        Table::new(&["backend", "event", "writers", "tenants", "events", "events/s", "p50 ms", "p99 ms", "max ms"]);
    for r in &rows {
        table.row(vec![
            r.backend.to_string(),
            r.size.to_string(),
            r.writers.to_string(),
            r.tenants.to_string(),
            r.events.to_string(),
            format!("{:.0}", r.events_per_s),
            report::ms(r.latency.p50_ms),
            report::ms(r.latency.p99_ms),
            report::ms(r.latency.max_ms),
        ]);
    }
    println!("event-append: one event per append, each a transaction\n");
    print!("{}", table.render());
    println!();
    for n in &notes {
        println!("note: {n}");
    }

    let payload_bytes = args.sizes.iter().map(|s| (*s, payload_len(*s))).collect();
    let doc = Document {
        scenario: "event-append",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            events: args.events,
            max_seconds: args.max_seconds,
            concurrency: args.concurrency.clone(),
            backends: args.backends.clone(),
            sizes: args.sizes.clone(),
            payload_bytes,
        },
        notes,
        results: rows,
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// What to remove once a backend is done.
enum Cleanup {
    Postgres(airlock_testkit::pg::TestDb),
    Sqlite(PathBuf),
}

impl Cleanup {
    async fn finish(self) -> anyhow::Result<()> {
        match self {
            Cleanup::Postgres(db) => db.drop_db().await,
            Cleanup::Sqlite(dir) => {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
            }
        }
    }
}

/// Opens a fresh store and says how durable its commits are.
async fn open(backend: Backend) -> anyhow::Result<(Store, Cleanup, String)> {
    match backend {
        Backend::Postgres => {
            let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
            let store = Store::open(db.url(), [7; 32]).await?;
            let settings = pg_settings(db.url()).await.unwrap_or_else(|e| format!("(could not read settings: {e:#})"));
            let note = format!(
                "postgres: every append commits a transaction; {settings}. With fsync=on and \
                 synchronous_commit=on each commit waits for its WAL flush (commits of concurrent writers \
                 can share one flush)."
            );
            Ok((store, Cleanup::Postgres(db), note))
        }
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("airlock-loadtest-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let url = format!("sqlite://{}", dir.join("airlock.db").display());
            let store = Store::open(&url, [7; 32]).await?;
            let note = "sqlite: journal_mode=WAL, synchronous=FULL (control-plane/src/store.rs): every commit \
                        is fsynced before the append returns, as on Postgres. One write connection serves \
                        every tenant, so writers on different tenants queue too."
                .to_owned();
            Ok((store, Cleanup::Sqlite(dir), note))
        }
    }
}

async fn pg_settings(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let (fsync, sync_commit, method): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('wal_sync_method')",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(format!("fsync={fsync}, synchronous_commit={sync_commit}, wal_sync_method={method}"))
}

fn event(size: Size, connection: ConnectionId, i: usize) -> Event {
    match size {
        Size::Policy => Event::PolicyApplied {
            version: i as u64 + 1,
            source: format!("{EXAMPLE_POLICY}\n# loadtest {i}\n"),
            digest: format!("{:064x}", i),
        },
        Size::Small => Event::ConnectionRemoved { connection_id: connection, name: "pg-local".into() },
    }
}

fn stream_of(size: Size, connection: &ConnectionId) -> String {
    match size {
        Size::Policy => stream::POLICY.to_owned(),
        Size::Small => stream::connection(connection),
    }
}

fn payload_len(size: Size) -> usize {
    let e = event(size, ConnectionId::new(), 0);
    airlock_proto::convert::encode_event(&e).len()
}

/// Opens the pool's connections and lets the database settle before measuring.
async fn warm_up(log: &Arc<dyn EventLog>) -> anyhow::Result<()> {
    let tenant = TenantId::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let log = log.clone();
        tasks.spawn(async move {
            let connection = ConnectionId::new();
            for i in 0..10 {
                let e = event(Size::Small, connection, i);
                log.append(tenant, &stream_of(Size::Small, &connection), ExpectedVersion::Any, "loadtest", &[e])
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn measure(
    log: &Arc<dyn EventLog>,
    backend: Backend,
    size: Size,
    writers: usize,
    tenants: usize,
    events: usize,
    budget: Option<Duration>,
) -> anyhow::Result<Row> {
    let tenant_ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new()).collect();
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let log = log.clone();
        let tenant = *tenant_ids.get(w % tenants).context("tenant index")?;
        // Spread the remainder over the first writers.
        let count = events / writers + usize::from(w < events % writers);
        let start = start.clone();
        tasks.spawn(async move {
            let connection = ConnectionId::new();
            let stream = stream_of(size, &connection);
            let batch: Vec<Event> = (0..count).map(|i| event(size, connection, i)).collect();
            let mut latencies = Vec::with_capacity(count);
            start.wait().await;
            let deadline = budget.map(|b| Instant::now() + b);
            for e in batch {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                log.append(tenant, &stream, ExpectedVersion::Any, "loadtest", std::slice::from_ref(&e)).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(events);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let wall = t0.elapsed();
    Ok(Row {
        backend,
        size,
        writers,
        tenants,
        events: latencies.len(),
        wall_s: wall.as_secs_f64(),
        events_per_s: latencies.len() as f64 / wall.as_secs_f64().max(f64::EPSILON),
        latency: Stats::of_durations(&latencies),
    })
}
