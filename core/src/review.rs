//! Access requests and reviews.
//!
//! A principal asks for a role on a connection; policy grants it at once or
//! opens a review that approvers decide. A statement that policy holds opens a
//! review too. A review is approved when `quorum` distinct approvers have
//! approved it, denied by the first denial, and expires when nobody decided it
//! in time. The requester never decides their own review.

use serde::{Deserialize, Serialize};

use crate::ids::{ConnectionId, GrantId, ReviewId, SessionId};
use crate::policy::Approvers;
use crate::principal::Principal;

/// How long an access request waits for review when policy does not say.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 3600;

/// A request for a role on a connection, as recorded when it is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// The request's id; the grant it leads to and its review have the same id.
    pub id: GrantId,
    pub subject: String,
    /// The issuer that vouched for the requester; the grant is bound to it.
    pub issuer: String,
    pub connection_id: ConnectionId,
    pub role: String,
    pub ttl_secs: u64,
    pub reason: String,
    /// The access rule that admitted the request.
    pub rule: String,
    pub requested_at_unix: i64,
    /// `None`: the rule needs no approval, and the grant was activated with the request.
    pub review: Option<ReviewTerms>,
}

/// Who must approve, how many, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewTerms {
    pub approvers: Approvers,
    pub quorum: u32,
    pub expires_at_unix: i64,
}

/// A statement held for review, as the worker that holds it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCommand {
    pub id: ReviewId,
    pub session_id: SessionId,
    pub grant_id: GrantId,
    pub connection_id: ConnectionId,
    pub subject: String,
    pub issuer: String,
    /// The statement as the client sent it.
    pub statement: String,
    /// Identifies identical statements (see [`fingerprint`]).
    pub fingerprint: String,
    /// The command rule that holds it.
    pub rule: String,
    pub held_at_unix: i64,
    pub terms: ReviewTerms,
}

/// What an approval covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalScope {
    /// The reviewed request or statement only.
    #[default]
    Once,
    /// Identical statements for the rest of the grant (held commands only).
    Grant,
}

impl ApprovalScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApprovalScope::Once => "once",
            ApprovalScope::Grant => "grant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "once" | "" => Some(ApprovalScope::Once),
            "grant" => Some(ApprovalScope::Grant),
            _ => None,
        }
    }
}

/// One approver's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub by_issuer: String,
    pub approve: bool,
    pub comment: String,
    pub scope: ApprovalScope,
    pub at_unix: i64,
    /// Where it was made: `api`, `slack`, ...
    pub via: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Denied,
    Expired,
    /// The statement's session stopped waiting (a cancel, or the client left).
    Withdrawn,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
            Outcome::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approved" => Outcome::Approved,
            "denied" => Outcome::Denied,
            "expired" => Outcome::Expired,
            "withdrawn" => Outcome::Withdrawn,
            _ => return None,
        })
    }
}

/// What a review is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reviewed {
    /// An access request; its id is the review's id.
    Access(GrantId),
    Command(Box<HeldCommand>),
}

/// A review as the fold keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub id: ReviewId,
    pub what: Reviewed,
    /// The requester's subject and issuer.
    pub requester: String,
    pub requester_issuer: String,
    pub connection_id: ConnectionId,
    pub rule: String,
    pub opened_at_unix: i64,
    pub terms: ReviewTerms,
    pub decisions: Vec<Decision>,
    /// `None` while pending.
    pub outcome: Option<(Outcome, i64)>,
    /// The tenant had Slack set up when the review opened, so a message was
    /// posted for it (updates go only to reviews that have one).
    #[serde(default)]
    pub in_slack: bool,
}

/// Why a principal may not decide a review.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecisionRefused {
    #[error("review {0} was already {1}")]
    Closed(ReviewId, &'static str),
    #[error("review {0} has expired")]
    Expired(ReviewId),
    #[error("{0} requested this and cannot review their own request")]
    OwnRequest(String),
    #[error("{who} is not an approver for review {review} (rule {rule} needs {needs})")]
    NotAnApprover { who: String, review: ReviewId, rule: String, needs: String },
    #[error("{0} has already decided this review")]
    AlreadyDecided(String),
    #[error("only a held statement's approval can cover identical statements for the grant")]
    ScopeNotAllowed,
}

impl Review {
    pub fn is_pending(&self) -> bool {
        self.outcome.is_none()
    }

    pub fn approvals(&self) -> usize {
        self.decisions.iter().filter(|d| d.approve).count()
    }

    /// Whether `principal` may decide this review at `now_unix`.
    pub fn may_decide(
        &self,
        principal: &Principal,
        scope: ApprovalScope,
        now_unix: i64,
    ) -> Result<(), DecisionRefused> {
        if let Some((outcome, _)) = self.outcome {
            return Err(DecisionRefused::Closed(self.id, outcome.as_str()));
        }
        if now_unix >= self.terms.expires_at_unix {
            return Err(DecisionRefused::Expired(self.id));
        }
        // The same subject is the same person whichever issuer vouched for them.
        if principal.subject == self.requester {
            return Err(DecisionRefused::OwnRequest(principal.subject.clone()));
        }
        if !self.terms.approvers.admit(principal) {
            return Err(DecisionRefused::NotAnApprover {
                who: principal.subject.clone(),
                review: self.id,
                rule: self.rule.clone(),
                needs: self.terms.approvers.describe(),
            });
        }
        if self.decisions.iter().any(|d| d.by == principal.subject) {
            return Err(DecisionRefused::AlreadyDecided(principal.subject.clone()));
        }
        if scope == ApprovalScope::Grant && !matches!(self.what, Reviewed::Command(_)) {
            return Err(DecisionRefused::ScopeNotAllowed);
        }
        Ok(())
    }

