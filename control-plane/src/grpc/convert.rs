//! Handler inputs and outputs ⇄ protobuf messages.

use airlock_proto::v1;

use crate::service::{
    ConnectionInput, ConnectionView, CredentialInput, GrantView, IssuerInput, IssuerView, PolicyView, TenantView,
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
