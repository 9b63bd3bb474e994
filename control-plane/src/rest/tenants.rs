use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{ApiJson, Authenticated};
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, CreatedTenant, TenantView};

pub use crate::service::CreateTenantInput;

/// Create a tenant (platform admins only). The response carries the new tenant's admin token, once.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenantInput,
    responses((status = 201, body = CreatedTenant), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    ApiJson(input): ApiJson<CreateTenantInput>,
) -> Result<(StatusCode, axum::Json<CreatedTenant>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(cp.create_tenant(&p, &input.name).await?)))
}

/// Tenants the caller can see: all of them for a platform admin, its own otherwise.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", responses((status = 200, body = Vec<TenantView>)))]
pub async fn list(State(cp): State<Arc<ControlPlane>>, Authenticated(p): Authenticated) -> axum::Json<Vec<TenantView>> {
    axum::Json(cp.list_tenants(&p))
}

/// One tenant. Another tenant's id answers 404.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<TenantView>, ApiError> {
    Ok(axum::Json(cp.get_tenant(&p, &id)?))
}
