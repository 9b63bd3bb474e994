//! The worker's health, readiness and metrics: what it has applied, per tenant.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::postgres::gateway::Gateway;
use crate::projection::Projection;

/// What the endpoints report on: the projection, and the Postgres gateway when it runs.
#[derive(Clone)]
struct Worker {
    projection: Arc<Projection>,
    gateway: Option<Arc<Gateway>>,
}

pub fn router(projection: Arc<Projection>, gateway: Option<Arc<Gateway>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Worker { projection, gateway })
}

/// `{"status": "ok", "ready": true, "draining": false, "applied": {"<tenant>": seq}}`
async fn healthz(State(Worker { projection: p, gateway }): State<Worker>) -> impl IntoResponse {
    let applied: serde_json::Map<String, serde_json::Value> =
        p.applied().into_iter().map(|(t, seq)| (t.to_string(), seq.into())).collect();
    let draining = gateway.is_some_and(|g| g.draining());
    axum::Json(
        serde_json::json!({"status": "ok", "ready": p.is_ready() && !draining, "draining": draining, "applied": applied}),
    )
}

async fn readyz(State(Worker { projection: p, gateway }): State<Worker>) -> impl IntoResponse {
    if gateway.is_some_and(|g| g.draining()) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining before a stop")
    } else if p.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the projection")
    }
}

async fn metrics(State(Worker { projection: p, gateway }): State<Worker>) -> impl IntoResponse {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP airlock_worker_applied_seq The last event seq this worker applied, per tenant.");
    let _ = writeln!(out, "# TYPE airlock_worker_applied_seq gauge");
    for (tenant, seq) in p.applied() {
        let _ = writeln!(out, "airlock_worker_applied_seq{{tenant=\"{tenant}\"}} {seq}");
    }
    let c = p.counters();
    for (name, help, value) in [
        ("airlock_worker_events_applied_total", "Events applied.", &c.applied),
        ("airlock_worker_events_duplicate_total", "Events received again and ignored.", &c.duplicates),
        ("airlock_worker_gaps_total", "Gaps in seq noticed on the bus.", &c.gaps),
        ("airlock_worker_events_backfilled_total", "Events read from the control plane to fill gaps.", &c.backfilled),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
    }
    let _ = writeln!(out, "# HELP airlock_worker_ready 1 once the projection is loaded.");
    let _ = writeln!(out, "# TYPE airlock_worker_ready gauge\nairlock_worker_ready {}", u8::from(p.is_ready()));
    if let Some(gateway) = gateway {
        gateway.metrics(&mut out);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