    /// The outcome once `decision` is added, or `None` if the review stays open.
    pub fn outcome_with(&self, decision: &Decision) -> Option<Outcome> {
        if !decision.approve {
            return Some(Outcome::Denied);
        }
        let approvals = self.approvals() + 1;
        (approvals >= self.terms.quorum as usize).then_some(Outcome::Approved)
    }
}

impl Approvers {
    /// Whether `principal` is one of these approvers.
    pub fn admit(&self, principal: &Principal) -> bool {
        self.subjects.contains(&principal.subject) || self.groups.iter().any(|g| principal.in_group(g))
    }

    /// For messages: `groups dba, sre or subjects alice`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.groups.is_empty() {
            parts.push(format!("a member of {}", self.groups.join(", ")));
        }
        if !self.subjects.is_empty() {
            parts.push(self.subjects.join(", "));
        }
        if parts.is_empty() { "no approver".to_owned() } else { parts.join(" or ") }
    }
}

/// A statement's fingerprint for "identical statements": a hash of its exact
/// text. Nothing is normalized: collapsing whitespace would also collapse the
/// newline that ends a `--` comment, and approving `... WHERE id = 1 -- OR true`
/// would approve `... WHERE id = 1 --\nOR true`.
pub fn fingerprint(statement: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(statement.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::principal::{AdminScope, PrincipalKind};

    fn who(subject: &str, groups: &[&str]) -> Principal {
        Principal {
            tenant_id: TenantId::new(),
            issuer: "https://idp".into(),
            subject: subject.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            claims: Default::default(),
            kind: PrincipalKind::Human,
            admin: AdminScope::None,
        }
    }

    fn review(quorum: u32) -> Review {
        let id = GrantId::new();
        Review {
            id: ReviewId::from_uuid(*id.as_uuid()),
            what: Reviewed::Access(id),
            requester: "agent".into(),
            requester_issuer: "https://idp".into(),
            connection_id: ConnectionId::new(),
            rule: "writes".into(),
            opened_at_unix: 100,
            terms: ReviewTerms {
                approvers: Approvers { groups: vec!["dba".into()], subjects: vec![] },
                quorum,
                expires_at_unix: 200,
            },
            decisions: vec![],
            outcome: None,
            in_slack: false,
        }
    }

    fn decision(by: &str, approve: bool) -> Decision {
        Decision {
            by: by.into(),
            by_issuer: "https://idp".into(),
            approve,
            comment: String::new(),
            scope: ApprovalScope::Once,
            at_unix: 150,
            via: "api".into(),
        }
    }

    #[test]
    fn a_quorum_needs_distinct_approvers_and_one_denial_ends_it() {
        let mut r = review(2);
        let alice = who("alice", &["dba"]);
        assert_eq!(r.may_decide(&alice, ApprovalScope::Once, 150), Ok(()));
        assert_eq!(r.outcome_with(&decision("alice", true)), None);
        r.decisions.push(decision("alice", true));
        assert_eq!(
            r.may_decide(&alice, ApprovalScope::Once, 150),
            Err(DecisionRefused::AlreadyDecided("alice".into()))
        );
        assert_eq!(r.outcome_with(&decision("bob", true)), Some(Outcome::Approved));
        assert_eq!(r.outcome_with(&decision("bob", false)), Some(Outcome::Denied));
    }

    #[test]
    fn requesters_outsiders_and_latecomers_are_refused() {
        let r = review(1);
        let own = r.may_decide(&who("agent", &["dba"]), ApprovalScope::Once, 150);
        assert_eq!(own, Err(DecisionRefused::OwnRequest("agent".into())));
        let outsider = r.may_decide(&who("mallory", &["dev"]), ApprovalScope::Once, 150).unwrap_err();
        assert!(outsider.to_string().contains("needs a member of dba"), "{outsider}");
        assert_eq!(
            r.may_decide(&who("alice", &["dba"]), ApprovalScope::Once, 200),
            Err(DecisionRefused::Expired(r.id))
        );
        assert_eq!(
            r.may_decide(&who("alice", &["dba"]), ApprovalScope::Grant, 150),
            Err(DecisionRefused::ScopeNotAllowed)
        );
        let closed = Review { outcome: Some((Outcome::Denied, 160)), ..r };
        assert!(matches!(
            closed.may_decide(&who("alice", &["dba"]), ApprovalScope::Once, 150),
            Err(DecisionRefused::Closed(..))
        ));
    }

    #[test]
    fn fingerprints_are_of_the_exact_text() {
        assert_eq!(fingerprint("DELETE FROM t WHERE id = 1"), fingerprint("DELETE FROM t WHERE id = 1"));
        assert_ne!(fingerprint("DELETE FROM t WHERE id = 1"), fingerprint("DELETE FROM t WHERE id = 2"));
        assert_ne!(
            fingerprint("DELETE FROM t WHERE id = 1 -- OR true"),
            fingerprint("DELETE FROM t WHERE id = 1 --\nOR true")
        );
    }
}
