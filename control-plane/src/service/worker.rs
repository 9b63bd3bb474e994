//! What data-plane workers read: a snapshot of every tenant, the heads of every
//! tenant's log (to notice a missed event), and a tenant's events from a `seq`.

use airlock_core::TenantId;
use airlock_proto::EventRecord;

use super::ControlPlane;
use crate::error::ApiError;

pub struct TenantSnapshot {
    pub tenant: TenantId,
    pub seq: u64,
    pub state: Vec<u8>,
}

impl ControlPlane {
    pub fn snapshot(&self) -> Result<Vec<TenantSnapshot>, ApiError> {
        self.tenants.read(|t| {
            t.created()
                .map(|(id, s)| {
                    let state =
                        airlock_core::snapshot::encode(s).map_err(|e| ApiError::internal("encode a snapshot", e))?;
                    Ok(TenantSnapshot { tenant: *id, seq: s.seq, state })
                })
                .collect()
        })
    }

    /// Every tenant's last `seq`, read from the log itself.
    pub async fn heads(&self) -> Result<Vec<(TenantId, u64)>, ApiError> {
        let tenants = self.log.tenants().await.map_err(|e| ApiError::internal("list tenants", e))?;
        let mut heads = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let (seq, _) = self.log.head(tenant).await.map_err(|e| ApiError::internal("read a log head", e))?;
            heads.push((tenant, seq));
        }
        Ok(heads)
    }

    pub async fn backfill(&self, tenant: TenantId, from_seq: u64) -> Result<(Vec<EventRecord>, u64), ApiError> {
        self.read_events(tenant, from_seq, None).await
    }
}

/// A connection's stored credential, as the gateway needs it.
pub struct StoredCredential {
    pub user: String,
    pub password: String,
    pub version: u64,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("user", &self.user)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub async fn connection_credential(
        &self,
        tenant: TenantId,
        connection: airlock_core::ConnectionId,
    ) -> Result<StoredCredential, ApiError> {
        let known = self.tenants.read(|t| t.get(&tenant).is_some_and(|s| s.connections.contains_key(&connection)));
        if !known {
            return Err(ApiError::not_found(format!("connection {connection}")));
        }
        let secret = self
            .secrets
            .get(tenant, &format!("connection/{connection}"))
            .await
            .map_err(|e| ApiError::internal("read a credential", e))?
            .ok_or_else(|| ApiError::not_found(format!("credential of connection {connection}")))?;
        let credential: super::CredentialInput =
            serde_json::from_slice(&secret.plaintext).map_err(|e| ApiError::internal("decode a credential", e))?;
        Ok(StoredCredential { user: credential.user, password: credential.password, version: secret.version })
    }

    /// Appends a session's opening or closing, sent by the worker that serves
    /// it. Each has one place in the session's stream (the open first, the
    /// close right after it), so a worker that sends one again after losing
    /// the answer is refused with a conflict rather than recording it twice.
    pub async fn record_session(&self, tenant: TenantId, event: airlock_core::Event) -> Result<u64, ApiError> {
        let (stream, expected) = match &event {
            airlock_core::Event::SessionOpened { session } => {
                (airlock_core::event::stream::session(&session.id), crate::eventlog::ExpectedVersion::NoStream)
            }
            airlock_core::Event::SessionClosed { session_id, .. } => {
                (airlock_core::event::stream::session(session_id), crate::eventlog::ExpectedVersion::Exactly(1))
            }
            _ => return Err(ApiError::invalid("kind", "only session events")),
        };
        let (records, ()) =
            self.command(tenant, "worker", |_| Ok((super::Planned::one(stream, expected, event), ()))).await?;
        Ok(records.last().map_or(0, |r| r.seq))
    }
}

/// The longest statement that can be held for review.
pub const MAX_HELD_STATEMENT_BYTES: usize = 64 * 1024;

/// A held statement's review, as the worker needs it.
#[derive(Debug, Clone)]
pub struct HeldReview {
    pub review_id: airlock_core::ReviewId,
    pub expires_at_unix: i64,
    pub seq: u64,
}

