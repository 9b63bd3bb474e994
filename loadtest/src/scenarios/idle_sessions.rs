//! `idle-sessions`: N idle sessions held open through one `airlock up`, and
//! the gateway process's memory per session.
//!
//! `airlock up` runs as a child process (the control plane, one worker with
//! its gateway, and the recorder, all in that one process: the recorder's
//! per-session state is part of what a session costs there). Postgres allows
//! far fewer backends than the sessions this opens, so pgbouncer (transaction
//! pooling, `auth_type = any`, every client logged in to Postgres as
//! `postgres`) sits between the gateway and Postgres: the gateway still
//! creates each session's role on Postgres (through pgbouncer, with the
//! connection's admin credential) and logs in upstream as that role, but
//! pgbouncer lets the idle sessions share a handful of server connections.
//! What is measured is the gateway's own memory, which that does not change.

use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};

use super::pg_throughput::{Bench, READY_TIMEOUT, find_airlock, free_addr, gateway_options, loadavg, register};
use super::session_roles::{Drained, Watcher};
use super::{pgbouncer, session_roles};
use crate::report::{self, Document, Host, Table};

/// The target: at most this much gateway memory per idle session.
const TARGET_KIB_PER_SESSION: f64 = 64.0;
/// File descriptors beyond the sessions' (listeners, the control plane's
/// database, the recorder's files, the runtime).
const FD_MARGIN: u64 = 1024;
/// The gateway's file descriptors per session: the client's socket, the
/// upstream socket and, when recording, the session's spool file (one handle,
/// which its tap appends to and the uploader reads through).
const FDS_PER_SESSION: u64 = 2;
const FDS_PER_RECORDED_SESSION: u64 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Sessions to hold open at once.
    #[arg(long, default_value_t = 5000)]
    pub sessions: usize,
    /// Sessions being opened at a time.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Session counts at which the gateway's memory is also read (the last is always --sessions).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 2500])]
    pub checkpoints: Vec<usize>,
    /// Run the gateway with session recording off (`worker.recording.enabled = false`).
    #[arg(long)]
    pub unrecorded: bool,
    /// After the sessions close, how long to wait for their roles to be dropped.
    #[arg(long, default_value_t = 600)]
    pub drain_timeout_s: u64,
    /// The `airlock` binary (default: next to this binary, i.e. target/release/airlock).
    #[arg(long)]
    pub airlock_bin: Option<std::path::PathBuf>,
}

/// What `/proc/<pid>` says of the gateway process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct ProcStats {
    vm_rss_kib: u64,
    rss_anon_kib: u64,
    rss_file_kib: u64,
    vm_data_kib: u64,
    threads: u64,
    fds: u64,
}

/// The gateway with `sessions` idle sessions open.
#[derive(Debug, Clone, Serialize)]
struct Checkpoint {
    sessions: usize,
    /// Seconds from the first of these sessions being asked for to the last being open.
    open_s: f64,
    stats: ProcStats,
    /// (RSS here − RSS before the sessions) / sessions.
    kib_per_session: f64,
    /// RssAnon likewise.
    anon_kib_per_session: f64,
}

#[derive(Debug, Serialize)]
struct Machine {
    nproc: usize,
    loadavg_start: String,
    loadavg_end: String,
    pgbouncer: String,
    postgres: String,
    postgres_max_connections: String,
    nofile_soft: u64,
    nofile_hard: u64,
    gateway_max_open_files: String,
}

#[derive(Debug, Serialize)]
struct Parameters {
    sessions: usize,
    concurrency: usize,
    checkpoints: Vec<usize>,
    recording: bool,
    drain_timeout_s: u64,
    pgbouncer_max_client_conn: usize,
    pgbouncer_default_pool_size: usize,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    /// After one session was opened and closed, before the N.
    before: ProcStats,
    checkpoints: Vec<Checkpoint>,
    opened: usize,
    open_failures: usize,
    first_open_error: Option<String>,
    open_per_s: f64,
    /// `SELECT 1` on every open session after the last checkpoint.
    answered: usize,
    check_failures: usize,
    first_check_error: Option<String>,
    /// Sessions' roles on the target when all were open (should equal `opened`).
    roles_open: i64,
    close_s: f64,
    roles_drained: Drained,
    after_close: ProcStats,
    kib_per_session: f64,
    anon_kib_per_session: f64,
    target_kib_per_session: f64,
    /// Session roles of the run still on the target after the gateway stopped
    /// (dropped by the scenario so nothing is left behind).
    roles_left_after_stop: Option<usize>,
}

