//! Handler inputs and outputs ⇄ protobuf messages.

use airlock_proto::v1;

use crate::service::{
    AccessRequestView, ConnectionInput, ConnectionView, CredentialInput, GrantView, IssuerInput, IssuerView,
    PolicyView, ReviewView, TenantView,
};

pub fn tenant(t: TenantView) -> v1::Tenant {
    v1::Tenant { id: t.id, name: t.name, seq: t.seq }
}

fn credential(c: Option<v1::Credential>) -> Option<CredentialInput> {
    c.map(|c| CredentialInput { user: c.user, password: c.password })
}

pub fn connection_input(i: v1::ConnectionInput) -> ConnectionInput {
    ConnectionInput {
        name: i.name,
        kind: i.kind,
        address: i.address,
        database: i.database,
        tls: Some(i.tls).filter(|t| !t.is_empty()),
        admin_credential: credential(i.admin_credential),
        static_credential: credential(i.static_credential),
        roles: i.roles,
        labels: i.labels,
    }
}

pub fn connection(c: ConnectionView) -> v1::Connection {
    v1::Connection {
        id: c.id,
        name: c.name,
        kind: c.kind,
        address: c.address,
        database: c.database,
        tls: c.tls,
        roles: c.roles,
        labels: c.labels,
        credential_mode: c.credential_mode,
        credential_user: c.credential_user,
        has_secret: c.secret_version > 0,
        version: c.secret_version,
    }
}

pub fn policy(p: PolicyView) -> v1::Policy {
    v1::Policy { version: p.version, digest: p.digest, source: p.source, seq: p.seq }
}

pub fn issuer_input(i: v1::TrustIssuerRequest) -> IssuerInput {
    let opt = |s: String| Some(s).filter(|s| !s.is_empty());
    IssuerInput {
        name: i.name,
        issuer_url: i.issuer_url,
        audience: i.audience,
        subject_claim: opt(i.subject_claim),
        groups_claim: opt(i.groups_claim),
        principal_kind: opt(i.principal_kind),
    }
}

pub fn issuer(i: IssuerView) -> v1::Issuer {
    v1::Issuer {
        id: i.id,
        name: i.name,
        issuer_url: i.issuer_url,
        audience: i.audience,
        subject_claim: i.subject_claim,
        groups_claim: i.groups_claim,
        principal_kind: i.principal_kind,
    }
}

pub fn grant(g: GrantView) -> v1::Grant {
    v1::Grant {
        grant_id: g.id,
        subject: g.subject,
        issuer: g.issuer,
        connection_id: g.connection_id,
        role: g.role,
        starts_at_unix: g.starts_at_unix,
        expires_at_unix: g.expires_at_unix,
        reason: g.reason,
        granted_by: g.granted_by,
    }
}

pub fn review(r: ReviewView) -> v1::ReviewInfo {
    v1::ReviewInfo {
        id: r.id,
        kind: r.kind,
        state: r.state,
        requester: r.requester,
        connection_id: r.connection_id,
        connection: r.connection,
        rule: r.rule,
        approver_groups: r.approver_groups,
        approver_subjects: r.approver_subjects,
        quorum: r.quorum,
        approvals: r.approvals,
        opened_at_unix: r.opened_at_unix,
        expires_at_unix: r.expires_at_unix,
        decided_at_unix: r.decided_at_unix.unwrap_or(0),
        decisions: r
            .decisions
            .into_iter()
            .map(|d| v1::ReviewDecisionInfo {
                by: d.by,
                approve: d.approve,
                comment: d.comment,
                scope: d.scope,
                at_unix: d.at_unix,
                via: d.via,
            })
            .collect(),
        role: r.role.unwrap_or_default(),
        ttl_seconds: r.ttl_seconds.unwrap_or(0),
        reason: r.reason.unwrap_or_default(),
        statement: r.statement.unwrap_or_default(),
        session_id: r.session_id.unwrap_or_default(),
        grant_id: r.grant_id.unwrap_or_default(),
    }
}

pub fn access_request(q: AccessRequestView) -> v1::AccessRequestInfo {
    v1::AccessRequestInfo {
        id: q.id,
        state: q.state,
        subject: q.subject,
        issuer: q.issuer,
        connection_id: q.connection_id,
        connection: q.connection,
        role: q.role,
        ttl_seconds: q.ttl_seconds,
        reason: q.reason,
        rule: q.rule,
        requested_at_unix: q.requested_at_unix,
        review: q.review.map(review),
        grant: q.grant.map(grant),
    }
}
