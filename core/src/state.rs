//! The pure fold: a tenant's state is its events applied in `seq` order.
//!
//! Both the control plane (to validate commands) and every data-plane worker (to
//! decide locally) hold a `TenantState` per tenant. Applying is idempotent by
//! `seq`: an event at or below the current `seq` is ignored, and one past the
//! next expected `seq` is refused as a gap so the caller can backfill.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::connection::ConnectionSpec;
use crate::event::{Event, TrustedIssuer};
use crate::grant::Grant;
use crate::ids::{ConnectionId, GrantId, IssuerId, KeyId, ReviewId, TenantId, WebhookId};
use crate::integration::{SlackSettings, Webhook};
use crate::policy::{Policy, PolicyError};
use crate::principal::AdminScope;
use crate::review::{AccessRequest, ApprovalScope, Outcome, Review, Reviewed};

/// Fields default when absent, so a snapshot written before a field existed
/// still loads (the events after it fill the field in).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantState {
    pub tenant_id: Option<TenantId>,
    pub name: String,
    /// The last `seq` applied.
    pub seq: u64,
    pub connections: BTreeMap<ConnectionId, ConnectionSpec>,
    pub policy: Option<ActivePolicy>,
    pub issuers: BTreeMap<IssuerId, TrustedIssuer>,
    pub api_keys: BTreeMap<KeyId, ApiKey>,
    pub signing_keys: BTreeMap<String, SigningKey>,
    /// The key new tokens are signed with: the last one added.
    pub current_signing_key: Option<String>,
    /// Grants not revoked. Whether one is live also depends on the clock.
    pub grants: BTreeMap<GrantId, Grant>,
    /// Revoked grants, kept so a refusal can say why.
    pub revoked_grants: BTreeMap<GrantId, (Grant, Revocation)>,
    /// Grants whose end the control plane has recorded.
    pub expired_grants: BTreeMap<GrantId, Grant>,
    pub access_requests: BTreeMap<GrantId, AccessRequest>,
    /// Reviews of access requests and of held statements, open and closed.
    pub reviews: BTreeMap<ReviewId, Review>,
    /// Statement fingerprints an approver allowed for the rest of a grant.
    pub approved_statements: BTreeMap<GrantId, BTreeSet<String>>,
    pub webhooks: BTreeMap<WebhookId, Webhook>,
    pub slack: Option<SlackSettings>,
}

/// Where an access request stands, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for approvers.
    Pending,
    Denied,
    /// Nobody reviewed it in time.
    Expired,
    /// Approved: the grant is live.
    Active,
    /// Approved, and the grant has run out.
    GrantExpired,
    /// Approved, and the grant was revoked.
    Revoked,
}

impl RequestState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Active => "active",
            RequestState::GrantExpired => "grant_expired",
            RequestState::Revoked => "revoked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub revoked_by: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivePolicy {
    pub version: u64,
    pub digest: String,
    pub source: String,
    /// The parsed document, or why it no longer parses. A document that was valid
    /// when appended but is refused by this build leaves the tenant with no usable
    /// policy, and everything that consults policy fails closed.
    pub parsed: Result<Policy, PolicyError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub name: String,
    pub sha256: String,
    pub scope: AdminScope,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: String,
    pub public_key: Vec<u8>,
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already applied (a duplicate or a replay): nothing changed.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("gap in the log: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
}

impl TenantState {
    /// Applies the event at `seq`, idempotently.
    pub fn apply_at(&mut self, seq: u64, event: &Event) -> Result<Applied, ApplyError> {
        if seq <= self.seq {
            return Ok(Applied::Duplicate);
        }
        if seq != self.seq + 1 {
            return Err(ApplyError::Gap { expected: self.seq + 1, got: seq });
        }
        self.apply(event);
        self.seq = seq;
        Ok(Applied::Applied)
    }

