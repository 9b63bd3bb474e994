//! `pg-policy`: what policy costs on the Postgres gateway's data path.
//!
//! Two workloads, each run directly against Postgres, through a gateway that
//! has no policy ("off") and through a gateway under a policy, alternating
//! within every repetition: pgbench `-S` under three command rules, and a
//! `SELECT *` of a 100-row table under two masking rules. The policy's cost is
//! reported as ratios against the policy-free gateway run beside it; nothing is
//! asserted.
//!
//! The machinery is `pg-throughput`'s: `airlock up` as a child process whose
//! CPU is read from `/proc`, the connection, grant and token over REST, pgbench
//! as the load generator. There are two gateways, each its own `airlock up`,
//! because a tenant cannot go back to having no policy once it has one. Before
//! every gateway run the scenario applies the workload's policy to the policy
//! gateway (`PUT /v1/policy`) when it has the other one, and waits until a new
//! session through the run's gateway behaves as it should: an unbounded delete
//! refused naming the command rule, an email column redacted, or neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::{Connection as _, Row as _};

use super::pg_throughput::{
    self, Bench, Endpoints, Mode, PgbenchRun, READY_TIMEOUT, Target, clk_tck, command_output, cpu_model, find_airlock,
    find_pgbench, loadavg, median, pgbench_command, register, run_pgbench,
};
use crate::report::{self, Document, Host, Table};

/// The command rules of the `rules` workload.
pub(crate) const RULES_POLICY: &str = "version: 1
commands:
  - name: ddl-needs-review
    match: { kinds: [ddl] }
    action: { review: { approvers: { groups: [dba] }, timeout: 10m } }
  - name: no-unbounded-writes
    match: { unbounded_write: true }
    action: deny
  - name: no-file-functions
    match: { functions: [pg_read_file, lo_export, lo_import] }
    action: deny
";

/// The masking rules of the `masking` workload.
pub(crate) const MASKING_POLICY: &str = "version: 1
masking:
  - name: pii
    columns: [\"*.*.email\", \"public.airlock_mask_bench.ssn\"]
    strategy: redact
  - name: content
    columns: [\"public.airlock_mask_bench.card\"]
    detectors: [credit_card, email, iban, national_id, api_key]
    strategy: partial
";

/// The table the masking workload reads, and its size.
pub(crate) const MASK_TABLE: &str = "airlock_mask_bench";
pub(crate) const MASK_ROWS: u32 = 100;
/// The masking workload's pgbench script: every transaction returns every row.
pub(crate) const MASK_SCRIPT: &str = "SELECT * FROM airlock_mask_bench;\n";

/// Below this, the latency gateway-off adds is within the run-to-run noise of
/// a p50, and a ratio to it says nothing.
const MIN_ADDED_US: f64 = 10.0;

/// The pause after a policy is seen in force and before the run, so the
/// probe's session has ended (and its role been dropped) outside the run.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub bench: pg_throughput::BenchArgs,
    /// Skip the command-rules workload (pgbench -S).
    #[arg(long)]
    pub skip_rules: bool,
    /// Skip the masking workload (SELECT * of the 100-row table).
    #[arg(long)]
    pub skip_masking: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    Rules,
    Masking,
}

impl Workload {
    fn policy(self) -> InForce {
        match self {
            Workload::Rules => InForce::Rules,
            Workload::Masking => InForce::Masking,
        }
    }
}

/// Where a run's pgbench connects, and under which policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Arm {
    Direct,
    GatewayOff,
    /// Through the gateway under the workload's policy.
    GatewayPolicy,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Direct, Arm::GatewayOff, Arm::GatewayPolicy];

    fn label(self, workload: Workload) -> &'static str {
        match (self, workload) {
            (Arm::Direct, _) => "direct",
            (Arm::GatewayOff, _) => "gateway-off",
            (Arm::GatewayPolicy, Workload::Rules) => "gateway-rules",
            (Arm::GatewayPolicy, Workload::Masking) => "gateway-masked",
        }
    }
}

