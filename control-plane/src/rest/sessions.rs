//! Sessions and their recordings: the list, one session, its timeline (a page,
//! or all of it as JSON lines), and the recording's verification.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, SessionDetail, SessionFilter, SessionPage, TimelineView, VerifyView};

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::invalid("", e.body_text()))
}

/// The tenant's sessions, newest first (tenant admins).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(SessionFilter),
    responses((status = 200, body = SessionPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    filter: QueryResult<SessionFilter>,
) -> Result<axum::Json<SessionPage>, ApiError> {
    Ok(axum::Json(cp.list_sessions(&p, &query(filter)?).await?))
}

/// One session, and whether its recording is stored and signed.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 200, body = SessionDetail), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionDetail>, ApiError> {
    Ok(axum::Json(cp.get_session(&p, &id).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Entries past this frame `seq` (the `next` of the previous page; 0 or absent: from the start).
    pub after: Option<u64>,
    /// At most this many entries (default 100, at most 1000; more only when one frame starts more).
    pub limit: Option<usize>,
}

/// A page of the session's timeline, decoded from its recording: statements with
/// their parameters, decisions, rows as the client saw them, errors and notices.
#[utoipa::path(get, path = "/v1/sessions/{id}/timeline", tag = "sessions", params(TimelineQuery),
    responses((status = 200, body = TimelineView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the recording is damaged")))]
pub async fn timeline(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
    q: QueryResult<TimelineQuery>,
) -> Result<axum::Json<TimelineView>, ApiError> {
    let q = query(q)?;
    Ok(axum::Json(cp.session_timeline(&p, &id, q.after.unwrap_or(0), q.limit).await?))
}

/// The whole timeline as JSON lines (one entry per line), streamed as it is decoded.
#[utoipa::path(get, path = "/v1/sessions/{id}/timeline.jsonl", tag = "sessions",
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 404, body = ErrorBody)))]
pub async fn timeline_jsonl(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut reader = cp.session_timeline_reader(&p, &id).await?;
    // The first batch is read before answering, so a damaged recording is an error, not a cut stream.
    let first = reader.next_entries().await.map_err(|e| crate::service::recording_error(&e))?;
    let lines = async_stream::stream! {
        let mut batch = first;
        while let Some(entries) = batch {
            let mut out = Vec::new();
            for entry in &entries {
                if serde_json::to_writer(&mut out, entry).is_ok() {
                    out.push(b'\n');
                }
            }
            yield Ok::<_, std::io::Error>(bytes::Bytes::from(out));
            batch = match reader.next_entries().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!("failed to read a recording while streaming it: {e}");
                    yield Err(std::io::Error::other("the recording could not be read"));
                    None
                }
            };
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// Checks the session's recording: each chunk, the hash chain, the manifest's
/// signature by the recorder's key. Names the first bad chunk.
#[utoipa::path(get, path = "/v1/sessions/{id}/verify", tag = "sessions",
    responses((status = 200, body = VerifyView), (status = 404, body = ErrorBody)))]
pub async fn verify(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<VerifyView>, ApiError> {
    Ok(axum::Json(cp.verify_session(&p, &id).await?))
}
