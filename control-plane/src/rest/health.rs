//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::service::ControlPlane;

pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready once the event log answers.
pub async fn readyz(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    match cp.log().tenants().await {
        Ok(_) => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!("failed to reach the event log: {e:#}");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "event log unreachable"})))
        }
    }
}

/// Prometheus text format.
pub async fn metrics(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    let mut out = String::from(
        "# HELP airlock_control_plane_tenant_seq The last seq of each tenant's log seen by this control plane.\n\
         # TYPE airlock_control_plane_tenant_seq gauge\n",
    );
    cp.tenants().read(|t| {
        for (id, state) in t.created() {
            out.push_str(&format!("airlock_control_plane_tenant_seq{{tenant=\"{id}\"}} {}\n", state.seq));
        }
    });
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
