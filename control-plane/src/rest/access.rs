use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{AccessRequestInput, AccessRequestView, ControlPlane, DecisionInput, ReviewFilter, ReviewView};

/// Ask for a role on a connection. Policy grants it at once (`state: active`)
/// or opens a review (`state: pending`); the review has the request's id.
#[utoipa::path(post, path = "/v1/access-requests", tag = "access", request_body = AccessRequestInput,
    responses((status = 201, body = AccessRequestView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "policy refuses it; `rule` names the rule when one did"),
        (status = 404, body = ErrorBody)))]
pub async fn create(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<AccessRequestInput>,
) -> Result<(StatusCode, axum::Json<AccessRequestView>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.request_access(&p, input).await?)))
}

/// The requests the caller made, may review, or (tenant admins) all.
#[utoipa::path(get, path = "/v1/access-requests", tag = "access",
    responses((status = 200, body = Vec<AccessRequestView>)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<axum::Json<Vec<AccessRequestView>>, ApiError> {
    Ok(axum::Json(cp.list_access_requests(&p)))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// While the request is pending, wait up to this long (at most 30000 ms) for a decision.
    pub wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/access-requests/{id}", tag = "access", params(WaitQuery),
    responses((status = 200, body = AccessRequestView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<AccessRequestView>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("wait_ms", e.body_text()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let mut appended = cp.appended();
    loop {
        appended.mark_unchanged();
        let view = cp.get_access_request(&p, &id)?;
        // Woken by an append here (a decision, an expiry); the wait's short
        // bound also notices the clock passing the review's end.
        if view.state != "pending" || !cp.next_append(&mut appended, deadline).await {
            return Ok(axum::Json(view));
        }
    }
}

/// Reviews the caller may see; `?pending_for_me=true` for the ones they may decide now.
#[utoipa::path(get, path = "/v1/reviews", tag = "reviews", params(ReviewFilter),
    responses((status = 200, body = Vec<ReviewView>)))]
pub async fn list_reviews(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Query(filter): Query<ReviewFilter>,
) -> Result<axum::Json<Vec<ReviewView>>, ApiError> {
    Ok(axum::Json(cp.list_reviews(&p, &filter)))
}

#[utoipa::path(get, path = "/v1/reviews/{id}", tag = "reviews",
    responses((status = 200, body = ReviewView), (status = 404, body = ErrorBody)))]
pub async fn get_review(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<ReviewView>, ApiError> {
    Ok(axum::Json(cp.get_review(&p, &id)?))
}

/// Approve or deny. One denial denies; `quorum` distinct approvals approve.
/// Requesters cannot decide their own review.
#[utoipa::path(post, path = "/v1/reviews/{id}/decision", tag = "reviews", request_body = DecisionInput,
    responses((status = 200, body = ReviewView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already decided, closed or expired")))]
pub async fn decide(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<DecisionInput>,
) -> Result<axum::Json<ReviewView>, ApiError> {
    Ok(axum::Json(cp.decide_review(&p, &id, input, "api").await?))
}
