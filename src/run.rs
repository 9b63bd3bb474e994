//! Wires the parts into processes: `up` (everything, embedded), and each part
//! alone. Shutdown: Ctrl-C or SIGTERM cancels every task, and the process waits
//! for them to drain, for at most `stop_timeout`; a second Ctrl-C or SIGTERM
//! exits at once.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use airlock_proto::bus::{Bus, MemoryBus, NatsBus, NatsOptions, RecordKey};
use anyhow::Context;
use base64::Engine;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

pub async fn up(mut config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    raise_open_file_limit();
    let dir = config.data_dir.clone();
    create_private_dir(&dir)?;
    if config.database.url.is_empty() {
        config.database.url = format!("sqlite://{}", dir.join("airlock.db").display());
    }
    if config.secrets.master_key.is_empty() && config.secrets.master_key_file.is_none() {
        config.secrets.master_key_file = Some(dir.join("master.key"));
        ensure_random_file(&dir.join("master.key"), 32)?;
    }
    if config.worker.token.is_empty() && config.worker.token_file.is_none() {
        config.worker.token_file = Some(dir.join("worker.token"));
        ensure_random_file(&dir.join("worker.token"), 32)?;
    }
    // The worker's settings are checked before anything starts.
    let mut worker = worker_options(&config)?;
    check_drain(&config, config.stop_timeout / 2, "half of stop_timeout, the worker's share of airlock up's stop")?;
    let bus: Arc<dyn Bus> =
        if config.bus.nats_url.is_empty() { Arc::new(MemoryBus::new()) } else { nats(&config).await? };

    let life = lifecycle(config.stop_timeout);
    // The worker stops first, on its own: its sessions end, and their closes
    // reach the control plane and their recordings the recorder, which are
    // stopped after it.
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    // Every session is recorded: the worker records to this process's recorder,
    // and the control plane reads its recordings with its key.
    let rec =
        airlock_recorder::start(config.recorder(), Some(worker_token(&config)?), cancel.clone(), &tracker).await?;
    let mut options = control_plane_options(&config)?;
    if let Some(recordings) = options.recordings.as_mut() {
        recordings.trusted_key = Some(rec.public_key);
    }
    let cp = airlock_control_plane::server::start(options, bus.clone(), cancel.clone(), &tracker).await?;
    let cp_grpc = local_url(cp.grpc_addr, config.api.grpc_tls_cert_file.is_some());
    worker.control_plane_url = cp_grpc.clone();
    // Both are servers of this process, at an address of this machine
    // whichever it is; with TLS their certificates must name `localhost`.
    worker.grpc_tls.cleartext_off_loopback = true;
    worker.grpc_tls.server_name = Some("localhost".into());
    let rec_url = local_url(rec.addr, config.recorder.tls_cert_file.is_some());
    if let Some(recording) = worker.postgres.as_mut().and_then(|pg| pg.recording.as_mut()) {
        recording.recorder_url = rec_url.clone();
    }
    let w = airlock_data_plane::start(worker, bus, life.stop.clone(), &life.tracker).await?;

    let api_url = local_url(cp.api_addr, cp.api_tls);
    println!("Airlock is up.");
    println!("  REST API and web UI  {api_url}");
    println!("  gRPC API             {cp_grpc}");
    println!("  worker health        http://{}/healthz", w.admin_addr);
    println!("  session recorder     {rec_url} (key {})", rec.key_id);
    if let Some(pg) = w.pg_addr {
        println!("  Postgres gateway     postgres://<connection>.<role>@{pg}/<database> (password: an access token)");
    }
    println!("  admin token          {}", dir.join("admin.token").display());
    println!("Try: export AIRLOCK_URL={api_url} AIRLOCK_TOKEN=$(cat {})", dir.join("admin.token").display());
    if cp.api_tls {
        println!("     (and AIRLOCK_CA_FILE=<the CA of api.tls_cert_file> unless the system trusts it)");
    }
    life.stop.cancelled().await;
    // Half the stop's time for the worker, the rest for what it reports to.
    let worker_limit = life.limit / 2;
    let worker = drain(&life.tracker, worker_limit, &life.force, "the worker").await;
    if worker == Drained::Forced {
        return Ok(ExitCode::FAILURE);
    }
    cancel.cancel();
    let rest = drain(&tracker, life.limit - worker_limit, &life.force, "the control plane and the recorder").await;
    Ok(if worker == Drained::All && rest == Drained::All { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How `airlock up`'s own worker reaches a server of the same process
/// listening on `addr`: at that address, or over loopback when it listens on
/// every interface.
fn local_url(addr: std::net::SocketAddr, tls: bool) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port()))
}

