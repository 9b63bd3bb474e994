use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, CreatedWebhook, DeliveryView, SlackInput, SlackView, WebhookInput, WebhookView};

/// Add an endpoint that receives the tenant's events, signed per Standard
/// Webhooks. The signing secret is in the reply, and only there.
#[utoipa::path(post, path = "/v1/webhooks", tag = "integrations", request_body = WebhookInput,
    responses((status = 201, body = CreatedWebhook), (status = 400, body = ErrorBody)))]
pub async fn add_webhook(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<(StatusCode, axum::Json<CreatedWebhook>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.add_webhook(&p, input).await?)))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "integrations", responses((status = 200, body = Vec<WebhookView>)))]
pub async fn list_webhooks(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<axum::Json<Vec<WebhookView>>, ApiError> {
    Ok(axum::Json(cp.list_webhooks(&p)?))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "integrations",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_webhook(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_webhook(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// Only deliveries with an id below this (to page back).
    pub before: Option<i64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<u32>,
}

/// Notification deliveries (webhooks and Slack), newest first, with every attempt.
#[utoipa::path(get, path = "/v1/deliveries", tag = "integrations", params(DeliveriesQuery),
    responses((status = 200, body = Vec<DeliveryView>), (status = 403, body = ErrorBody)))]
pub async fn list_deliveries(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    query: Result<axum::extract::Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<DeliveryView>>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid("", e.body_text()))?;
    Ok(axum::Json(cp.list_deliveries(&p, q.before, q.limit).await?))
}

/// Post review messages to a Slack channel and take decisions from its buttons.
#[utoipa::path(put, path = "/v1/integrations/slack", tag = "integrations", request_body = SlackInput,
    responses((status = 200, body = SlackView), (status = 400, body = ErrorBody)))]
pub async fn put_slack(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<SlackInput>,
) -> Result<axum::Json<SlackView>, ApiError> {
    Ok(axum::Json(cp.configure_slack(&p, input).await?))
}

#[utoipa::path(get, path = "/v1/integrations/slack", tag = "integrations",
    responses((status = 200, body = SlackView), (status = 404, body = ErrorBody)))]
pub async fn get_slack(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<axum::Json<SlackView>, ApiError> {
    Ok(axum::Json(cp.get_slack(&p)?))
}

#[utoipa::path(delete, path = "/v1/integrations/slack", tag = "integrations",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_slack(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<StatusCode, ApiError> {
    cp.remove_slack(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Slack's interactivity request URL: Approve and Deny presses arrive here,
/// signed with the app's signing secret (no bearer token).
#[utoipa::path(post, path = "/v1/integrations/slack/interactions", tag = "integrations", security(()),
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn slack_interaction(
    State(cp): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let outcome = cp.slack_interaction(header("x-slack-request-timestamp"), header("x-slack-signature"), &body).await?;
    // Slack ignores the body of a reply to a button press; the message itself
    // is updated by the notifier once the decision is in the log.
    Ok(axum::Json(serde_json::json!({"review": outcome.review.id, "state": outcome.review.state})))
}
