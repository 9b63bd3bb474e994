use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, GrantInput, GrantView, RevokeInput};

/// Grant a principal a role on a connection now (tenant admins).
#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = GrantInput,
    responses((status = 201, body = GrantView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<GrantInput>,
) -> Result<(StatusCode, axum::Json<GrantView>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.create_grant(&p, input).await?)))
}

#[utoipa::path(get, path = "/v1/grants", tag = "grants", responses((status = 200, body = Vec<GrantView>)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<axum::Json<Vec<GrantView>>, ApiError> {
    Ok(axum::Json(cp.list_grants(&p)))
}

#[utoipa::path(get, path = "/v1/grants/{id}", tag = "grants",
    responses((status = 200, body = GrantView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<GrantView>, ApiError> {
    Ok(axum::Json(cp.get_grant(&p, &id)?))
}

/// End a grant now; every worker ends the sessions it admitted.
#[utoipa::path(post, path = "/v1/grants/{id}/revoke", tag = "grants", request_body = RevokeInput,
    responses((status = 200, body = GrantView), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<GrantView>, ApiError> {
    // The body is optional: an empty one revokes without a reason.
    let reason = if body.is_empty() {
        String::new()
    } else {
        serde_json::from_slice::<RevokeInput>(&body).map_err(|e| ApiError::invalid("", e.to_string()))?.reason
    };
    Ok(axum::Json(cp.revoke_grant(&p, &id, &reason).await?))
}
