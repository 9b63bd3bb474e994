//! Core events ⇄ their protobuf encoding. The encoding is what the log stores and
//! hashes; decoding refuses anything it cannot map back into the domain.

use std::collections::BTreeMap;

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode, TargetTls};
use airlock_core::event::{SessionInfo, TrustedIssuer};
use airlock_core::grant::Grant;
use airlock_core::integration::{SlackSettings, SlackUser, Webhook};
use airlock_core::policy::Approvers;
use airlock_core::principal::{AdminScope, PrincipalKind};
use airlock_core::review::{AccessRequest, ApprovalScope, Decision, HeldCommand, Outcome, ReviewTerms};
use airlock_core::{ConnectionId, Event, GrantId, IssuerId, KeyId, ReviewId, SessionId, TenantId, WebhookId};
use prost::Message;

use crate::v1::{self, event::Kind};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event payload is not valid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("event payload has no kind (written by a newer version?)")]
    Empty,
    #[error("event field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field { field, reason: reason.into() }
}

fn id<T: std::str::FromStr>(name: &'static str, s: &str) -> Result<T, DecodeError> {
    s.parse().map_err(|_| field(name, format!("{s:?} is not a valid id")))
}

/// The stored bytes of an event.
pub fn encode_event(event: &Event) -> Vec<u8> {
    to_proto(event).encode_to_vec()
}

pub fn decode_event(payload: &[u8]) -> Result<Event, DecodeError> {
    from_proto(v1::Event::decode(payload)?)
}

