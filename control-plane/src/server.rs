//! Starts the control plane: opens the store (applying migrations), loads every
//! tenant's state, makes sure the default tenant exists, and serves REST and
//! gRPC while the outbox relay feeds the bus.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_identity::{Verifier, VerifierOptions};
use airlock_proto::bus::Bus;
use airlock_proto::tls_listener::TlsIncoming;
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;
use crate::service::{ControlPlane, ServiceOptions};
use crate::store::Store;

#[derive(Clone)]
pub struct Options {
    /// `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// Encrypts secrets at rest.
    pub master_key: [u8; 32],
    /// The URL Airlock is reached at (the `iss` of the tokens it mints).
    pub public_url: String,
    pub api_addr: SocketAddr,
    /// The REST API's certificate and key. Without them it listens only on
    /// loopback, unless `api_cleartext_off_loopback`.
    pub api_tls: Option<airlock_proto::transport::ServerTls>,
    /// How often the REST and gRPC APIs' certificate and key files are read
    /// again, so that a renewed pair is served without a restart.
    pub tls_reload_every: std::time::Duration,
    /// Cleartext HTTP on a non-loopback address: for a network that encrypts
    /// on its own, or a proxy beside the control plane that terminates TLS.
    pub api_cleartext_off_loopback: bool,
    pub grpc_addr: SocketAddr,
    /// The gRPC API's certificate and key. Without them it listens only on
    /// loopback, unless `grpc_cleartext_off_loopback`.
    pub grpc_tls: Option<airlock_proto::transport::ServerTls>,
    /// Cleartext gRPC on a non-loopback address: for a network that encrypts
    /// on its own (a service mesh).
    pub grpc_cleartext_off_loopback: bool,
    pub worker_token: String,
    pub identity: VerifierOptions,
    /// Where to write a platform admin token when one is issued on first start.
    pub admin_token_file: Option<PathBuf>,
    /// Issue a new platform admin token when `admin_token_file` is missing although
    /// the default tenant exists (`airlock up`, whose data directory is the user's own).
    /// Off for a deployed control plane, whose disk may be ephemeral: every restart
    /// would add a standing admin key.
    pub reissue_admin_token: bool,
    /// What grants and reviews expire by (the system clock, unless a test moves it).
    pub clock: Arc<dyn airlock_core::clock::Clock>,
    /// Where session recordings are read for replay and verification.
    pub recordings: Option<crate::service::Recordings>,
    /// The web console's settings (its OIDC sign-in).
    pub console: crate::web::ConsoleOptions,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("public_url", &self.public_url)
            .field("api_addr", &self.api_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// A running control plane.
pub struct Running {
    pub api_addr: SocketAddr,
    /// Whether the REST API serves TLS.
    pub api_tls: bool,
    pub grpc_addr: SocketAddr,
    pub control_plane: Arc<ControlPlane>,
}

pub async fn start(
    options: Options,
    bus: Arc<dyn Bus>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Running> {
    let api_listener = tokio::net::TcpListener::bind(options.api_addr)
        .await
        .with_context(|| format!("binding the REST API to {}", options.api_addr))?;
    start_on(api_listener, options, bus, cancel, tracker).await
}

/// [`start`] with the REST API on a listener the caller bound, and so knew
/// the address of before (`public_url` may name it); `options.api_addr` is
/// not used.
pub async fn start_on(
    api_listener: tokio::net::TcpListener,
    options: Options,
    bus: Arc<dyn Bus>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Running> {
    options.console.validate().map_err(anyhow::Error::msg)?;
    // Before the event log is opened: a server that may not listen as
    // configured stops early.
    let api_addr = api_listener.local_addr()?;
    let api_tls = airlock_proto::transport::rest_server_tls(
        api_addr,
        options.api_tls.as_ref(),
        options.api_cleartext_off_loopback,
    )?;
    let grpc_tls = airlock_proto::transport::server_tls(
        "the gRPC API",
        "api.grpc_",
        options.grpc_addr,
        options.grpc_tls.as_ref(),
        options.grpc_cleartext_off_loopback,
        &[b"h2"],
    )?;
    let store = Store::open(&options.database_url, options.master_key)
        .await
        .with_context(|| format!("opening the event log at {}", redact_url(&options.database_url)))?;
    let verifier = Verifier::new(options.identity.clone())?;
    let service = ServiceOptions {
        public_url: options.public_url.clone(),
        worker_token: options.worker_token.clone(),
        clock: options.clock.clone(),
        recordings: options.recordings.clone(),
    };
    let cp = ControlPlane::load(
        store.event_log(),
        store.secrets(),
        store.notify_store(),
        store.session_index(),
        verifier,
        service,
    )
    .await?;

    let wants_token = options.reissue_admin_token && options.admin_token_file.as_ref().is_some_and(|p| !p.exists());
    let issued = cp.bootstrap(wants_token).await.map_err(|e| anyhow::anyhow!("bootstrapping: {e}"))?;
    if let (Some(token), Some(path)) = (issued, &options.admin_token_file) {
        write_secret_file(path, &token).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(path = %path.display(), "wrote an admin token for the default tenant");
    }

    let relay = Relay::new(store.event_log(), bus, store.notify()).with_poll(store.outbox_poll());
    tracker.spawn(relay.run(cancel.clone()));

    tracker.spawn(expire_by_the_clock(cp.clone(), cancel.clone()));
    // Long polls and event streams end at the stop instead of holding it.
    let (waiting, stopped) = (cp.clone(), cancel.clone());
    tracker.spawn(async move {
        stopped.cancelled().await;
        waiting.stop_waiting();
    });

    let slack = crate::notify::slack_review::SlackDeliverer::new(
        store.secrets(),
        store.notify_store(),
        options.public_url.clone(),
    );
    let notifier =
        crate::notify::Notifier::new(store.event_log(), store.secrets(), store.notify_store(), cp.appended())?
            .with_planner(Arc::new(crate::notify::slack_review::SlackPlanner))
            .with_handler(crate::notify::slack_review::SLACK_KIND, Arc::new(slack));
    tracker.spawn(notifier.run(cancel.clone()));

    let app = crate::rest::router(cp.clone(), &options.console).map_err(anyhow::Error::msg)?;
    let serves_tls = api_tls.is_some();
    let shutdown = cancel.clone().cancelled_owned();
    match api_tls {
        Some((config, reloader)) => {
            tracker.spawn(reloader.run(options.tls_reload_every, cancel.clone()));
            let incoming = TlsIncoming::new("the REST API", api_listener, config, cancel.clone(), tracker)?;
            let listener = crate::https::TlsListener(incoming);
            tracker
                .spawn(async move { rest_stopped(axum::serve(listener, app).with_graceful_shutdown(shutdown).await) })
        }
        None => tracker
            .spawn(async move { rest_stopped(axum::serve(api_listener, app).with_graceful_shutdown(shutdown).await) }),
    };

    let grpc_listener = tokio::net::TcpListener::bind(options.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC API to {}", options.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let grpc = tonic::transport::Server::builder()
        .layer(tower_http::trace::TraceLayer::new_for_grpc())
        .add_routes(crate::grpc::routes(cp.clone()));
    let stopped = cancel.clone().cancelled_owned();
    match grpc_tls {
        Some((config, reloader)) => {
            tracker.spawn(reloader.run(options.tls_reload_every, cancel.clone()));
            let incoming = TlsIncoming::new("the gRPC API", grpc_listener, config, cancel.clone(), tracker)?;
            tracker.spawn(async move {
                grpc_stopped(grpc.serve_with_incoming_shutdown(incoming.into_stream(), stopped).await)
            })
        }
        None => tracker.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            grpc_stopped(grpc.serve_with_incoming_shutdown(incoming, stopped).await)
        }),
    };

    tracing::info!(%api_addr, api_tls = serves_tls, %grpc_addr, "control plane serving");
    Ok(Running { api_addr, api_tls: serves_tls, grpc_addr, control_plane: cp })
}

fn grpc_stopped(served: Result<(), tonic::transport::Error>) {
    if let Err(e) = served {
        tracing::error!("failed to serve the gRPC API: {e:#}");
    }
}

fn rest_stopped(served: std::io::Result<()>) {
    if let Err(e) = served {
        tracing::error!("failed to serve the REST API: {e:#}");
    }
}

/// The longest the expirer sleeps: grants and reviews appended by another
/// control-plane instance do not wake it.
const EXPIRY_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Records `GrantExpired` and expired reviews as their ends pass. Workers end
/// access by the clock on their own; this makes the end a fact in the log.
async fn expire_by_the_clock(cp: Arc<ControlPlane>, cancel: CancellationToken) {
    let mut appended = cp.appended();
    loop {
        if let Err(e) = cp.expire_due().await {
            tracing::warn!("failed to record expiries: {}", e.message);
        }
        let wait = match cp.next_deadline() {
            // Wake a moment after the second it ends: expiry compares whole seconds.
            Some(deadline) => {
                let secs = u64::try_from(deadline.saturating_sub(cp.now())).unwrap_or(0);
                std::time::Duration::from_secs(secs).saturating_add(std::time::Duration::from_millis(50))
            }
            None => EXPIRY_BACKSTOP,
        }
        .min(EXPIRY_BACKSTOP);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            changed = appended.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes a file only its owner can read.
fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

pub use airlock_core::redact::redact_url;
