//! Connections: the named targets agents reach through Airlock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ConnectionId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    Postgres,
    Ssh,
    Http,
    Kubernetes,
}

impl ConnectionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionKind::Postgres => "postgres",
            ConnectionKind::Ssh => "ssh",
            ConnectionKind::Http => "http",
            ConnectionKind::Kubernetes => "kubernetes",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "postgres" => ConnectionKind::Postgres,
            "ssh" => ConnectionKind::Ssh,
            "http" => ConnectionKind::Http,
            "kubernetes" => ConnectionKind::Kubernetes,
            _ => return None,
        })
    }
}

/// How the gateway talks TLS to the target (libpq's `sslmode` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TargetTls {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetTls::Disable => "disable",
            TargetTls::Prefer => "prefer",
            TargetTls::Require => "require",
            TargetTls::VerifyCa => "verify-ca",
            TargetTls::VerifyFull => "verify-full",
        }
    }

    /// Whether the target must prove its name with a certificate that chains
    /// to the gateway's roots (`verify-full`).
    pub fn verifies_name(&self) -> bool {
        matches!(self, TargetTls::VerifyFull)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => TargetTls::Disable,
            "prefer" => TargetTls::Prefer,
            "require" => TargetTls::Require,
            "verify-ca" => TargetTls::VerifyCa,
            "verify-full" => TargetTls::VerifyFull,
            _ => return None,
        })
    }
}

/// How credentials for the target are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialMode {
    /// An admin credential from which a role is created per session (the default).
    SessionRole,
    /// One stored credential shared by every session: weaker, for targets where
    /// roles cannot be created.
    Static,
}

impl CredentialMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialMode::SessionRole => "session_role",
            CredentialMode::Static => "static",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "session_role" => CredentialMode::SessionRole,
            "static" => CredentialMode::Static,
            _ => return None,
        })
    }
}

/// A connection as the log records it. The credential itself is in the secret
/// store; `secret_version` says which version of it is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    pub id: ConnectionId,
    pub name: String,
    pub kind: ConnectionKind,
    pub address: String,
    pub database: String,
    pub tls: TargetTls,
    /// Grant role name → target role a session role is made a member of.
    pub roles: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub credential_mode: CredentialMode,
    /// The user name of the stored credential (not secret; shown to admins).
    pub credential_user: String,
    pub secret_version: u64,
}

/// Names of connections, roles, issuers, rules: short, printable, no surprises.
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{field}: must be 1 to 63 characters"));
    }
    let ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let starts_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok || !starts_ok {
        return Err(format!(
            "{field}: {name:?} must use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}
