//! `airlock-loadtest SCENARIO [options]`: runs a load scenario against real
//! components started in-process, prints a table and writes
//! `loadtest/results/<scenario>.json`. Figures are measured, never asserted.

mod forward;
mod report;
mod scenarios;
mod uring;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::scenarios::{
    admin_roles, event_append, faults, idle_sessions, pg_connect, pg_policy, pg_throughput, propagation,
    recorder_ingest,
};

#[derive(Debug, Parser)]
#[command(name = "airlock-loadtest", about = "Airlock's load scenarios (build with --release)")]
struct Cli {
    /// Where the JSON results go (default: loadtest/results/).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Appends to the event log straight through the store, on Postgres and SQLite.
    EventAppend(event_append::Args),
    /// PUT /v1/policy over REST until every worker has applied it, over NATS and the in-process bus.
    Propagation(propagation::Args),
    /// pgbench -S directly, through pgbouncer and through the Postgres gateway (`airlock up` as a child
    /// process; needs pgbouncer and `cargo build --release`). Not part of `all`.
    PgThroughput(pg_throughput::Args),
    /// What command rules and masking cost through the Postgres gateway: pgbench directly, through the gateway
    /// without a policy and with one (`airlock up` as a child process; needs `cargo build --release`). Not part
    /// of `all`.
    PgPolicy(pg_policy::Args),
    /// Frames streamed to `airlock recorder` (a child process) as fast as it stores them: MB/s per core, to a
    /// local directory and, with --s3-url, an S3-compatible server (needs `cargo build --release`). Not part
    /// of `all`.
    RecorderIngest(recorder_ingest::Args),
    /// Kills (SIGKILL) and restarts NATS, the recorder, a gateway, the control plane and Postgres in turn under
    /// load, a private deployment of child processes; reports what kept working, recovery, and whether anything
    /// acknowledged was lost (exits non-zero if so). Needs `cargo build --release`. Not part of `all`.
    Faults(faults::Args),
    /// New connections per second (`pgbench -S -C`) directly, through pgbouncer and through the Postgres
    /// gateway, with the gateway's CPU per connection and how long its session roles take to be dropped (`airlock
    /// up` as a child process; needs pgbouncer and `cargo build --release`). Not part of `all`.
    PgConnect(pg_connect::Args),
    /// N idle sessions held open through one `airlock up` (a child process; pgbouncer between it and Postgres):
    /// the gateway's memory per session, threads and open files (needs pgbouncer and `cargo build --release`).
    /// Not part of `all`.
    IdleSessions(idle_sessions::Args),
    /// Session roles made and dropped per second through one gateway's role manager, over one admin connection
    /// and over several side by side (the machine's Postgres). Not part of `all`.
    AdminRoles(admin_roles::Args),
    /// Every scenario, one after the other.
    All(AllArgs),
    /// A byte-for-byte TCP forwarder, which `pg-throughput` runs as a child process (`fwd-tokio`, `fwd-mio`, `fwd-uring`).
    #[command(hide = true)]
    Forward(forward::Args),
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    #[command(flatten)]
    event_append: event_append::Args,
    #[command(flatten)]
    propagation: propagation::Args,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Forward(args) = &cli.scenario {
        // No runtime of ours around it: each engine runs its own loop.
        return forward::run(args);
    }
    tokio::runtime::Runtime::new()?.block_on(scenario(cli))
}

async fn scenario(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; measure with `cargo run -p airlock-loadtest --release -- ...`");
    }
    let out = cli.out.unwrap_or_else(report::default_results_dir);
    match cli.scenario {
        Scenario::EventAppend(args) => event_append::run(&args, &out).await,
        Scenario::Propagation(args) => propagation::run(&args, &out).await,
        Scenario::PgThroughput(args) => pg_throughput::run(&args, &out).await,
        Scenario::PgPolicy(args) => pg_policy::run(&args, &out).await,
        Scenario::RecorderIngest(args) => recorder_ingest::run(&args, &out).await,
        Scenario::Faults(args) => faults::run(&args, &out).await,
        Scenario::PgConnect(args) => pg_connect::run(&args, &out).await,
        Scenario::IdleSessions(args) => idle_sessions::run(&args, &out).await,
        Scenario::AdminRoles(args) => admin_roles::run(&args, &out).await,
        Scenario::All(args) => {
            event_append::run(&args.event_append, &out).await?;
            println!();
            propagation::run(&args.propagation, &out).await
        }
        // Run by `main`, before any runtime starts.
        Scenario::Forward(_) => anyhow::bail!("forward runs on its own, not as a scenario"),
    }
}
