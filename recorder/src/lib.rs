//! Airlock's session recorder. Today it only answers health checks: session
//! ingest, chunk storage and replay arrive with session recording.

use std::net::SocketAddr;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn start(addr: SocketAddr, cancel: CancellationToken, tracker: &TaskTracker) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the recorder to {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
            tracing::error!("failed to serve the recorder: {e:#}");
        }
    });
    tracing::info!(%bound, "recorder serving health checks (session ingest is not built yet)");
    Ok(bound)
}
