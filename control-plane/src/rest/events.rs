use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use serde::Deserialize;

use super::extract::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::service::{ControlPlane, EventPage, EventView};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// First `seq` to return (0 or 1: from the start).
    #[serde(default)]
    pub from_seq: u64,
    /// At most this many events (default 1000, at most 10000).
    pub limit: Option<u32>,
    /// When nothing is at or after `from_seq` yet, wait up to this long (at most 30000 ms) for it.
    pub wait_ms: Option<u64>,
}

/// The tenant's event log from a `seq`, with each event's chain hash.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    Authenticated(p): Authenticated,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<EventPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("from_seq", e.body_text()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let mut appended = cp.appended();
    let (records, head_seq) = loop {
        appended.mark_unchanged();
        let (records, head_seq) = cp.list_events(&p, q.from_seq, q.limit).await?;
        if !records.is_empty() || !cp.next_append(&mut appended, deadline).await {
            break (records, head_seq);
        }
    };
    Ok(axum::Json(EventPage { events: records.iter().map(EventView::from_record).collect(), head_seq }))
}