pub fn to_proto(event: &Event) -> v1::Event {
    let kind = match event {
        Event::TenantCreated { tenant_id, name } => {
            Kind::TenantCreated(v1::TenantCreated { tenant_id: tenant_id.to_string(), name: name.clone() })
        }
        Event::ConnectionRegistered { spec } => {
            Kind::ConnectionRegistered(v1::ConnectionRegistered { spec: Some(spec_to_proto(spec)) })
        }
        Event::ConnectionUpdated { spec } => {
            Kind::ConnectionUpdated(v1::ConnectionUpdated { spec: Some(spec_to_proto(spec)) })
        }
        Event::ConnectionRemoved { connection_id, name } => Kind::ConnectionRemoved(v1::ConnectionRemoved {
            connection_id: connection_id.to_string(),
            name: name.clone(),
        }),
        Event::PolicyApplied { version, source, digest } => {
            Kind::PolicyApplied(v1::PolicyApplied { version: *version, source: source.clone(), digest: digest.clone() })
        }
        Event::IssuerTrusted { issuer } => Kind::IssuerTrusted(v1::IssuerTrusted {
            issuer_id: issuer.id.to_string(),
            name: issuer.name.clone(),
            issuer_url: issuer.issuer_url.clone(),
            audience: issuer.audience.clone(),
            subject_claim: issuer.subject_claim.clone(),
            groups_claim: issuer.groups_claim.clone(),
            principal_kind: issuer.principal_kind.as_str().to_owned(),
        }),
        Event::IssuerRemoved { issuer_id } => {
            Kind::IssuerRemoved(v1::IssuerRemoved { issuer_id: issuer_id.to_string() })
        }
        Event::ApiKeyIssued { key_id, name, sha256, scope } => Kind::ApiKeyIssued(v1::ApiKeyIssued {
            key_id: key_id.to_string(),
            name: name.clone(),
            sha256: sha256.clone(),
            scope: scope_str(*scope).to_owned(),
        }),
        Event::ApiKeyRevoked { key_id } => Kind::ApiKeyRevoked(v1::ApiKeyRevoked { key_id: key_id.to_string() }),
        Event::SigningKeyAdded { kid, algorithm, public_key } => Kind::SigningKeyAdded(v1::SigningKeyAdded {
            kid: kid.clone(),
            algorithm: algorithm.clone(),
            public_key: public_key.clone(),
        }),
        Event::TokenIssued { jti, subject, groups, expires_at_unix } => Kind::TokenIssued(v1::TokenIssued {
            jti: jti.clone(),
            subject: subject.clone(),
            groups: groups.clone(),
            expires_at_unix: *expires_at_unix,
        }),
        Event::GrantActivated { grant } => {
            Kind::GrantActivated(v1::GrantActivated { grant: Some(grant_to_proto(grant)) })
        }
        Event::GrantRevoked { grant_id, revoked_by, reason } => Kind::GrantRevoked(v1::GrantRevoked {
            grant_id: grant_id.to_string(),
            revoked_by: revoked_by.clone(),
            reason: reason.clone(),
        }),
        Event::GrantExpired { grant_id } => Kind::GrantExpired(v1::GrantExpired { grant_id: grant_id.to_string() }),
        Event::AccessRequested { request: r } => Kind::AccessRequested(v1::AccessRequested {
            request_id: r.id.to_string(),
            subject: r.subject.clone(),
            issuer: r.issuer.clone(),
            connection_id: r.connection_id.to_string(),
            role: r.role.clone(),
            ttl_secs: r.ttl_secs,
            reason: r.reason.clone(),
            rule: r.rule.clone(),
            requested_at_unix: r.requested_at_unix,
            review: r.review.as_ref().map(terms_to_proto),
        }),
        Event::CommandHeld { command: c } => Kind::CommandHeld(v1::CommandHeld {
            review_id: c.id.to_string(),
            session_id: c.session_id.to_string(),
            grant_id: c.grant_id.to_string(),
            connection_id: c.connection_id.to_string(),
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            statement: c.statement.clone(),
            fingerprint: c.fingerprint.clone(),
            rule: c.rule.clone(),
            held_at_unix: c.held_at_unix,
            terms: Some(terms_to_proto(&c.terms)),
        }),
        Event::ReviewDecided { review_id, decision: d } => Kind::ReviewDecided(v1::ReviewDecided {
            review_id: review_id.to_string(),
            by: d.by.clone(),
            by_issuer: d.by_issuer.clone(),
            approve: d.approve,
            comment: d.comment.clone(),
            scope: d.scope.as_str().to_owned(),
            at_unix: d.at_unix,
            via: d.via.clone(),
        }),
        Event::ReviewResolved { review_id, outcome, at_unix } => Kind::ReviewResolved(v1::ReviewResolved {
            review_id: review_id.to_string(),
            outcome: outcome.as_str().to_owned(),
            at_unix: *at_unix,
        }),
        Event::WebhookAdded { webhook: w } => Kind::WebhookAdded(v1::WebhookAdded {
            webhook_id: w.id.to_string(),
            url: w.url.clone(),
            event_types: w.event_types.clone(),
            description: w.description.clone(),
        }),
        Event::WebhookRemoved { webhook_id } => {
            Kind::WebhookRemoved(v1::WebhookRemoved { webhook_id: webhook_id.to_string() })
        }
        Event::SlackConfigured { slack } => Kind::SlackConfigured(v1::SlackConfigured {
            team_id: slack.team_id.clone(),
            channel: slack.channel.clone(),
            api_base_url: slack.api_base_url.clone(),
            users: slack
                .users
                .iter()
                .map(|(id, u)| v1::SlackUser {
                    slack_user_id: id.clone(),
                    subject: u.subject.clone(),
                    groups: u.groups.clone(),
                })
                .collect(),
        }),
        Event::SlackRemoved {} => Kind::SlackRemoved(v1::SlackRemoved {}),
        Event::SessionOpened { session } => Kind::SessionOpened(session_to_proto(session)),
        Event::SessionClosed { session_id, duration_ms, bytes_from_client, bytes_to_client, reason } => {
            Kind::SessionClosed(v1::SessionClosed {
                session_id: session_id.to_string(),
                duration_ms: *duration_ms,
                bytes_from_client: *bytes_from_client,
                bytes_to_client: *bytes_to_client,
                reason: reason.clone(),
            })
        }
    };
    v1::Event { kind: Some(kind) }
}