/// Which of the scenario's policies the gateway applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InForce {
    Off,
    Rules,
    Masking,
}

impl InForce {
    /// The document to apply; none for `Off`, which is a gateway that never had a policy.
    fn document(self) -> Option<&'static str> {
        match self {
            InForce::Off => None,
            InForce::Rules => Some(RULES_POLICY),
            InForce::Masking => Some(MASKING_POLICY),
        }
    }
}

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    rep: usize,
    workload: Workload,
    arm: Arm,
    mode: Mode,
    clients: u32,
    transactions: u64,
    tps: f64,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The gateway's CPU (user + system) during the run per transaction; none for `direct`.
    cpu_us_per_tx: Option<f64>,
}

/// Medians over the repetitions of one (workload, mode, clients, arm).
#[derive(Debug, Clone, Serialize)]
struct Summary {
    workload: Workload,
    mode: Mode,
    clients: u32,
    arm: Arm,
    target: &'static str,
    reps: usize,
    tps: f64,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Median over repetitions of (this p50 − direct's p50 in the same repetition).
    added_p50_us: f64,
    added_p99_us: f64,
    cpu_us_per_tx: Option<f64>,
}

/// The policy run against the gateway-off run, per (workload, mode, clients).
#[derive(Debug, Clone, Serialize)]
struct Cost {
    workload: Workload,
    mode: Mode,
    clients: u32,
    /// Median over repetitions of policy tps ÷ off tps in the same repetition.
    tps_ratio: f64,
    off_added_p50_us: f64,
    policy_added_p50_us: f64,
    /// policy_added_p50_us ÷ off_added_p50_us: how many times the latency the
    /// gateway adds the policy makes it; none when gateway-off added less than
    /// `MIN_ADDED_US`.
    added_p50_ratio: Option<f64>,
    off_cpu_us_per_tx: Option<f64>,
    policy_cpu_us_per_tx: Option<f64>,
    /// policy_cpu_us_per_tx ÷ off_cpu_us_per_tx (both medians over the repetitions).
    cpu_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Machine {
    nproc: usize,
    cpu_model: String,
    loadavg_start: String,
    loadavg_end: String,
    clk_tck: u64,
    pgbench: String,
    postgres: String,
}

#[derive(Debug, Serialize)]
struct Parameters {
    seconds: u64,
    reps: usize,
    clients: Vec<u32>,
    modes: Vec<Mode>,
    scale: u32,
    workloads: Vec<Workload>,
    policies: BTreeMap<&'static str, &'static str>,
    mask_table_rows: u32,
    mask_script: &'static str,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    summaries: Vec<Summary>,
    costs: Vec<Cost>,
    runs: Vec<Run>,
}

/// Runs the scenario and writes `pg-policy.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    let b = &args.bench.or_defaults(&[1, 8], &[Mode::Simple, Mode::Extended])?;
    let workloads: Vec<Workload> = [(Workload::Rules, args.skip_rules), (Workload::Masking, args.skip_masking)]
        .into_iter()
        .filter_map(|(w, skip)| (!skip).then_some(w))
        .collect();
    anyhow::ensure!(!workloads.is_empty(), "--skip-rules and --skip-masking leave nothing to run");
    let pgbench = find_pgbench(b.pgbench.as_deref())?;
    let airlock_bin = find_airlock(b.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let loadavg_start = loadavg();
    let clk_tck = clk_tck();

    let dir = std::env::temp_dir().join(format!("airlock-pg-policy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("off")).with_context(|| format!("creating {}", dir.display()))?;
    let mut bench_off = Bench {
        dir: dir.join("off"),
        db: None,
        template: None,
        pgbouncer: None,
        gateway: None,
        forwarders: Vec::new(),
    };
    let mut bench = Bench { dir, db: None, template: None, pgbouncer: None, gateway: None, forwarders: Vec::new() };
    let result = measure(&mut bench, &mut bench_off, b, &workloads, &pgbench, &airlock_bin, clk_tck).await;
    if result.is_err() {
        // The temp dirs go with the benches: keep the gateways' logs for whoever reads the error.
        for (gateway, name) in
            [(&bench.gateway, "pg-policy-airlock.log"), (&bench_off.gateway, "pg-policy-airlock-off.log")]
        {
            let Some(gateway) = gateway else { continue };
            let kept = out.join(name);
            match std::fs::create_dir_all(out).and_then(|()| std::fs::copy(&gateway.log, &kept)) {
                Ok(_) => eprintln!("a gateway's log is in {}", kept.display()),
                Err(e) => eprintln!("warning: failed to keep a gateway's log: {e}"),
            }
        }
    }
    // The gateway without a policy first: the other bench drops the database.
    bench_off.stop().await;
    bench.stop().await;
    let (runs, versions) = result?;

    let summaries = summarize(&runs);
    let costs = costs(&runs, &summaries);
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        loadavg_start,
        loadavg_end: loadavg(),
        clk_tck,
        pgbench: versions.pgbench,
        postgres: versions.postgres,
    };

    println!("pg-policy: what command rules and masking cost through the Postgres gateway\n");
    println!(
        "machine: {} cores ({}), load average at start {}, at end {}",
        machine.nproc, machine.cpu_model, machine.loadavg_start, machine.loadavg_end
    );
    println!("{}; {}\n", machine.postgres, machine.pgbench);
    for &workload in &workloads {
        let title = match workload {
            Workload::Rules => "command rules: pgbench -S (one indexed SELECT per transaction)",
            Workload::Masking => "masking: SELECT * FROM airlock_mask_bench (100 rows of 6 columns per transaction)",
        };
        println!("{title}\n");
        print!("{}", table(workload, &summaries, &costs).render());
        println!();
        for c in costs.iter().filter(|c| c.workload == workload) {
            println!("{}", headline(c));
        }
        println!();
    }
    let notes = vec![
        format!(
            "pgbench -n -T {} -c N -j min(N,2); rules: -S at scale {}; masking: -f with `{}`. {} repetitions, \
             direct / gateway-off / gateway-<policy> alternating within each repetition (the first rotates); \
             figures are medians over the repetitions.",
            b.seconds,
            b.scale,
            MASK_SCRIPT.trim(),
            b.reps
        ),
        "gateway-off is a second `airlock up` that never has a policy; before every gateway run a new session \
         through that gateway is seen to be under the run's policy (or none), then 0.5 s for it to end."
            .to_owned(),
        "tps is pgbench's 'without initial connection time'; p50/p99 are nearest-rank over pgbench's \
         per-transaction log (-l); +p50 is this target's p50 minus direct's in the same repetition."
            .to_owned(),
        "tps vs off: the median over repetitions of the policy run's tps divided by the gateway-off run's in \
         the same repetition."
            .to_owned(),
        format!(
            "+p50 vs off: the policy run's +p50 divided by gateway-off's +p50 (both medians): how many times the \
             latency the gateway adds the policy makes it; '-' when gateway-off adds under {MIN_ADDED_US:.0} us, \
             which is within a p50's run-to-run noise. The masking target is <= 2x. CPU vs off: the policy run's \
             CPU us/tx divided by gateway-off's (both medians)."
        ),
        format!(
            "CPU us/tx: utime+stime of `airlock up` (control plane included, idle during runs) from \
             /proc/<pid>/stat (CLK_TCK {clk_tck}) while every client ran, divided by the transactions that \
             ended meanwhile (as pg-throughput's CPU us/tx: connecting left out)."
        ),
        "pgbench, Postgres and the gateway share this host's cores, so every figure includes their scheduling \
         on each other."
            .to_owned(),
    ];
    for n in &notes {
        println!("note: {n}");
    }
    let mut policies = BTreeMap::new();
    policies.insert("rules", RULES_POLICY);
    policies.insert("masking", MASKING_POLICY);
    let doc = Document {
        scenario: "pg-policy",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            seconds: b.seconds,
            reps: b.reps,
            clients: b.clients.clone(),
            modes: b.modes.clone(),
            scale: b.scale,
            workloads,
            policies,
            mask_table_rows: MASK_ROWS,
            mask_script: MASK_SCRIPT,
        },
        notes,
        results: Results { machine, summaries, costs, runs },
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn table(workload: Workload, summaries: &[Summary], costs: &[Cost]) -> Table {
    let mut table = Table::new(&[
        "target",
        "mode",
        "clients",
        "tps",
        "p50 ms",
        "p99 ms",
        "+p50 us",
        "CPU us/tx",
        "tps vs off",
        "+p50 vs off",
        "CPU vs off",
    ]);
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    for s in summaries.iter().filter(|s| s.workload == workload) {
        let cost = costs
            .iter()
            .find(|c| c.workload == workload && c.mode == s.mode && c.clients == s.clients)
            .filter(|_| s.arm == Arm::GatewayPolicy);
        table.row(vec![
            s.target.to_owned(),
            s.mode.to_string(),
            s.clients.to_string(),
            format!("{:.0}", s.tps),
            format!("{:.3}", s.p50_ms),
            format!("{:.3}", s.p99_ms),
            if s.arm == Arm::Direct { "-".into() } else { format!("{:.0}", s.added_p50_us) },
            s.cpu_us_per_tx.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            ratio(cost.map(|c| c.tps_ratio)),
            ratio(cost.and_then(|c| c.added_p50_ratio)),
            ratio(cost.and_then(|c| c.cpu_ratio)),
        ]);
    }
    table
}

/// One line per (mode, clients) saying what the policy costs.
fn headline(c: &Cost) -> String {
    let name = match c.workload {
        Workload::Rules => "rules",
        Workload::Masking => "masked",
    };
    let cpu = match (c.policy_cpu_us_per_tx, c.off_cpu_us_per_tx, c.cpu_ratio) {
        (Some(p), Some(o), Some(r)) => format!("CPU/tx {name} {p:.1} us / off {o:.1} us = {r:.2}x"),
        _ => "CPU/tx not measured".to_owned(),
    };
    let added = match c.added_p50_ratio {
        Some(r) => {
            format!("added p50 {name} {:.0} us / off {:.0} us = {r:.2}x", c.policy_added_p50_us, c.off_added_p50_us)
        }
        None => format!(
            "added p50 {name} {:.0} us / off {:.0} us = - (off adds under {MIN_ADDED_US:.0} us: noise)",
            c.policy_added_p50_us, c.off_added_p50_us
        ),
    };
    let within = match (c.workload, c.added_p50_ratio) {
        (Workload::Masking, Some(r)) if r <= 2.0 => "  [within 2x]",
        (Workload::Masking, Some(_)) => "  [over 2x]",
        _ => "",
    };
    format!(
        "  {:<8} {} client{}: {added}; {cpu}; tps {name}/off {:.2}{within}",
        c.mode.to_string(),
        c.clients,
        if c.clients == 1 { " " } else { "s" },
        c.tps_ratio
    )
}

struct Versions {
    pgbench: String,
    postgres: String,
}

/// Sets the database and both gateways up, then runs every repetition.
/// `bench` holds the database and the policy gateway, `bench_off` the gateway
/// that never has a policy.
async fn measure(
    bench: &mut Bench,
    bench_off: &mut Bench,
    args: &pg_throughput::BenchArgs,
    workloads: &[Workload],
    pgbench: &Path,
    airlock_bin: &Path,
    clk_tck: u64,
) -> anyhow::Result<(Vec<Run>, Versions)> {
    // The target database, filled by pgbench, the masked table, and a template role that may read them.
    let filled = bench.fill_target(pgbench, args.scale).await?;
    let versions = Versions {
        pgbench: command_output(Command::new(pgbench).arg("--version"))?.trim().to_owned(),
        postgres: filled.server_version,
    };
    let template = filled.template;

    // The gateways: `airlock up` twice, each in its own process with its own data dir.
    let target = Database { host: filled.host, port: filled.port, user: filled.user, name: filled.name };
    let off = Gateway::start(bench_off, airlock_bin, &target, &template)
        .await
        .context("starting the gateway without a policy")?;
    let policy =
        Gateway::start(bench, airlock_bin, &target, &template).await.context("starting the gateway with a policy")?;
    let script = bench.dir.join("mask-select.sql");
    std::fs::write(&script, MASK_SCRIPT)?;
    let mut runner = Runner {
        pgbench,
        off,
        policy,
        dir: &bench.dir,
        script,
        seconds: args.seconds,
        clk_tck,
        http: reqwest::Client::new(),
        in_force: None,
    };

    // Wait until each gateway has applied its grant (and the policy gateway its
    // first policy), then one unmeasured second against each target.
    runner.ready(Arm::GatewayOff, InForce::Off).await.context("waiting for the gateway without a policy")?;
    let first = workloads.first().map_or(InForce::Rules, |w| w.policy());
    runner.ready(Arm::GatewayPolicy, first).await.context("applying the first policy")?;
    for arm in Arm::ALL {
        let (endpoints, target) = runner.target(arm);
        let out = pgbench_command(pgbench, endpoints, target, Mode::Simple)
            .args(["-S", "-n", "-c", "1", "-T", "1"])
            .output()
            .context("running pgbench")?;
        anyhow::ensure!(out.status.success(), "pgbench warm-up failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    let total = args.reps * workloads.len() * args.clients.len() * args.modes.len() * Arm::ALL.len();
    eprintln!("  {total} runs of {} s each", args.seconds);
    let mut runs = Vec::with_capacity(total);
    for rep in 0..args.reps {
        for &workload in workloads {
            for &clients in &args.clients {
                for &mode in &args.modes {
                    for &arm in Arm::ALL.iter().cycle().skip(rep % Arm::ALL.len()).take(Arm::ALL.len()) {
                        let what = format!("{} ({mode}, {clients} clients)", arm.label(workload));
                        match arm {
                            Arm::Direct => Ok(()),
                            Arm::GatewayOff => runner.ready(arm, InForce::Off).await,
                            Arm::GatewayPolicy => runner.ready(arm, workload.policy()).await,
                        }
                        .with_context(|| format!("making ready {what}"))?;
                        let run = runner
                            .run(rep, workload, arm, mode, clients)
                            .with_context(|| format!("pgbench against {what}"))?;
                        eprintln!(
                            "  rep {rep} {:<14} {mode:<8} c={clients}: {:.0} tps, p50 {:.3} ms, p99 {:.3} ms{}",
                            arm.label(workload),
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

/// The target database and how to log in to it directly.
struct Database {
    host: String,
    port: u16,
    user: String,
    name: String,
}

/// One `airlock up` with the connection registered and a token for it.
struct Gateway {
    endpoints: Endpoints,
    pid: u32,
    api: String,
    admin_token: String,
}

impl Gateway {
    /// Starts `airlock up` in `bench` and registers `target` with `template`.
    async fn start(
        bench: &mut Bench,
        airlock_bin: &Path,
        target: &Database,
        template: &str,
    ) -> anyhow::Result<Gateway> {
        let (gateway, api) = bench.start_gateway(airlock_bin, true).context("starting `airlock up`")?;
        let data_dir = bench.dir.join("airlock-data");
        let token = register(&api, &data_dir, &target.host, target.port, &target.name, template)
            .await
            .context("registering the connection, grant and token")?;
        let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
        let pid = bench.gateway.as_ref().map(|g| g.pid).context("the gateway is not running")?;
        let endpoints = Endpoints::new(
            target.host.clone(),
            target.port,
            target.user.clone(),
            target.name.clone(),
            0,
            gateway,
            token,
        );
        Ok(Gateway { endpoints, pid, api, admin_token })
    }
}

/// What the runs share, and the policy the policy gateway was last seen applying.
struct Runner<'a> {
    pgbench: &'a Path,
    /// The gateway that never has a policy; `direct` runs use its endpoints too.
    off: Gateway,
    policy: Gateway,
    dir: &'a Path,
    script: PathBuf,
    seconds: u64,
    clk_tck: u64,
    http: reqwest::Client,
    in_force: Option<InForce>,
}

impl Runner<'_> {
    /// The endpoints and the pgbench target of `arm`.
    fn target(&self, arm: Arm) -> (&Endpoints, Target) {
        match arm {
            Arm::Direct => (&self.off.endpoints, Target::Direct),
            Arm::GatewayOff => (&self.off.endpoints, Target::Gateway),
            Arm::GatewayPolicy => (&self.policy.endpoints, Target::Gateway),
        }
    }

    /// Makes `arm`'s gateway ready for a run: applies `want` to the policy
    /// gateway unless it already applies it, waits until a new session through
    /// the gateway behaves under `want`, and lets that session end.
    async fn ready(&mut self, arm: Arm, want: InForce) -> anyhow::Result<()> {
        if arm == Arm::GatewayPolicy && self.in_force != Some(want) {
            let document = want.document().context("a gateway cannot be taken back to having no policy")?;
            self.in_force = None;
            let response = self
                .http
                .put(format!("{}/v1/policy", self.policy.api))
                .bearer_auth(&self.policy.admin_token)
                .header("content-type", "application/yaml")
                .body(document)
                .send()
                .await?;
            let status = response.status();
            anyhow::ensure!(status.is_success(), "PUT /v1/policy answered {status}: {}", response.text().await?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let why = match self.observe(arm).await {
                Ok((seen, _)) if seen == want => break,
                Ok((seen, what)) => format!("a new session still behaves as under {seen:?} ({what})"),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway was not under the {want:?} policy within {READY_TIMEOUT:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if arm == Arm::GatewayPolicy {
            self.in_force = Some(want);
        }
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }

    /// Which policy a new session through `arm`'s gateway is under: whether an
    /// unbounded delete is refused by the command rule, and whether an email
    /// comes back as it is stored. The second value says what the session saw.
    async fn observe(&self, arm: Arm) -> anyhow::Result<(InForce, String)> {
        let (e, _) = self.target(arm);
        let options = pg_throughput::gateway_options(e.gateway, &e.token, &e.database);
        let mut conn = PgConnection::connect_with(&options).await.context("connecting through the gateway")?;
        // The template role may not delete, so Postgres refuses this when the gateway lets it through.
        let delete = format!("DELETE FROM {MASK_TABLE}");
        let (rules, write) = match sqlx::raw_sql(&delete).execute(&mut conn).await {
            Ok(_) => anyhow::bail!("`{delete}` through the gateway succeeded: the template role may write"),
            Err(e) => {
                let detail = e
                    .as_database_error()
                    .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
                    .and_then(|d| d.detail())
                    .map(str::to_owned);
                let refused = detail.as_deref().is_some_and(|d| d.contains("no-unbounded-writes"));
                (refused, format!("{delete}: {e} ({})", detail.unwrap_or_default()))
            }
        };
        let row = sqlx::raw_sql(&format!("SELECT email FROM {MASK_TABLE} WHERE id = 1"))
            .fetch_one(&mut conn)
            .await
            .context("reading an email through the gateway")?;
        let email: Option<String> = row.try_get(0)?;
        conn.close().await?;
        let masked = email.as_deref() != Some(sample_email(1).as_str());
        let seen = format!("{write}; email: {email:?}");
        match (rules, masked) {
            (false, false) => Ok((InForce::Off, seen)),
            (true, false) => Ok((InForce::Rules, seen)),
            (false, true) => Ok((InForce::Masking, seen)),
            (true, true) => anyhow::bail!("a new session is under command rules and masking at once: {seen}"),
        }
    }

    fn run(&self, rep: usize, workload: Workload, arm: Arm, mode: Mode, clients: u32) -> anyhow::Result<Run> {
        let logs = self.dir.join(format!("log-{rep}-{workload:?}-{}-{mode}-{clients}", arm.label(workload)));
        std::fs::create_dir_all(&logs)?;
        let (endpoints, target) = self.target(arm);
        let mut command = pgbench_command(self.pgbench, endpoints, target, mode);
        match workload {
            Workload::Rules => command.arg("-S"),
            Workload::Masking => command.arg("-f").arg(&self.script),
        };
        let threads = clients.min(2);
        command
            .args(["-n", "-M", &mode.to_string(), "-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &self.seconds.to_string(), "-l", "--log-prefix"])
            .arg(logs.join("tx"));
        let pid = match arm {
            Arm::Direct => None,
            Arm::GatewayOff => Some(self.off.pid),
            Arm::GatewayPolicy => Some(self.policy.pid),
        };
        let PgbenchRun { transactions, tps, latency_avg_ms, latencies, steady_cpu_us_per_tx: cpu_us_per_tx, .. } =
            run_pgbench(&mut command, pid, &logs, self.clk_tck)?;
        Ok(Run {
            rep,
            workload,
            arm,
            mode,
            clients,
            transactions,
            tps,
            latency_avg_ms,
            p50_ms: report::percentile(&latencies, 50.0),
            p99_ms: report::percentile(&latencies, 99.0),
            cpu_us_per_tx,
        })
    }
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut keys: Vec<(Workload, Mode, u32, Arm)> =
        runs.iter().map(|r| (r.workload, r.mode, r.clients, r.arm)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(workload, mode, clients, arm)| {
            let own: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == workload && r.mode == mode && r.clients == clients && r.arm == arm)
                .collect();
            let added = |f: &dyn Fn(&Run) -> f64| {
                median(
                    own.iter().filter_map(|r| partner(runs, r, Arm::Direct).map(|d| (f(r) - f(d)) * 1000.0)).collect(),
                )
            };
            let cpu: Vec<f64> = own.iter().filter_map(|r| r.cpu_us_per_tx).collect();
            Summary {
                workload,
                mode,
                clients,
                arm,
                target: arm.label(workload),
                reps: own.len(),
                tps: median(own.iter().map(|r| r.tps).collect()),
                latency_avg_ms: median(own.iter().map(|r| r.latency_avg_ms).collect()),
                p50_ms: median(own.iter().map(|r| r.p50_ms).collect()),
                p99_ms: median(own.iter().map(|r| r.p99_ms).collect()),
                added_p50_us: added(&|r| r.p50_ms),
                added_p99_us: added(&|r| r.p99_ms),
                cpu_us_per_tx: if cpu.is_empty() { None } else { Some(median(cpu)) },
            }
        })
        .collect()
}

/// The run of `arm` in the same repetition, workload, mode and client count as `run`.
fn partner<'a>(runs: &'a [Run], run: &Run, arm: Arm) -> Option<&'a Run> {
    runs.iter().find(|o| {
        o.rep == run.rep && o.workload == run.workload && o.mode == run.mode && o.clients == run.clients && o.arm == arm
    })
}

fn costs(runs: &[Run], summaries: &[Summary]) -> Vec<Cost> {
    let get = |s: &Summary, arm: Arm| {
        summaries
            .iter()
            .find(|o| o.workload == s.workload && o.mode == s.mode && o.clients == s.clients && o.arm == arm)
    };
    summaries
        .iter()
        .filter(|s| s.arm == Arm::GatewayPolicy)
        .filter_map(|policy| {
            let off = get(policy, Arm::GatewayOff)?;
            let own = runs
                .iter()
                .filter(|r| r.workload == policy.workload && r.mode == policy.mode && r.clients == policy.clients);
            let pairs: Vec<(&Run, &Run)> = own
                .filter(|r| r.arm == Arm::GatewayPolicy)
                .filter_map(|r| partner(runs, r, Arm::GatewayOff).map(|o| (r, o)))
                .collect();
            Some(Cost {
                workload: policy.workload,
                mode: policy.mode,
                clients: policy.clients,
                tps_ratio: median(pairs.iter().map(|(r, o)| r.tps / o.tps).collect()),
                off_added_p50_us: off.added_p50_us,
                policy_added_p50_us: policy.added_p50_us,
                added_p50_ratio: (off.added_p50_us >= MIN_ADDED_US).then(|| policy.added_p50_us / off.added_p50_us),
                off_cpu_us_per_tx: off.cpu_us_per_tx,
                policy_cpu_us_per_tx: policy.cpu_us_per_tx,
                cpu_ratio: match (policy.cpu_us_per_tx, off.cpu_us_per_tx) {
                    (Some(p), Some(o)) if o > 0.0 => Some(p / o),
                    _ => None,
                },
            })
        })
        .collect()
}

pub(crate) fn sample_email(id: u32) -> String {
    format!("user{id}@example.com")
}

/// A card number that passes the Luhn check, in groups of four; row 1's is
/// `4111 1111 1111 1111`.
fn sample_card(id: u32) -> String {
    let body = format!("411111111111{:03}", 110 + id % 890);
    let digits: Vec<u32> = body.chars().filter_map(|c| c.to_digit(10)).collect();
    // From the right, every other digit of the body is doubled (the check digit will be rightmost).
    let sum: u32 =
        digits.iter().rev().enumerate().map(|(i, &d)| if i % 2 == 0 { (d * 2) / 10 + (d * 2) % 10 } else { d }).sum();
    let number = format!("{body}{}", (10 - sum % 10) % 10);
    let mut out = String::new();
    for (i, c) in number.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The masking table and its rows: names, emails, SSNs, card numbers, and notes
/// of which some hold an email or a card number in free text.
pub(crate) fn mask_table_sql() -> String {
    const FIRST: [&str; 8] = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana"];
    const LAST: [&str; 7] = ["Martin", "Okafor", "Silva", "Novak", "Tanaka", "Haddad", "Larsen"];
    const PLAIN: [&str; 4] = [
        "Called about the March invoice; follow up next week.",
        "Account opened at the Lyon branch.",
        "No issues reported since onboarding.",
        "Asked to move the renewal to the first of the month.",
    ];
    let pick = |list: &[&'static str], i: u32| list.iter().cycle().nth(i as usize).copied().unwrap_or_default();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let rows: Vec<String> = (1..=MASK_ROWS)
        .map(|id| {
            let (first, last) = (pick(&FIRST, id), pick(&LAST, id));
            let card = sample_card(id);
            let notes = if id % 5 == 0 {
                format!("Refund of the duplicate charge goes back to card {card}.")
            } else if id % 3 == 0 {
                format!("Prefers to be reached at {}.{}@example.org after 5pm.", first.to_lowercase(), id)
            } else {
                pick(&PLAIN, id).to_owned()
            };
            let ssn = format!("{:03}-{:02}-{:04}", 100 + id, 10 + id % 90, 1000 + id * 37);
            format!(
                "({id}, {}, {}, {}, {}, {})",
                quote(&format!("{first} {last}")),
                quote(&sample_email(id)),
                quote(&ssn),
                quote(&card),
                quote(&notes)
            )
        })
        .collect();
    format!(
        "CREATE TABLE {MASK_TABLE} (id int PRIMARY KEY, name text, email text, ssn text, card text, notes text);
         INSERT INTO {MASK_TABLE} VALUES {};
         ANALYZE {MASK_TABLE};",
        rows.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn_ok(number: &str) -> bool {
        let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &d)| if i % 2 == 1 { (d * 2) / 10 + (d * 2) % 10 } else { d })
            .sum();
        digits.len() == 16 && sum.is_multiple_of(10)
    }

    #[test]
    fn card_numbers_pass_luhn() {
        assert_eq!(sample_card(1), "4111 1111 1111 1111");
        for id in 1..=MASK_ROWS {
            assert!(luhn_ok(&sample_card(id)), "{}", sample_card(id));
        }
    }

    #[test]
    fn the_table_has_every_row() {
        let sql = mask_table_sql();
        assert_eq!(sql.matches("@example.com'").count(), MASK_ROWS as usize);
        assert!(sql.contains("(1, 'Bruno Okafor', 'user1@example.com', '101-11-1037', '4111 1111 1111 1111'"));
    }
}
