//! Sessions and their recordings, for auditors: the sessions the log records
//! (from the session index, brought up to date from the log before each
//! read), a session's timeline decoded from its recording a page at a time,
//! and the recording's verification against the recorder's key. Tenant admins
//! only; another tenant's session is not found.

use airlock_core::principal::Principal;
use airlock_core::session::Outcome;
use airlock_core::{Event, SessionId, TenantId};
use airlock_recorder::timeline::Entry;
use airlock_recorder::{Signature, TimelineReader};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{ControlPlane, require_tenant_admin};
use crate::error::{ApiError, ErrorCode};
use crate::session_index::{Change, SessionQuery, SessionRow};

pub const DEFAULT_SESSIONS: u32 = 50;
pub const MAX_SESSIONS: u32 = 500;
pub const DEFAULT_TIMELINE: usize = 100;

/// Where the control plane reads recordings (the recorder's store, read
/// directly), and the recorder's public key that verifies them.
#[derive(Debug, Clone)]
pub struct Recordings {
    pub store: airlock_recorder::Recordings,
    /// None: recordings are read, but their signatures cannot be checked.
    pub trusted_key: Option<VerifyingKey>,
}

/// `GET /v1/sessions` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    /// The principal's subject, exactly.
    pub principal: Option<String>,
    /// The connection's name or id.
    pub connection: Option<String>,
    /// Opened at or after (RFC 3339).
    pub since: Option<String>,
    /// Opened at or before (RFC 3339).
    pub until: Option<String>,
    /// `open`, `completed` (the client ended it) or `terminated` (Airlock ended it).
    pub outcome: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// A session as the log records it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    pub connection_id: String,
    /// The connection's name (its id when it has been removed since).
    pub connection: String,
    pub subject: String,
    pub issuer: String,
    pub grant_id: String,
    pub client_addr: String,
    pub worker_id: String,
    pub target_role: String,
    /// RFC 3339.
    pub opened_at: String,
    pub closed_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub close_reason: Option<String>,
    /// `open`, `completed` or `terminated`.
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionPage {
    /// Newest first.
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the page after; null on the last.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingState {
    /// Some of the session's recording is stored.
    pub stored: bool,
    /// Its manifest is stored and signed by the trusted recorder key (the session's recording is complete).
    pub signed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: SessionView,
    pub recording: RecordingState,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineView {
    pub entries: Vec<Entry>,
    /// Pass as `after` for more; null once the session ended and every entry was returned.
    pub next: Option<u64>,
    /// The session has no end yet: poll with `after=next` for its live tail.
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BadChunkView {
    pub index: u64,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyView {
    /// Every stored chunk is there, unchanged and chained, and no signature is bad
    /// (an open session's recording is intact and unsigned).
    pub intact: bool,
    /// Its manifest is signed by the trusted recorder key and seals the chain.
    pub signed: bool,
    /// Chunks found good.
    pub chunks: u64,
    pub first_bad_chunk: Option<BadChunkView>,
    pub detail: String,
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::invalid(field, format!("not an RFC 3339 time ({e}), e.g. 2024-05-01T12:00:00Z")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| ApiError::invalid(field, "out of range"))
}

/// A page cursor: the last session's `opened_at` (ms) and id.
fn encode_cursor(row: &SessionRow) -> String {
    format!("{}.{}", row.opened_at, row.session_id)
}

fn decode_cursor(text: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::invalid("cursor", "not a cursor this API returned");
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let id: SessionId = id.parse().map_err(|_| bad())?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

impl ControlPlane {
    fn recordings(&self) -> Result<&Recordings, ApiError> {
        self.options
            .recordings
            .as_ref()
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "this control plane has no recordings configured"))
    }

    /// Brings the session index up to date with the tenant's log.
    async fn index_sessions(&self, tenant: TenantId) -> Result<(), ApiError> {
        let failed = |e: anyhow::Error| ApiError::internal("index sessions", e);
        loop {
            let from = self.sessions.cursor(tenant).await.map_err(failed)?;
            let records = self.log.read(tenant, from + 1, 1000).await.map_err(failed)?;
            let Some(to) = records.last().map(|r| r.seq) else { return Ok(()) };
            let mut changes = Vec::new();
            for record in records.iter().filter(|r| r.stream.starts_with("session/")) {
                match airlock_proto::convert::decode_event(&record.payload).map_err(|e| failed(e.into()))? {
                    Event::SessionOpened { session } => {
                        changes.push(Change::Opened { session, seq: record.seq, at_ms: record.occurred_at_unix_ms });
                    }
                    Event::SessionClosed { session_id, duration_ms, bytes_from_client, bytes_to_client, reason } => {
                        changes.push(Change::Closed {
                            session_id: session_id.to_string(),
                            at_ms: record.occurred_at_unix_ms,
                            duration_ms,
                            bytes_from_client,
                            bytes_to_client,
                            reason,
                        });
                    }
                    _ => {}
                }
            }
            // False: another reader moved the cursor first; read from where it is now.
            self.sessions.apply(tenant, from, to, &changes).await.map_err(failed)?;
        }
    }

    fn session_view(&self, tenant: TenantId, row: SessionRow) -> SessionView {
        let connection = self
            .tenants
            .read(|t| t.get(&tenant).and_then(|s| s.find_connection(&row.connection_id)).map(|c| c.name.clone()))
            .unwrap_or_else(|| row.connection_id.clone());
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        SessionView {
            opened_at: rfc3339_ms(row.opened_at),
            closed_at: row.closed_at.map(rfc3339_ms),
            duration_ms: row.duration_ms.map(unsigned),
            bytes_from_client: unsigned(row.bytes_from_client),
            bytes_to_client: unsigned(row.bytes_to_client),
            id: row.session_id,
            connection_id: row.connection_id,
            connection,
            subject: row.subject,
            issuer: row.issuer,
            grant_id: row.grant_id,
            client_addr: row.client_addr,
            worker_id: row.worker_id,
            target_role: row.target_role,
            close_reason: row.close_reason,
            outcome: row.outcome,
        }
    }

    /// The caller's tenant's sessions, newest first.
    pub async fn list_sessions(&self, principal: &Principal, filter: &SessionFilter) -> Result<SessionPage, ApiError> {
        require_tenant_admin(principal)?;
        let tenant = principal.tenant_id;
        let connection_id = filter.connection.as_ref().map(|c| {
            self.tenants
                .read(|t| t.get(&tenant).and_then(|s| s.find_connection(c)).map(|c| c.id.to_string()))
                .unwrap_or_else(|| c.clone())
        });
        let outcome = match filter.outcome.as_deref() {
            None | Some("") => None,
            Some(o) => Some(
                Outcome::parse(o).ok_or_else(|| ApiError::invalid("outcome", "one of open, completed, terminated"))?,
            ),
        };
        let limit = filter.limit.unwrap_or(DEFAULT_SESSIONS).clamp(1, MAX_SESSIONS);
        let query = SessionQuery {
            subject: filter.principal.clone().filter(|p| !p.is_empty()),
            connection_id,
            since_ms: filter.since.as_deref().filter(|s| !s.is_empty()).map(|s| parse_time("since", s)).transpose()?,
            until_ms: filter.until.as_deref().filter(|s| !s.is_empty()).map(|s| parse_time("until", s)).transpose()?,
            outcome,
            before: filter.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_cursor).transpose()?,
            limit: limit + 1,
        };
        self.index_sessions(tenant).await?;
        let mut rows = self.sessions.list(tenant, &query).await.map_err(|e| ApiError::internal("list sessions", e))?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(encode_cursor) } else { None };
        Ok(SessionPage { sessions: rows.into_iter().map(|r| self.session_view(tenant, r)).collect(), next })
    }

    /// The session, in the caller's tenant.
    async fn find_session(&self, principal: &Principal, id: &str) -> Result<(SessionId, SessionRow), ApiError> {
        require_tenant_admin(principal)?;
        let not_found = || ApiError::not_found(format!("session {id}"));
        let session: SessionId = id.parse().map_err(|_| not_found())?;
        self.index_sessions(principal.tenant_id).await?;
        let row = self
            .sessions
            .get(principal.tenant_id, &session.to_string())
            .await
            .map_err(|e| ApiError::internal("read a session", e))?
            .ok_or_else(not_found)?;
        Ok((session, row))
    }

    pub async fn get_session(&self, principal: &Principal, id: &str) -> Result<SessionDetail, ApiError> {
        let (session, row) = self.find_session(principal, id).await?;
        let tenant = principal.tenant_id;
        let recordings = self.recordings()?;
        let store = &recordings.store;
        let storage = |e: airlock_recorder::Error| ApiError::internal("read a recording", e);
        let (stored, signed) = match store.manifest(tenant, session).await {
            Ok(Some(m)) => (true, recordings.trusted_key.as_ref().is_some_and(|k| m.check_signature(k).is_ok())),
            // An unreadable manifest is stored but not signed: verification says why.
            Err(airlock_recorder::Error::Manifest { .. }) => (true, false),
            Ok(None) => (store.stored(tenant, session).await.map_err(storage)?, false),
            Err(e) => return Err(storage(e)),
        };
        Ok(SessionDetail { session: self.session_view(tenant, row), recording: RecordingState { stored, signed } })
    }

    /// Up to `limit` timeline entries past frame `after`.
    pub async fn session_timeline(
        &self,
        principal: &Principal,
        id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<TimelineView, ApiError> {
        let (session, _) = self.find_session(principal, id).await?;
        let limit = limit.unwrap_or(DEFAULT_TIMELINE);
        let page = self
            .recordings()?
            .store
            .timeline(principal.tenant_id, session, after, limit)
            .await
            .map_err(|e| recording_error(&e))?;
        Ok(TimelineView { entries: page.entries, next: page.next, live: page.live })
    }

    /// The whole timeline, read a batch at a time.
    pub async fn session_timeline_reader(&self, principal: &Principal, id: &str) -> Result<TimelineReader, ApiError> {
        let (session, _) = self.find_session(principal, id).await?;
        Ok(self.recordings()?.store.timeline_reader(principal.tenant_id, session))
    }

    /// Checks the session's recording: every chunk, the chain, the signature.
    pub async fn verify_session(&self, principal: &Principal, id: &str) -> Result<VerifyView, ApiError> {
        let (session, _) = self.find_session(principal, id).await?;
        let recordings = self.recordings()?;
        let Some(key) = &recordings.trusted_key else {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "this control plane has no trusted recorder key (recordings.public_key_file)",
            ));
        };
        let report = match recordings.store.verify(principal.tenant_id, session, key).await {
            Ok(report) => report,
            Err(airlock_recorder::Error::NotFound { .. }) => {
                return Ok(VerifyView {
                    intact: false,
                    signed: false,
                    chunks: 0,
                    first_bad_chunk: None,
                    detail: format!("session {session}: nothing of its recording is stored"),
                });
            }
            Err(e) => return Err(recording_error(&e)),
        };
        Ok(VerifyView {
            intact: report.chain_intact() && !matches!(report.signature, Signature::Invalid { .. }),
            signed: matches!(report.signature, Signature::Valid { .. }),
            chunks: report.chunks,
            first_bad_chunk: report.first_bad_chunk.as_ref().map(|b| BadChunkView {
                index: b.index,
                key: b.key.clone(),
                reason: b.reason.clone(),
            }),
            detail: report.to_string(),
        })
    }
}

/// A recording that cannot be read: damaged (the client is told which chunk), or a store that failed.
pub(crate) fn recording_error(e: &airlock_recorder::Error) -> ApiError {
    match e {
        airlock_recorder::Error::Chunk { .. } | airlock_recorder::Error::Manifest { .. } => {
            ApiError::conflict(format!("the recording cannot be read: {e} (see /verify)"))
        }
        _ => ApiError::internal("read a recording", e),
    }
}