pub fn from_proto(event: v1::Event) -> Result<Event, DecodeError> {
    Ok(match event.kind.ok_or(DecodeError::Empty)? {
        Kind::TenantCreated(e) => {
            Event::TenantCreated { tenant_id: id::<TenantId>("tenant_id", &e.tenant_id)?, name: e.name }
        }
        Kind::ConnectionRegistered(e) => {
            Event::ConnectionRegistered { spec: spec_from_proto(e.spec.ok_or_else(|| field("spec", "missing"))?)? }
        }
        Kind::ConnectionUpdated(e) => {
            Event::ConnectionUpdated { spec: spec_from_proto(e.spec.ok_or_else(|| field("spec", "missing"))?)? }
        }
        Kind::ConnectionRemoved(e) => Event::ConnectionRemoved {
            connection_id: id::<ConnectionId>("connection_id", &e.connection_id)?,
            name: e.name,
        },
        Kind::PolicyApplied(e) => Event::PolicyApplied { version: e.version, source: e.source, digest: e.digest },
        Kind::IssuerTrusted(e) => Event::IssuerTrusted {
            issuer: TrustedIssuer {
                id: id::<IssuerId>("issuer_id", &e.issuer_id)?,
                name: e.name,
                issuer_url: e.issuer_url,
                audience: e.audience,
                subject_claim: e.subject_claim,
                groups_claim: e.groups_claim,
                principal_kind: PrincipalKind::parse(&e.principal_kind)
                    .ok_or_else(|| field("principal_kind", e.principal_kind.clone()))?,
            },
        },
        Kind::IssuerRemoved(e) => Event::IssuerRemoved { issuer_id: id::<IssuerId>("issuer_id", &e.issuer_id)? },
        Kind::ApiKeyIssued(e) => Event::ApiKeyIssued {
            key_id: id::<KeyId>("key_id", &e.key_id)?,
            name: e.name,
            sha256: e.sha256,
            scope: parse_scope(&e.scope).ok_or_else(|| field("scope", e.scope.clone()))?,
        },
        Kind::ApiKeyRevoked(e) => Event::ApiKeyRevoked { key_id: id::<KeyId>("key_id", &e.key_id)? },
        Kind::SigningKeyAdded(e) => {
            Event::SigningKeyAdded { kid: e.kid, algorithm: e.algorithm, public_key: e.public_key }
        }
        Kind::TokenIssued(e) => {
            Event::TokenIssued { jti: e.jti, subject: e.subject, groups: e.groups, expires_at_unix: e.expires_at_unix }
        }
        Kind::GrantActivated(e) => {
            Event::GrantActivated { grant: grant_from_proto(e.grant.ok_or_else(|| field("grant", "missing"))?)? }
        }
        Kind::GrantRevoked(e) => Event::GrantRevoked {
            grant_id: id::<GrantId>("grant_id", &e.grant_id)?,
            revoked_by: e.revoked_by,
            reason: e.reason,
        },
        Kind::GrantExpired(e) => Event::GrantExpired { grant_id: id::<GrantId>("grant_id", &e.grant_id)? },
        Kind::AccessRequested(e) => Event::AccessRequested {
            request: AccessRequest {
                id: id::<GrantId>("request_id", &e.request_id)?,
                connection_id: id::<ConnectionId>("connection_id", &e.connection_id)?,
                subject: e.subject,
                issuer: e.issuer,
                role: e.role,
                ttl_secs: e.ttl_secs,
                reason: e.reason,
                rule: e.rule,
                requested_at_unix: e.requested_at_unix,
                review: e.review.map(terms_from_proto),
            },
        },
        Kind::CommandHeld(e) => Event::CommandHeld {
            command: HeldCommand {
                id: id::<ReviewId>("review_id", &e.review_id)?,
                session_id: id::<SessionId>("session_id", &e.session_id)?,
                grant_id: id::<GrantId>("grant_id", &e.grant_id)?,
                connection_id: id::<ConnectionId>("connection_id", &e.connection_id)?,
                subject: e.subject,
                issuer: e.issuer,
                statement: e.statement,
                fingerprint: e.fingerprint,
                rule: e.rule,
                held_at_unix: e.held_at_unix,
                terms: terms_from_proto(e.terms.ok_or_else(|| field("terms", "missing"))?),
            },
        },
        Kind::ReviewDecided(e) => Event::ReviewDecided {
            review_id: id::<ReviewId>("review_id", &e.review_id)?,
            decision: Decision {
                scope: ApprovalScope::parse(&e.scope).ok_or_else(|| field("scope", e.scope.clone()))?,
                by: e.by,
                by_issuer: e.by_issuer,
                approve: e.approve,
                comment: e.comment,
                at_unix: e.at_unix,
                via: e.via,
            },
        },
        Kind::ReviewResolved(e) => Event::ReviewResolved {
            review_id: id::<ReviewId>("review_id", &e.review_id)?,
            outcome: Outcome::parse(&e.outcome).ok_or_else(|| field("outcome", e.outcome.clone()))?,
            at_unix: e.at_unix,
        },
        Kind::WebhookAdded(e) => Event::WebhookAdded {
            webhook: Webhook {
                id: id::<WebhookId>("webhook_id", &e.webhook_id)?,
                url: e.url,
                event_types: e.event_types,
                description: e.description,
            },
        },
        Kind::WebhookRemoved(e) => Event::WebhookRemoved { webhook_id: id::<WebhookId>("webhook_id", &e.webhook_id)? },
        Kind::SlackConfigured(e) => Event::SlackConfigured {
            slack: SlackSettings {
                team_id: e.team_id,
                channel: e.channel,
                api_base_url: e.api_base_url,
                users: e
                    .users
                    .into_iter()
                    .map(|u| (u.slack_user_id, SlackUser { subject: u.subject, groups: u.groups }))
                    .collect(),
            },
        },
        Kind::SlackRemoved(_) => Event::SlackRemoved {},
        Kind::SessionOpened(e) => Event::SessionOpened { session: session_from_proto(e)? },
        Kind::SessionClosed(e) => Event::SessionClosed {
            session_id: id::<SessionId>("session_id", &e.session_id)?,
            duration_ms: e.duration_ms,
            bytes_from_client: e.bytes_from_client,
            bytes_to_client: e.bytes_to_client,
            reason: e.reason,
        },
    })
}