pub async fn control_plane(config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    anyhow::ensure!(
        !config.database.url.is_empty(),
        "set database.url (or AIRLOCK_DATABASE__URL, or --database-url) to the event log's postgres:// URL"
    );
    let bus = nats(&config).await?;
    create_private_dir(&config.data_dir)?;
    let life = lifecycle(config.stop_timeout);
    airlock_control_plane::server::start(control_plane_options(&config)?, bus, life.stop.clone(), &life.tracker)
        .await?;
    Ok(life.wait("the control plane").await)
}

pub async fn gateway(config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    raise_open_file_limit();
    let options = worker_options(&config)?;
    check_drain(&config, config.stop_timeout, "stop_timeout")?;
    let bus = nats(&config).await?;
    let life = lifecycle(config.stop_timeout);
    airlock_data_plane::start(options, bus, life.stop.clone(), &life.tracker).await?;
    Ok(life.wait("the gateway").await)
}

pub async fn recorder(config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    let life = lifecycle(config.stop_timeout);
    airlock_recorder::start(config.recorder(), Some(worker_token(&config)?), life.stop.clone(), &life.tracker).await?;
    Ok(life.wait("the recorder").await)
}

fn control_plane_options(config: &Config) -> anyhow::Result<airlock_control_plane::server::Options> {
    let identity = config.identity.verifier_options(config.public_url());
    Ok(airlock_control_plane::server::Options {
        database_url: config.database.url.clone(),
        master_key: master_key(config)?,
        public_url: config.public_url(),
        api_addr: config.api.addr,
        api_tls: airlock_proto::transport::ServerTls::from_files(
            "api.tls_cert_file and api.tls_key_file",
            config.api.tls_cert_file.as_deref(),
            config.api.tls_key_file.as_deref(),
        )?,
        tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
        api_cleartext_off_loopback: config.api.cleartext_off_loopback,
        grpc_addr: config.api.grpc_addr,
        grpc_tls: airlock_proto::transport::ServerTls::from_files(
            "api.grpc_tls_cert_file and api.grpc_tls_key_file",
            config.api.grpc_tls_cert_file.as_deref(),
            config.api.grpc_tls_key_file.as_deref(),
        )?,
        grpc_cleartext_off_loopback: config.api.grpc_cleartext_off_loopback,
        worker_token: worker_token(config)?,
        identity,
        admin_token_file: Some(config.data_dir.join("admin.token")),
        reissue_admin_token: false,
        clock: airlock_core::clock::system(),
        recordings: Some(recordings(config)?),
        console: config.console.options()?,
    })
}

/// Where the control plane reads recordings, and the key it trusts: the
/// configured public key, else the recorder's own when this machine holds it.
fn recordings(config: &Config) -> anyhow::Result<airlock_control_plane::service::Recordings> {
    let store = config.recordings_store();
    store.validate().map_err(anyhow::Error::msg)?;
    let trusted_key = match &config.recordings.public_key_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(airlock_recorder::public_key_from_pem(&pem).with_context(|| format!("reading {}", path.display()))?)
        }
        None => {
            let own = store.signing_key_file();
            match own.exists().then(|| airlock_recorder::Signer::load(&own)).transpose() {
                Ok(signer) => signer.map(|s| s.verifying_key()),
                Err(e) => {
                    tracing::warn!("recordings cannot be verified: set recordings.public_key_file ({e:#})");
                    None
                }
            }
        }
    };
    Ok(airlock_control_plane::service::Recordings { store: airlock_recorder::Recordings::open(&store)?, trusted_key })
}

/// The least `worker.masked_message_max_bytes` may be: below it, ordinary
/// results (a wide row, an error with its detail) would end masked sessions.
const MASKED_MESSAGE_MAX_AT_LEAST: usize = 64 << 10;

