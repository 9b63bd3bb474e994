use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, MintTokenInput, MintedToken};

/// Mint a short-lived Airlock token for a workload (tenant admins only).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = MintTokenInput,
    responses((status = 201, body = MintedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn mint(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<MintTokenInput>,
) -> Result<(StatusCode, axum::Json<MintedToken>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.mint_token(&p, input).await?)))
}
