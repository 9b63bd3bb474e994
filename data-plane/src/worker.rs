//! Starts a worker: the synchronizer and the health endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::bus::Bus;
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::projection::Projection;
use crate::sync::{GrpcSource, Synchronizer};

#[derive(Clone)]
pub struct Options {
    /// The control plane's gRPC URL, e.g. `http://127.0.0.1:8081`.
    pub control_plane_url: String,
    pub worker_token: String,
    /// Health, readiness and metrics.
    pub admin_addr: SocketAddr,
    pub reconcile_every: Duration,
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
    pub projection: Arc<Projection>,
}

pub async fn start(
    options: Options,
    bus: Arc<dyn Bus>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<RunningWorker> {
    let projection = Arc::new(Projection::new());
    let source = Arc::new(GrpcSource::new(&options.control_plane_url, &options.worker_token)?);
    let sync = Synchronizer { projection: projection.clone(), source, bus, reconcile_every: options.reconcile_every };
    tracker.spawn(sync.run(cancel.clone()));

    let listener = tokio::net::TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding the worker's health endpoint to {}", options.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let app = crate::health::router(projection.clone());
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
            tracing::error!("failed to serve the worker's health endpoint: {e:#}");
        }
    });
    tracing::info!(%admin_addr, "worker started");
    Ok(RunningWorker { admin_addr, projection })
}