fn worker_options(config: &Config) -> anyhow::Result<airlock_data_plane::Options> {
    use airlock_data_plane::postgres::tls::TlsSource;
    let tls = match (&config.worker.tls_cert_file, &config.worker.tls_key_file) {
        (Some(cert), Some(key)) => TlsSource::Files { cert: cert.clone(), key: key.clone() },
        (None, None) => TlsSource::SelfSigned {
            dir: config.data_dir.clone(),
            names: vec!["localhost".into(), config.worker.pg_addr.ip().to_string()],
        },
        _ => anyhow::bail!("set both worker.tls_cert_file and worker.tls_key_file, or neither"),
    };
    anyhow::ensure!(config.worker.admin_connections >= 1, "worker.admin_connections must be at least 1");
    anyhow::ensure!(config.worker.max_logins_per_address >= 1, "worker.max_logins_per_address must be at least 1");
    anyhow::ensure!(config.worker.max_logins >= 1, "worker.max_logins must be at least 1");
    let masked_message_max = config.worker.masked_message_max_bytes;
    anyhow::ensure!(
        (MASKED_MESSAGE_MAX_AT_LEAST..=airlock_data_plane::postgres::protocol::DEFAULT_MAX_BACKEND_MESSAGE_LEN)
            .contains(&masked_message_max),
        "worker.masked_message_max_bytes must be from 65536 (64 KiB) to 1073741824 (1 GiB), not {masked_message_max}"
    );
    let login_ipv6_prefix = u8::try_from(config.worker.login_ipv6_prefix)
        .ok()
        .filter(|bits| (1..=128).contains(bits))
        .with_context(|| {
            format!(
                "worker.login_ipv6_prefix must be from 1 to 128 (bits of an IPv6 address), not {}",
                config.worker.login_ipv6_prefix
            )
        })?;
    let gateway = airlock_data_plane::postgres::gateway::GatewayOptions {
        worker_id: config.worker_id(),
        allow_cleartext_off_loopback: config.worker.allow_cleartext_off_loopback,
        target_roots: Some(
            airlock_data_plane::postgres::upstream::target_roots(config.worker.target_ca_file.as_deref())
                .context("worker.target_ca_file")?,
        ),
        // Half the cores by default: the kernel's TCP work for each relayed message
        // needs cores too, and more session threads than that cost more CPU per
        // message than they add in throughput.
        session_threads: config.worker.session_threads.unwrap_or_else(|| {
            (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2).max(1)
        }),
        admin_connections: config.worker.admin_connections,
        login_timeout: config.worker.login_timeout,
        max_logins_per_address: config.worker.max_logins_per_address,
        max_logins: config.worker.max_logins,
        login_ipv6_prefix,
        masked_message_max,
        drain: config.worker.drain_timeout,
        ..Default::default()
    };
    Ok(airlock_data_plane::Options {
        control_plane_url: config.worker.control_plane_url.clone(),
        grpc_tls: airlock_proto::transport::ClientTls {
            ca_file: config.worker.grpc_ca_file.clone(),
            server_name: None,
            cleartext_off_loopback: config.worker.grpc_cleartext_off_loopback,
        },
        worker_token: worker_token(config)?,
        admin_addr: config.worker.admin_addr,
        reconcile_every: config.worker.reconcile_every,
        identity: config.identity.verifier_options(config.public_url()),
        postgres: Some(airlock_data_plane::PostgresOptions {
            listen: config.worker.pg_addr,
            tls: Some(tls),
            gateway,
            hook: None,
            recording: config.worker.recording.enabled.then(|| config.recording()),
        }),
    })
}

async fn nats(config: &Config) -> anyhow::Result<Arc<dyn Bus>> {
    anyhow::ensure!(!config.bus.nats_url.is_empty(), "set bus.nats_url (or AIRLOCK_BUS__NATS_URL, or --nats-url)");
    let key = RecordKey::from_worker_token(&worker_token(config)?);
    let mut options = NatsOptions::new(config.bus.nats_url.clone(), config.bus.prefix.clone(), key);
    options.ca_file = config.bus.nats_ca_file.clone();
    options.client_cert = match (&config.bus.nats_tls_cert_file, &config.bus.nats_tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => anyhow::bail!("set both bus.nats_tls_cert_file and bus.nats_tls_key_file, or neither"),
    };
    let bus = NatsBus::connect(&options).await.with_context(|| {
        // The URL may hold a password or a token.
        format!("connecting to NATS at {}", airlock_core::redact::redact_url(&options.url))
    })?;
    Ok(Arc::new(bus))
}