impl ControlPlane {
    /// Opens a review of a statement a command rule holds. The rule is looked
    /// up in the tenant's current policy, so the review's approvers and timeout
    /// are the policy's, not the worker's word.
    pub async fn hold_command(
        &self,
        tenant: TenantId,
        session: airlock_core::SessionId,
        grant: airlock_core::GrantId,
        statement: String,
        rule: String,
    ) -> Result<HeldReview, ApiError> {
        use airlock_core::policy::CommandAction;
        use airlock_core::review::{HeldCommand, ReviewTerms, fingerprint};
        if statement.len() > MAX_HELD_STATEMENT_BYTES {
            return Err(ApiError::invalid("statement", format!("longer than {MAX_HELD_STATEMENT_BYTES} bytes")));
        }
        let now = self.now();
        let (records, held) = self
            .command(tenant, "worker", |state| {
                let g = state
                    .grants
                    .get(&grant)
                    .filter(|g| g.is_live(now))
                    .ok_or_else(|| ApiError::conflict(format!("grant {grant} is not live")))?;
                let policy = match state.policy.as_ref().map(|p| &p.parsed) {
                    Some(Ok(p)) => p,
                    _ => return Err(ApiError::conflict("the tenant has no usable policy")),
                };
                let (approvers, quorum, timeout_secs) = policy
                    .commands
                    .iter()
                    .find(|r| r.name == rule)
                    .and_then(|r| match &r.action {
                        CommandAction::Review { approvers, quorum, timeout_secs } => {
                            Some((approvers.clone(), *quorum, *timeout_secs))
                        }
                        _ => None,
                    })
                    .ok_or_else(|| ApiError::conflict(format!("the policy has no review rule {rule}")))?;
                let held = HeldCommand {
                    id: airlock_core::ReviewId::new(),
                    session_id: session,
                    grant_id: grant,
                    connection_id: g.connection_id,
                    subject: g.subject.clone(),
                    issuer: g.issuer.clone(),
                    fingerprint: fingerprint(&statement),
                    statement: statement.clone(),
                    rule: rule.clone(),
                    held_at_unix: now,
                    terms: ReviewTerms {
                        approvers,
                        quorum,
                        expires_at_unix: now.saturating_add(i64::try_from(timeout_secs).unwrap_or(i64::MAX)),
                    },
                };
                let event = airlock_core::Event::CommandHeld { command: held.clone() };
                let stream = airlock_core::event::stream::review(&held.id);
                Ok((super::Planned::one(stream, crate::eventlog::ExpectedVersion::NoStream, event), held))
            })
            .await?;
        tracing::info!(%tenant, review = %held.id, session = %session, rule = %held.rule, "statement held for review");
        Ok(HeldReview {
            review_id: held.id,
            expires_at_unix: held.terms.expires_at_unix,
            seq: records.last().map_or(0, |r| r.seq),
        })
    }
}

impl ControlPlane {
    /// Closes the review of a statement whose session stopped waiting for it
    /// (a cancel, or the client went away), so approvers are not asked to
    /// decide what can no longer run. Nothing happens to a review that is
    /// already closed or was held by another session.
    pub async fn withdraw_review(
        &self,
        tenant: TenantId,
        review_id: airlock_core::ReviewId,
        session: airlock_core::SessionId,
    ) -> Result<(), ApiError> {
        use airlock_core::review::{Outcome, Reviewed};
        let now = self.now();
        self.command(tenant, "worker", |state| {
            let open = state.reviews.get(&review_id).is_some_and(|r| {
                r.is_pending() && matches!(&r.what, Reviewed::Command(held) if held.session_id == session)
            });
            let events = if open {
                vec![airlock_core::Event::ReviewResolved { review_id, outcome: Outcome::Withdrawn, at_unix: now }]
            } else {
                Vec::new()
            };
            let stream = airlock_core::event::stream::review(&review_id);
            Ok((super::Planned { stream, expected: crate::eventlog::ExpectedVersion::Any, events }, ()))
        })
        .await?;
        Ok(())
    }
}
