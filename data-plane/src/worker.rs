//! Starts a worker: the synchronizer and the health endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::bus::Bus;
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::projection::Projection;
use crate::session_events::SessionEvents;
use crate::sync::{GrpcSource, Synchronizer};

#[derive(Clone)]
pub struct Options {
    /// The control plane's gRPC URL, e.g. `http://127.0.0.1:8081`.
    pub control_plane_url: String,
    /// TLS toward the control plane and the recorder (`https://` URLs), and
    /// whether `http://` may leave this machine.
    pub grpc_tls: airlock_proto::transport::ClientTls,
    pub worker_token: String,
    /// Health, readiness and metrics.
    pub admin_addr: SocketAddr,
    pub reconcile_every: Duration,
    /// How tokens presented to the gateways are checked.
    pub identity: airlock_identity::VerifierOptions,
    /// The Postgres gateway, when this worker serves one.
    pub postgres: Option<PostgresOptions>,
}

#[derive(Clone)]
pub struct PostgresOptions {
    pub listen: SocketAddr,
    /// TLS toward clients (`None`: TLS refused, cleartext tokens only from loopback).
    pub tls: Option<crate::postgres::tls::TlsSource>,
    pub gateway: crate::postgres::gateway::GatewayOptions,
    /// What every statement passes through. `None`: the tenant's command rules,
    /// read from this worker's projection.
    pub hook: Option<Arc<dyn crate::postgres::hook::StatementHook>>,
    /// Where sessions are recorded: every session is, and one that cannot be
    /// is refused (or ended). The worker token and the worker id are this
    /// worker's, whatever the options say. `None` records nothing: only for
    /// tests and benchmarks that start a gateway without a recorder; the
    /// `airlock` binary always sets it.
    pub recording: Option<crate::recording::Options>,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("recording", &self.recording)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("control_plane_url", &self.control_plane_url)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

pub struct RunningWorker {
    pub admin_addr: SocketAddr,
    /// Where the Postgres gateway listens, when it runs.
    pub pg_addr: Option<SocketAddr>,
    pub projection: Arc<Projection>,
}

/// Starts a worker that runs until `cancel`: then its gateway drains (see
/// `Gateway::drain`), and everything stops.
pub async fn start(
    options: Options,
    bus: Arc<dyn Bus>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<RunningWorker> {
    // What every part of the worker stops at: `cancel`, once the gateway,
    // if any, has drained.
    let ending = CancellationToken::new();
    let draining: Arc<std::sync::OnceLock<Arc<crate::postgres::gateway::Gateway>>> = Arc::default();
    {
        let (ending, draining) = (ending.clone(), draining.clone());
        tracker.spawn(async move {
            cancel.cancelled().await;
            if let Some(gateway) = draining.get() {
                gateway.drain().await;
            }
            ending.cancel();
        });
    }
    let cancel = ending;
    let projection = Arc::new(Projection::new());
    let source = Arc::new(GrpcSource::new(&options.control_plane_url, &options.grpc_tls, &options.worker_token)?);
    let (pg_addr, gateway) = match &options.postgres {
        Some(pg) => {
            let (addr, gateway) = start_postgres(pg, &options, &projection, &source, &bus, &cancel, tracker).await?;
            let _ = draining.set(gateway.clone());
            (Some(addr), Some(gateway))
        }
        None => (None, None),
    };
    let sync = Synchronizer { projection: projection.clone(), source, bus, reconcile_every: options.reconcile_every };
    tracker.spawn(sync.run(cancel.clone()));

    let listener = tokio::net::TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding the worker's health endpoint to {}", options.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let app = crate::health::router(projection.clone(), gateway);
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
            tracing::error!("failed to serve the worker's health endpoint: {e:#}");
        }
    });
    tracing::info!(%admin_addr, "worker started");
    Ok(RunningWorker { admin_addr, pg_addr, projection })
}

/// Binds the Postgres gateway now and starts accepting once the projection is
/// loaded (clients wait in the listen backlog until then), after sweeping the
/// session roles an earlier run of this worker left behind.
async fn start_postgres(
    pg: &PostgresOptions,
    options: &Options,
    projection: &Arc<Projection>,
    source: &Arc<GrpcSource>,
    bus: &Arc<dyn Bus>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<(SocketAddr, Arc<crate::postgres::gateway::Gateway>)> {
    let listener = tokio::net::TcpListener::bind(pg.listen)
        .await
        .with_context(|| format!("binding the Postgres gateway to {}", pg.listen))?;
    let addr = listener.local_addr()?;
    let tls = match pg.tls.as_ref().map(crate::postgres::tls::acceptor).transpose()? {
        Some((acceptor, reloader)) => {
            tracker.spawn(reloader.run(pg.gateway.tls_reload_every, cancel.clone()));
            Some(acceptor)
        }
        None => None,
    };
    let verifier = airlock_identity::Verifier::new(options.identity.clone())?;
    let session_events = SessionEvents::start(source.as_ref().clone(), cancel.clone(), tracker);
    let recorder = match &pg.recording {
        Some(recording) => {
            let mut recording = recording.clone();
            recording.worker_token = options.worker_token.clone();
            recording.grpc_tls = options.grpc_tls.clone();
            recording.worker_id = pg.gateway.worker_id.clone();
            let spool = recording.spool_dir.clone();
            let recorder = crate::recording::Recorder::start(recording, cancel.clone(), tracker)
                .await
                .with_context(|| format!("starting session recording (spool {})", spool.display()))?;
            if let Some(restarted) = recorder.restarted_sessions() {
                tracker.spawn(crate::session_events::close_restarted(restarted, session_events.clone()));
            }
            Some(recorder)
        }
        None => {
            tracing::warn!("session recording is off: sessions through this gateway are not recorded");
            None
        }
    };
    let gateway = crate::postgres::gateway::Gateway::new(
        projection.clone(),
        verifier,
        source.as_ref().clone(),
        tls,
        pg.gateway.clone(),
        pg.hook.clone().unwrap_or_else(|| Arc::new(crate::postgres::policy_hook::PolicyHook::new(projection.clone()))),
        recorder,
        session_events,
        bus.clone(),
    );
    tracker.spawn(gateway.clone().retry_drops(cancel.clone()));
    tracker.spawn(gateway.clone().pass_cancels(cancel.clone()));
    let projection = projection.clone();
    let cancel = cancel.clone();
    let sessions = tracker.clone();
    let serving = gateway.clone();
    tracker.spawn(async move {
        let mut changes = projection.changes();
        while !projection.is_ready() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
        // Each target is swept before this run's first session role there.
        let sweeping = serving.clone();
        sessions.spawn(async move { sweeping.sweep().await });
        serving.serve(listener, cancel, sessions).await;
    });
    tracing::info!(%addr, "Postgres gateway listening");
    Ok((addr, gateway))
}
