//! Access requests and their reviews.
//!
//! Any principal of a tenant may ask for a role on a connection. The policy's
//! access rules decide: no rule, a TTL past the rule's maximum or a missing
//! reason is refused at once; a rule with `approval: none` activates the grant
//! in the same append; otherwise a review opens, and approvers decide it. The
//! request, its review and its grant share one id and one `grant/` stream.

use airlock_core::event::stream;
use airlock_core::grant::Grant;
use airlock_core::policy::{AccessAsk, Approval};
use airlock_core::principal::Principal;
use airlock_core::review::{
    AccessRequest, ApprovalScope, Decision, DecisionRefused, Outcome, Review, ReviewTerms, Reviewed,
};
use airlock_core::{Event, GrantId, ReviewId, TenantState};
use serde::{Deserialize, Serialize};

use super::grants::{GrantView, grant_view};
use super::{ControlPlane, Planned};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

/// The longest TTL anyone may ask for, whatever the policy says.
pub const MAX_REQUEST_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestInput {
    /// Connection id or name.
    pub connection: String,
    /// A role of the connection (a key of its `roles`).
    pub role: String,
    pub ttl_seconds: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessRequestView {
    /// The request's id; its review and its grant have the same id.
    pub id: String,
    /// `pending`, `denied`, `expired` (nobody reviewed it in time), `active`,
    /// `grant_expired` or `revoked`.
    pub state: String,
    pub subject: String,
    pub issuer: String,
    pub connection_id: String,
    pub connection: String,
    pub role: String,
    pub ttl_seconds: u64,
    pub reason: String,
    /// The access rule that decided it.
    pub rule: String,
    pub requested_at_unix: i64,
    /// The review, when the rule needs approval.
    pub review: Option<ReviewView>,
    /// The grant, once approved.
    pub grant: Option<GrantView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewView {
    pub id: String,
    /// `access` or `command`.
    pub kind: String,
    /// `pending`, `approved`, `denied`, `expired` or `withdrawn` (a held statement whose session stopped waiting).
    pub state: String,
    pub requester: String,
    pub connection_id: String,
    pub connection: String,
    pub rule: String,
    pub approver_groups: Vec<String>,
    pub approver_subjects: Vec<String>,
    pub quorum: u32,
    pub approvals: u32,
    pub opened_at_unix: i64,
    pub expires_at_unix: i64,
    pub decided_at_unix: Option<i64>,
    pub decisions: Vec<DecisionView>,
    /// Access reviews: the role asked for, the TTL and the reason.
    pub role: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub reason: Option<String>,
    /// Command reviews: the statement held, and the session and grant it came from.
    pub statement: Option<String>,
    pub session_id: Option<String>,
    pub grant_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionView {
    pub by: String,
    pub approve: bool,
    pub comment: String,
    /// `once`, or `grant`: identical statements for the rest of the grant.
    pub scope: String,
    pub at_unix: i64,
    /// Where it was made: `api`, `slack`, ...
    pub via: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    pub approve: bool,
    #[serde(default)]
    pub comment: String,
    /// `once` (default), or `grant`: for a held statement, approve identical
    /// statements for the rest of the grant.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct ReviewFilter {
    /// Only reviews the caller may decide now.
    #[serde(default)]
    pub pending_for_me: bool,
    /// Only reviews in this state (`pending`, `approved`, `denied`, `expired`).
    #[serde(default)]
    pub state: Option<String>,
}

pub(crate) fn review_view(state: &TenantState, r: &Review, now: i64) -> ReviewView {
    let connection = state.connections.get(&r.connection_id).map(|c| c.name.clone()).unwrap_or_default();
    let review_state = match r.outcome {
        Some((o, _)) => o.as_str(),
        // Expired by the clock, before the expiry is recorded.
        None if now >= r.terms.expires_at_unix => Outcome::Expired.as_str(),
        None => "pending",
    };
    let request = match &r.what {
        Reviewed::Access(id) => state.access_requests.get(id),
        Reviewed::Command(_) => None,
    };
    let held = match &r.what {
        Reviewed::Command(c) => Some(c),
        Reviewed::Access(_) => None,
    };
    ReviewView {
        id: r.id.to_string(),
        kind: if held.is_some() { "command" } else { "access" }.to_owned(),
        state: review_state.to_owned(),
        requester: r.requester.clone(),
        connection_id: r.connection_id.to_string(),
        connection,
        rule: r.rule.clone(),
        approver_groups: r.terms.approvers.groups.clone(),
        approver_subjects: r.terms.approvers.subjects.clone(),
        quorum: r.terms.quorum,
        approvals: u32::try_from(r.approvals()).unwrap_or(u32::MAX),
        opened_at_unix: r.opened_at_unix,
        expires_at_unix: r.terms.expires_at_unix,
        decided_at_unix: r.outcome.map(|(_, at)| at),
        decisions: r
            .decisions
            .iter()
            .map(|d| DecisionView {
                by: d.by.clone(),
                approve: d.approve,
                comment: d.comment.clone(),
                scope: d.scope.as_str().to_owned(),
                at_unix: d.at_unix,
                via: d.via.clone(),
            })
            .collect(),
        role: request.map(|q| q.role.clone()),
        ttl_seconds: request.map(|q| q.ttl_secs),
        reason: request.map(|q| q.reason.clone()),
        statement: held.map(|c| c.statement.clone()),
        session_id: held.map(|c| c.session_id.to_string()),
        grant_id: held.map(|c| c.grant_id.to_string()),
    }
}

fn request_view(state: &TenantState, q: &AccessRequest, now: i64) -> AccessRequestView {
    let review = state.reviews.get(&ReviewId::of_request(&q.id)).map(|r| review_view(state, r, now));
    let request_state = state.request_state(&q.id, now).map_or("pending", |s| s.as_str());
    // A pending review past its end reads as expired before the expiry is recorded.
    let request_state = match &review {
        Some(r) if request_state == "pending" && r.state == "expired" => "expired",
        _ => request_state,
    };
    AccessRequestView {
        id: q.id.to_string(),
        state: request_state.to_owned(),
        subject: q.subject.clone(),
        issuer: q.issuer.clone(),
        connection_id: q.connection_id.to_string(),
        connection: state.connections.get(&q.connection_id).map(|c| c.name.clone()).unwrap_or_default(),
        role: q.role.clone(),
        ttl_seconds: q.ttl_secs,
        reason: q.reason.clone(),
        rule: q.rule.clone(),
        requested_at_unix: q.requested_at_unix,
        review,
        grant: state.any_grant(&q.id).map(|g| grant_view(state, g, now)),
    }
}

/// The grant an approved request becomes, starting at `now`.
fn grant_of(q: &AccessRequest, granted_by: String, now: i64) -> Grant {
    Grant {
        id: q.id,
        subject: q.subject.clone(),
        issuer: q.issuer.clone(),
        connection_id: q.connection_id,
        role: q.role.clone(),
        starts_at_unix: now,
        expires_at_unix: now.saturating_add(i64::try_from(q.ttl_secs).unwrap_or(i64::MAX)),
        reason: q.reason.clone(),
        granted_by,
    }
}

/// Who may see a request: the requester, tenant admins, and its approvers.
fn may_see(principal: &Principal, subject: &str, review: Option<&Review>) -> bool {
    principal.is_tenant_admin()
        || principal.subject == subject
        || review.is_some_and(|r| r.terms.approvers.admit(principal))
}

impl ControlPlane {
    pub async fn request_access(
        &self,
        principal: &Principal,
        input: AccessRequestInput,
    ) -> Result<AccessRequestView, ApiError> {
        if input.ttl_seconds == 0 || input.ttl_seconds > MAX_REQUEST_TTL_SECS {
            return Err(ApiError::invalid("ttl_seconds", format!("from 1 to {MAX_REQUEST_TTL_SECS}")));
        }
        if input.reason.len() > 1024 || input.reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::invalid("reason", "at most 1024 printable characters"));
        }
        let now = self.now();
        let (_, request) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let connection = state
                    .find_connection(&input.connection)
                    .ok_or_else(|| ApiError::not_found(format!("connection {}", input.connection)))?;
                super::grants::check_role(connection, &input.role)?;
                let policy = match state.policy.as_ref().map(|p| &p.parsed) {
                    Some(Ok(policy)) => policy,
                    Some(Err(e)) => {
                        return Err(ApiError::forbidden(format!(
                            "the tenant's policy cannot be used ({e}); ask an admin"
                        )));
                    }
                    None => return Err(ApiError::forbidden("the tenant has no policy: no access can be requested")),
                };
                let ask = AccessAsk {
                    principal,
                    connection,
                    role: &input.role,
                    ttl_secs: input.ttl_seconds,
                    reason: &input.reason,
                };
                let rule = policy.access_rule(&ask).map_err(|refused| {
                    let rule = refused.rule().map(str::to_owned);
                    ApiError::forbidden(refused.to_string()).with_rule(rule)
                })?;
                let review = match &rule.approval {
                    Approval::None => None,
                    Approval::Review { approvers, quorum, timeout_secs } => Some(ReviewTerms {
                        approvers: approvers.clone(),
                        quorum: *quorum,
                        expires_at_unix: now.saturating_add(i64::try_from(*timeout_secs).unwrap_or(i64::MAX)),
                    }),
                };
                let request = AccessRequest {
                    id: GrantId::new(),
                    subject: principal.subject.clone(),
                    issuer: principal.issuer.clone(),
                    connection_id: connection.id,
                    role: input.role.clone(),
                    ttl_secs: input.ttl_seconds,
                    reason: input.reason.clone(),
                    rule: rule.name.clone(),
                    requested_at_unix: now,
                    review,
                };
                let mut events = vec![Event::AccessRequested { request: request.clone() }];
                if request.review.is_none() {
                    let grant = grant_of(&request, format!("policy rule {}", rule.name), now);
                    events.push(Event::GrantActivated { grant });
                }
                let planned =
                    Planned { stream: stream::grant(&request.id), expected: ExpectedVersion::NoStream, events };
                Ok((planned, request))
            })
            .await?;
        let view = self.view_after(principal.tenant_id, "request access", |s| Some(request_view(s, &request, now)))?;
        tracing::info!(tenant = %principal.tenant_id, request = %view.id, subject = %view.subject,
            connection = %view.connection, role = %view.role, state = %view.state, rule = %view.rule, "access requested");
        Ok(view)
    }

    pub fn get_access_request(&self, principal: &Principal, id: &str) -> Result<AccessRequestView, ApiError> {
        let not_found = || ApiError::not_found(format!("access request {id}"));
        let request_id: GrantId = id.parse().map_err(|_| not_found())?;
        let now = self.now();
        self.tenants
            .read(|t| {
                let state = t.get(&principal.tenant_id)?;
                let q = state.access_requests.get(&request_id)?;
                let review = state.reviews.get(&ReviewId::of_request(&request_id));
                may_see(principal, &q.subject, review).then(|| request_view(state, q, now))
            })
            .ok_or_else(not_found)
    }

    /// The requests the caller may see, newest first.
    pub fn list_access_requests(&self, principal: &Principal) -> Vec<AccessRequestView> {
        let now = self.now();
        self.tenants.read(|t| {
            let Some(state) = t.get(&principal.tenant_id) else { return Vec::new() };
            state
                .access_requests
                .values()
                .rev()
                .filter(|q| may_see(principal, &q.subject, state.reviews.get(&ReviewId::of_request(&q.id))))
                .map(|q| request_view(state, q, now))
                .collect()
        })
    }

    pub fn get_review(&self, principal: &Principal, id: &str) -> Result<ReviewView, ApiError> {
        let not_found = || ApiError::not_found(format!("review {id}"));
        let review_id: ReviewId = id.parse().map_err(|_| not_found())?;
        let now = self.now();
        self.tenants
            .read(|t| {
                let state = t.get(&principal.tenant_id)?;
                let r = state.reviews.get(&review_id)?;
                may_see(principal, &r.requester, Some(r)).then(|| review_view(state, r, now))
            })
            .ok_or_else(not_found)
    }

    /// Reviews the caller may see, newest first.
    pub fn list_reviews(&self, principal: &Principal, filter: &ReviewFilter) -> Vec<ReviewView> {
        let now = self.now();
        self.tenants.read(|t| {
            let Some(state) = t.get(&principal.tenant_id) else { return Vec::new() };
            state
                .reviews
                .values()
                .rev()
                .filter(|r| may_see(principal, &r.requester, Some(r)))
                .filter(|r| !filter.pending_for_me || r.may_decide(principal, ApprovalScope::Once, now).is_ok())
                .map(|r| review_view(state, r, now))
                .filter(|v| filter.state.as_ref().is_none_or(|s| *s == v.state))
                .collect()
        })
    }

    /// Records one approver's decision, and closes the review when it is
    /// denied or reaches its quorum. An approved access request's grant starts now.
    pub async fn decide_review(
        &self,
        principal: &Principal,
        id: &str,
        input: DecisionInput,
        via: &str,
    ) -> Result<ReviewView, ApiError> {
        let not_found = || ApiError::not_found(format!("review {id}"));
        let review_id: ReviewId = id.parse().map_err(|_| not_found())?;
        let scope = match input.scope.as_deref() {
            None => ApprovalScope::Once,
            Some(s) => ApprovalScope::parse(s).ok_or_else(|| ApiError::invalid("scope", "once or grant"))?,
        };
        if input.comment.len() > 1024 {
            return Err(ApiError::invalid("comment", "at most 1024 characters"));
        }
        if scope == ApprovalScope::Grant && !input.approve {
            return Err(ApiError::invalid("scope", "only an approval can cover identical statements"));
        }
        let now = self.now();
        let (_, ()) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let review = state.reviews.get(&review_id).ok_or_else(not_found)?;
                if !may_see(principal, &review.requester, Some(review)) {
                    return Err(not_found());
                }
                // A held statement whose grant has ended can never run: nothing to decide.
                if let Reviewed::Command(held) = &review.what
                    && !state.grants.get(&held.grant_id).is_some_and(|g| g.is_live(now))
                {
                    return Err(ApiError::conflict(format!(
                        "the grant of review {review_id} has ended; the statement will not run"
                    )));
                }
                review.may_decide(principal, scope, now).map_err(|refused| match refused {
                    DecisionRefused::Closed(..) | DecisionRefused::Expired(_) | DecisionRefused::AlreadyDecided(_) => {
                        ApiError::conflict(refused.to_string())
                    }
                    DecisionRefused::ScopeNotAllowed => ApiError::invalid("scope", refused.to_string()),
                    DecisionRefused::OwnRequest(_) | DecisionRefused::NotAnApprover { .. } => {
                        ApiError::forbidden(refused.to_string()).with_rule(Some(review.rule.clone()))
                    }
                })?;
                let decision = Decision {
                    by: principal.subject.clone(),
                    by_issuer: principal.issuer.clone(),
                    approve: input.approve,
                    comment: input.comment.clone(),
                    scope,
                    at_unix: now,
                    via: via.to_owned(),
                };
                let outcome = review.outcome_with(&decision);
                let mut events = vec![Event::ReviewDecided { review_id, decision }];
                if let Some(outcome) = outcome {
                    events.push(Event::ReviewResolved { review_id, outcome, at_unix: now });
                    if let (Outcome::Approved, Reviewed::Access(request_id)) = (outcome, &review.what)
                        && let Some(q) = state.access_requests.get(request_id)
                    {
                        let mut approvers: Vec<&str> =
                            review.decisions.iter().filter(|d| d.approve).map(|d| d.by.as_str()).collect();
                        approvers.push(&principal.subject);
                        events.push(Event::GrantActivated { grant: grant_of(q, approvers.join(", "), now) });
                    }
                }
                let stream = match &review.what {
                    Reviewed::Access(request_id) => stream::grant(request_id),
                    Reviewed::Command(_) => stream::review(&review_id),
                };
                Ok((Planned { stream, expected: ExpectedVersion::Any, events }, ()))
            })
            .await?;
        let view = self.view_after(principal.tenant_id, "decide a review", |s| {
            s.reviews.get(&review_id).map(|r| review_view(s, r, now))
        })?;
        tracing::info!(tenant = %principal.tenant_id, review = %view.id, by = %principal.subject,
            approve = input.approve, state = %view.state, via, "review decided");
        Ok(view)
    }

    /// Records what the clock has ended: grants past their end, and reviews
    /// nobody decided in time. Returns how many events were appended.
    pub async fn expire_due(&self) -> Result<usize, ApiError> {
        let now = self.now();
        let due: Vec<(airlock_core::TenantId, Vec<Planned>)> = self.tenants.read(|t| {
            t.created()
                .map(|(tenant, state)| (*tenant, due_events(state, now)))
                .filter(|(_, planned)| !planned.is_empty())
                .collect()
        });
        let mut appended = 0;
        let mut failed = None;
        for (tenant, planned) in due {
            for p in planned {
                // Re-checked under the write lock: another instance may have recorded it first.
                let result = self
                    .command(tenant, "system", |state| {
                        let still_due = p.events.iter().all(|e| is_due(state, e, now));
                        let events = if still_due { p.events.clone() } else { Vec::new() };
                        Ok((Planned { stream: p.stream.clone(), expected: ExpectedVersion::Any, events }, ()))
                    })
                    .await;
                // One tenant's failure must not hold up the others' expiries.
                match result {
                    Ok((records, ())) => appended += records.len(),
                    Err(e) => {
                        tracing::warn!(%tenant, "failed to record an expiry: {}", e.message);
                        failed = Some(e);
                    }
                }
            }
        }
        match failed {
            Some(e) if appended == 0 => Err(e),
            _ => Ok(appended),
        }
    }

    /// When the next grant or review of any tenant ends, if any does.
    pub fn next_deadline(&self) -> Option<i64> {
        self.tenants.read(|t| {
            t.created()
                .flat_map(|(_, s)| {
                    let grants = s.grants.values().map(|g| g.expires_at_unix);
                    let reviews = s.reviews.values().filter(|r| r.is_pending()).map(|r| r.terms.expires_at_unix);
                    grants.chain(reviews).collect::<Vec<_>>()
                })
                .min()
        })
    }
}

