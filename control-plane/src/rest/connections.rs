use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ConnectionInput, ConnectionView, ControlPlane};

/// Register a connection. Its credential is stored encrypted, outside the event log, and never returned.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", request_body = ConnectionInput,
    responses((status = 201, body = ConnectionView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<ConnectionInput>,
) -> Result<(StatusCode, axum::Json<ConnectionView>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.register_connection(&p, input).await?)))
}

#[utoipa::path(get, path = "/v1/connections", tag = "connections", responses((status = 200, body = Vec<ConnectionView>)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
) -> axum::Json<Vec<ConnectionView>> {
    axum::Json(cp.list_connections(&p))
}

/// One connection, by id or name.
#[utoipa::path(get, path = "/v1/connections/{connection}", tag = "connections",
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(connection): Path<String>,
) -> Result<axum::Json<ConnectionView>, ApiError> {
    Ok(axum::Json(cp.get_connection(&p, &connection)?))
}

/// Replace a connection's settings. Leaving out both credentials keeps the stored one.
#[utoipa::path(put, path = "/v1/connections/{connection}", tag = "connections", request_body = ConnectionInput,
    responses((status = 200, body = ConnectionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(connection): Path<String>,
    ApiJson(input): ApiJson<ConnectionInput>,
) -> Result<axum::Json<ConnectionView>, ApiError> {
    Ok(axum::Json(cp.update_connection(&p, &connection, input).await?))
}

#[utoipa::path(delete, path = "/v1/connections/{connection}", tag = "connections",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(connection): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_connection(&p, &connection).await?;
    Ok(StatusCode::NO_CONTENT)
}