fn scope_str(scope: AdminScope) -> &'static str {
    match scope {
        AdminScope::None => "none",
        AdminScope::Tenant => "tenant_admin",
        AdminScope::Platform => "platform_admin",
    }
}

fn parse_scope(s: &str) -> Option<AdminScope> {
    Some(match s {
        "none" => AdminScope::None,
        "tenant_admin" => AdminScope::Tenant,
        "platform_admin" => AdminScope::Platform,
        _ => return None,
    })
}

fn spec_to_proto(spec: &ConnectionSpec) -> v1::ConnectionSpec {
    v1::ConnectionSpec {
        connection_id: spec.id.to_string(),
        name: spec.name.clone(),
        kind: spec.kind.as_str().to_owned(),
        address: spec.address.clone(),
        database: spec.database.clone(),
        tls: spec.tls.as_str().to_owned(),
        roles: spec
            .roles
            .iter()
            .map(|(name, target_role)| v1::RoleMapping { name: name.clone(), target_role: target_role.clone() })
            .collect(),
        labels: spec.labels.iter().map(|(key, value)| v1::Label { key: key.clone(), value: value.clone() }).collect(),
        credential_mode: spec.credential_mode.as_str().to_owned(),
        secret_version: spec.secret_version,
        admin_user: spec.credential_user.clone(),
    }
}

fn spec_from_proto(p: v1::ConnectionSpec) -> Result<ConnectionSpec, DecodeError> {
    Ok(ConnectionSpec {
        id: id::<ConnectionId>("connection_id", &p.connection_id)?,
        kind: ConnectionKind::parse(&p.kind).ok_or_else(|| field("kind", p.kind.clone()))?,
        tls: TargetTls::parse(&p.tls).ok_or_else(|| field("tls", p.tls.clone()))?,
        credential_mode: CredentialMode::parse(&p.credential_mode)
            .ok_or_else(|| field("credential_mode", p.credential_mode.clone()))?,
        name: p.name,
        address: p.address,
        database: p.database,
        roles: p.roles.into_iter().map(|r| (r.name, r.target_role)).collect::<BTreeMap<_, _>>(),
        labels: p.labels.into_iter().map(|l| (l.key, l.value)).collect::<BTreeMap<_, _>>(),
        credential_user: p.admin_user,
        secret_version: p.secret_version,
    })
}

