//! `pg-throughput`: pgbench `-S` against the target directly, through
//! pgbouncer and through the Postgres gateway, alternating, and the CPU each
//! middle process spends per transaction.
//!
//! Unlike the other scenarios the gateway does not run in-process: it is the
//! real `airlock up` binary as a child process, so its CPU time (read from
//! `/proc/<pid>/stat` before, during and after each run) is its own and not
//! the load generator's. pgbouncer (Debian's package) runs as a child too, with a
//! generated config; pgbench is the load generator. Every run of a repetition
//! goes through the three targets in turn (the starting target rotates with the
//! repetition), and the table reports medians over the repetitions.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::pg_policy::{
    MASK_ROWS, MASK_SCRIPT, MASK_TABLE, MASKING_POLICY, RULES_POLICY, mask_table_sql, sample_email,
};
use super::pgbouncer;
use crate::report::{self, Document, Host, Table};

/// The connection name registered with the gateway, and its grant role.
pub(crate) const CONNECTION: &str = "bench";
pub(crate) const ROLE: &str = "readonly";
const SUBJECT: &str = "loadtest-pgbench";
/// How long the gateway gets to come up and to apply the grant.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the pgbench scenarios (`pg-throughput`, `pg-policy`) share.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds per pgbench run (`-T`).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Repetitions; each runs every target, mode and client count once. Medians are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Client counts (`-c`; `-j` is min(c, 2)). Default: 1,8,32 for pg-throughput, 1,8 for pg-policy.
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<u32>,
    /// pgbench query modes (`-M`): simple, extended, prepared. Default: all three for pg-throughput,
    /// simple,extended for pg-policy.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// pgbench scale factor for `pgbench -i -s`.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// The `airlock` binary (default: next to this binary, i.e. target/release/airlock).
    #[arg(long)]
    pub airlock_bin: Option<PathBuf>,
    /// The pgbench binary (default: on PATH, else /usr/lib/postgresql/*/bin/pgbench).
    #[arg(long)]
    pub pgbench: Option<PathBuf>,
}

impl BenchArgs {
    /// These arguments with the scenario's client counts and modes where none were given,
    /// and checked.
    pub fn or_defaults(&self, clients: &[u32], modes: &[Mode]) -> anyhow::Result<BenchArgs> {
        anyhow::ensure!(self.reps > 0, "--reps must be at least 1");
        anyhow::ensure!(self.seconds > 0, "--seconds must be at least 1");
        anyhow::ensure!(self.clients.iter().all(|c| *c > 0), "--clients must be at least 1");
        let mut out = self.clone();
        if out.clients.is_empty() {
            out.clients = clients.to_vec();
        }
        if out.modes.is_empty() {
            out.modes = modes.to_vec();
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Workloads: `select` (pgbench -S) and `masked` (a 100-row SELECT * of a table with masked columns).
    #[arg(long, value_delimiter = ',', default_values_t = vec![Workload::Select, Workload::Masked])]
    pub workloads: Vec<Workload>,
    /// Targets: direct, pgbouncer, gateway (command rules, masking and recording on), gw-bare (no policy,
    /// no recording), fwd-tokio and fwd-mio (byte-for-byte forwarders, with no login or policy: what any
    /// relay costs on tokio and on a bare epoll loop).
    #[arg(long, value_delimiter = ',', default_values_t = vec![Target::Direct, Target::Pgbouncer, Target::Gateway])]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `pgbench -S`: one indexed single-row SELECT per transaction.
    Select,
    /// `SELECT * FROM airlock_mask_bench`: 100 rows with emails, SSNs and card numbers.
    Masked,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Select => "select",
            Workload::Masked => "masked",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Simple,
    Extended,
    Prepared,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Simple => "simple",
            Mode::Extended => "extended",
            Mode::Prepared => "prepared",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Direct,
    Pgbouncer,
    /// The gateway with everything on: command rules, masking and recording.
    Gateway,
    /// A second gateway with no policy and no recording: the relay alone.
    #[value(name = "gw-bare")]
    #[serde(rename = "gw-bare")]
    GatewayBare,
    /// A byte-for-byte forwarder on a current-thread tokio runtime (`forward.rs`): what any relay on the
    /// gateway's runtime spends, with nothing of the gateway in it.
    #[value(name = "fwd-tokio")]
    #[serde(rename = "fwd-tokio")]
    ForwarderTokio,
    /// The same forwarder on a bare epoll loop (mio), with no async runtime, tasks or wakers.
    #[value(name = "fwd-mio")]
    #[serde(rename = "fwd-mio")]
    ForwarderMio,
    /// The same forwarder on one io_uring, a receive always out on each socket and sends linked to
    /// them: fewer system calls per transaction than a readiness loop makes.
    #[value(name = "fwd-uring")]
    #[serde(rename = "fwd-uring")]
    ForwarderUring,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Pgbouncer => "pgbouncer",
            Target::Gateway => "gateway",
            Target::GatewayBare => "gw-bare",
            Target::ForwarderTokio => "fwd-tokio",
            Target::ForwarderMio => "fwd-mio",
            Target::ForwarderUring => "fwd-uring",
        }
    }

