use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, IssuerInput, IssuerView};

/// Trust an OIDC issuer's tokens for this tenant.
#[utoipa::path(post, path = "/v1/issuers", tag = "issuers", request_body = IssuerInput,
    responses((status = 201, body = IssuerView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn trust(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<IssuerInput>,
) -> Result<(StatusCode, axum::Json<IssuerView>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.trust_issuer(&p, input).await?)))
}

#[utoipa::path(get, path = "/v1/issuers", tag = "issuers", responses((status = 200, body = Vec<IssuerView>)))]
pub async fn list(State(cp): State<Arc<ControlPlane>>, Authenticated(p): Authenticated) -> axum::Json<Vec<IssuerView>> {
    axum::Json(cp.list_issuers(&p))
}

#[utoipa::path(delete, path = "/v1/issuers/{issuer}", tag = "issuers",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(issuer): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_issuer(&p, &issuer).await?;
    Ok(StatusCode::NO_CONTENT)
}