fn master_key(config: &Config) -> anyhow::Result<[u8; 32]> {
    let text = match &config.secrets.master_key_file {
        _ if !config.secrets.master_key.is_empty() => config.secrets.master_key.clone(),
        Some(path) => read_secret_file(path)?,
        None => anyhow::bail!(
            "set secrets.master_key (or AIRLOCK_SECRETS__MASTER_KEY) to 32 random bytes in base64, or secrets.master_key_file"
        ),
    };
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(text.trim()).context("secrets.master_key is not base64")?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("secrets.master_key must be exactly 32 bytes"))
}

fn worker_token(config: &Config) -> anyhow::Result<String> {
    if !config.worker.token.is_empty() {
        return Ok(config.worker.token.clone());
    }
    match &config.worker.token_file {
        Some(path) => Ok(read_secret_file(path)?.trim().to_owned()),
        None => anyhow::bail!(
            "set worker.token (or AIRLOCK_WORKER__TOKEN): the secret workers share with the control plane"
        ),
    }
}

fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Creates a file of `len` random bytes (base64) readable only by its owner, unless it exists.
fn ensure_random_file(path: &Path, len: usize) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    write_private(path, &text).with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{contents}")
}

/// Creates the data directory readable by its owner only. An existing one we
/// cannot restrict (a mount point owned by someone else) is used with a warning.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            anyhow::ensure!(existed, "restricting {}: {e}", dir.display());
            tracing::warn!(dir = %dir.display(), "could not make the data directory private: {e}");
        }
    }
    Ok(())
}

/// A gateway holds a few descriptors per session (the client's socket, the
/// target's, the recording spool file): the common soft limit of 1024 would cap
/// it at a few hundred sessions. The soft limit is raised to the hard one, as
/// far as the system allows; what is left is logged.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::info!(limit = ?limit.current, "open files limit");
        return;
    }
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open files limit"),
        Err(e) => tracing::warn!(limit = ?limit.current, "could not raise the open files limit: {e}"),
    }
}