    /// The engine of a forwarder target.
    fn forwarder(self) -> Option<crate::forward::Engine> {
        match self {
            Target::ForwarderTokio => Some(crate::forward::Engine::Tokio),
            Target::ForwarderMio => Some(crate::forward::Engine::Mio),
            Target::ForwarderUring => Some(crate::forward::Engine::Uring),
            _ => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    rep: usize,
    workload: Workload,
    target: Target,
    mode: Mode,
    clients: u32,
    transactions: u64,
    tps: f64,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU (user + system) the middle process spent per transaction while
    /// every client was connected and running; none for `direct`.
    cpu_us_per_tx: Option<f64>,
    /// The same over the whole run, connecting included (it depends on the
    /// run's length: the gateway's logins cost more than pgbouncer's, whose
    /// server connections outlive the run).
    run_cpu_us_per_tx: Option<f64>,
    /// The middle process's context switches per transaction, over the same
    /// window as `cpu_us_per_tx`: the times its threads slept (voluntary) and
    /// were preempted (involuntary).
    voluntary_switches_per_tx: Option<f64>,
    involuntary_switches_per_tx: Option<f64>,
}

/// Medians over the repetitions of one (target, mode, clients).
#[derive(Debug, Clone, Serialize)]
struct Summary {
    workload: Workload,
    target: Target,
    mode: Mode,
    clients: u32,
    reps: usize,
    tps: f64,
    /// None when that target was not run.
    tps_vs_direct: Option<f64>,
    tps_vs_pgbouncer: Option<f64>,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Median over repetitions of (this p50 − direct's p50 in the same repetition).
    added_p50_us: f64,
    added_p99_us: f64,
    cpu_us_per_tx: Option<f64>,
    run_cpu_us_per_tx: Option<f64>,
    voluntary_switches_per_tx: Option<f64>,
    involuntary_switches_per_tx: Option<f64>,
    /// This target against pgbouncer's run in the same repetition; none when pgbouncer was not run.
    vs_pgbouncer: Option<VsPgbouncer>,
}

/// Comparisons with pgbouncer, each made within a repetition (the two ran
/// back to back) and then summed up over the repetitions: the pairing takes
/// out the VM's drift between repetitions, which is larger than the gaps.
#[derive(Debug, Clone, Copy, Serialize)]
struct VsPgbouncer {
    /// This target's TPS over pgbouncer's.
    tps: Paired,
    /// This target's CPU per transaction over pgbouncer's.
    cpu: Option<Paired>,
    /// This target's p50 minus pgbouncer's, in µs.
    p50_us: Paired,
    /// This target's p99 minus pgbouncer's, in µs.
    p99_us: Paired,
}

/// One figure per repetition: their median, their range, and a confidence
/// interval, at `coverage`, for the median of the distribution the figures
/// are drawn from (`median_interval`).
#[derive(Debug, Clone, Copy, Serialize)]
struct Paired {
    median: f64,
    min: f64,
    max: f64,
    low: f64,
    high: f64,
    coverage: f64,
    repetitions: usize,
}

impl Paired {
    fn of(values: Vec<f64>) -> Option<Paired> {
        let mut sorted = values;
        sorted.sort_by(f64::total_cmp);
        let (min, max) = (*sorted.first()?, *sorted.last()?);
        let (k, coverage) = median_interval(sorted.len());
        let low = sorted.get(k.saturating_sub(1)).copied().unwrap_or(min);
        let high = sorted.get(sorted.len() - k.max(1)).copied().unwrap_or(max);
        let repetitions = sorted.len();
        Some(Paired { median: median(sorted), min, max, low, high, coverage, repetitions })
    }

    /// `1.050 (repetitions 0.970 to 1.120; 97.9 % interval of the median 0.980 to 1.100)`, with
    /// `digits` decimals and a sign when `signed`; the interval from two repetitions on.
    fn show(&self, digits: usize, signed: bool) -> String {
        let f = |v: f64| if signed { format!("{v:+.digits$}") } else { format!("{v:.digits$}") };
        let mut shown = format!("{} (repetitions {} to {}", f(self.median), f(self.min), f(self.max));
        if self.repetitions >= 2 {
            shown.push_str(&format!(
                "; {:.1} % interval of the median {} to {}",
                self.coverage * 100.0,
                f(self.low),
                f(self.high)
            ));
        }
        shown.push(')');
        shown
    }

    /// Says so when the figures cannot place the median on one side of
    /// `bound`: too few repetitions for a 95 % interval, or an interval that
    /// straddles it. `at_most`: the verdict asks for the median ≤ `bound`
    /// (else ≥), so an interval that only ends on it still settles it.
    fn unsettled(&self, bound: f64, at_most: bool) -> &'static str {
        let straddles =
            if at_most { self.low <= bound && bound < self.high } else { self.low < bound && bound <= self.high };
        if self.coverage < 0.95 {
            "; not settled: fewer than 6 repetitions give no 95 % interval"
        } else if straddles {
            "; not settled: the interval holds the bound"
        } else {
            ""
        }
    }
}

/// For `n` figures sorted, the `k` (counted from each end, from 1) whose
/// pair of figures holds their distribution's median with the most
/// confidence no less than 95 %, and that confidence: the chance that fewer
/// than `k` of `n` fair coin flips come up heads, taken off both ends
/// (distribution-free, for independent figures). Under 6 figures no pair
/// reaches 95 %: the widest (`k` = 1, the range) with what it reaches. Exact
/// up to 1,074 figures, where 0.5^n still is a float.
fn median_interval(n: usize) -> (usize, f64) {
    if n == 0 {
        return (0, 0.0);
    }
    let exponent = i32::try_from(n).unwrap_or(i32::MAX);
    // P(exactly i heads), for i = 0, 1, ...; and P(fewer than k heads).
    let mut heads = 0.5_f64.powi(exponent);
    let mut fewer = 0.0;
    let mut best = (1, 1.0 - 2.0 * heads);
    for k in 1..=n / 2 {
        fewer += heads;
        let coverage = 1.0 - 2.0 * fewer;
        if coverage < 0.95 {
            break;
        }
        best = (k, coverage);
        heads *= (n - (k - 1)) as f64 / k as f64;
    }
    best
}

#[derive(Debug, Serialize)]
struct Verdict {
    target: String,
    detail: String,
    pass: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
    pub(crate) clk_tck: u64,
    pub(crate) pgbench: String,
    pub(crate) pgbouncer: String,
    pub(crate) postgres: String,
}

#[derive(Debug, Serialize)]
struct Parameters {
    seconds: u64,
    reps: usize,
    clients: Vec<u32>,
    modes: Vec<Mode>,
    workloads: Vec<Workload>,
    targets: Vec<Target>,
    scale: u32,
    pgbouncer_pool_mode: BTreeMap<String, String>,
    /// The gateway's policy (command rules and masking).
    gateway_policy: String,
    mask_script: &'static str,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    summaries: Vec<Summary>,
    verdicts: Vec<Verdict>,
    runs: Vec<Run>,
}

/// Runs the scenario and writes `pg-throughput.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    let bench_args = args.bench.or_defaults(&[1, 8, 32], &[Mode::Simple, Mode::Extended, Mode::Prepared])?;
    anyhow::ensure!(!args.workloads.is_empty() && !args.targets.is_empty(), "--workloads and --targets need a value");
    let mut targets = args.targets.clone();
    targets.sort();
    targets.dedup();
    let mut workloads = args.workloads.clone();
    workloads.sort();
    workloads.dedup();
    let b = &bench_args;
    let pgbench = find_pgbench(b.pgbench.as_deref())?;
    let pgbouncer_bin = if targets.contains(&Target::Pgbouncer) { Some(super::pgbouncer::find()?) } else { None };
    let airlock_bin = find_airlock(b.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let loadavg_start = loadavg();
    let clk_tck = clk_tck();

    let dir = std::env::temp_dir().join(format!("airlock-pg-throughput-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bare = Bench {
        dir: dir.join("bare"),
        db: None,
        template: None,
        pgbouncer: None,
        gateway: None,
        forwarders: Vec::new(),
    };
    let mut bench =
        Bench { dir: dir.clone(), db: None, template: None, pgbouncer: None, gateway: None, forwarders: Vec::new() };
    let plan = Plan { args: b, workloads: &workloads, targets: &targets, clk_tck };
    let result = bench.measure(&plan, &pgbench, pgbouncer_bin.as_deref(), &airlock_bin, &mut bare).await;
    bare.stop().await;
    bench.stop().await;
    let (runs, versions) = result?;

    let summaries = summarize(&runs);
    let verdicts = verdicts(&summaries, b);
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        loadavg_start,
        loadavg_end: loadavg(),
        clk_tck,
        pgbench: versions.pgbench,
        pgbouncer: versions.pgbouncer,
        postgres: versions.postgres,
    };

    let mut table = Table::new(&[
        "workload",
        "target",
        "mode",
        "clients",
        "tps",
        "vs direct",
        "vs pgbouncer",
        "p50 ms",
        "p99 ms",
        "+p50 us",
        "+p99 us",
        "CPU us/tx",
        "with connect",
        "switches/tx",
    ]);
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for s in &summaries {
        let added = |v: f64| if s.target == Target::Direct { "-".to_owned() } else { format!("{v:.0}") };
        table.row(vec![
            s.workload.to_string(),
            s.target.label().to_owned(),
            s.mode.to_string(),
            s.clients.to_string(),
            format!("{:.0}", s.tps),
            ratio(s.tps_vs_direct),
            ratio(s.tps_vs_pgbouncer),
            format!("{:.3}", s.p50_ms),
            format!("{:.3}", s.p99_ms),
            added(s.added_p50_us),
            added(s.added_p99_us),
            s.cpu_us_per_tx.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            s.run_cpu_us_per_tx.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            match (s.voluntary_switches_per_tx, s.involuntary_switches_per_tx) {
                (Some(v), Some(i)) => format!("{v:.2}+{i:.2}"),
                _ => "-".into(),
            },
        ]);
    }
    println!(
        "pg-throughput: pgbench directly, through pgbouncer, and through the gateway with command rules, masking \
         and recording on{}\n",
        if targets.contains(&Target::GatewayBare) { " (and gw-bare: no policy, no recording)" } else { "" }
    );
    println!(
        "machine: {} cores ({}), load average at start {}, at end {}",
        machine.nproc, machine.cpu_model, machine.loadavg_start, machine.loadavg_end
    );
    println!("{}; {}; {}\n", machine.postgres, machine.pgbench, machine.pgbouncer);
    print!("{}", table.render());
    println!();
    for v in &verdicts {
        println!("{} {}: {}", if v.pass { "PASS" } else { "MISS" }, v.target, v.detail);
    }
    println!();
    let notes = vec![
        format!(
            "workloads: select = pgbench -S; masked = pgbench -f with `{}` ({MASK_ROWS} rows of 6 columns). \
             pgbench -T {} -c N -j min(N,2), scale {}, {} repetitions, targets alternating within each \
             repetition (the first target rotates); figures are medians over the repetitions.",
            MASK_SCRIPT.trim(),
            b.seconds,
            b.scale,
            b.reps
        ),
        "gateway: `airlock up` under a policy with three command rules (DDL held for review, unbounded writes \
         and file functions denied) and two masking rules (emails and SSNs redacted, card numbers partially \
         masked, five content detectors reading every other text value), recording every session. Only the \
         gateway masks: direct and pgbouncer return the values as stored."
            .to_owned(),
        "tps is pgbench's 'without initial connection time'; p50/p99 are nearest-rank over pgbench's \
         per-transaction log (-l), which pgbench writes for every target alike."
            .to_owned(),
        "+p50/+p99: this target's percentile minus direct's in the same repetition (median over repetitions)."
            .to_owned(),
        format!(
            "CPU us/tx: utime+stime of the middle process from /proc/<pid>/stat (CLK_TCK {clk_tck}), read every \
             {} ms, between the first reading after every client's first transaction ended and the last before \
             any client's last one, divided by the transactions that ended in between: the cost of relaying, \
             with connecting left out as pgbench's tps leaves it out. 'with connect': over the whole run, \
             divided by all its transactions (logins included: the gateway makes a role and logs in per \
             session, pgbouncer keeps its server connections from run to run). The gateway process is all of \
             `airlock up` (the control plane idles during the runs; the recorder it runs records the \
             gateway's sessions).",
            CPU_SAMPLE_EVERY.as_millis()
        ),
        "switches/tx: the middle process's voluntary + involuntary context switches per transaction (each of \
         its threads' voluntary_ctxt_switches and nonvoluntary_ctxt_switches from /proc/<pid>/task/*/status, \
         summed; a thread that ends in the window counts until its last reading), over the same window as CPU \
         us/tx: how often it slept (waiting for its sockets or its other threads), and how often another \
         process took its core."
            .to_owned(),
        "pgbouncer: pool_mode transaction for simple/extended; session for prepared (pgbouncer < 1.21 cannot \
         keep prepared statements in transaction mode)."
            .to_owned(),
        "pgbench, Postgres, pgbouncer and the gateway share this host's cores, so every figure includes their \
         scheduling on each other."
            .to_owned(),
    ];
    for n in &notes {
        println!("note: {n}");
    }
    let mut pool_modes = BTreeMap::new();
    pool_modes.insert("simple".to_owned(), "transaction".to_owned());
    pool_modes.insert("extended".to_owned(), "transaction".to_owned());
    pool_modes.insert("prepared".to_owned(), "session".to_owned());
    let doc = Document {
        scenario: "pg-throughput",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            seconds: b.seconds,
            reps: b.reps,
            clients: b.clients.clone(),
            modes: b.modes.clone(),
            workloads,
            targets,
            scale: b.scale,
            pgbouncer_pool_mode: pool_modes,
            gateway_policy: gateway_policy(),
            mask_script: MASK_SCRIPT,
        },
        notes,
        results: Results { machine, summaries, verdicts, runs },
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// What one run of the scenario covers.
struct Plan<'a> {
    args: &'a BenchArgs,
    workloads: &'a [Workload],
    targets: &'a [Target],
    clk_tck: u64,
}

/// The gateway's policy: `pg-policy`'s command rules and masking rules in one document.
fn gateway_policy() -> String {
    format!("{RULES_POLICY}{}", MASKING_POLICY.trim_start_matches("version: 1\n"))
}

struct Versions {
    pgbench: String,
    pgbouncer: String,
    postgres: String,
}

/// A child process and where its output went.
pub(crate) struct Proc {
    pub(crate) child: Child,
    /// The pid whose CPU is measured (pgbouncer's from its pidfile).
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
}

/// Everything the scenario makes, so it can all be removed afterwards.
pub(crate) struct Bench {
    pub(crate) dir: PathBuf,
    pub(crate) db: Option<airlock_testkit::pg::TestDb>,
    pub(crate) template: Option<String>,
    pub(crate) pgbouncer: Option<Proc>,
    pub(crate) gateway: Option<Proc>,
    /// The byte forwarders (`fwd-tokio`, `fwd-mio`) and where they listen.
    pub(crate) forwarders: Vec<(Target, Proc, SocketAddr)>,
}

/// The database the pgbench scenarios measure, and how to log in to it directly.
pub(crate) struct BenchDb {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) name: String,
    /// The role sessions through the gateway are made members of.
    pub(crate) template: String,
    /// `PostgreSQL <version>`.
    pub(crate) server_version: String,
}

/// Where each target listens and how to log in.
pub(crate) struct Endpoints {
    pub(crate) pg_host: String,
    pub(crate) pg_port: u16,
    pub(crate) pg_user: String,
    pub(crate) database: String,
    pub(crate) pgbouncer_port: u16,
    pub(crate) gateway: SocketAddr,
    pub(crate) token: String,
    /// The gateway with no policy and no recording, and its token.
    pub(crate) bare: Option<(SocketAddr, String)>,
    /// Where each byte forwarder listens.
    pub(crate) forwarders: Vec<(Target, SocketAddr)>,
}

impl Endpoints {
    /// Postgres itself, pgbouncer and one gateway; no bare gateway or forwarders.
    pub(crate) fn new(
        pg_host: String,
        pg_port: u16,
        pg_user: String,
        database: String,
        pgbouncer_port: u16,
        gateway: SocketAddr,
        token: String,
    ) -> Self {
        Endpoints {
            pg_host,
            pg_port,
            pg_user,
            database,
            pgbouncer_port,
            gateway,
            token,
            bare: None,
            forwarders: Vec::new(),
        }
    }
}

impl Bench {
    async fn measure(
        &mut self,
        plan: &Plan<'_>,
        pgbench: &Path,
        pgbouncer_bin: Option<&Path>,
        airlock_bin: &Path,
        bare: &mut Bench,
    ) -> anyhow::Result<(Vec<Run>, Versions)> {
        let args = plan.args;
        let target = self.fill_target(pgbench, args.scale).await?;
        let BenchDb { host: pg_host, port: pg_port, user: pg_user, name: database, template, server_version } = target;
        let pgbouncer_version = match pgbouncer_bin {
            Some(bin) => {
                command_output(Command::new(bin).arg("--version"))?.lines().next().unwrap_or_default().to_owned()
            }
            None => "pgbouncer not run".to_owned(),
        };
        let versions = Versions {
            pgbench: command_output(Command::new(pgbench).arg("--version"))?.trim().to_owned(),
            pgbouncer: pgbouncer_version,
            postgres: server_version,
        };
        let script = self.dir.join("mask-select.sql");
        std::fs::write(&script, MASK_SCRIPT)?;

        // pgbouncer, as the postgres user (it refuses to run as root).
        let pgbouncer_port = match pgbouncer_bin {
            Some(bin) => {
                let port = free_port()?;
                let most = args.clients.iter().copied().max().unwrap_or(1);
                let entry = |pool_mode| pgbouncer::Config::database(&pg_host, pg_port, &database, &pg_user, pool_mode);
                let config = pgbouncer::Config {
                    port,
                    databases: vec![
                        ("bench".to_owned(), entry("transaction")),
                        // Session pooling holds a server connection per client: one for each, or clients would queue.
                        ("bench_session".to_owned(), format!("{} pool_size={}", entry("session"), most + 2)),
                    ],
                    max_client_conn: 200,
                    default_pool_size: 20,
                    ignore_startup_parameters: "extra_float_digits",
                };
                let pgbouncer = pgbouncer::start(bin, &self.dir, &config).context("starting pgbouncer")?;
                self.pgbouncer = Some(pgbouncer);
                port
            }
            None => 0,
        };

        // The gateway: `airlock up` in its own process, under the policy, recording.
        let (gateway, api) = self.start_gateway(airlock_bin, true).context("starting the gateway (`airlock up`)")?;
        let data_dir = self.dir.join("airlock-data");
        let token = register(&api, &data_dir, &pg_host, pg_port, &database, &template)
            .await
            .context("registering the connection, grant and token")?;
        apply_policy(&api, &data_dir, &gateway_policy()).await.context("applying the gateway's policy")?;
        // And, when asked for, a bare one beside it.
        let bare_endpoint = if plan.targets.contains(&Target::GatewayBare) {
            std::fs::create_dir_all(&bare.dir)?;
            let (addr, api) = bare.start_gateway(airlock_bin, false).context("starting the bare gateway")?;
            let token = register(&api, &bare.dir.join("airlock-data"), &pg_host, pg_port, &database, &template)
                .await
                .context("registering the connection, grant and token with the bare gateway")?;
            Some((addr, token))
        } else {
            None
        };
        // And the forwarders asked for, each to the target directly.
        for &target in plan.targets {
            if let Some(engine) = target.forwarder() {
                self.start_forwarder(target, engine, &pg_host, pg_port)
                    .with_context(|| format!("starting {target}"))?;
            }
        }
        let mut endpoints = Endpoints::new(pg_host, pg_port, pg_user, database, pgbouncer_port, gateway, token);
        endpoints.bare = bare_endpoint;
        endpoints.forwarders = self.forwarders.iter().map(|(t, _, addr)| (*t, *addr)).collect();
        // The gateway masks as soon as a new session shows it (so every run's sessions are under the policy).
        wait_until_masked(&endpoints).await.context("waiting for the gateway's policy to be in force")?;

        // Warm up each target (and wait for the gateways to have applied their grants).
        for &target in plan.targets {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let out = pgbench_command(pgbench, &endpoints, target, Mode::Simple)
                    .args(["-S", "-n", "-c", "1", "-T", "1"])
                    .output()
                    .context("running pgbench")?;
                if out.status.success() {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "pgbench could not run against {}: {}",
                    target.label(),
                    String::from_utf8_lossy(&out.stderr)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        let n = plan.targets.len();
        let total = args.reps * plan.workloads.len() * args.clients.len() * args.modes.len() * n;
        eprintln!("  {total} runs of {} s each", args.seconds);
        let mut runs = Vec::with_capacity(total);
        for rep in 0..args.reps {
            for &workload in plan.workloads {
                for &clients in &args.clients {
                    for &mode in &args.modes {
                        for &target in plan.targets.iter().cycle().skip(rep % n).take(n) {
                            let pid = match target {
                                Target::Direct => None,
                                Target::Pgbouncer => self.pgbouncer.as_ref().map(|p| p.pid),
                                Target::Gateway => self.gateway.as_ref().map(|p| p.pid),
                                Target::GatewayBare => bare.gateway.as_ref().map(|p| p.pid),
                                Target::ForwarderTokio | Target::ForwarderMio | Target::ForwarderUring => {
                                    self.forwarders.iter().find(|(t, _, _)| *t == target).map(|(_, p, _)| p.pid)
                                }
                            };
                            let what = Combination { rep, workload, target, mode, clients };
                            let run = one_run(pgbench, &endpoints, &self.dir, &script, args, what, pid, plan.clk_tck)
                                .with_context(|| {
                                format!("pgbench {workload} against {} ({mode}, {clients} clients)", target.label())
                            })?;
                            eprintln!(
                                "  rep {rep} {workload} {:<9} {mode:<8} c={clients}: {:.0} tps, p50 {:.3} ms, p99 \
                                 {:.3} ms{}",
                                target.label(),
                                run.tps,
                                run.p50_ms,
                                run.p99_ms,
                                run.cpu_us_per_tx.map_or_else(String::new, |c| format!(", {c:.1} CPU us/tx"))
                            );
                            runs.push(run);
                        }
                    }
                }
            }
        }
        Ok((runs, versions))
    }

    /// The database both pgbench scenarios measure, made for this run: `pgbench -i -s <scale>`, the
    /// masked table, and a template role `bench_tpl_<uuid>` that may read them (kept in `self`, so
    /// `stop` drops them even when a later step fails).
    pub(crate) async fn fill_target(&mut self, pgbench: &Path, scale: u32) -> anyhow::Result<BenchDb> {
        let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
        let url = db.url().to_owned();
        let options = PgConnectOptions::from_str(&url).context("parsing the test database URL")?;
        let (host, port, user) = (options.get_host().to_owned(), options.get_port(), options.get_username().to_owned());
        let name = db.name().to_owned();
        self.db = Some(db);
        eprintln!("  pgbench -i -s {scale} on {name}");
        let init = Command::new(pgbench)
            .args(["-i", "-q", "-s", &scale.to_string(), "-h", &host, "-p", &port.to_string(), "-U", &user, &name])
            .stdout(Stdio::null())
            .output()
            .context("running pgbench -i")?;
        anyhow::ensure!(init.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));

        let template = format!("bench_tpl_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&url).await.context("connecting to the test database")?;
        sqlx::raw_sql(&format!("CREATE ROLE {template} NOLOGIN"))
            .execute(&mut admin)
            .await
            .context("creating the template role")?;
        self.template = Some(template.clone());
        sqlx::raw_sql(&mask_table_sql()).execute(&mut admin).await.context("creating the masked table")?;
        sqlx::raw_sql(&format!(
            "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, {MASK_TABLE} \
             TO {template}"
        ))
        .execute(&mut admin)
        .await
        .context("granting the template role")?;
        let version: (String,) = sqlx::query_as("SHOW server_version").fetch_one(&mut admin).await?;
        admin.close().await?;
        Ok(BenchDb { host, port, user, name, template, server_version: format!("PostgreSQL {}", version.0) })
    }

    /// This binary's byte forwarder (`forward.rs`) in its own process, from a free port to the target.
    fn start_forwarder(
        &mut self,
        target: Target,
        engine: crate::forward::Engine,
        pg_host: &str,
        pg_port: u16,
    ) -> anyhow::Result<()> {
        use std::net::ToSocketAddrs;
        let upstream = (pg_host, pg_port).to_socket_addrs()?.next().context("resolving the target's address")?;
        let listen = free_addr()?;
        std::fs::create_dir_all(&self.dir)?;
        let log = self.dir.join(format!("{target}.log"));
        let log_file = std::fs::File::create(&log)?;
        // The name the forwarder's --engine takes.
        let engine = clap::ValueEnum::to_possible_value(&engine).context("an engine without a name")?;
        let engine = engine.get_name();
        let child = Command::new(std::env::current_exe()?)
            .args(["forward", "--engine", engine, "--listen", &listen.to_string(), "--upstream", &upstream.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning the forwarder")?;
        let pid = child.id();
        self.forwarders.push((target, Proc { child, pid, log: log.clone() }, listen));
        let deadline = Instant::now() + READY_TIMEOUT;
        while std::net::TcpStream::connect(listen).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{target} was not listening after {READY_TIMEOUT:?}: {}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `airlock up` in its own process, recording its sessions when `recording`.
    pub(crate) fn start_gateway(
        &mut self,
        airlock_bin: &Path,
        recording: bool,
    ) -> anyhow::Result<(SocketAddr, String)> {
        let data_dir = self.dir.join("airlock-data");
        let (api, grpc, pg, admin) = (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
        let log = self.dir.join("airlock.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(airlock_bin)
            .arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string(), "--pg-addr", &pg.to_string()])
            .env_remove("AIRLOCK_CONFIG")
            .env("AIRLOCK_WORKER__ADMIN_ADDR", admin.to_string())
            // Gateways run side by side (pg-policy starts two): each records to a recorder of its own.
            .env("AIRLOCK_RECORDER__ADDR", "127.0.0.1:0")
            .env("AIRLOCK_WORKER__RECORDING__ENABLED", recording.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {}", airlock_bin.display()))?;
        let pid = child.id();
        self.gateway = Some(Proc { child, pid, log: log.clone() });
        let deadline = Instant::now() + READY_TIMEOUT;
        while !data_dir.join("admin.token").exists() || std::net::TcpStream::connect(pg).is_err() {
            if let Some(p) = self.gateway.as_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                anyhow::bail!("airlock up exited with {status}: {}", tail(&p.log));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "airlock up was not ready after {READY_TIMEOUT:?}: {}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((pg, format!("http://{api}")))
    }

    pub(crate) async fn stop(self) {
        // The gateway first: a graceful stop ends its sessions and drops their roles.
        for p in [self.gateway, self.pgbouncer].into_iter().flatten() {
            stop_child(p);
        }
        for (_, p, _) in self.forwarders {
            stop_child(p);
        }
        if let Some(db) = self.db
            && let Err(e) = db.drop_db().await
        {
            eprintln!("warning: failed to drop the test database: {e:#}");
        }
        if let Some(template) = self.template {
            let drop_role = async {
                let mut admin = PgConnection::connect(&airlock_testkit::pg::admin_url()).await?;
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
}

/// SIGTERM, then SIGKILL if it has not exited within 10 s.
pub(crate) fn stop_child(mut p: Proc) {
    let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match p.child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                eprintln!("warning: pid {} did not stop on SIGTERM; killing it", p.child.id());
                let _ = p.child.kill();
                let _ = p.child.wait();
                return;
            }
        }
    }
}

/// Registers the connection, grants the subject its role and mints its token.
pub(crate) async fn register(
    api: &str,
    data_dir: &Path,
    pg_host: &str,
    pg_port: u16,
    database: &str,
    template: &str,
) -> anyhow::Result<String> {
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client.post(format!("{api}{path}")).bearer_auth(&admin).json(&body).send()
    };
    let connection = serde_json::json!({
        "name": CONNECTION, "kind": "postgres", "address": format!("{pg_host}:{pg_port}"), "database": database,
        "tls": "disable",
        "admin_credential": {"user": "postgres", "password": ""},
        "roles": {ROLE: template},
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    // The REST API may come up a moment after the gateway's port.
    let response = loop {
        match post("/v1/connections", connection.clone()).await {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(e.into()),
        }
    };
    let status = response.status();
    anyhow::ensure!(status.is_success(), "POST /v1/connections answered {status}: {}", response.text().await?);
    let grant = serde_json::json!({"subject": SUBJECT, "connection": CONNECTION, "role": ROLE, "ttl_seconds": 3600});
    let response = post("/v1/grants", grant).await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "POST /v1/grants answered {status}: {}", response.text().await?);
    let response = post("/v1/tokens", serde_json::json!({"subject": SUBJECT, "ttl_seconds": 3600})).await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "POST /v1/tokens answered {status}: {body}");
    body.get("token").and_then(|t| t.as_str()).map(str::to_owned).context("POST /v1/tokens returned no token")
}

/// A pgbench command aimed at `target`, without the workload arguments.
pub(crate) fn pgbench_command(pgbench: &Path, e: &Endpoints, target: Target, mode: Mode) -> Command {
    let mut c = Command::new(pgbench);
    c.env_remove("PGPASSWORD").env_remove("PGSSLMODE").env_remove("PGOPTIONS").stdin(Stdio::null());
    match target {
        Target::Direct => {
            c.args(["-h", &e.pg_host, "-p", &e.pg_port.to_string(), "-U", &e.pg_user, &e.database]);
            // Like every other target: without it, a Postgres with ssl = on (Debian's default) is
            // reached over TLS, and the baseline pays for the encryption the others do not.
            c.env("PGSSLMODE", "disable");
        }
        Target::Pgbouncer => {
            let db = if mode == Mode::Prepared { "bench_session" } else { "bench" };
            c.args(["-h", "127.0.0.1", "-p", &e.pgbouncer_port.to_string(), "-U", &e.pg_user, db]);
        }
        Target::ForwarderTokio | Target::ForwarderMio | Target::ForwarderUring => {
            let port = e.forwarders.iter().find(|(t, _)| *t == target).map_or(0, |(_, addr)| addr.port());
            c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", &e.pg_user, &e.database]);
            // As through the gateways: otherwise TLS to the target, carried end to end.
            c.env("PGSSLMODE", "disable");
        }
        Target::Gateway | Target::GatewayBare => {
            let (addr, token) = match (target, &e.bare) {
                (Target::GatewayBare, Some((addr, token))) => (*addr, token),
                _ => (e.gateway, &e.token),
            };
            let user = format!("{CONNECTION}.{ROLE}");
            c.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", &user, &e.database]);
            c.env("PGPASSWORD", token).env("PGSSLMODE", "disable");
        }
    }
    c
}

/// Which run of a repetition.
#[derive(Debug, Clone, Copy)]
struct Combination {
    rep: usize,
    workload: Workload,
    target: Target,
    mode: Mode,
    clients: u32,
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    pgbench: &Path,
    e: &Endpoints,
    dir: &Path,
    script: &Path,
    args: &BenchArgs,
    what: Combination,
    pid: Option<u32>,
    clk_tck: u64,
) -> anyhow::Result<Run> {
    let Combination { rep, workload, target, mode, clients } = what;
    let logs = dir.join(format!("log-{rep}-{workload}-{}-{mode}-{clients}", target.label()));
    std::fs::create_dir_all(&logs)?;
    let threads = clients.min(2);
    let mut command = pgbench_command(pgbench, e, target, mode);
    match workload {
        Workload::Select => command.arg("-S"),
        Workload::Masked => command.arg("-f").arg(script),
    };
    command
        .args(["-n", "-M", &mode.to_string(), "-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &args.seconds.to_string(), "-l", "--log-prefix"])
        .arg(logs.join("tx"));
    let PgbenchRun {
        transactions,
        tps,
        latency_avg_ms,
        latencies,
        cpu_us_per_tx,
        steady_cpu_us_per_tx,
        steady_switches,
        ..
    } = run_pgbench(&mut command, pid, &logs, clk_tck)?;
    Ok(Run {
        rep,
        workload,
        target,
        mode,
        clients,
        transactions,
        tps,
        latency_avg_ms,
        p50_ms: report::percentile(&latencies, 50.0),
        p99_ms: report::percentile(&latencies, 99.0),
        cpu_us_per_tx: steady_cpu_us_per_tx,
        run_cpu_us_per_tx: cpu_us_per_tx,
        voluntary_switches_per_tx: steady_switches.map(|s| s.0),
        involuntary_switches_per_tx: steady_switches.map(|s| s.1),
    })
}

/// Puts `document` in force as the tenant's policy (`PUT /v1/policy` with the admin token).
pub(crate) async fn apply_policy(api: &str, data_dir: &Path, document: &str) -> anyhow::Result<()> {
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
    let response = reqwest::Client::new()
        .put(format!("{api}/v1/policy"))
        .bearer_auth(&admin)
        .header("content-type", "application/yaml")
        .body(document.to_owned())
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "PUT /v1/policy answered {status}: {}", response.text().await?);
    Ok(())
}

/// A session through the gateway at `addr`, as the scenarios' role with its
/// token, without TLS (the gateway allows that on loopback).
pub(crate) fn gateway_options(addr: SocketAddr, token: &str, database: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .username(&format!("{CONNECTION}.{ROLE}"))
        .password(token)
        .database(database)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// Waits until a new session through the gateway reads row 1's email masked.
async fn wait_until_masked(e: &Endpoints) -> anyhow::Result<()> {
    let options = gateway_options(e.gateway, &e.token, &e.database);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let seen = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            let row: (Option<String>,) =
                sqlx::query_as(&format!("SELECT email FROM {MASK_TABLE} WHERE id = 1")).fetch_one(&mut conn).await?;
            conn.close().await?;
            anyhow::Ok(row.0)
        }
        .await;
        let why = match seen {
            Ok(email) if email.as_deref() != Some(sample_email(1).as_str()) => return Ok(()),
            Ok(email) => format!("a new session still reads {email:?}"),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(Instant::now() < deadline, "the gateway did not mask within {READY_TIMEOUT:?}: {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one pgbench run measured.
pub(crate) struct PgbenchRun {
    pub transactions: u64,
    pub tps: f64,
    pub latency_avg_ms: f64,
    /// Every transaction's latency, sorted.
    pub latencies: Vec<f64>,
    /// The CPU of process `pid` over the run, per transaction: connecting
    /// included, so it depends on the run's length.
    pub cpu_us_per_tx: Option<f64>,
    /// The CPU of process `pid` per transaction while every client was
    /// connected and running (see `steady_cpu`): what relaying costs, the same
    /// whatever the run's length. Meaningless under `-C`, where clients
    /// connect for every transaction (`pg-connect` reads `cpu_us_per_tx`).
    pub steady_cpu_us_per_tx: Option<f64>,
    /// Voluntary and involuntary context switches of process `pid` per
    /// transaction, over the window of `steady_cpu_us_per_tx`.
    pub steady_switches: Option<(f64, f64)>,
    /// What pgbench printed.
    pub stdout: String,
    /// Its per-transaction log.
    pub log: Vec<LogLine>,
}

/// Runs a prepared pgbench command that logs each transaction under `logs`,
/// with the CPU process `pid` spent meanwhile.
pub(crate) fn run_pgbench(
    command: &mut Command,
    pid: Option<u32>,
    logs: &Path,
    clk_tck: u64,
) -> anyhow::Result<PgbenchRun> {
    let cpu_before = pid.map(cpu_ticks).transpose()?;
    let sampler = pid.map(CpuSampler::start);
    let out = command.output().context("running pgbench");
    let samples = sampler.map(CpuSampler::stop);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = samples.transpose()?;
    let cpu_after = pid.map(cpu_ticks).transpose()?;
    let transactions = parse_after(&stdout, "number of transactions actually processed:")
        .context("no transaction count in pgbench's output")? as u64;
    let tps = parse_after(&stdout, "tps =").context("no tps in pgbench's output")?;
    let latency_avg_ms = parse_after(&stdout, "latency average =").unwrap_or(0.0);
    let log = read_log(logs)?;
    let _ = std::fs::remove_dir_all(logs);
    let mut latencies: Vec<f64> = log.iter().map(|l| l.time_us as f64 / 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let cpu_us_per_tx = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if transactions > 0 => {
            Some(a.saturating_sub(b) as f64 * 1_000_000.0 / clk_tck as f64 / transactions as f64)
        }
        _ => None,
    };
    let steady_cpu_us_per_tx = samples.as_deref().and_then(|samples| steady_cpu(samples, &log, clk_tck));
    let steady_switches = samples.as_deref().and_then(|samples| steady_switches(samples, &log));
    Ok(PgbenchRun {
        transactions,
        tps,
        latency_avg_ms,
        latencies,
        cpu_us_per_tx,
        steady_cpu_us_per_tx,
        steady_switches,
        stdout,
        log,
    })
}

/// A process's CPU ticks read every `CPU_SAMPLE_EVERY` on a thread of its own
/// while pgbench runs, each with the time it was read.
struct CpuSampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<CpuSample>>>,
}

#[derive(Debug, Clone, PartialEq)]
struct CpuSample {
    /// µs since the epoch, as pgbench's log gives transactions' ends.
    at_us: u64,
    ticks: u64,
    /// Each thread's context switches, by thread id; None when the
    /// process's threads could not be read.
    switches: Option<BTreeMap<u32, Switches>>,
}

const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl CpuSampler {
    fn start(pid: u32) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            loop {
                let at_us =
                    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros())?;
                samples.push(CpuSample { at_us, ticks: cpu_ticks(pid)?, switches: context_switches(pid).ok() });
                match stopped.recv_timeout(CPU_SAMPLE_EVERY) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return Ok(samples),
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> anyhow::Result<Vec<CpuSample>> {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| anyhow::anyhow!("the CPU sampler panicked"))?
    }
}

/// The samples that bound the time when every client was running: the first
/// after the last client's first transaction ended (each has connected by
/// then; pgbench's tps leaves connecting out too) and the last before the
/// first client's last one ended; and the transactions that ended between
/// them, by their end in the log. None when that window holds less than a
/// second between samples, or no transaction.
fn steady_window<'a>(samples: &'a [CpuSample], log: &[LogLine]) -> Option<(&'a CpuSample, &'a CpuSample, usize)> {
    let mut span: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for l in log {
        let e = span.entry(l.client).or_insert((l.end_us, l.end_us));
        e.0 = e.0.min(l.end_us);
        e.1 = e.1.max(l.end_us);
    }
    let all_running = span.values().map(|s| s.0).max()?;
    let first_done = span.values().map(|s| s.1).min()?;
    let from = samples.iter().find(|s| s.at_us >= all_running)?;
    let to = samples.iter().rev().find(|s| s.at_us <= first_done)?;
    if to.at_us < from.at_us.saturating_add(1_000_000) {
        return None;
    }
    let transactions = log.iter().filter(|l| l.end_us > from.at_us && l.end_us <= to.at_us).count();
    (transactions > 0).then_some((from, to, transactions))
}

/// CPU µs per transaction over the steady window (`steady_window`).
fn steady_cpu(samples: &[CpuSample], log: &[LogLine], clk_tck: u64) -> Option<f64> {
    let (from, to, transactions) = steady_window(samples, log)?;
    let ticks = to.ticks.saturating_sub(from.ticks);
    Some(ticks as f64 * 1_000_000.0 / clk_tck as f64 / transactions as f64)
}

/// Voluntary and involuntary context switches per transaction over the
/// steady window. Each thread counts from its first reading in the window
/// (or from zero, one started in it) to its last: one that ended in the
/// window keeps what it did until its last reading.
fn steady_switches(samples: &[CpuSample], log: &[LogLine]) -> Option<(f64, f64)> {
    let (from, to, transactions) = steady_window(samples, log)?;
    let start = from.switches.as_ref()?;
    let mut last: BTreeMap<u32, Switches> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.at_us >= from.at_us && s.at_us <= to.at_us) {
        last.extend(sample.switches.as_ref()?.iter().map(|(tid, counts)| (*tid, *counts)));
    }
    let (mut voluntary, mut involuntary) = (0, 0);
    for (tid, end) in &last {
        let begin = start.get(tid).copied().unwrap_or_default();
        voluntary += end.voluntary.saturating_sub(begin.voluntary);
        involuntary += end.involuntary.saturating_sub(begin.involuntary);
    }
    Some((voluntary as f64 / transactions as f64, involuntary as f64 / transactions as f64))
}

/// The number after `label` on the first line containing it.
pub(crate) fn parse_after(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(label))?;
    let rest = line.split_once(label)?.1;
    rest.split_whitespace().next()?.split('/').next()?.parse().ok()
}

/// One line of pgbench's per-transaction log:
/// `client_id transaction_no time_us script_no time_epoch time_us_part`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LogLine {
    pub client: u64,
    pub transaction: u64,
    pub time_us: u64,
    /// When the transaction ended, in µs since the epoch.
    pub end_us: u64,
}

pub(crate) fn parse_log_line(line: &str) -> Option<LogLine> {
    let mut f = line.split_whitespace();
    let client = f.next()?.parse().ok()?;
    let transaction = f.next()?.parse().ok()?;
    let time_us = f.next()?.parse().ok()?;
    let _script = f.next()?;
    let epoch: u64 = f.next()?.parse().ok()?;
    let epoch_us: u64 = f.next()?.parse().ok()?;
    Some(LogLine { client, transaction, time_us, end_us: epoch * 1_000_000 + epoch_us })
}

pub(crate) fn read_log(dir: &Path) -> anyhow::Result<Vec<LogLine>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let mut text = String::new();
        std::fs::File::open(entry?.path())?.read_to_string(&mut text)?;
        out.extend(text.lines().filter_map(parse_log_line));
    }
    Ok(out)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (3rd field) is fields[0]; utime (14th) and stime (15th) are [11] and [12].
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// A thread's context switches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Switches {
    voluntary: u64,
    involuntary: u64,
}

/// The context switches of every thread of `pid`, by thread id
/// (`/proc/<pid>/task/*/status`).
fn context_switches(pid: u32) -> anyhow::Result<BTreeMap<u32, Switches>> {
    let mut threads = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("reading /proc/{pid}/task"))?;
    for task in tasks {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        // One that ended since the directory was read is skipped.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let mut counts = Switches::default();
        for line in status.lines() {
            if let Some(n) = line.strip_prefix("voluntary_ctxt_switches:") {
                counts.voluntary = n.trim().parse()?;
            } else if let Some(n) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                counts.involuntary = n.trim().parse()?;
            }
        }
        threads.insert(tid, counts);
    }
    Ok(threads)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let upper = v.get(n / 2).copied().unwrap_or(0.0);
    if n % 2 == 1 { upper } else { (v.get(n / 2 - 1).copied().unwrap_or(upper) + upper) / 2.0 }
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let find = |rep: usize, workload: Workload, target: Target, mode: Mode, clients: u32| {
        runs.iter().find(|r| {
            r.rep == rep && r.workload == workload && r.target == target && r.mode == mode && r.clients == clients
        })
    };
    let mut keys: Vec<(Workload, Mode, u32, Target)> =
        runs.iter().map(|r| (r.workload, r.mode, r.clients, r.target)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(workload, mode, clients, target)| {
            let own: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == workload && r.target == target && r.mode == mode && r.clients == clients)
                .collect();
            // f(this run, `other`'s run in the same repetition), over the repetitions; none when `other`
            // was not run.
            let each = |other: Target, f: &dyn Fn(&Run, &Run) -> Option<f64>| {
                Paired::of(
                    own.iter()
                        .filter_map(|r| find(r.rep, workload, other, mode, clients).and_then(|o| f(r, o)))
                        .collect(),
                )
            };
            let paired =
                |other: Target, f: &dyn Fn(&Run, &Run) -> f64| each(other, &|r, o| Some(f(r, o))).map(|p| p.median);
            let vs_pgbouncer = (target != Target::Pgbouncer).then(|| {
                Some(VsPgbouncer {
                    tps: each(Target::Pgbouncer, &|r, o| Some(r.tps / o.tps))?,
                    cpu: each(Target::Pgbouncer, &|r, o| Some(r.cpu_us_per_tx? / o.cpu_us_per_tx?)),
                    p50_us: each(Target::Pgbouncer, &|r, o| Some((r.p50_ms - o.p50_ms) * 1000.0))?,
                    p99_us: each(Target::Pgbouncer, &|r, o| Some((r.p99_ms - o.p99_ms) * 1000.0))?,
                })
            });
            let cpu: Vec<f64> = own.iter().filter_map(|r| r.cpu_us_per_tx).collect();
            let run_cpu: Vec<f64> = own.iter().filter_map(|r| r.run_cpu_us_per_tx).collect();
            let of = |v: Vec<f64>| if v.is_empty() { None } else { Some(median(v)) };
            Summary {
                workload,
                target,
                mode,
                clients,
                reps: own.len(),
                tps: median(own.iter().map(|r| r.tps).collect()),
                tps_vs_direct: paired(Target::Direct, &|r, o| r.tps / o.tps),
                tps_vs_pgbouncer: paired(Target::Pgbouncer, &|r, o| r.tps / o.tps),
                latency_avg_ms: median(own.iter().map(|r| r.latency_avg_ms).collect()),
                p50_ms: median(own.iter().map(|r| r.p50_ms).collect()),
                p99_ms: median(own.iter().map(|r| r.p99_ms).collect()),
                added_p50_us: paired(Target::Direct, &|r, o| (r.p50_ms - o.p50_ms) * 1000.0).unwrap_or(0.0),
                added_p99_us: paired(Target::Direct, &|r, o| (r.p99_ms - o.p99_ms) * 1000.0).unwrap_or(0.0),
                cpu_us_per_tx: if cpu.is_empty() { None } else { Some(median(cpu)) },
                run_cpu_us_per_tx: if run_cpu.is_empty() { None } else { Some(median(run_cpu)) },
                voluntary_switches_per_tx: of(own.iter().filter_map(|r| r.voluntary_switches_per_tx).collect()),
                involuntary_switches_per_tx: of(own.iter().filter_map(|r| r.involuntary_switches_per_tx).collect()),
                vs_pgbouncer: vs_pgbouncer.flatten(),
            }
        })
        .collect()
}

