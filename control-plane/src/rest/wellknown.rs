//! Airlock as an OIDC issuer: discovery and the public keys of every tenant's
//! signing key, so anyone can verify the tokens Airlock mints.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;

use crate::service::ControlPlane;

pub async fn jwks(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    let keys: Vec<_> = cp.tenants().read(|t| t.created().flat_map(|(_, s)| s.signing_keys.values().cloned()).collect());
    axum::Json(airlock_identity::jwks_document(keys.iter()))
}

pub async fn openid_configuration(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    axum::Json(airlock_identity::openid_configuration(cp.public_url()))
}