fn init_logging(config: &Config) {
    let requested =
        std::env::var("AIRLOCK_LOG").unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn,tower_http=warn".into());
    // tokio-postgres logs statement text at debug, and the statements that make
    // session roles carry password verifiers: keep it quieter whatever is asked.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{requested},tokio_postgres=info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Refuses a `worker.drain_timeout` that leaves the worker too little of
/// `budget` (what a stop gives the worker) to end the sessions still open
/// and drop their roles: at least a quarter of it, and at least 5 s.
fn check_drain(config: &Config, budget: std::time::Duration, what: &str) -> anyhow::Result<()> {
    if let Some(drain) = config.worker.drain_timeout {
        let spare = (budget / 4).max(std::time::Duration::from_secs(5));
        anyhow::ensure!(
            drain.saturating_add(spare) <= budget,
            "worker.drain_timeout ({drain:?}) must leave at least {spare:?} of {what} ({budget:?}) to end the \
             sessions still open and drop their roles before the process gives up on them",
        );
    }
    Ok(())
}

/// A process's stop: the first Ctrl-C or SIGTERM cancels `stop`, a second
/// one `force`. Once stopping, the process waits at most `limit` (the
/// configuration's `stop_timeout`) for what it is doing to end: its
/// sessions' ends, their roles' drops, their closes on their way (their
/// recordings stay in the spool for the next start), requests being
/// answered. Each of those bounds its own steps; this bounds a part that
/// hangs all the same (a target that takes a role's drop and never
/// answers), so that a stop always ends.
struct Lifecycle {
    stop: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
    limit: std::time::Duration,
}

fn lifecycle(limit: std::time::Duration) -> Lifecycle {
    let (stop, force) = (CancellationToken::new(), CancellationToken::new());
    let (first, second) = (stop.clone(), force.clone());
    // One listener for both requests: a signal that comes between them is
    // kept for the second, not lost.
    let mut signals = StopSignals::listen();
    tokio::spawn(async move {
        signals.next().await;
        first.cancel();
        tracing::info!("shutting down (Ctrl-C or SIGTERM again exits at once)");
        signals.next().await;
        second.cancel();
    });
    Lifecycle { stop, force, tracker: TaskTracker::new(), limit }
}

impl Lifecycle {
    /// Until asked to stop, then until the tasks drain (see [`drain`]):
    /// success only if they all ended.
    async fn wait(self, what: &str) -> ExitCode {
        self.stop.cancelled().await;
        match drain(&self.tracker, self.limit, &self.force, what).await {
            Drained::All => ExitCode::SUCCESS,
            Drained::TimedOut | Drained::Forced => ExitCode::FAILURE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    All,
    TimedOut,
    Forced,
}

/// Waits for `tracker`'s tasks to end, for at most `limit`, or until `force`
/// (a second request to stop); says what was left.
async fn drain(tracker: &TaskTracker, limit: std::time::Duration, force: &CancellationToken, what: &str) -> Drained {
    tracker.close();
    tokio::select! {
        () = tracker.wait() => Drained::All,
        () = tokio::time::sleep(limit) => {
            tracing::warn!("{what} did not stop within {limit:?}: leaving {} tasks unfinished", tracker.len());
            Drained::TimedOut
        }
        () = force.cancelled() => {
            tracing::warn!("asked again to stop: leaving {} tasks of {what} unfinished", tracker.len());
            Drained::Forced
        }
    }
}

/// Ctrl-C and SIGTERM, each request to stop in turn.
struct StopSignals {
    #[cfg(unix)]
    listening: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listening = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!("cannot listen for Ctrl-C and SIGTERM: {e}");
                    None
                }
            };
            StopSignals { listening }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next request to stop (never, when the signals could not be listened for).
    async fn next(&mut self) {
        #[cfg(unix)]
        match &mut self.listening {
            Some((interrupt, terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{check_drain, local_url, worker_options};

    /// `worker.admin_connections` reaches the gateway; none at all is refused.
    #[test]
    fn admin_connections_come_from_the_configuration() {
        let mut config = crate::config::Config::default();
        config.worker.token = "w".into();
        config.worker.admin_connections = 2;
        let options = worker_options(&config).unwrap();
        assert_eq!(options.postgres.map(|p| p.gateway.admin_connections), Some(2));
        config.worker.admin_connections = 0;
        let e = worker_options(&config).unwrap_err();
        assert_eq!(e.to_string(), "worker.admin_connections must be at least 1");
    }

    /// `worker.max_logins_per_address` reaches the gateway; a cap no login
    /// could pass is refused.
    #[test]
    fn the_login_cap_comes_from_the_configuration() {
        let mut config = crate::config::Config::default();
        config.worker.token = "w".into();
        let cap = |config: &crate::config::Config| {
            worker_options(config).map(|o| o.postgres.map(|p| p.gateway.max_logins_per_address))
        };
        assert_eq!(cap(&config).unwrap(), Some(128));
        config.worker.max_logins_per_address = 3;
        assert_eq!(cap(&config).unwrap(), Some(3));
        config.worker.max_logins_per_address = 0;
        assert_eq!(cap(&config).unwrap_err().to_string(), "worker.max_logins_per_address must be at least 1");
        config.worker.max_logins_per_address = 3;
        let total =
            |config: &crate::config::Config| worker_options(config).map(|o| o.postgres.map(|p| p.gateway.max_logins));
        assert_eq!(total(&config).unwrap(), Some(2048));
        config.worker.max_logins = 10;
        assert_eq!(total(&config).unwrap(), Some(10));
        config.worker.max_logins = 0;
        assert_eq!(total(&config).unwrap_err().to_string(), "worker.max_logins must be at least 1");
    }

    /// `worker.masked_message_max_bytes` reaches the gateway, within what a
    /// result may need and what Postgres may send.
    #[test]
    fn the_masked_message_bound_comes_from_the_configuration() {
        let mut config = crate::config::Config::default();
        config.worker.token = "w".into();
        let masked = |config: &crate::config::Config| {
            worker_options(config).map(|o| o.postgres.map(|p| p.gateway.masked_message_max))
        };
        assert_eq!(masked(&config).unwrap(), Some(64 << 20), "64 MiB by default");
        config.worker.masked_message_max_bytes = 1 << 30;
        assert_eq!(masked(&config).unwrap(), Some(1 << 30));
        for wrong in [0, 1000, (1 << 30) + 1] {
            config.worker.masked_message_max_bytes = wrong;
            let e = masked(&config).unwrap_err().to_string();
            assert!(e.starts_with("worker.masked_message_max_bytes must be from 65536"), "{e}");
        }
    }

    /// `worker.drain_timeout` reaches the gateway ("off" by default), and one
    /// that leaves a stop no time to end the sessions after it is refused.
    #[test]
    fn the_drain_comes_from_the_configuration_and_fits_in_the_stop() {
        let dir = std::env::temp_dir().join(format!("airlock-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("airlock.toml");
        let load = |toml: &str| {
            std::fs::write(&file, toml).unwrap();
            let mut config = crate::config::Config::load(Some(&file)).unwrap();
            config.worker.token = "w".into();
            config
        };
        let drain = |config: &crate::config::Config| worker_options(config).unwrap().postgres.unwrap().gateway.drain;
        assert_eq!(drain(&load("")), None, "off by default");
        assert_eq!(drain(&load("[worker]\ndrain_timeout = \"off\"\n")), None);
        assert_eq!(drain(&load("[worker]\ndrain_timeout = \"OFF\"\n")), None);
        let config = load("stop_timeout = \"1m\"\n[worker]\ndrain_timeout = \"45s\"\n");
        assert_eq!(drain(&config), Some(std::time::Duration::from_secs(45)));
        assert!(check_drain(&config, config.stop_timeout, "stop_timeout").is_ok());
        let e = check_drain(&config, config.stop_timeout / 2, "half of stop_timeout").unwrap_err().to_string();
        assert!(
            e.starts_with("worker.drain_timeout (45s) must leave at least 7.5s of half of stop_timeout (30s)"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `worker.login_ipv6_prefix` reaches the gateway; a length no IPv6
    /// address has is refused.
    #[test]
    fn the_ipv6_prefix_logins_count_by_comes_from_the_configuration() {
        let mut config = crate::config::Config::default();
        config.worker.token = "w".into();
        let prefix = |config: &crate::config::Config| {
            worker_options(config).map(|o| o.postgres.map(|p| p.gateway.login_ipv6_prefix))
        };
        assert_eq!(prefix(&config).unwrap(), Some(64));
        config.worker.login_ipv6_prefix = 128;
        assert_eq!(prefix(&config).unwrap(), Some(128));
        for wrong in [0, 129, 300] {
            config.worker.login_ipv6_prefix = wrong;
            assert_eq!(
                prefix(&config).unwrap_err().to_string(),
                format!("worker.login_ipv6_prefix must be from 1 to 128 (bits of an IPv6 address), not {wrong}")
            );
        }
    }

    /// `worker.login_timeout`, as written in a file, reaches the gateway; a
    /// deadline no client could meet is refused when the file is read.
    #[test]
    fn the_login_timeout_comes_from_the_configuration() {
        let options = |config: &crate::config::Config| worker_options(config).unwrap().postgres.unwrap().gateway;
        let mut config = crate::config::Config::default();
        config.worker.token = "w".into();
        assert_eq!(options(&config).login_timeout, std::time::Duration::from_secs(60));

        let dir = std::env::temp_dir().join(format!("airlock-login-timeout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("airlock.toml");
        std::fs::write(&file, "[worker]\ntoken = \"w\"\nlogin_timeout = \"5s\"\n").unwrap();
        let config = crate::config::Config::load(Some(&file)).unwrap();
        assert_eq!(options(&config).login_timeout, std::time::Duration::from_secs(5));
        std::fs::write(&file, "[worker]\nlogin_timeout = \"0s\"\n").unwrap();
        let e = format!("{:#}", crate::config::Config::load(Some(&file)).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("duration must be greater than zero"), "{e}");
    }

    #[test]
    fn up_reaches_its_own_servers_over_loopback() {
        assert_eq!(local_url("127.0.0.1:8081".parse().unwrap(), false), "http://127.0.0.1:8081");
        assert_eq!(local_url("0.0.0.0:8081".parse().unwrap(), false), "http://127.0.0.1:8081");
        assert_eq!(local_url("[::]:8081".parse().unwrap(), false), "http://[::1]:8081");
        assert_eq!(local_url("10.1.2.3:8081".parse().unwrap(), false), "http://10.1.2.3:8081");
        assert_eq!(local_url("0.0.0.0:8082".parse().unwrap(), true), "https://127.0.0.1:8082");
    }
}
