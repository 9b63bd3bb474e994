//! `faults`: a deployment under load loses one component at a time to SIGKILL
//! and gets it back. Reported per fault: what kept working, what was refused,
//! how long recovery took; and at the end, whether anything acknowledged was
//! lost (an event the control plane answered with a `seq`, a statement whose
//! result a client received). A loss makes the run fail; timings never do.
//!
//! - `cluster.rs`: the deployment (Postgres, NATS, recorder, control plane, two gateways).
//! - `load.rs`: statement clients and the event writer.
//! - `analysis.rs`: what the samples say about one fault.
//! - `loss.rs`: the check of everything acknowledged, through the control plane's API.

mod analysis;
mod cluster;
mod load;
mod loss;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::analysis::{LoadReport, Recovery, Window};
use self::cluster::{Cluster, Component, GATEWAYS, Ports, TARGET_DB, TEMPLATE};
use self::load::{Acks, ClientOptions, Load, Log, Outcome};
use self::loss::{Api, EventLoss, StatementLoss};
use crate::report::{self, Document, Host, Table};
use crate::scenarios::pg_throughput::{find_airlock, register};

/// A load is steady again once its operations of this last while all succeeded.
const STEADY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Components to kill, in this order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![Fault::Nats, Fault::Recorder, Fault::Gateway,
        Fault::ControlPlane, Fault::Postgres])]
    pub faults: Vec<Fault>,
    /// How long each component stays dead before it is started again.
    #[arg(long, default_value_t = 3.0)]
    pub down_seconds: f64,
    /// Load before the first fault.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_seconds: f64,
    /// Load after a recovery, before the next fault.
    #[arg(long, default_value_t = 5.0)]
    pub settle_seconds: f64,
    /// How long after a restart the loads may take to be steady again before the run moves on.
    #[arg(long, default_value_t = 60.0)]
    pub recovery_timeout_seconds: f64,
    /// After the load stops: how long sessions get to close and recordings to be uploaded.
    #[arg(long, default_value_t = 30.0)]
    pub drain_seconds: f64,
    /// Statement clients, spread over the two gateways.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Pause between one client's statements.
    #[arg(long, default_value_t = 10)]
    pub statement_interval_ms: u64,
    /// Statements per session; then the client opens a new session.
    #[arg(long, default_value_t = 200)]
    pub statements_per_session: u64,
    /// Pause between event appends.
    #[arg(long, default_value_t = 50)]
    pub append_interval_ms: u64,
    /// Keep the deployment's directory (data and logs) after the run.
    #[arg(long)]
    pub keep: bool,
    /// The `airlock` binary (default: next to this binary, i.e. target/release/airlock).
    #[arg(long)]
    pub airlock_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    Nats,
    Recorder,
    /// The first gateway.
    Gateway,
    ControlPlane,
    Postgres,
}

impl Fault {
    fn component(self) -> Component {
        match self {
            Fault::Nats => Component::Nats,
            Fault::Recorder => Component::Recorder,
            Fault::Gateway => Component::Gateway(0),
            Fault::ControlPlane => Component::ControlPlane,
            Fault::Postgres => Component::Postgres,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Nats => "nats",
            Fault::Recorder => "recorder",
            Fault::Gateway => "gateway",
            Fault::ControlPlane => "control-plane",
            Fault::Postgres => "postgres",
        })
    }
}

#[derive(Debug, Serialize)]
struct Parameters {
    faults: Vec<Fault>,
    down_seconds: f64,
    warmup_seconds: f64,
    settle_seconds: f64,
    recovery_timeout_seconds: f64,
    drain_seconds: f64,
    clients: usize,
    statement_interval_ms: u64,
    statements_per_session: u64,
    append_interval_ms: u64,
    ports: Option<Ports>,
}

#[derive(Debug, Serialize)]
struct FaultReport {
    component: String,
    window: Window,
    /// Whether every load was steady again before the recovery timeout.
    steady: bool,
    loads: Vec<LoadReport>,
    timeline: Vec<analysis::Bucket>,
}

#[derive(Debug, Serialize)]
struct Results {
    faults: Vec<FaultReport>,
    /// Every session closed and every spool empty before the checks.
    drained: bool,
    events: EventLoss,
    statements: StatementLoss,
    /// Spool files the recorder refused (`*.failed`), per gateway.
    failed_spool_files: usize,
    /// `airlock_%` roles on the target after the gateways stopped.
    leftover_roles: Vec<String>,
}

pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.statements_per_session > 0, "--statements-per-session must be at least 1");
    let airlock = find_airlock(args.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("airlock-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cluster = Cluster::new(&dir, &airlock)?;
    eprintln!("  deployment in {}", dir.display());

    let result = tokio::select! {
        r = scenario(&mut cluster, args, &airlock) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    cluster.stop_all();
    let ports = cluster.ports.clone();
    drop(cluster);
    let keep = args.keep || !matches!(&result, Ok(r) if lost(r) == 0);
    if keep {
        eprintln!("  kept the deployment's data and logs in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let results = result?;

    print_report(&results, args);
    let notes = notes(args);
    for n in &notes {
        println!("note: {n}");
    }
    let doc = Document {
        scenario: "faults",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            faults: args.faults.clone(),
            down_seconds: args.down_seconds,
            warmup_seconds: args.warmup_seconds,
            settle_seconds: args.settle_seconds,
            recovery_timeout_seconds: args.recovery_timeout_seconds,
            drain_seconds: args.drain_seconds,
            clients: args.clients,
            statement_interval_ms: args.statement_interval_ms,
            statements_per_session: args.statements_per_session,
            append_interval_ms: args.append_interval_ms,
            ports: Some(ports),
        },
        notes,
        results,
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    let lost = lost(&doc.results);
    anyhow::ensure!(lost == 0, "{lost} acknowledged events or statements were LOST or UNLISTED (see above)");
    Ok(())
}

/// Acknowledged events and statements that are gone, or that Airlock's API
/// cannot show (statements in recordings of sessions the log does not list).
fn lost(r: &Results) -> usize {
    r.events.lost.len() + r.statements.lost + r.statements.unlisted
}

/// Starts the deployment and the load, breaks each component in turn, stops the load and checks for loss.
async fn scenario(cluster: &mut Cluster, args: &Args, airlock: &Path) -> anyhow::Result<Results> {
    eprintln!("  starting postgres, nats, the recorder, the control plane and {GATEWAYS} gateways");
    cluster.start_all().await?;
    let api = cluster.api_url();
    let token = register(
        &api,
        &cluster.data_dir(Component::ControlPlane),
        "127.0.0.1",
        cluster.ports.postgres,
        TARGET_DB,
        TEMPLATE,
    )
    .await
    .context("registering the connection, grant and token")?;
    let admin_token = cluster.admin_token()?;

    let log = Log::new(Instant::now());
    let acks = Acks::default();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let options = ClientOptions {
        interval: Duration::from_millis(args.statement_interval_ms),
        statements_per_session: args.statements_per_session,
    };
    for client in 0..args.clients {
        let gateway = client % GATEWAYS;
        let (addr, _) = *cluster.ports.gateways.get(gateway).context("no such gateway")?;
        tasks.spawn(load::statement_client(
            client,
            gateway,
            addr,
            token.clone(),
            options,
            log.clone(),
            acks.clone(),
            stop.clone(),
        ));
    }
    let interval = Duration::from_millis(args.append_interval_ms);
    tasks.spawn(load::appender(api.clone(), admin_token.clone(), interval, log.clone(), acks.clone(), stop.clone()));
    tasks.close();
    let mut loads: Vec<Load> = (0..GATEWAYS.min(args.clients)).map(|gateway| Load::Statements { gateway }).collect();
    loads.push(Load::Appends);

    eprintln!("  warming up for {} s", args.warmup_seconds);
    let warm = wait_steady(&log, &loads, 0, Duration::from_secs(60)).await;
    anyhow::ensure!(warm, "the load did not run cleanly before any fault: {:?}", last_failures(&log));
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_seconds)).await;

    let mut faults = Vec::new();
    for fault in &args.faults {
        let component = fault.component();
        eprintln!("  kill -9 {}, down {} s", component.label(), args.down_seconds);
        let kill_ms = log.now_ms();
        cluster.kill(component)?;
        tokio::time::sleep(Duration::from_secs_f64(args.down_seconds)).await;
        let restart_ms = log.now_ms();
        cluster.start(component).await.with_context(|| format!("restarting {}", component.label()))?;
        let ready_ms = log.now_ms();
        let timeout = Duration::from_secs_f64(args.recovery_timeout_seconds);
        let steady = wait_steady(&log, &loads, restart_ms, timeout).await;
        if !steady {
            eprintln!("  the load was not steady {timeout:?} after the restart: {:?}", last_failures(&log));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds)).await;
        let window = Window { kill_ms, restart_ms, ready_ms, end_ms: log.now_ms() };
        let samples = log.snapshot();
        let reports: Vec<LoadReport> = loads.iter().map(|l| analysis::load_report(&samples, *l, &window)).collect();
        for r in &reports {
            eprintln!(
                "    {:<22} down {:>11}  after {:>11}  recovery {}",
                r.load,
                r.while_down.cell(),
                r.after_restart.cell(),
                r.recovery.cell()
            );
        }
        faults.push(FaultReport {
            component: component.label(),
            window,
            steady,
            loads: reports,
            timeline: analysis::timeline(&samples, &loads, &window),
        });
    }

    eprintln!(
        "  stopping the load; waiting up to {} s for sessions to close and recordings to upload",
        args.drain_seconds
    );
    stop.cancel();
    tasks.wait().await;
    let admin = Api::new(&api, &admin_token)?;
    let spools: Vec<PathBuf> = (0..GATEWAYS).map(|i| cluster.data_dir(Component::Gateway(i)).join("spool")).collect();
    let spool_refs: Vec<&Path> = spools.iter().map(PathBuf::as_path).collect();
    let drained = loss::drain(&admin, &spool_refs, Duration::from_secs_f64(args.drain_seconds)).await?;
    eprintln!("  checking the log and the recordings");
    let events = loss::check_events(&admin, &acks.events(), airlock).await?;
    let recordings = cluster.data_dir(Component::Recorder).join("recordings");
    let statements = loss::check_statements(&admin, &acks.markers(), &recordings).await?;
    let failed_spool_files = spools.iter().map(|dir| loss::files_under(dir, "failed")).sum();
    // A clean stop of the gateways drops their session roles; none may be left.
    for i in 0..GATEWAYS {
        cluster.stop(Component::Gateway(i));
    }
    let leftover_roles = loss::leftover_roles(&cluster.pg_url(TARGET_DB)).await?;
    Ok(Results { faults, drained, events, statements, failed_spool_files, leftover_roles })
}

/// Waits until every load's operations of the last second (ending after `since_ms`)
/// all succeeded; false after `timeout`.
async fn wait_steady(log: &Log, loads: &[Load], since_ms: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let now = log.now_ms();
        let from = now.saturating_sub(u64::try_from(STEADY.as_millis()).unwrap_or(1000)).max(since_ms);
        let recent = log.since(from);
        let steady = now >= since_ms + 1000
            && loads.iter().all(|l| {
                let mine = recent.iter().filter(|s| s.load == *l);
                let (mut any, mut all_ok) = (false, true);
                for s in mine {
                    any = true;
                    all_ok &= s.outcome == Outcome::Ok;
                }
                any && all_ok
            });
        if steady {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The last failure of each load, for an error message.
fn last_failures(log: &Log) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in log.snapshot().iter().rev() {
        let text = match &s.outcome {
            Outcome::Ok => continue,
            Outcome::Refused(t) | Outcome::Error(t) => t,
        };
        if !out.iter().any(|(l, _)| *l == s.load.label()) {
            out.push((s.load.label(), text.clone()));
        }
    }
    out
}

fn print_report(r: &Results, args: &Args) {
    let mut table = Table::new(&[
        "component",
        "down s",
        "ready ms",
        "statements while down",
        "appends while down",
        "recovery: gw-1 ms",
        "gw-2 ms",
        "appends ms",
        "notes",
    ]);
    fn find<'a>(f: &'a FaultReport, label: &str) -> Option<&'a LoadReport> {
        f.loads.iter().find(|l| l.load == label)
    }
    for f in &r.faults {
        let mut down = analysis::Counts::default();
        for l in f.loads.iter().filter(|l| l.load.starts_with("statements")) {
            down.ok += l.while_down.ok;
            down.refused += l.while_down.refused;
            down.error += l.while_down.error;
        }
        let recovery = |label: &str| find(f, label).map_or_else(|| "-".into(), |l| l.recovery.cell());
        let statements_unbroken =
            f.loads.iter().filter(|l| l.load.starts_with("statements")).all(|l| l.recovery == Recovery::Unbroken);
        let mut notes = Vec::new();
        if statements_unbroken {
            notes.push("statements kept working");
        }
        if find(f, "appends").is_some_and(|l| l.recovery == Recovery::Unbroken) {
            notes.push("appends kept working");
        }
        if !f.steady {
            notes.push("NOT STEADY before the timeout");
        }
        table.row(vec![
            f.component.clone(),
            format!("{:.1}", (f.window.restart_ms - f.window.kill_ms) as f64 / 1000.0),
            (f.window.ready_ms - f.window.restart_ms).to_string(),
            down.cell(),
            find(f, "appends").map_or_else(|| "-".into(), |l| l.while_down.cell()),
            recovery("statements@gateway-1"),
            recovery("statements@gateway-2"),
            recovery("appends"),
            notes.join("; "),
        ]);
    }
    println!(
        "faults: {} statement clients over {GATEWAYS} gateways and an event writer, while each component is \
         killed (SIGKILL) for {} s and started again\n",
        args.clients, args.down_seconds
    );
    print!("{}", table.render());
    println!(
        "\n(while down: ok/refused/error operations from the kill to the restart; recovery: ms from the restart to"
    );
    println!(" the first success after the load's last failure; 'unbroken': not one failure)\n");
    println!("what the clients were told:");
    for f in &r.faults {
        for l in &f.loads {
            for m in l.messages.iter().take(3) {
                println!("  {:<14} {:<22} {:>5} x {} {}", f.component, l.load, m.count, m.kind, m.text);
            }
        }
    }

    let e = &r.events;
    let s = &r.statements;
    let lost = |n: usize| if n == 0 { "lost 0".to_owned() } else { format!("LOST {n}") };
    println!("\nloss (after the load stopped{}):", if r.drained { "" } else { "; NOT DRAINED within the timeout" });
    println!(
        "  events:     {} acknowledged, {} in the log as appended, {}; {} committed without an answer; head seq {}",
        e.acked,
        e.found,
        lost(e.lost.len()),
        e.committed_unanswered,
        e.head_seq
    );
    println!(
        "  chain:      {}",
        if e.chain_intact { e.chain_report.clone() } else { format!("BROKEN: {}", e.chain_report) }
    );
    println!(
        "  statements: {} acknowledged, {} in a listed session's recording, {}{}",
        s.acked,
        s.found,
        lost(s.lost),
        if s.unlisted == 0 {
            String::new()
        } else {
            format!(", UNLISTED {} (stored, in recordings of sessions the log does not list)", s.unlisted)
        }
    );
    for (label, markers) in [("lost", &s.lost_markers), ("unlisted", &s.unlisted_markers)] {
        if !markers.is_empty() {
            println!("              {label}: {}", markers.iter().take(10).cloned().collect::<Vec<_>>().join(", "));
        }
    }
    println!(
        "  sessions:   {} in the log, {} recordings in the store; {} intact, {} signed, {} still open in the log",
        s.sessions_listed,
        s.recordings_stored,
        s.recordings_intact,
        s.recordings_signed,
        s.sessions_open.len()
    );
    for (id, detail) in s.recordings_bad.iter().take(10) {
        println!("              NOT INTACT {id}: {detail}");
    }
    let reasons: Vec<String> = s.close_reasons.iter().map(|(r, n)| format!("{r} x{n}")).collect();
    println!("  closed as:  {}", reasons.join(", "));
    if r.failed_spool_files > 0 {
        println!("  spool:      {} sessions the recorder refused (*.failed)", r.failed_spool_files);
    }
    println!(
        "  roles:      {}\n",
        if r.leftover_roles.is_empty() {
            "no airlock_ role left on the target".to_owned()
        } else {
            format!("{} LEFT on the target: {}", r.leftover_roles.len(), r.leftover_roles.join(", "))
        }
    );
}

fn notes(args: &Args) -> Vec<String> {
    vec![
        format!(
            "Load: {} clients (client i through gateway i mod 2), each a session of {} simple-query statements \
             `SELECT '<marker>', name FROM faults_items WHERE id = ...` every {} ms, then a new session; one writer \
             appending PUT /v1/policy every {} ms. Operations time out after 5 s; a failed client backs off 100 ms.",
            args.clients, args.statements_per_session, args.statement_interval_ms, args.append_interval_ms
        ),
        "Each fault: SIGKILL to the component's process group, the load runs on, the component is started again on \
         its data directory and ports, then the run waits for every load to be steady (1 s of successes only) and \
         settles before the next fault."
            .to_owned(),
        "Acknowledged: a statement whose result row (with its marker) the client received; an append answered 2xx \
         with a seq. LOST: an acknowledged seq not holding the appended policy, an acknowledged marker in no \
         recording at all. UNLISTED: a marker in no listed session's timeline (over the API) but in the recorder's \
         store, in the recording of a session the log does not list."
            .to_owned(),
        "Everything runs on this host's cores; timings include every process being scheduled on the others.".to_owned(),
    ]
}
