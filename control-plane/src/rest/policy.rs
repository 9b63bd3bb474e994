use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;

use super::extract::Authenticated;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::service::{ControlPlane, PolicyView};

/// Apply a policy document (YAML; JSON is YAML too). An invalid one is refused naming the field and the reason.
#[utoipa::path(put, path = "/v1/policy", tag = "policy",
    request_body(content = String, content_type = "application/yaml"),
    responses((status = 200, body = PolicyView), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn apply(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::Json<PolicyView>, ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let accepted =
        ["application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "application/json", "text/plain"];
    if !accepted.contains(&content_type.as_str()) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the policy as Content-Type: application/yaml",
        ));
    }
    let source = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("", "the document is not UTF-8"))?;
    Ok(axum::Json(cp.apply_policy(&p, source).await?))
}

/// The tenant's current policy.
#[utoipa::path(get, path = "/v1/policy", tag = "policy",
    responses((status = 200, body = PolicyView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> Result<axum::Json<PolicyView>, ApiError> {
    Ok(axum::Json(cp.get_policy(&p)?))
}