fn terms_to_proto(t: &ReviewTerms) -> v1::ReviewTerms {
    v1::ReviewTerms {
        approver_groups: t.approvers.groups.clone(),
        approver_subjects: t.approvers.subjects.clone(),
        quorum: t.quorum,
        expires_at_unix: t.expires_at_unix,
    }
}

fn terms_from_proto(t: v1::ReviewTerms) -> ReviewTerms {
    ReviewTerms {
        approvers: Approvers { groups: t.approver_groups, subjects: t.approver_subjects },
        quorum: t.quorum,
        expires_at_unix: t.expires_at_unix,
    }
}

pub fn grant_to_proto(g: &Grant) -> v1::Grant {
    v1::Grant {
        grant_id: g.id.to_string(),
        subject: g.subject.clone(),
        issuer: g.issuer.clone(),
        connection_id: g.connection_id.to_string(),
        role: g.role.clone(),
        starts_at_unix: g.starts_at_unix,
        expires_at_unix: g.expires_at_unix,
        reason: g.reason.clone(),
        granted_by: g.granted_by.clone(),
    }
}

pub fn grant_from_proto(g: v1::Grant) -> Result<Grant, DecodeError> {
    Ok(Grant {
        id: id::<GrantId>("grant_id", &g.grant_id)?,
        connection_id: id::<ConnectionId>("connection_id", &g.connection_id)?,
        subject: g.subject,
        issuer: g.issuer,
        role: g.role,
        starts_at_unix: g.starts_at_unix,
        expires_at_unix: g.expires_at_unix,
        reason: g.reason,
        granted_by: g.granted_by,
    })
}

pub fn session_to_proto(s: &SessionInfo) -> v1::SessionOpened {
    v1::SessionOpened {
        session_id: s.id.to_string(),
        grant_id: s.grant_id.to_string(),
        connection_id: s.connection_id.to_string(),
        subject: s.subject.clone(),
        issuer: s.issuer.clone(),
        client_addr: s.client_addr.clone(),
        worker_id: s.worker_id.clone(),
        target_role: s.target_role.clone(),
    }
}

pub fn session_from_proto(s: v1::SessionOpened) -> Result<SessionInfo, DecodeError> {
    Ok(SessionInfo {
        id: id::<SessionId>("session_id", &s.session_id)?,
        grant_id: id::<GrantId>("grant_id", &s.grant_id)?,
        connection_id: id::<ConnectionId>("connection_id", &s.connection_id)?,
        subject: s.subject,
        issuer: s.issuer,
        client_addr: s.client_addr,
        worker_id: s.worker_id,
        target_role: s.target_role,
    })
}