/// The expiry events a tenant's state calls for at `now`.
fn due_events(state: &TenantState, now: i64) -> Vec<Planned> {
    let mut planned = Vec::new();
    for g in state.grants.values().filter(|g| g.expires_at_unix <= now) {
        planned.push(Planned::one(stream::grant(&g.id), ExpectedVersion::Any, Event::GrantExpired { grant_id: g.id }));
    }
    for r in state.reviews.values().filter(|r| r.is_pending() && r.terms.expires_at_unix <= now) {
        let stream = match &r.what {
            Reviewed::Access(request_id) => stream::grant(request_id),
            Reviewed::Command(_) => stream::review(&r.id),
        };
        let event = Event::ReviewResolved { review_id: r.id, outcome: Outcome::Expired, at_unix: now };
        planned.push(Planned::one(stream, ExpectedVersion::Any, event));
    }
    planned
}

fn is_due(state: &TenantState, event: &Event, now: i64) -> bool {
    match event {
        Event::GrantExpired { grant_id } => state.grants.get(grant_id).is_some_and(|g| g.expires_at_unix <= now),
        Event::ReviewResolved { review_id, .. } => {
            state.reviews.get(review_id).is_some_and(|r| r.is_pending() && r.terms.expires_at_unix <= now)
        }
        _ => false,
    }
}
