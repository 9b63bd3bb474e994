//! Reading a tenant's log: a page from a `seq`, or a subscription that catches
//! up and then follows new events as they are appended.

use std::time::Duration;

use airlock_core::TenantId;
use airlock_core::principal::Principal;
use airlock_proto::EventRecord;
use base64::Engine;
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::{ControlPlane, require_tenant_admin};
use crate::error::ApiError;

pub const DEFAULT_PAGE: u32 = 1000;
pub const MAX_PAGE: u32 = 10_000;

/// One event as `GET /v1/events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream: String,
    pub stream_version: u64,
    /// RFC 3339.
    pub occurred_at: String,
    pub occurred_at_unix_ms: i64,
    pub actor: String,
    /// SHA-256 chain hash of this event, hex.
    pub hash: String,
    /// The previous event's hash, hex (zeros for the first).
    pub prev_hash: String,
    /// The stored protobuf bytes, base64; with the fields above, enough to recompute `hash`.
    pub payload: String,
    /// The event's contents, decoded.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The tenant's last `seq`.
    pub head_seq: u64,
}

impl EventView {
    pub fn from_record(r: &EventRecord) -> Self {
        let (event_type, data) = match airlock_proto::convert::decode_event(&r.payload) {
            Ok(e) => (e.type_name().to_owned(), serde_json::to_value(&e).unwrap_or_default()),
            Err(e) => ("undecodable".to_owned(), serde_json::Value::String(e.to_string())),
        };
        let occurred_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.occurred_at_unix_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default();
        Self {
            seq: r.seq,
            event_type,
            stream: r.stream.clone(),
            stream_version: r.stream_version,
            occurred_at,
            occurred_at_unix_ms: r.occurred_at_unix_ms,
            actor: r.actor.clone(),
            hash: hex::encode(&r.hash),
            prev_hash: hex::encode(&r.prev_hash),
            payload: base64::engine::general_purpose::STANDARD.encode(&r.payload),
            data,
        }
    }
}

impl ControlPlane {
    /// Events of the caller's tenant from `from_seq` (0 and 1 both mean the start).
    pub async fn list_events(
        &self,
        principal: &Principal,
        from_seq: u64,
        limit: Option<u32>,
    ) -> Result<(Vec<EventRecord>, u64), ApiError> {
        require_tenant_admin(principal)?;
        self.read_events(principal.tenant_id, from_seq, limit).await
    }

    pub(crate) async fn read_events(
        &self,
        tenant: TenantId,
        from_seq: u64,
        limit: Option<u32>,
    ) -> Result<(Vec<EventRecord>, u64), ApiError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let records =
            self.log.read(tenant, from_seq.max(1), limit).await.map_err(|e| ApiError::internal("read events", e))?;
        let (head, _) = self.log.head(tenant).await.map_err(|e| ApiError::internal("read the log head", e))?;
        Ok((records, head))
    }

    /// Every event of the caller's tenant from `from_seq`, then new ones as they
    /// are appended, until the receiver goes away.
    pub fn subscribe_events(
        self: &std::sync::Arc<Self>,
        principal: &Principal,
        from_seq: u64,
    ) -> Result<impl Stream<Item = Result<EventRecord, ApiError>> + use<>, ApiError> {
        require_tenant_admin(principal)?;
        Ok(self.follow(principal.tenant_id, from_seq))
    }

    /// Follows one tenant's log from `from_seq`: reads pages until caught up, then
    /// waits for the next append (or a short poll, for appends made by another
    /// control-plane instance). Ends when the server stops.
    pub(crate) fn follow(
        self: &std::sync::Arc<Self>,
        tenant: TenantId,
        from_seq: u64,
    ) -> impl Stream<Item = Result<EventRecord, ApiError>> + use<> {
        let cp = self.clone();
        let mut appended = self.appended();
        async_stream::stream! {
            let mut next = from_seq.max(1);
            loop {
                if cp.stopping.is_cancelled() {
                    yield Err(stopping());
                    return;
                }
                appended.mark_unchanged();
                let records = match cp.log.read(tenant, next, DEFAULT_PAGE).await {
                    Ok(r) => r,
                    Err(e) => {
                        yield Err(ApiError::internal("read events", e));
                        return;
                    }
                };
                if records.is_empty() {
                    let poll = tokio::time::Instant::now() + Duration::from_millis(500);
                    if !cp.next_append(&mut appended, poll).await {
                        yield Err(stopping());
                        return;
                    }
                    continue;
                }
                for r in records {
                    next = r.seq + 1;
                    yield Ok(r);
                }
            }
        }
    }
}

/// Why a stream of the log ended: the server stops.
fn stopping() -> ApiError {
    ApiError::new(crate::error::ErrorCode::Unavailable, "the control plane is stopping")
}
