//! Airlock's session recorder. Workers stream each session's frames (bytes
//! each way, decisions, the end) over `airlock.v1.RecorderService.Ingest`; the
//! recorder stores them as compressed, hash-chained chunks in object storage (a
//! local directory, or S3) and acknowledges a frame once the chunk holding it
//! is stored. When a session ends it signs a manifest of its chunks with its
//! Ed25519 key. [`Recordings`] reads sessions back a page at a time and
//! verifies them against the recorder's public key.
//!
//! - `chunk`: the chunk format (sans-IO, bounded), `manifest`: the signed manifest,
//!   `signing`: the key.
//! - `store`: object storage and its key layout.
//! - `writer`: one session's chain, buffer and recovery; `ingest`: the stream,
//!   one task per session, one writer per session process-wide.
//! - `read`, `verify`: replay and verification; `service`: the gRPC service.

pub mod chunk;
pub mod config;
pub mod error;
mod ingest;
pub mod manifest;
pub mod read;
pub mod replay;
mod service;
pub mod signing;
pub mod store;
pub mod timeline;
pub mod verify;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_proto::tls_listener::TlsIncoming;
use airlock_proto::v1::recorder_service_server::RecorderServiceServer;
use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Backend, Config, S3};
pub use error::Error;
pub use read::{Page, Recordings};
pub use replay::{TimelinePage, TimelineReader};
pub use signing::{Signer, key_id, public_key_from_pem};
pub use store::Store;
pub use verify::{BadChunk, Report, Signature};

/// The largest gRPC message the recorder reads: a frame at its largest, and
/// 1 MiB of other frames and opens batched with it.
const MAX_MESSAGE_BYTES: usize = chunk::MAX_ENCODED_FRAME_BYTES + (1 << 20);

/// A running recorder.
#[derive(Debug, Clone)]
pub struct Started {
    /// gRPC and `/healthz`.
    pub addr: SocketAddr,
    /// The key that verifies this recorder's manifests, and its id.
    pub public_key: VerifyingKey,
    pub key_id: String,
}

/// Starts the recorder on `config.addr`: `RecorderService` and `/healthz` on one
/// port (HTTP/2 for gRPC, HTTP/1.1 too for health checks). With `worker_token`,
/// every call must carry `authorization: Bearer <token>`.
///
/// Every task belongs to `tracker`; cancelling `cancel` stops accepting calls,
/// ends the open streams and stores every session's buffered frames.
pub async fn start(
    config: Config,
    worker_token: Option<String>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Started> {
    config.validate().map_err(anyhow::Error::msg)?;
    let tls = airlock_proto::transport::ServerTls::from_files(
        "recorder.tls_cert_file and recorder.tls_key_file",
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
    )?;
    let tls = airlock_proto::transport::server_tls(
        "the recorder",
        "recorder.",
        config.addr,
        tls.as_ref(),
        config.cleartext_off_loopback,
        // HTTP/1.1 too, for health checks.
        &[b"h2", b"http/1.1"],
    )?;
    let data_dir = config.data_dir();
    create_private_dir(&data_dir)?;
    let signer = Arc::new(match &config.signing_key_file {
        Some(path) => Signer::load(path)?,
        None => Signer::load_or_generate(&config.signing_key_file())?,
    });
    let store = Store::open(&config)?;
    store.probe().await.context("checking the recordings store")?;

    let ingest = Arc::new(ingest::Ingest::new(
        store.clone(),
        signer.clone(),
        config.chunk_bytes,
        config.chunk_interval(),
        tracker.clone(),
        cancel.clone(),
    ));
    let api = service::RecorderApi::new(ingest, Recordings::new(store.clone()), worker_token.as_deref());
    let grpc = RecorderServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let health = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let routes = tonic::service::Routes::from(health).add_service(grpc);

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding the recorder to {}", config.addr))?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder().accept_http1(true).add_routes(routes);
    let stopped = cancel.clone().cancelled_owned();
    match tls {
        Some((rustls, reloader)) => {
            tracker.spawn(reloader.run(airlock_proto::certs::RELOAD_EVERY, cancel.clone()));
            let incoming = TlsIncoming::new("the recorder", listener, rustls, cancel, tracker)?;
            tracker.spawn(async move {
                stopped_serving(server.serve_with_incoming_shutdown(incoming.into_stream(), stopped).await)
            })
        }
        None => tracker.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            stopped_serving(server.serve_with_incoming_shutdown(incoming, stopped).await)
        }),
    };
    tracing::info!(%addr, store = ?store, key_id = signer.key_id(), "recorder serving");
    Ok(Started { addr, public_key: signer.verifying_key(), key_id: signer.key_id().to_owned() })
}

fn stopped_serving(served: Result<(), tonic::transport::Error>) {
    if let Err(e) = served {
        tracing::error!("failed to serve the recorder: {e:#}");
    }
}

/// Creates the data directory readable by its owner only.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), "could not make the recorder's data directory private: {e}");
        }
    }
    Ok(())
}
