//! Serves the web UI (`web/` at the repository root), embedded in the binary.

use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::service::ControlPlane;

const INDEX: &str = include_str!("../../web/index.html");

pub fn router() -> Router<Arc<ControlPlane>> {
    Router::new().route("/", get(|| async { Html(INDEX) }))
}
