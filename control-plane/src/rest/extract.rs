//! Extractors that answer in the API's error format instead of axum's plain text.

use std::sync::Arc;

use airlock_core::principal::Principal;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};
use crate::service::ControlPlane;

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The verified caller.
pub struct Authenticated(pub Principal);

impl FromRequestParts<Arc<ControlPlane>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &Arc<ControlPlane>) -> Result<Self, Self::Rejection> {
        let principal = cp.authenticate(bearer(&parts.headers)).await?;
        Ok(Authenticated(principal))
    }
}

/// JSON bodies whose errors name the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::new(ErrorCode::UnsupportedMediaType, "expected Content-Type: application/json"))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(json_error(&e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::invalid("", format!("malformed JSON: {}", e.body_text())))
            }
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(ErrorCode::PayloadTooLarge, "request body too large"))
            }
            Err(e) => Err(ApiError::invalid("", e.body_text())),
        }
    }
}

/// serde_path_to_error's text reads `Failed to deserialize the JSON body into the
/// target type: roles.ro: invalid type: ...`: keep the path as the field.
fn json_error(text: &str) -> ApiError {
    let text = text.trim_start_matches("Failed to deserialize the JSON body into the target type: ");
    match text.split_once(": ") {
        Some((path, reason)) if !path.contains(' ') => ApiError::invalid(path, reason),
        _ => ApiError::invalid("", text),
    }
}
