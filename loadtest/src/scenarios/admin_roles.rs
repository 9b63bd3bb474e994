//! How fast one gateway makes and drops session roles on a target, over one
//! admin connection and over several side by side: `sessions` tasks each make
//! a role and drop it again, over and over, through one `RoleManager`, for
//! `seconds`. Each admin connection count runs once per repetition, taking
//! turns, against a database of its own on the machine's Postgres.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use airlock_data_plane::postgres::roles::{RoleManager, SessionRoleSpec, TlsChoice};
use anyhow::Context as _;
use serde::Serialize;

use super::pg_throughput::median;
use crate::report::{self, Document, Host, Table};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Sessions arriving at once: tasks that each make and drop roles in a loop.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Admin connection counts to compare (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4])]
    pub connections: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct Row {
    connections: usize,
    /// Roles made and dropped per second, one figure per repetition.
    per_second: Vec<f64>,
    median_per_second: f64,
    vs_baseline: f64,
}

pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!args.connections.is_empty() && args.reps > 0, "nothing to run");
    let started = Instant::now();
    let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
    let template = format!("tpl_{}", uuid::Uuid::new_v4().simple());
    let worker = format!("admin-roles-{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin.batch_execute(&format!("CREATE ROLE {template} NOLOGIN")).await?;

    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); args.connections.len()];
    for rep in 0..args.reps {
        for (i, &connections) in args.connections.iter().enumerate() {
            let config: tokio_postgres::Config = db.url().parse()?;
            let roles = Arc::new(RoleManager::with_connections(config, TlsChoice::Disable, connections).await?);
            let rate = churn(&roles, &worker, &template, args.sessions, Duration::from_secs(args.seconds)).await?;
            println!("  rep {rep} connections={connections}: {rate:.0} roles/s");
            if let Some(r) = runs.get_mut(i) {
                r.push(rate);
            }
        }
    }
    admin.batch_execute(&format!("DROP ROLE {template}")).await?;
    drop(admin);
    db.drop_db().await?;

    let medians: Vec<f64> = runs.iter().map(|r| median(r.clone())).collect();
    let baseline = medians.first().copied().unwrap_or(0.0);
    let rows: Vec<Row> = args
        .connections
        .iter()
        .zip(runs)
        .zip(&medians)
        .map(|((&connections, per_second), &m)| Row {
            connections,
            per_second,
            median_per_second: m,
            vs_baseline: if baseline > 0.0 { m / baseline } else { 0.0 },
        })
        .collect();
    let mut table = Table::new(&["admin connections", "roles/s", "vs first"]);
    for row in &rows {
        table.row(vec![
            row.connections.to_string(),
            format!("{:.0}", row.median_per_second),
            format!("{:.2}", row.vs_baseline),
        ]);
    }
    println!("\n{}", table.render());
    let notes = vec![format!(
        "{} tasks each make a session role and drop it, in a loop, through one RoleManager, for {} s; \
         medians over {} repetitions, the connection counts taking turns; Postgres on this host",
        args.sessions, args.seconds, args.reps
    )];
    for note in &notes {
        println!("note: {note}");
    }
    let doc = Document {
        scenario: "admin-roles",
        started_at_unix_ms: report::unix_ms_now(),
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: args.clone(),
        notes,
        results: rows,
    };
    println!("wrote {}", report::write_json(out, &doc)?.display());
    Ok(())
}

/// Roles made and dropped per second by `sessions` tasks over `length`.
async fn churn(
    roles: &Arc<RoleManager>,
    worker: &str,
    template: &str,
    sessions: usize,
    length: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (roles, done, worker, template) = (roles.clone(), done.clone(), worker.to_owned(), template.to_owned());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let spec = SessionRoleSpec {
                    session_id: uuid::Uuid::new_v4(),
                    worker_id: worker.clone(),
                    template_role: template.clone(),
                    valid_until: SystemTime::now() + Duration::from_secs(600),
                    run: String::new(),
                };
                let role = roles.create_session_role(&spec).await?;
                roles.drop_session_role(&role.name).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
