//! The REST API under `/v1/`, plus health, metrics, Airlock's own OIDC discovery
//! documents and the web UI. Every handler is a thin adapter: extract, call the
//! command handler in `service`, render.

mod access;
mod connections;
mod events;
mod extract;
mod grants;
mod health;
mod integrations;
mod issuers;
mod openapi;
mod policy;
mod sessions;
mod tenants;
mod tokens;
mod wellknown;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::service::ControlPlane;

pub use extract::{Authenticated, bearer};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Fails when the console's settings are not valid.
pub fn router(cp: Arc<ControlPlane>, console: &crate::web::ConsoleOptions) -> Result<Router, String> {
    Ok(Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/.well-known/jwks.json", get(wellknown::jwks))
        .route("/.well-known/openid-configuration", get(wellknown::openid_configuration))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route("/v1/tenants/{id}", get(tenants::get))
        .route("/v1/connections", post(connections::register).get(connections::list))
        .route(
            "/v1/connections/{connection}",
            get(connections::get).put(connections::update).delete(connections::remove),
        )
        .route("/v1/policy", get(policy::get).put(policy::apply))
        .route("/v1/issuers", post(issuers::trust).get(issuers::list))
        .route("/v1/issuers/{issuer}", axum::routing::delete(issuers::remove))
        .route("/v1/tokens", post(tokens::mint))
        .route("/v1/events", get(events::list))
        .route("/v1/access-requests", post(access::create).get(access::list))
        .route("/v1/access-requests/{id}", get(access::get))
        .route("/v1/reviews", get(access::list_reviews))
        .route("/v1/reviews/{id}", get(access::get_review))
        .route("/v1/reviews/{id}/decision", post(access::decide))
        .route("/v1/webhooks", post(integrations::add_webhook).get(integrations::list_webhooks))
        .route("/v1/webhooks/{id}", axum::routing::delete(integrations::remove_webhook))
        .route("/v1/deliveries", get(integrations::list_deliveries))
        .route(
            "/v1/integrations/slack",
            get(integrations::get_slack).put(integrations::put_slack).delete(integrations::remove_slack),
        )
        .route("/v1/integrations/slack/interactions", post(integrations::slack_interaction))
        .route("/v1/grants", post(grants::create).get(grants::list))
        .route("/v1/grants/{id}", get(grants::get))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::get))
        .route("/v1/sessions/{id}/timeline", get(sessions::timeline))
        .route("/v1/sessions/{id}/timeline.jsonl", get(sessions::timeline_jsonl))
        .route("/v1/sessions/{id}/verify", get(sessions::verify))
        .merge(crate::web::router(console)?)
        .fallback(|| async { crate::error::ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(cp))
}