    /// The fold itself. Events are facts that were validated before they were
    /// appended, so applying never fails; an event about something unknown changes
    /// nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::TenantCreated { tenant_id, name } => {
                self.tenant_id = Some(*tenant_id);
                self.name.clone_from(name);
            }
            Event::ConnectionRegistered { spec } | Event::ConnectionUpdated { spec } => {
                self.connections.insert(spec.id, spec.clone());
            }
            Event::ConnectionRemoved { connection_id, .. } => {
                self.connections.remove(connection_id);
                // A grant on a removed connection ends with it.
                self.grants.retain(|_, g| g.connection_id != *connection_id);
                self.revoked_grants.retain(|_, (g, _)| g.connection_id != *connection_id);
                self.expired_grants.retain(|_, g| g.connection_id != *connection_id);
            }
            Event::PolicyApplied { version, source, digest } => {
                self.policy = Some(ActivePolicy {
                    version: *version,
                    digest: digest.clone(),
                    source: source.clone(),
                    parsed: Policy::parse(source),
                });
            }
            Event::IssuerTrusted { issuer } => {
                self.issuers.insert(issuer.id, issuer.clone());
            }
            Event::IssuerRemoved { issuer_id } => {
                self.issuers.remove(issuer_id);
            }
            Event::ApiKeyIssued { key_id, name, sha256, scope } => {
                self.api_keys
                    .insert(*key_id, ApiKey { id: *key_id, name: name.clone(), sha256: sha256.clone(), scope: *scope });
            }
            Event::ApiKeyRevoked { key_id } => {
                self.api_keys.remove(key_id);
            }
            Event::SigningKeyAdded { kid, algorithm, public_key } => {
                self.signing_keys.insert(
                    kid.clone(),
                    SigningKey { kid: kid.clone(), algorithm: algorithm.clone(), public_key: public_key.clone() },
                );
                self.current_signing_key = Some(kid.clone());
            }
            Event::GrantActivated { grant } => {
                // A grant from a request whose review was denied or expired first is
                // not activated, whatever a racing writer appended.
                let closed = self
                    .reviews
                    .get(&ReviewId::of_request(&grant.id))
                    .and_then(|r| r.outcome)
                    .is_some_and(|(o, _)| o != Outcome::Approved);
                if !closed {
                    self.grants.insert(grant.id, grant.clone());
                }
            }
            Event::GrantRevoked { grant_id, revoked_by, reason } => {
                self.approved_statements.remove(grant_id);
                if let Some(grant) = self.grants.remove(grant_id) {
                    let revocation = Revocation { revoked_by: revoked_by.clone(), reason: reason.clone() };
                    self.revoked_grants.insert(*grant_id, (grant, revocation));
                }
            }
            Event::GrantExpired { grant_id } => {
                if let Some(grant) = self.grants.remove(grant_id) {
                    self.expired_grants.insert(*grant_id, grant);
                }
                self.approved_statements.remove(grant_id);
            }
            Event::AccessRequested { request } => {
                if let Some(terms) = &request.review {
                    let id = ReviewId::of_request(&request.id);
                    self.reviews.insert(
                        id,
                        Review {
                            id,
                            what: Reviewed::Access(request.id),
                            requester: request.subject.clone(),
                            requester_issuer: request.issuer.clone(),
                            connection_id: request.connection_id,
                            rule: request.rule.clone(),
                            opened_at_unix: request.requested_at_unix,
                            terms: terms.clone(),
                            decisions: Vec::new(),
                            outcome: None,
                            in_slack: self.slack.is_some(),
                        },
                    );
                }
                self.access_requests.insert(request.id, request.clone());
            }
            Event::CommandHeld { command } => {
                self.reviews.insert(
                    command.id,
                    Review {
                        id: command.id,
                        what: Reviewed::Command(Box::new(command.clone())),
                        requester: command.subject.clone(),
                        requester_issuer: command.issuer.clone(),
                        connection_id: command.connection_id,
                        rule: command.rule.clone(),
                        opened_at_unix: command.held_at_unix,
                        terms: command.terms.clone(),
                        decisions: Vec::new(),
                        outcome: None,
                        in_slack: self.slack.is_some(),
                    },
                );
            }
            Event::ReviewDecided { review_id, decision } => {
                if let Some(review) = self.reviews.get_mut(review_id) {
                    review.decisions.push(decision.clone());
                }
            }
            Event::ReviewResolved { review_id, outcome, at_unix } => {
                // The first outcome stands, whatever a racing writer appended after it.
                if let Some(review) = self.reviews.get_mut(review_id).filter(|r| r.outcome.is_none()) {
                    review.outcome = Some((*outcome, *at_unix));
                    let approvals = review.decisions.iter().filter(|d| d.approve);
                    // Every approver must have widened it to the grant, not just one of a quorum.
                    let for_grant =
                        approvals.clone().count() > 0 && approvals.into_iter().all(|d| d.scope == ApprovalScope::Grant);
                    if let Reviewed::Command(held) = &review.what
                        && *outcome == Outcome::Approved
                        && for_grant
                        && self.grants.contains_key(&held.grant_id)
                    {
                        self.approved_statements.entry(held.grant_id).or_default().insert(held.fingerprint.clone());
                    }
                }
            }
            Event::WebhookAdded { webhook } => {
                self.webhooks.insert(webhook.id, webhook.clone());
            }
            Event::WebhookRemoved { webhook_id } => {
                self.webhooks.remove(webhook_id);
            }
            Event::SlackConfigured { slack } => {
                self.slack = Some(slack.clone());
            }
            Event::SlackRemoved {} => {
                self.slack = None;
            }
            Event::TokenIssued { .. } | Event::SessionOpened { .. } | Event::SessionClosed { .. } => {}
        }
    }

    pub fn connection_by_name(&self, name: &str) -> Option<&ConnectionSpec> {
        self.connections.values().find(|c| c.name == name)
    }

    /// A connection by id or by name.
    pub fn find_connection(&self, id_or_name: &str) -> Option<&ConnectionSpec> {
        match id_or_name.parse::<ConnectionId>() {
            Ok(id) => self.connections.get(&id),
            Err(_) => self.connection_by_name(id_or_name),
        }
    }

    /// The live grant that admits `principal` to `connection` as `role`, if any.
    pub fn grant_for(
        &self,
        principal: &crate::principal::Principal,
        connection: &ConnectionId,
        role: &str,
        now_unix: i64,
    ) -> Option<&Grant> {
        self.grants
            .values()
            .filter(|g| g.connection_id == *connection && g.role == role && g.admits(principal, now_unix))
            .max_by_key(|g| g.expires_at_unix)
    }

    /// Why `principal` may not use `connection` as `role` now, or `None` when a
    /// live grant admits it. The text is for the client: it names the grant.
    pub fn denial(
        &self,
        principal: &crate::principal::Principal,
        connection: &ConnectionSpec,
        role: &str,
        now_unix: i64,
    ) -> Option<String> {
        if self.grant_for(principal, &connection.id, role, now_unix).is_some() {
            return None;
        }
        let mine = |g: &Grant| {
            g.connection_id == connection.id
                && g.role == role
                && g.subject == principal.subject
                && (g.issuer.is_empty() || g.issuer == principal.issuer)
        };
        if let Some(g) = self.grants.values().filter(|g| mine(g)).max_by_key(|g| g.expires_at_unix) {
            return Some(if g.expires_at_unix <= now_unix {
                format!("grant {} for {} on {} as {} has expired", g.id, principal.subject, connection.name, role)
            } else {
                format!(
                    "grant {} for {} on {} as {} has not started yet",
                    g.id, principal.subject, connection.name, role
                )
            });
        }
        let revoked = self.revoked_grants.values().filter(|(g, _)| mine(g)).max_by_key(|(g, _)| g.expires_at_unix);
        let expired = self.expired_grants.values().filter(|g| mine(g)).max_by_key(|g| g.expires_at_unix);
        match (revoked, expired) {
            (Some((g, r)), e) if e.is_none_or(|e| e.expires_at_unix <= g.expires_at_unix) => {
                let why = if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) };
                return Some(format!("grant {} was revoked by {}{why}", g.id, r.revoked_by));
            }
            (_, Some(g)) => {
                return Some(format!(
                    "grant {} for {} on {} as {} has expired",
                    g.id, principal.subject, connection.name, role
                ));
            }
            _ => {}
        }
        Some(format!("no grant for {} on {} as {}", principal.subject, connection.name, role))
    }

    /// Where an access request stands at `now_unix`.
    pub fn request_state(&self, id: &GrantId, now_unix: i64) -> Option<RequestState> {
        let request = self.access_requests.get(id)?;
        if request.review.is_some() {
            match self.reviews.get(&ReviewId::of_request(id)).and_then(|r| r.outcome) {
                None => return Some(RequestState::Pending),
                Some((Outcome::Denied, _)) => return Some(RequestState::Denied),
                Some((Outcome::Expired | Outcome::Withdrawn, _)) => return Some(RequestState::Expired),
                Some((Outcome::Approved, _)) => {}
            }
        }
        Some(self.grant_state(id, now_unix).unwrap_or(RequestState::Active))
    }

    /// `Active`, `GrantExpired` or `Revoked` for a grant this state knows.
    pub fn grant_state(&self, id: &GrantId, now_unix: i64) -> Option<RequestState> {
        if let Some(g) = self.grants.get(id) {
            return Some(if now_unix < g.expires_at_unix { RequestState::Active } else { RequestState::GrantExpired });
        }
        if self.revoked_grants.contains_key(id) {
            return Some(RequestState::Revoked);
        }
        self.expired_grants.contains_key(id).then_some(RequestState::GrantExpired)
    }

    /// Any grant, live or ended.
    pub fn any_grant(&self, id: &GrantId) -> Option<&Grant> {
        self.grants
            .get(id)
            .or_else(|| self.revoked_grants.get(id).map(|(g, _)| g))
            .or_else(|| self.expired_grants.get(id))
    }

    pub fn find_issuer(&self, id_or_name: &str) -> Option<&TrustedIssuer> {
        match id_or_name.parse::<IssuerId>() {
            Ok(id) => self.issuers.get(&id),
            Err(_) => self.issuers.values().find(|i| i.name == id_or_name),
        }
    }

    /// The next version of the named stream, given the current state. Streams are
    /// versioned by the number of events in them, which the log tracks; this is
    /// only used for readable errors.
    pub fn policy_version(&self) -> u64 {
        self.policy.as_ref().map_or(0, |p| p.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_idempotent_by_seq_and_refuses_gaps() {
        let tenant = TenantId::new();
        let mut s = TenantState::default();
        let created = Event::TenantCreated { tenant_id: tenant, name: "acme".into() };
        assert_eq!(s.apply_at(1, &created), Ok(Applied::Applied));
        assert_eq!(s.apply_at(1, &created), Ok(Applied::Duplicate));
        let removed = Event::IssuerRemoved { issuer_id: IssuerId::new() };
        assert_eq!(s.apply_at(3, &removed), Err(ApplyError::Gap { expected: 2, got: 3 }));
        assert_eq!(s.seq, 1);
        assert_eq!(s.name, "acme");
    }
}

#[cfg(test)]
mod grant_tests {
    use super::*;
    use crate::connection::{ConnectionKind, CredentialMode, TargetTls};
    use crate::principal::{AdminScope, Principal, PrincipalKind};

    fn connection() -> ConnectionSpec {
        ConnectionSpec {
            id: ConnectionId::new(),
            name: "pg".into(),
            kind: ConnectionKind::Postgres,
            address: "h:5432".into(),
            database: "app".into(),
            tls: TargetTls::Prefer,
            roles: [("readonly".to_owned(), "app_readonly".to_owned())].into(),
            labels: BTreeMap::new(),
            credential_mode: CredentialMode::SessionRole,
            credential_user: "postgres".into(),
            secret_version: 1,
        }
    }

    fn principal(subject: &str) -> Principal {
        Principal {
            tenant_id: TenantId::new(),
            issuer: "https://idp".into(),
            subject: subject.into(),
            groups: vec![],
            claims: BTreeMap::new(),
            kind: PrincipalKind::Workload,
            admin: AdminScope::None,
        }
    }

    #[test]
    fn denials_say_which_grant_and_why() {
        let c = connection();
        let mut s = TenantState::default();
        let grant = Grant {
            id: GrantId::new(),
            subject: "ci".into(),
            issuer: String::new(),
            connection_id: c.id,
            role: "readonly".into(),
            starts_at_unix: 100,
            expires_at_unix: 200,
            reason: String::new(),
            granted_by: "admin".into(),
        };
        s.apply(&Event::GrantActivated { grant: grant.clone() });
        assert_eq!(s.denial(&principal("ci"), &c, "readonly", 150), None);
        assert!(s.denial(&principal("ci"), &c, "readonly", 200).unwrap().contains("has expired"));
        assert!(s.denial(&principal("other"), &c, "readonly", 150).unwrap().starts_with("no grant for other"));
        assert!(s.denial(&principal("ci"), &c, "readwrite", 150).unwrap().starts_with("no grant"));
        s.apply(&Event::GrantRevoked { grant_id: grant.id, revoked_by: "alice".into(), reason: "incident".into() });
        let why = s.denial(&principal("ci"), &c, "readonly", 150).unwrap();
        assert!(why.contains("revoked by alice: incident"), "{why}");
        // An issuer-bound grant admits only that issuer's subject.
        let bound = Grant { id: GrantId::new(), issuer: "https://other".into(), ..grant };
        s.apply(&Event::GrantActivated { grant: bound });
        assert!(s.denial(&principal("ci"), &c, "readonly", 150).is_some());
    }

    #[test]
    fn the_first_outcome_of_a_review_stands() {
        use crate::policy::Approvers;
        use crate::review::{AccessRequest, Decision, ReviewTerms};
        let c = connection();
        let mut s = TenantState::default();
        let id = GrantId::new();
        let request = AccessRequest {
            id,
            subject: "agent".into(),
            issuer: String::new(),
            connection_id: c.id,
            role: "readonly".into(),
            ttl_secs: 60,
            reason: String::new(),
            rule: "r".into(),
            requested_at_unix: 100,
            review: Some(ReviewTerms {
                approvers: Approvers { groups: vec!["dba".into()], subjects: vec![] },
                quorum: 1,
                expires_at_unix: 200,
            }),
        };
        s.apply(&Event::AccessRequested { request });
        let review_id = ReviewId::of_request(&id);
        let decision = |approve| Decision {
            by: "alice".into(),
            by_issuer: String::new(),
            approve,
            comment: String::new(),
            scope: ApprovalScope::Once,
            at_unix: 150,
            via: "api".into(),
        };
        // Two writers raced: a denial landed first, then an approval and its grant.
        s.apply(&Event::ReviewDecided { review_id, decision: decision(false) });
        s.apply(&Event::ReviewResolved { review_id, outcome: Outcome::Denied, at_unix: 150 });
        s.apply(&Event::ReviewResolved { review_id, outcome: Outcome::Approved, at_unix: 151 });
        let grant = Grant {
            id,
            subject: "agent".into(),
            issuer: String::new(),
            connection_id: c.id,
            role: "readonly".into(),
            starts_at_unix: 151,
            expires_at_unix: 211,
            reason: String::new(),
            granted_by: "bob".into(),
        };
        s.apply(&Event::GrantActivated { grant });
        assert_eq!(s.reviews[&review_id].outcome, Some((Outcome::Denied, 150)));
        assert!(s.grants.is_empty(), "no grant from a denied request");
        assert_eq!(s.request_state(&id, 160), Some(RequestState::Denied));
    }
}