/// The targets, on the `select` workload:
/// - the gateway with everything on, at 8 clients (or the most run) in simple mode: TPS ≥ 1.0× pgbouncer's;
///   at 1 client (or the fewest): p99 added over direct ≤ 100 µs, in every mode;
/// - each gateway, every mode: at the most clients TPS ≥ 0.9× pgbouncer's; at the fewest the p50 and p99
///   it adds ≤ what pgbouncer adds; CPU per transaction ≤ pgbouncer's at every client count.
///
/// Each comparison with pgbouncer is made within a repetition and judged on its median over the
/// repetitions (the table's "vs pgbouncer" column is the same figure for TPS); the detail gives the
/// range and an interval of the median (`median_interval`), and says "not settled" when that
/// interval holds the bound or too few repetitions give one at 95 %: a verdict decided by less
/// than the spread shows as such.
fn verdicts(summaries: &[Summary], args: &BenchArgs) -> Vec<Verdict> {
    let get = |target: Target, mode: Mode, clients: u32| {
        summaries
            .iter()
            .find(|s| s.workload == Workload::Select && s.target == target && s.mode == mode && s.clients == clients)
    };
    // A target's summary with its comparisons with pgbouncer, and pgbouncer's own.
    let against = |target: Target, mode: Mode, clients: u32| {
        let g = get(target, mode, clients)?;
        Some((g, g.vs_pgbouncer?, get(Target::Pgbouncer, mode, clients)?))
    };
    let mut out = Vec::new();
    let most = args.clients.iter().copied().max().unwrap_or(8);
    let least = args.clients.iter().copied().min().unwrap_or(1);
    let eight = if args.clients.contains(&8) { 8 } else { most };
    // TPS at least `bound` times pgbouncer's.
    let tps = |target: String, name: &str, g: &Summary, vs: &VsPgbouncer, b: &Summary, bound: f64| Verdict {
        target,
        detail: format!(
            "ratio {}; {name} {:.0} tps, pgbouncer {:.0} tps{}",
            vs.tps.show(3, false),
            g.tps,
            b.tps,
            vs.tps.unsettled(bound, false)
        ),
        pass: vs.tps.median >= bound,
    };
    if let Some((g, vs, b)) = against(Target::Gateway, Mode::Simple, eight) {
        let target = format!("everything on: TPS >= 1.0x pgbouncer (select, simple, {eight} clients)");
        out.push(tps(target, "gateway", g, &vs, b, 1.0));
    }
    for &mode in &args.modes {
        if let Some(g) = get(Target::Gateway, mode, least) {
            out.push(Verdict {
                target: format!("everything on: added p99 <= 100 us over direct (select, {mode}, {least} client)"),
                detail: format!("gateway +{:.0} us", g.added_p99_us),
                pass: g.added_p99_us <= 100.0,
            });
        }
    }
    for gateway in [Target::Gateway, Target::GatewayBare] {
        let name = gateway.label();
        for &mode in &args.modes {
            if let Some((g, vs, b)) = against(gateway, mode, most) {
                let target = format!("{name}: TPS >= 0.9x pgbouncer (select, {mode}, {most} clients)");
                out.push(tps(target, name, g, &vs, b, 0.9));
            }
            if let Some((g, vs, b)) = against(gateway, mode, least) {
                // What each adds over direct, when direct was run alongside.
                let over_direct = get(Target::Direct, mode, least).is_some();
                for (what, diff, added, theirs) in [
                    ("p50", vs.p50_us, g.added_p50_us, b.added_p50_us),
                    ("p99", vs.p99_us, g.added_p99_us, b.added_p99_us),
                ] {
                    let mut detail = format!("{what} minus pgbouncer's {} us", diff.show(1, true));
                    if over_direct {
                        detail.push_str(&format!(
                            "; added over direct: {name} {added:+.0} us, pgbouncer {theirs:+.0} us"
                        ));
                    }
                    detail.push_str(diff.unsettled(0.0, true));
                    out.push(Verdict {
                        target: format!("{name}: added {what} <= pgbouncer's (select, {mode}, {least} client)"),
                        detail,
                        pass: diff.median <= 0.0,
                    });
                }
            }
            for &clients in &args.clients {
                if let Some((g, vs, b)) = against(gateway, mode, clients)
                    && let (Some(cpu), Some(gc), Some(bc)) = (vs.cpu, g.cpu_us_per_tx, b.cpu_us_per_tx)
                {
                    out.push(Verdict {
                        target: format!("{name}: CPU/tx <= pgbouncer's (select, {mode}, {clients} clients)"),
                        detail: format!(
                            "ratio {}; {name} {gc:.1} us/tx, pgbouncer {bc:.1} us/tx{}",
                            cpu.show(3, false),
                            cpu.unsettled(1.0, true)
                        ),
                        pass: cpu.median <= 1.0,
                    });
                }
            }
        }
    }
    out
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn find_pgbench(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    if let Some(p) = find_on_path("pgbench") {
        return Ok(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin/pgbench")).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().context("pgbench not found: install postgresql-client (or pass --pgbench PATH)")
}

pub(crate) fn find_airlock(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("airlock"));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/airlock"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/airlock"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "the airlock binary was not found next to this one: run `cargo build --release` first (or pass --airlock-bin)",
    )
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(airlock_testkit::free_addr())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(free_addr()?.port())
}

pub(crate) fn command_output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn clk_tck() -> u64 {
    command_output(Command::new("getconf").arg("CLK_TCK")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(100)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name"))?.split_once(':').map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The last lines of a log, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().skip(lines.len().saturating_sub(10)).copied().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "number of transactions actually processed: 12345\nlatency average = 0.081 ms\n\
                   initial connection time = 2.1 ms\ntps = 12300.5 (without initial connection time)\n";
        assert_eq!(parse_after(out, "number of transactions actually processed:"), Some(12345.0));
        assert_eq!(parse_after(out, "tps ="), Some(12300.5));
        assert_eq!(parse_after(out, "latency average ="), Some(0.081));
    }

    /// The VM's speed drifts between repetitions by more than the gaps the
    /// targets are about: a verdict compares each run with pgbouncer's in
    /// the same repetition, not the medians of each.
    #[test]
    fn verdicts_compare_runs_of_the_same_repetition() {
        let run = |rep, target, tps, cpu| Run {
            rep,
            workload: Workload::Select,
            target,
            mode: Mode::Simple,
            clients: 8,
            transactions: 1000,
            tps,
            latency_avg_ms: 0.2,
            p50_ms: 0.2,
            p99_ms: 0.5,
            cpu_us_per_tx: cpu,
            run_cpu_us_per_tx: cpu,
            voluntary_switches_per_tx: None,
            involuntary_switches_per_tx: None,
        };
        let mut runs = Vec::new();
        // The third repetition ran slow for pgbouncer: medians of each would say the gateway's CPU
        // per transaction is lower (19 against 20) and its TPS below 0.9x (150 against 200).
        for (rep, (bouncer_tps, bouncer_cpu), (gateway_tps, gateway_cpu)) in
            [(0, (100.0, 10.0), (95.0, 11.0)), (1, (200.0, 20.0), (190.0, 22.0)), (2, (300.0, 30.0), (150.0, 19.0))]
        {
            runs.push(run(rep, Target::Direct, 400.0, None));
            runs.push(run(rep, Target::Pgbouncer, bouncer_tps, Some(bouncer_cpu)));
            runs.push(run(rep, Target::GatewayBare, gateway_tps, Some(gateway_cpu)));
        }
        let args = BenchArgs {
            seconds: 1,
            reps: 3,
            clients: vec![8],
            modes: vec![Mode::Simple],
            scale: 1,
            airlock_bin: None,
            pgbench: None,
        };
        let verdicts = verdicts(&summarize(&runs), &args);
        let find = |what: &str| {
            verdicts.iter().find(|v| v.target.starts_with(what)).unwrap_or_else(|| panic!("no verdict {what}"))
        };
        let cpu = find("gw-bare: CPU/tx");
        assert!(!cpu.pass, "{cpu:?}");
        let interval = "75.0 % interval of the median";
        assert!(
            cpu.detail.starts_with(&format!("ratio 1.100 (repetitions 0.633 to 1.100; {interval} 0.633 to 1.100)")),
            "{}",
            cpu.detail
        );
        // Three repetitions cannot place the median on either side of anything.
        assert!(
            cpu.detail.ends_with("; not settled: fewer than 6 repetitions give no 95 % interval"),
            "{}",
            cpu.detail
        );
        let tps = find("gw-bare: TPS");
        assert!(tps.pass, "{tps:?}");
        assert!(
            tps.detail.starts_with(&format!("ratio 0.950 (repetitions 0.500 to 0.950; {interval} 0.500 to 0.950)")),
            "{}",
            tps.detail
        );
        let p99 = find("gw-bare: added p99");
        assert!(p99.pass, "{p99:?}");
        assert!(
            p99.detail.starts_with(&format!(
                "p99 minus pgbouncer's +0.0 (repetitions +0.0 to +0.0; {interval} +0.0 to +0.0) us"
            )),
            "{}",
            p99.detail
        );
        assert!(p99.detail.contains("added over direct"), "{}", p99.detail);

        // Without direct runs there is nothing added over direct to show.
        runs.retain(|r| r.target != Target::Direct);
        let without_direct = super::verdicts(&summarize(&runs), &args);
        let p99 = without_direct.iter().find(|v| v.target.starts_with("gw-bare: added p99")).unwrap();
        assert!(!p99.detail.contains("direct"), "{}", p99.detail);
    }

    /// The interval of a median is read off the sorted figures, as wide as
    /// 95 % confidence needs, and no narrower than the figures allow.
    #[test]
    fn the_interval_of_a_median_has_the_confidence_it_claims() {
        for (n, k, coverage) in [(1, 1, 0.0), (3, 1, 0.75), (5, 1, 0.9375), (6, 1, 0.96875), (10, 2, 0.978515625)] {
            let (got_k, got) = super::median_interval(n);
            assert_eq!(got_k, k, "{n} figures");
            assert!((got - coverage).abs() < 1e-9, "{n} figures: {got}");
        }
        assert_eq!(super::median_interval(20).0, 6);
        assert_eq!(super::median_interval(30).0, 10);
        // Ten CPU ratios of a day: the 2nd smallest to the 2nd largest.
        let ratios = vec![1.09, 0.94, 0.97, 0.99, 1.0, 0.98, 1.02, 0.99, 1.01, 0.96];
        let paired = super::Paired::of(ratios).unwrap();
        assert_eq!((paired.low, paired.high), (0.96, 1.02));
        assert_eq!(
            paired.show(3, false),
            "0.990 (repetitions 0.940 to 1.090; 97.9 % interval of the median 0.960 to 1.020)"
        );
        assert_eq!(paired.unsettled(1.0, true), "; not settled: the interval holds the bound");
        assert_eq!(paired.unsettled(0.9, false), "");
        // An interval that ends on the bound settles a verdict on that side of it.
        assert_eq!(paired.unsettled(1.02, true), "");
        assert_eq!(paired.unsettled(0.96, false), "");
        assert!(!paired.unsettled(0.96, true).is_empty());
        // One repetition has no interval to show.
        let one = super::Paired::of(vec![1.2]).unwrap();
        assert_eq!(one.show(1, false), "1.2 (repetitions 1.2 to 1.2)");
        assert_eq!(one.unsettled(0.5, true), "; not settled: fewer than 6 repetitions give no 95 % interval");
    }

    /// Connecting (the gateway makes a role per session) and the ends of the
    /// run, when some clients are done, are left out of the steady figure.
    #[test]
    fn steady_cpu_counts_only_while_every_client_runs() {
        let s = 1_000_000;
        let line = |client, end_us| LogLine { client, transaction: 0, time_us: 100, end_us };
        // Client 0 runs from 1 s to 9 s, client 1 (which connected late) from 2 s to 8.5 s, one
        // transaction every 10 ms each.
        let mut log: Vec<LogLine> = (0..=800).map(|i| line(0, s + i * 10_000)).collect();
        log.extend((0..=650).map(|i| line(1, 2 * s + i * 10_000)));
        // 500 ticks a second before 2 s (the logins), 100 a second after.
        let samples: Vec<CpuSample> = (0..=100)
            .map(|i| {
                let at_us = i * 100_000;
                let ticks = if at_us < 2 * s { at_us / 2_000 } else { 1000 + (at_us - 2 * s) / 10_000 };
                // Thread 1: one voluntary switch every 10 ms and one preemption every 20 ms
                // throughout. Thread 2: a voluntary switch every 100 ms until it ends at 5 s.
                let mut threads =
                    BTreeMap::from([(1, Switches { voluntary: at_us / 10_000, involuntary: at_us / 20_000 })]);
                if at_us <= 5 * s {
                    threads.insert(2, Switches { voluntary: at_us / 100_000, involuntary: 0 });
                }
                CpuSample { at_us, ticks, switches: Some(threads) }
            })
            .collect();
        // From 2 s to 8.5 s: 650 ticks (6.5 s at CLK_TCK 100) over 2 x 650 transactions.
        let cpu = steady_cpu(&samples, &log, 100).expect("a window of 6.5 s");
        assert!((cpu - 5_000.0).abs() < 1e-6, "{cpu}");
        // Thread 1: 650 and 325 switches, thread 2 (from 2 s to its end at 5 s) 30 voluntary ones,
        // over 1300 transactions.
        assert_eq!(steady_switches(&samples, &log), Some((680.0 / 1300.0, 0.25)));
        // A window under a second is no measurement.
        assert_eq!(steady_cpu(&samples[..25], &log, 100), None);
        assert_eq!(steady_cpu(&samples, &[], 100), None);
        assert_eq!(steady_switches(&samples[..25], &log), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