/// The chain header of a stored record.
pub fn header(record: &v1::EventRecord) -> airlock_core::chain::Header<'_> {
    airlock_core::chain::Header {
        tenant_id: &record.tenant_id,
        seq: record.seq,
        stream: &record.stream,
        stream_version: record.stream_version,
        occurred_at_unix_ms: record.occurred_at_unix_ms,
        actor: &record.actor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let spec = ConnectionSpec {
            id: ConnectionId::new(),
            name: "pg".into(),
            kind: ConnectionKind::Postgres,
            address: "127.0.0.1:5432".into(),
            database: "app".into(),
            tls: TargetTls::Prefer,
            roles: [("readonly".to_owned(), "app_readonly".to_owned())].into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            credential_mode: CredentialMode::SessionRole,
            credential_user: "postgres".into(),
            secret_version: 1,
        };
        let terms = ReviewTerms {
            approvers: Approvers { groups: vec!["dba".into()], subjects: vec!["bob".into()] },
            quorum: 2,
            expires_at_unix: 99,
        };
        let events = vec![
            Event::TenantCreated { tenant_id: TenantId::new(), name: "t".into() },
            Event::ConnectionRegistered { spec: spec.clone() },
            Event::ConnectionUpdated { spec },
            Event::ConnectionRemoved { connection_id: ConnectionId::new(), name: "pg".into() },
            Event::PolicyApplied { version: 2, source: "version: 1".into(), digest: "ab".into() },
            Event::IssuerTrusted {
                issuer: TrustedIssuer {
                    id: IssuerId::new(),
                    name: "ci".into(),
                    issuer_url: "https://ci".into(),
                    audience: "airlock".into(),
                    subject_claim: "repository".into(),
                    groups_claim: String::new(),
                    principal_kind: PrincipalKind::Workload,
                },
            },
            Event::IssuerRemoved { issuer_id: IssuerId::new() },
            Event::ApiKeyIssued {
                key_id: KeyId::new(),
                name: "admin".into(),
                sha256: "00".into(),
                scope: AdminScope::Platform,
            },
            Event::ApiKeyRevoked { key_id: KeyId::new() },
            Event::SigningKeyAdded { kid: "k1".into(), algorithm: "EdDSA".into(), public_key: vec![1; 32] },
            Event::TokenIssued { jti: "j".into(), subject: "s".into(), groups: vec!["g".into()], expires_at_unix: 5 },
            Event::GrantActivated {
                grant: Grant {
                    id: GrantId::new(),
                    subject: "ci-job".into(),
                    issuer: String::new(),
                    connection_id: ConnectionId::new(),
                    role: "readonly".into(),
                    starts_at_unix: 1,
                    expires_at_unix: 2,
                    reason: "why".into(),
                    granted_by: "admin".into(),
                },
            },
            Event::GrantRevoked { grant_id: GrantId::new(), revoked_by: "a".into(), reason: "r".into() },
            Event::SessionOpened {
                session: SessionInfo {
                    id: SessionId::new(),
                    grant_id: GrantId::new(),
                    connection_id: ConnectionId::new(),
                    subject: "s".into(),
                    issuer: "i".into(),
                    client_addr: "127.0.0.1:5".into(),
                    worker_id: "w".into(),
                    target_role: "airlock_x".into(),
                },
            },
            Event::SessionClosed {
                session_id: SessionId::new(),
                duration_ms: 5,
                bytes_from_client: 6,
                bytes_to_client: 7,
                reason: "client closed".into(),
            },
            Event::GrantExpired { grant_id: GrantId::new() },
            Event::AccessRequested {
                request: AccessRequest {
                    id: GrantId::new(),
                    subject: "agent".into(),
                    issuer: "https://idp".into(),
                    connection_id: ConnectionId::new(),
                    role: "readwrite".into(),
                    ttl_secs: 900,
                    reason: "fix".into(),
                    rule: "writes".into(),
                    requested_at_unix: 10,
                    review: Some(terms.clone()),
                },
            },
            Event::CommandHeld {
                command: HeldCommand {
                    id: ReviewId::new(),
                    session_id: SessionId::new(),
                    grant_id: GrantId::new(),
                    connection_id: ConnectionId::new(),
                    subject: "agent".into(),
                    issuer: "https://idp".into(),
                    statement: "DROP TABLE t".into(),
                    fingerprint: "ff".into(),
                    rule: "ddl".into(),
                    held_at_unix: 11,
                    terms,
                },
            },
            Event::ReviewDecided {
                review_id: ReviewId::new(),
                decision: Decision {
                    by: "alice".into(),
                    by_issuer: "https://idp".into(),
                    approve: true,
                    comment: "ok".into(),
                    scope: ApprovalScope::Grant,
                    at_unix: 12,
                    via: "slack".into(),
                },
            },
            Event::ReviewResolved { review_id: ReviewId::new(), outcome: Outcome::Expired, at_unix: 13 },
            Event::WebhookAdded {
                webhook: Webhook {
                    id: WebhookId::new(),
                    url: "https://hooks.example/a".into(),
                    event_types: vec!["access_requested".into()],
                    description: "pager".into(),
                },
            },
            Event::WebhookRemoved { webhook_id: WebhookId::new() },
            Event::SlackConfigured {
                slack: SlackSettings {
                    team_id: "T1".into(),
                    channel: "C1".into(),
                    api_base_url: "https://slack.com/api".into(),
                    users: [("U1".to_owned(), SlackUser { subject: "alice".into(), groups: vec!["dba".into()] })]
                        .into(),
                },
            },
            Event::SlackRemoved {},
        ];
        for e in events {
            assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
        }
    }

    #[test]
    fn garbage_payloads_are_errors() {
        assert!(decode_event(&[0xff, 0xff, 0xff]).is_err());
        assert!(matches!(decode_event(&[]), Err(DecodeError::Empty)));
    }
}