/// Runs the scenario and writes `idle-sessions.json` into `out`.
pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let fds_per_session = if args.unrecorded { FDS_PER_SESSION } else { FDS_PER_RECORDED_SESSION };
    let (nofile_soft, nofile_hard) = raise_nofile(args.sessions as u64, fds_per_session)?;
    let pgbouncer_bin = pgbouncer::find()?;
    let airlock_bin = find_airlock(args.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let loadavg_start = loadavg();
    let mut checkpoints: Vec<usize> =
        args.checkpoints.iter().copied().filter(|&c| c > 0 && c < args.sessions).collect();
    checkpoints.push(args.sessions);
    checkpoints.sort_unstable();
    checkpoints.dedup();

    let dir = std::env::temp_dir().join(format!("airlock-idle-sessions-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bench = Bench { dir, db: None, template: None, pgbouncer: None, gateway: None, forwarders: Vec::new() };
    let max_client_conn = args.sessions + 200;
    let pool_size = 10;
    let result =
        measure(&mut bench, args, &checkpoints, &pgbouncer_bin, &airlock_bin, max_client_conn, pool_size).await;
    let roles_left_after_stop = session_roles::stop_gateway_and_drop_leftovers(&mut bench).await;
    bench.stop().await;
    let mut r = result?;
    r.roles_left_after_stop = roles_left_after_stop;
    r.machine.nofile_soft = nofile_soft;
    r.machine.nofile_hard = nofile_hard;
    r.machine.loadavg_start = loadavg_start;
    r.machine.loadavg_end = loadavg();
    r.machine.pgbouncer = pgbouncer::version(&pgbouncer_bin);

    let mut table = Table::new(&[
        "sessions",
        "open s",
        "RSS MiB",
        "RssAnon MiB",
        "threads",
        "fds",
        "KiB/session",
        "anon KiB/session",
    ]);
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    table.row(vec![
        "0 (before)".into(),
        "-".into(),
        mib(r.before.vm_rss_kib),
        mib(r.before.rss_anon_kib),
        r.before.threads.to_string(),
        r.before.fds.to_string(),
        "-".into(),
        "-".into(),
    ]);
    for c in &r.checkpoints {
        table.row(vec![
            c.sessions.to_string(),
            format!("{:.1}", c.open_s),
            mib(c.stats.vm_rss_kib),
            mib(c.stats.rss_anon_kib),
            c.stats.threads.to_string(),
            c.stats.fds.to_string(),
            format!("{:.1}", c.kib_per_session),
            format!("{:.1}", c.anon_kib_per_session),
        ]);
    }
    table.row(vec![
        "0 (closed)".into(),
        "-".into(),
        mib(r.after_close.vm_rss_kib),
        mib(r.after_close.rss_anon_kib),
        r.after_close.threads.to_string(),
        r.after_close.fds.to_string(),
        "-".into(),
        "-".into(),
    ]);
    println!(
        "idle-sessions: {} idle sessions through one `airlock up` (recording {}), its memory per session\n",
        args.sessions,
        if args.unrecorded { "off" } else { "on" }
    );
    println!(
        "machine: {} cores, load average at start {}, at end {}; RLIMIT_NOFILE {} (hard {}); gateway max open \
         files {}",
        r.machine.nproc,
        r.machine.loadavg_start,
        r.machine.loadavg_end,
        r.machine.nofile_soft,
        r.machine.nofile_hard,
        r.machine.gateway_max_open_files
    );
    println!(
        "{} (max_connections {}); {}, pool_mode transaction, default_pool_size {pool_size}\n",
        r.machine.postgres, r.machine.postgres_max_connections, r.machine.pgbouncer
    );
    print!("{}", table.render());
    println!();
    println!(
        "opened {} of {} ({} failed{}), {:.0} sessions/s; SELECT 1 answered on {} of {} ({} failed{})",
        r.opened,
        args.sessions,
        r.open_failures,
        r.first_open_error.as_deref().map_or_else(String::new, |e| format!(", first: {e}")),
        r.open_per_s,
        r.answered,
        r.opened,
        r.check_failures,
        r.first_check_error.as_deref().map_or_else(String::new, |e| format!(", first: {e}")),
    );
    println!(
        "session roles on the target with all open: {}; closed in {:.1} s; roles dropped {}",
        r.roles_open,
        r.close_s,
        match r.roles_drained.ms {
            Some(ms) => format!("{:.1} s after the last close", ms / 1000.0),
            None => format!("not all: {} left after {} s", r.roles_drained.left, args.drain_timeout_s),
        }
    );
    if let Some(n) = r.roles_left_after_stop
        && n > 0
    {
        println!("{n} session roles were still on the target after the gateway stopped (dropped by the scenario)");
    }
    println!(
        "{} memory per idle session: {:.1} KiB RSS ({:.1} KiB anonymous), target <= {TARGET_KIB_PER_SESSION:.0} KiB",
        if r.kib_per_session <= TARGET_KIB_PER_SESSION { "within" } else { "over" },
        r.kib_per_session,
        r.anon_kib_per_session,
    );
    println!();
    let notes = vec![
        "The gateway process is all of `airlock up`: the control plane, one worker and its Postgres gateway, and \
         the recorder the worker records to, in one process; each session's recording (its spool file, the \
         uploader's and the recorder's state for it) is part of what the session costs."
            .to_owned(),
        format!(
            "Topology: this process -> the gateway -> pgbouncer (pool_mode transaction, auth_type any, every \
             client logged in to Postgres as postgres, max_client_conn {max_client_conn}) -> Postgres. Postgres \
             cannot take one backend per session; pgbouncer holds the gateway's upstream connections instead. \
             The gateway does what it does in production: a role per session created on Postgres through its \
             admin credential, an upstream login as that role (which pgbouncer accepts without checking), one \
             upstream socket per session."
        ),
        format!(
            "Each session: a login with the token over loopback (sslmode disable), then one `SELECT 1` (simple \
             protocol), opened {} at a time. Memory is read from /proc/<pid>/status (VmRSS, RssAnon, RssFile, \
             VmData, Threads) and /proc/<pid>/fd once two readings a second apart are within 1% (at most 15 s).",
            args.concurrency
        ),
        "KiB/session = (VmRSS with the sessions open - VmRSS before them) / sessions; 'before' is after one \
         session was opened and closed and its role dropped. The allocator keeps much of what the sessions \
         freed, so 'closed' is above 'before'."
            .to_owned(),
    ];
    for n in &notes {
        println!("note: {n}");
    }
    let doc = Document {
        scenario: "idle-sessions",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            sessions: args.sessions,
            concurrency: args.concurrency,
            checkpoints,
            recording: !args.unrecorded,
            drain_timeout_s: args.drain_timeout_s,
            pgbouncer_max_client_conn: max_client_conn,
            pgbouncer_default_pool_size: pool_size,
        },
        notes,
        results: r,
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    bench: &mut Bench,
    args: &Args,
    checkpoints: &[usize],
    pgbouncer_bin: &Path,
    airlock_bin: &Path,
    max_client_conn: usize,
    pool_size: usize,
) -> anyhow::Result<Results> {
    let db = airlock_testkit::pg::TestDb::create().await.context("creating a Postgres database")?;
    let options = PgConnectOptions::from_str(db.url()).context("parsing the test database URL")?;
    let (pg_host, pg_port, pg_user) =
        (options.get_host().to_owned(), options.get_port(), options.get_username().to_owned());
    let database = db.name().to_owned();
    let url = db.url().to_owned();
    bench.db = Some(db);
    let template = format!("idle_tpl_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url).await.context("connecting to the test database")?;
    sqlx::raw_sql(&format!("CREATE ROLE {template} NOLOGIN"))
        .execute(&mut admin)
        .await
        .context("creating the template role")?;
    bench.template = Some(template.clone());
    let (version,): (String,) = sqlx::query_as("SHOW server_version").fetch_one(&mut admin).await?;
    let (max_connections,): (String,) = sqlx::query_as("SHOW max_connections").fetch_one(&mut admin).await?;
    admin.close().await?;

    // pgbouncer under the database's own name, so the gateway's connection names the real database.
    let pgbouncer_port = free_addr()?.port();
    let config = pgbouncer::Config {
        port: pgbouncer_port,
        databases: vec![(
            database.clone(),
            pgbouncer::Config::database(&pg_host, pg_port, &database, &pg_user, "transaction"),
        )],
        max_client_conn,
        default_pool_size: pool_size,
        // sqlx sends it; pgbouncer 1.18 refuses a client with a startup parameter it does not know.
        ignore_startup_parameters: "extra_float_digits",
    };
    eprintln!("  pgbouncer on 127.0.0.1:{pgbouncer_port} (max_client_conn {max_client_conn})");
    bench.pgbouncer = Some(pgbouncer::start(pgbouncer_bin, &bench.dir, &config).context("starting pgbouncer")?);

    let (gateway, api) =
        bench.start_gateway(airlock_bin, !args.unrecorded).context("starting the gateway (`airlock up`)")?;
    let pid = bench.gateway.as_ref().map(|p| p.pid).context("the gateway is not running")?;
    let token = register(&api, &bench.dir.join("airlock-data"), "127.0.0.1", pgbouncer_port, &database, &template)
        .await
        .context("registering the connection (at pgbouncer's address), grant and token")?;
    let gateway_max_open_files = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" / "))
        })
        .unwrap_or_default();
    let connect = gateway_options(gateway, &token, &database).disable_statement_logging();
    let mut watcher = Watcher::connect(&template).await?;
    let drain_bound = Duration::from_secs(args.drain_timeout_s);

    // One session opened and closed (retried until the worker has applied the grant), its role dropped.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match open_one(&connect).await {
            Ok(c) => {
                c.close().await?;
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("the warm-up session through the gateway")),
        }
    }
    let warm = watcher.wait_drained(drain_bound).await?;
    anyhow::ensure!(warm.left == 0, "the warm-up session's role was not dropped within {drain_bound:?}");
    let before = settle(pid).await?;
    eprintln!("  before: RSS {} KiB, {} threads, {} fds", before.vm_rss_kib, before.threads, before.fds);

    let mut sessions: Vec<PgConnection> = Vec::with_capacity(args.sessions);
    let mut failures = 0;
    let mut first_error: Option<String> = None;
    let mut points = Vec::new();
    let opening = Instant::now();
    for &upto in checkpoints {
        let stage = Instant::now();
        let want = upto.saturating_sub(sessions.len() + failures);
        let opened: Vec<anyhow::Result<PgConnection>> = futures::stream::iter(0..want)
            .map(|_| open_one(&connect))
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        for o in opened {
            match o {
                Ok(c) => sessions.push(c),
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        let open_s = stage.elapsed().as_secs_f64();
        let stats = settle(pid).await?;
        let n = sessions.len().max(1) as f64;
        let point = Checkpoint {
            sessions: sessions.len(),
            open_s,
            stats,
            kib_per_session: (stats.vm_rss_kib as f64 - before.vm_rss_kib as f64) / n,
            anon_kib_per_session: (stats.rss_anon_kib as f64 - before.rss_anon_kib as f64) / n,
        };
        eprintln!(
            "  {} sessions ({failures} failed) in {open_s:.1} s: RSS {} KiB, {} threads, {} fds, {:.1} KiB/session",
            sessions.len(),
            stats.vm_rss_kib,
            stats.threads,
            stats.fds,
            point.kib_per_session
        );
        points.push(point);
        anyhow::ensure!(!sessions.is_empty(), "no session could be opened: {}", first_error.unwrap_or_default());
    }
    let open_total_s = opening.elapsed().as_secs_f64();
    let roles_open = watcher.count().await?;

    // Every session still answers.
    let checks: Vec<Result<(), sqlx::Error>> = futures::stream::iter(sessions.iter_mut())
        .map(|c| async move { sqlx::raw_sql("SELECT 1").execute(c).await.map(|_| ()) })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let check_failures = checks.iter().filter(|r| r.is_err()).count();
    let first_check_error = checks.iter().find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
    eprintln!("  SELECT 1 on every session: {check_failures} failed");

    let opened = sessions.len();
    let closing = Instant::now();
    futures::stream::iter(sessions)
        .map(|c| async move {
            let _ = c.close().await;
        })
        .buffer_unordered(args.concurrency.max(64))
        .collect::<Vec<()>>()
        .await;
    let close_s = closing.elapsed().as_secs_f64();
    eprintln!("  closed {opened} sessions in {close_s:.1} s; waiting for their roles to be dropped");
    let roles_drained = watcher.wait_drained(drain_bound).await?;
    let after_close = settle(pid).await?;
    let last = points.last().cloned().context("no checkpoint")?;
    Ok(Results {
        machine: Machine {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            pgbouncer: String::new(),
            postgres: format!("PostgreSQL {version}"),
            postgres_max_connections: max_connections,
            nofile_soft: 0,
            nofile_hard: 0,
            gateway_max_open_files,
        },
        before,
        kib_per_session: last.kib_per_session,
        anon_kib_per_session: last.anon_kib_per_session,
        checkpoints: points,
        opened,
        open_failures: failures,
        first_open_error: first_error,
        open_per_s: (opened + failures) as f64 / open_total_s.max(f64::EPSILON),
        answered: opened - check_failures,
        check_failures,
        first_check_error,
        roles_open,
        close_s,
        roles_drained,
        after_close,
        target_kib_per_session: TARGET_KIB_PER_SESSION,
        roles_left_after_stop: None,
    })
}

/// A session through the gateway that has answered one `SELECT 1`.
async fn open_one(options: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    let mut c = PgConnection::connect_with(options).await.context("logging in through the gateway")?;
    sqlx::raw_sql("SELECT 1").execute(&mut c).await.context("SELECT 1")?;
    Ok(c)
}

/// Raises this process's RLIMIT_NOFILE soft limit to what the run needs
/// (children inherit it): this process needs a socket per session, the
/// gateway `fds_per_session` per session. The soft limit goes up to the hard
/// limit; past it, the hard limit too where that is allowed (as root).
/// Returns (soft, hard) as set.
fn raise_nofile(sessions: u64, fds_per_session: u64) -> anyhow::Result<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    let need = fds_per_session * sessions + FD_MARGIN;
    let wanted = if hard >= need {
        Rlimit { current: Some(hard), maximum: limit.maximum }
    } else {
        Rlimit { current: Some(need), maximum: Some(need) }
    };
    if soft < wanted.current.unwrap_or(u64::MAX) {
        setrlimit(Resource::Nofile, wanted).map_err(|e| {
            anyhow::anyhow!(
                "RLIMIT_NOFILE is {soft} (hard {hard}), and {sessions} sessions need about {need} file descriptors in \
                 the gateway ({fds_per_session} per session: the client's socket, the upstream socket{}, plus \
                 {FD_MARGIN}); raising it failed ({e}): raise the hard limit (`ulimit -Hn {need}` as root, \
                 LimitNOFILE= for a service) or pass fewer --sessions",
                if fds_per_session > 2 { ", the recording's spool file written and read" } else { "" }
            )
        })?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((now.current.unwrap_or(u64::MAX), now.maximum.unwrap_or(u64::MAX)))
}

/// Reads the process's memory, threads and open files.
fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the gateway exited?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Ok(ProcStats {
        vm_rss_kib: field("VmRSS"),
        rss_anon_kib: field("RssAnon"),
        rss_file_kib: field("RssFile"),
        vm_data_kib: field("VmData"),
        threads: field("Threads"),
        fds,
    })
}

/// The process's stats once its RSS has settled: two readings a second apart
/// within 1% of each other (at most 15 readings).
async fn settle(pid: u32) -> anyhow::Result<ProcStats> {
    let mut last = proc_stats(pid)?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = proc_stats(pid)?;
        let (a, b) = (last.vm_rss_kib as f64, now.vm_rss_kib as f64);
        last = now;
        if (b - a).abs() <= a * 0.01 {
            break;
        }
    }
    Ok(last)
}
