//! `pg-connect`: new connections per second, `pgbench -S -C` (a new
//! connection for every transaction) against the target directly, through
//! pgbouncer and through the Postgres gateway, alternating, with the CPU the
//! gateway spends per connection and how long its session roles take to be
//! dropped after each run.
//!
//! A connection through the gateway costs a token check, a grant lookup, a
//! role `airlock_<session>` created on the target through the connection's
//! admin credential, an upstream login as that role and, at the session's
//! end, the role's drop. pgbouncer's new connection is a pooled one (no
//! server connection per client), so the fair baseline is direct.
//!
//! The machinery (gateway and pgbouncer as child processes, registration,
//! pgbench commands, CPU from `/proc`) is `pg-throughput`'s.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::pg_throughput::{
    Bench, BenchDb, Endpoints, LogLine, Machine, Mode, READY_TIMEOUT, Target, clk_tck, command_output, cpu_model,
    find_airlock, find_pgbench, free_addr, loadavg, median, parse_after, pgbench_command, register, run_pgbench,
};
use super::session_roles::Drained;
use super::{pgbouncer, session_roles};
use crate::report::{self, Document, Host, Table};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds per pgbench run (`-T`).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Repetitions; each runs every target and client count once. Medians are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Client counts (`-c`; `-j` is min(c, 2)).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8])]
    pub clients: Vec<u32>,
    /// pgbench scale factor for `pgbench -i -s`.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// After each gateway run, how long to wait for its session roles to be dropped.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_s: u64,
    /// The `airlock` binary (default: next to this binary, i.e. target/release/airlock).
    #[arg(long)]
    pub airlock_bin: Option<std::path::PathBuf>,
    /// The pgbench binary (default: on PATH, else /usr/lib/postgresql/*/bin/pgbench).
    #[arg(long)]
    pub pgbench: Option<std::path::PathBuf>,
}

const TARGETS: [Target; 3] = [Target::Direct, Target::Pgbouncer, Target::Gateway];

fn label(target: Target) -> &'static str {
    match target {
        Target::Direct => "direct",
        Target::Pgbouncer => "pgbouncer",
        Target::Gateway | Target::GatewayBare => "gateway",
        // Not among this scenario's targets.
        Target::ForwarderTokio => "fwd-tokio",
        Target::ForwarderMio => "fwd-mio",
        Target::ForwarderUring => "fwd-uring",
    }
}

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    rep: usize,
    target: Target,
    clients: u32,
    /// Transactions, each on a connection of its own.
    connections: u64,
    /// pgbench's tps "including reconnection times": connections per second.
    conn_per_s: f64,
    /// pgbench's "latency average" under -C (connection included).
    latency_avg_ms: f64,
    /// pgbench's "average connection time".
    connect_avg_ms: f64,
    /// Nearest-rank percentiles of the time from one transaction's end to the
    /// next one's on the same client: close, connect, log in, the transaction.
    cycle_p50_ms: f64,
    cycle_p99_ms: f64,
    /// The transaction alone, from pgbench's log (connection not included).
    tx_p50_ms: f64,
    /// CPU (user + system) of the middle process per connection; none for direct.
    cpu_us_per_conn: Option<f64>,
    /// Gateway runs: session roles of the gateway on the target when pgbench
    /// ended, and the time until none was left.
    roles: Option<Drained>,
}

/// Medians over the repetitions of one (target, clients).
#[derive(Debug, Clone, Serialize)]
struct Summary {
    target: Target,
    clients: u32,
    reps: usize,
    conn_per_s: f64,
    vs_direct: f64,
    vs_pgbouncer: f64,
    latency_avg_ms: f64,
    connect_avg_ms: f64,
    cycle_p50_ms: f64,
    cycle_p99_ms: f64,
    tx_p50_ms: f64,
    cpu_us_per_conn: Option<f64>,
    /// Gateway: the median of the per-run drain times (over the runs that drained).
    roles_at_end: Option<f64>,
    drain_ms: Option<f64>,
    /// Gateway: the most roles left after a run's bounded wait.
    roles_left_max: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Parameters {
    seconds: u64,
    reps: usize,
    clients: Vec<u32>,
    scale: u32,
    drain_timeout_s: u64,
    pgbouncer_pool_mode: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    summaries: Vec<Summary>,
    runs: Vec<Run>,
    /// Session roles of the run still on the target after the gateway stopped
    /// (dropped by the scenario so nothing is left behind).
    roles_left_after_stop: Option<usize>,
}

/// Runs the scenario and writes `pg-connect.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(!args.clients.is_empty(), "--clients needs a value");
    let pgbench = find_pgbench(args.pgbench.as_deref())?;
    let pgbouncer_bin = pgbouncer::find()?;
    let airlock_bin = find_airlock(args.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let loadavg_start = loadavg();
    let clk_tck = clk_tck();

    let dir = std::env::temp_dir().join(format!("airlock-pg-connect-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bench = Bench { dir, db: None, template: None, pgbouncer: None, gateway: None, forwarders: Vec::new() };
    let result = measure(&mut bench, args, &pgbench, &pgbouncer_bin, &airlock_bin, clk_tck).await;
    let roles_left_after_stop = session_roles::stop_gateway_and_drop_leftovers(&mut bench).await;
    bench.stop().await;
    let (runs, postgres) = result?;

    let summaries = summarize(&runs);
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        loadavg_start,
        loadavg_end: loadavg(),
        clk_tck,
        pgbench: command_output(Command::new(&pgbench).arg("--version"))?.trim().to_owned(),
        pgbouncer: pgbouncer::version(&pgbouncer_bin),
        postgres,
    };

    let mut table = Table::new(&[
        "target",
        "clients",
        "conn/s",
        "vs direct",
        "vs pgbouncer",
        "connect ms",
        "p50 ms",
        "p99 ms",
        "CPU us/conn",
        "roles at end",
        "drained ms",
    ]);
    for s in &summaries {
        let gateway = s.target == Target::Gateway;
        table.row(vec![
            label(s.target).to_owned(),
            s.clients.to_string(),
            format!("{:.0}", s.conn_per_s),
            format!("{:.2}", s.vs_direct),
            format!("{:.2}", s.vs_pgbouncer),
            format!("{:.2}", s.connect_avg_ms),
            format!("{:.2}", s.cycle_p50_ms),
            format!("{:.2}", s.cycle_p99_ms),
            s.cpu_us_per_conn.map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            if gateway { s.roles_at_end.map_or_else(|| "-".into(), |n| format!("{n:.0}")) } else { "-".into() },
            match (gateway, s.drain_ms, s.roles_left_max) {
                (false, _, _) => "-".into(),
                (true, _, Some(left)) if left > 0 => format!("{left} left"),
                (true, Some(ms), _) => format!("{ms:.0}"),
                (true, None, _) => "-".into(),
            },
        ]);
    }
    println!(
        "pg-connect: pgbench -S -C (a new connection per transaction) direct / through pgbouncer / through the gateway\n"
    );
    println!(
        "machine: {} cores ({}), load average at start {}, at end {}",
        machine.nproc, machine.cpu_model, machine.loadavg_start, machine.loadavg_end
    );
    println!("{}; {}; {}\n", machine.postgres, machine.pgbench, machine.pgbouncer);
    print!("{}", table.render());
    println!();
    let notes = vec![
        format!(
            "pgbench -S -n -C -M simple -T {} -c N -j min(N,2), scale {}, {} repetitions, targets alternating \
             within each repetition (the first target rotates); figures are medians over the repetitions.",
            args.seconds, args.scale, args.reps
        ),
        "conn/s is pgbench's tps 'including reconnection times': with -C every transaction opens its own \
         connection, so it is connections per second with the connection's time counted."
            .to_owned(),
        "connect ms is pgbench's 'average connection time'. pgbench 15 does not count the connection in the \
         per-transaction log's time (-l), so p50/p99 are taken between consecutive transactions of each \
         client, from the log's end timestamps: close, connect, log in and the transaction (a client's first \
         transaction has no predecessor and is left out)."
            .to_owned(),
        format!(
            "CPU us/conn: utime+stime of the middle process from /proc/<pid>/stat (CLK_TCK {clk_tck}) over the \
             run, divided by the connections; for the gateway it is all of `airlock up` (its recorder records \
             every session; the control plane idles)."
        ),
        "roles at end: the gateway's session roles on the target when pgbench ended; drained ms: the time \
         from then until none was left (the drops catching up), polled every 20 ms."
            .to_owned(),
        "pgbouncer's new connection is a pooled one (pool_mode transaction; it logs in to Postgres only when \
         its pool grows), so the fair baseline for the gateway, which logs in to Postgres for every session, \
         is direct."
            .to_owned(),
        "pgbench, Postgres, pgbouncer and the gateway share this host's cores, so every figure includes their \
         scheduling on each other."
            .to_owned(),
    ];
    for n in &notes {
        println!("note: {n}");
    }
    let mut pool_modes = BTreeMap::new();
    pool_modes.insert("bench".to_owned(), "transaction".to_owned());
    let doc = Document {
        scenario: "pg-connect",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            seconds: args.seconds,
            reps: args.reps,
            clients: args.clients.clone(),
            scale: args.scale,
            drain_timeout_s: args.drain_timeout_s,
            pgbouncer_pool_mode: pool_modes,
        },
        notes,
        results: Results { machine, summaries, runs, roles_left_after_stop },
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

async fn measure(
    bench: &mut Bench,
    args: &Args,
    pgbench: &Path,
    pgbouncer_bin: &Path,
    airlock_bin: &Path,
    clk_tck: u64,
) -> anyhow::Result<(Vec<Run>, String)> {
    let filled = bench.fill_target(pgbench, args.scale).await?;
    let BenchDb { host: pg_host, port: pg_port, user: pg_user, name: database, template, server_version } = filled;

    // pgbouncer: `bench` is the database pgbench_command names for simple mode.
    let pgbouncer_port = free_addr()?.port();
    let config = pgbouncer::Config {
        port: pgbouncer_port,
        databases: vec![(
            "bench".to_owned(),
            pgbouncer::Config::database(&pg_host, pg_port, &database, &pg_user, "transaction"),
        )],
        max_client_conn: 200,
        default_pool_size: 20,
        ignore_startup_parameters: "extra_float_digits",
    };
    bench.pgbouncer = Some(pgbouncer::start(pgbouncer_bin, &bench.dir, &config).context("starting pgbouncer")?);

    let (gateway, api) = bench.start_gateway(airlock_bin, true).context("starting the gateway (`airlock up`)")?;
    let token = register(&api, &bench.dir.join("airlock-data"), &pg_host, pg_port, &database, &template)
        .await
        .context("registering the connection, grant and token")?;
    let endpoints = Endpoints::new(pg_host, pg_port, pg_user, database, pgbouncer_port, gateway, token);
    let mut watcher = session_roles::Watcher::connect(&template).await?;
    let drain_bound = Duration::from_secs(args.drain_timeout_s);

    // Warm up each target (and wait for the gateway to have applied the grant).
    for target in TARGETS {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = pgbench_command(pgbench, &endpoints, target, Mode::Simple)
                .args(["-S", "-n", "-C", "-c", "1", "-T", "1"])
                .output()
                .context("running pgbench")?;
            if out.status.success() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pgbench could not run against {}: {}",
                label(target),
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let warm = watcher.wait_drained(drain_bound).await?;
    eprintln!("  warm-up: {} session roles drained in {:?} ms", warm.at_start, warm.ms);

    let total = args.reps * args.clients.len() * TARGETS.len();
    eprintln!("  {total} runs of {} s each", args.seconds);
    let mut runs = Vec::with_capacity(total);
    for rep in 0..args.reps {
        for &clients in &args.clients {
            for &target in TARGETS.iter().cycle().skip(rep % TARGETS.len()).take(TARGETS.len()) {
                let pid = match target {
                    Target::Pgbouncer => bench.pgbouncer.as_ref().map(|p| p.pid),
                    Target::Gateway => bench.gateway.as_ref().map(|p| p.pid),
                    _ => None,
                };
                let mut run = one_run(pgbench, &endpoints, &bench.dir, args, rep, target, clients, pid, clk_tck)
                    .with_context(|| format!("pgbench -C against {} ({clients} clients)", label(target)))?;
                if target == Target::Gateway {
                    run.roles = Some(watcher.wait_drained(drain_bound).await?);
                }
                eprintln!(
                    "  rep {rep} {:<9} c={clients}: {:.0} conn/s, connect {:.2} ms, p50 {:.2} ms, p99 {:.2} ms{}{}",
                    label(target),
                    run.conn_per_s,
                    run.connect_avg_ms,
                    run.cycle_p50_ms,
                    run.cycle_p99_ms,
                    run.cpu_us_per_conn.map_or_else(String::new, |c| format!(", {c:.0} CPU us/conn")),
                    run.roles.map_or_else(String::new, |d| format!(
                        ", {} roles at end, drained in {}",
                        d.at_start,
                        d.ms.map_or_else(|| format!("- ({} left)", d.left), |ms| format!("{ms:.0} ms"))
                    )),
                );
                runs.push(run);
            }
        }
    }
    Ok((runs, server_version))
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    pgbench: &Path,
    e: &Endpoints,
    dir: &Path,
    args: &Args,
    rep: usize,
    target: Target,
    clients: u32,
    pid: Option<u32>,
    clk_tck: u64,
) -> anyhow::Result<Run> {
    let logs = dir.join(format!("log-{rep}-{}-{clients}", label(target)));
    std::fs::create_dir_all(&logs)?;
    let threads = clients.min(2);
    let mut command = pgbench_command(pgbench, e, target, Mode::Simple);
    command
        .args(["-S", "-n", "-C", "-M", "simple", "-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &args.seconds.to_string(), "-l", "--log-prefix"])
        .arg(logs.join("tx"));
    let run = run_pgbench(&mut command, pid, &logs, clk_tck)?;
    let connect_avg_ms = parse_after(&run.stdout, "average connection time =").unwrap_or(0.0);
    let mut cycles = cycle_times_ms(&run.log);
    cycles.sort_by(f64::total_cmp);
    let (connections, conn_per_s, latency_avg_ms, cpu_us_per_conn) =
        (run.transactions, run.tps, run.latency_avg_ms, run.cpu_us_per_tx);
    Ok(Run {
        rep,
        target,
        clients,
        connections,
        conn_per_s,
        latency_avg_ms,
        connect_avg_ms,
        cycle_p50_ms: report::percentile(&cycles, 50.0),
        cycle_p99_ms: report::percentile(&cycles, 99.0),
        tx_p50_ms: report::percentile(&run.latencies, 50.0),
        cpu_us_per_conn,
        roles: None,
    })
}

/// Per client, the time between the ends of consecutive transactions: with
/// -C each is a close, a connect (and login) and the transaction.
fn cycle_times_ms(log: &[LogLine]) -> Vec<f64> {
    let mut by_client: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for l in log {
        by_client.entry(l.client).or_default().push((l.transaction, l.end_us));
    }
    let mut out = Vec::new();
    for ends in by_client.values_mut() {
        ends.sort_unstable();
        out.extend(ends.windows(2).filter_map(|w| match w {
            [(_, a), (_, b)] => Some(b.saturating_sub(*a) as f64 / 1000.0),
            _ => None,
        }));
    }
    out
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let find = |rep: usize, target: Target, clients: u32| {
        runs.iter().find(|r| r.rep == rep && r.target == target && r.clients == clients)
    };
    let mut keys: Vec<(u32, Target)> = runs.iter().map(|r| (r.clients, r.target)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(clients, target)| {
            let own: Vec<&Run> = runs.iter().filter(|r| r.target == target && r.clients == clients).collect();
            let paired = |other: Target| {
                median(
                    own.iter()
                        .filter_map(|r| find(r.rep, other, clients).map(|o| r.conn_per_s / o.conn_per_s))
                        .collect(),
                )
            };
            let cpu: Vec<f64> = own.iter().filter_map(|r| r.cpu_us_per_conn).collect();
            let roles: Vec<Drained> = own.iter().filter_map(|r| r.roles).collect();
            let drained: Vec<f64> = roles.iter().filter_map(|d| d.ms).collect();
            Summary {
                target,
                clients,
                reps: own.len(),
                conn_per_s: median(own.iter().map(|r| r.conn_per_s).collect()),
                vs_direct: paired(Target::Direct),
                vs_pgbouncer: paired(Target::Pgbouncer),
                latency_avg_ms: median(own.iter().map(|r| r.latency_avg_ms).collect()),
                connect_avg_ms: median(own.iter().map(|r| r.connect_avg_ms).collect()),
                cycle_p50_ms: median(own.iter().map(|r| r.cycle_p50_ms).collect()),
                cycle_p99_ms: median(own.iter().map(|r| r.cycle_p99_ms).collect()),
                tx_p50_ms: median(own.iter().map(|r| r.tx_p50_ms).collect()),
                cpu_us_per_conn: if cpu.is_empty() { None } else { Some(median(cpu)) },
                roles_at_end: if roles.is_empty() {
                    None
                } else {
                    Some(median(roles.iter().map(|d| d.at_start as f64).collect()))
                },
                drain_ms: if drained.is_empty() { None } else { Some(median(drained)) },
                roles_left_max: roles.iter().map(|d| d.left).max(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::pg_throughput::parse_log_line;

    #[test]
    fn cycles_are_per_client_between_transaction_ends() {
        let text = "0 1 250 0 1795693486 182601\n1 1 300 0 1795693486 190000\n0 2 11978 0 1795693486 215954\n\
                    1 2 280 0 1795693486 200000\n0 3 358 0 1795693486 235705\ngarbage\n";
        let log: Vec<LogLine> = text.lines().filter_map(parse_log_line).collect();
        assert_eq!(log.len(), 5);
        assert_eq!(log[0], LogLine { client: 0, transaction: 1, time_us: 250, end_us: 1_795_693_486_182_601 });
        let mut cycles = cycle_times_ms(&log);
        cycles.sort_by(f64::total_cmp);
        assert_eq!(cycles, vec![10.0, 19.751, 33.353]);
    }
}
