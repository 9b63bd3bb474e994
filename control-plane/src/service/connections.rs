//! Connections: register, update, remove, read. The credential goes to the
//! secret store; the log records only its user name and version. Nothing here
//! ever returns a password.

use std::collections::BTreeMap;

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode, TargetTls, validate_name};
use airlock_core::event::stream;
use airlock_core::principal::Principal;
use airlock_core::{ConnectionId, Event, TenantState};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Planned, require_tenant_admin};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

/// A connection as registered or updated. Exactly one of `admin_credential`
/// (per-session roles are made with it) or `static_credential` (shared by every
/// session; weaker) is given on registration; on update, leaving both out keeps
/// the stored one.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInput {
    pub name: String,
    /// `postgres` (more kinds later: ssh, http, kubernetes).
    pub kind: String,
    /// `host:port` of the target.
    pub address: String,
    #[serde(default)]
    pub database: String,
    /// How the gateway talks TLS to the target: disable, prefer (default), require, verify-ca, verify-full.
    #[serde(default)]
    pub tls: Option<String>,
    #[serde(default)]
    pub admin_credential: Option<CredentialInput>,
    #[serde(default)]
    pub static_credential: Option<CredentialInput>,
    /// Grant role name → the target role a per-session role is made a member of.
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub user: String,
    #[serde(default)]
    pub password: String,
}

impl std::fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialInput").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

impl std::fmt::Debug for ConnectionInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInput").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// A connection as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub address: String,
    pub database: String,
    pub tls: String,
    pub roles: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `session_role` or `static`.
    pub credential_mode: String,
    /// The stored credential's user name (never its password).
    pub credential_user: String,
    pub secret_version: u64,
}

impl From<&ConnectionSpec> for ConnectionView {
    fn from(c: &ConnectionSpec) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.clone(),
            kind: c.kind.as_str().to_owned(),
            address: c.address.clone(),
            database: c.database.clone(),
            tls: c.tls.as_str().to_owned(),
            roles: c.roles.clone(),
            labels: c.labels.clone(),
            credential_mode: c.credential_mode.as_str().to_owned(),
            credential_user: c.credential_user.clone(),
            secret_version: c.secret_version,
        }
    }
}

/// The validated, secret-free part of an input, and its credential.
struct Validated {
    spec: ConnectionSpec,
    credential: Option<(CredentialMode, CredentialInput)>,
}

const MAX_ROLES: usize = 64;
const MAX_LABELS: usize = 64;

fn validate(input: ConnectionInput, id: ConnectionId) -> Result<Validated, ApiError> {
    validate_name("name", &input.name).map_err(|r| ApiError::invalid("name", r.trim_start_matches("name: ")))?;
    let kind = ConnectionKind::parse(&input.kind)
        .ok_or_else(|| ApiError::invalid("kind", format!("unknown kind {:?}; expected postgres", input.kind)))?;
    if kind != ConnectionKind::Postgres {
        return Err(ApiError::invalid("kind", format!("{} connections are not supported yet", kind.as_str())));
    }
    validate_address(&input.address)?;
    if input.database.is_empty() || input.database.len() > 63 || input.database.contains('\0') {
        return Err(ApiError::invalid("database", "a postgres connection names its database (1 to 63 characters)"));
    }
    let tls = match input.tls.as_deref() {
        None => TargetTls::Prefer,
        Some(t) => TargetTls::parse(t).ok_or_else(|| {
            ApiError::invalid("tls", format!("{t:?} is not one of disable, prefer, require, verify-ca, verify-full"))
        })?,
    };
    if input.roles.len() > MAX_ROLES {
        return Err(ApiError::invalid("roles", format!("at most {MAX_ROLES} roles")));
    }
    for (name, target) in &input.roles {
        validate_name(&format!("roles.{name}"), name).map_err(|r| ApiError::invalid(format!("roles.{name}"), r))?;
        if !is_identifier(target) {
            return Err(ApiError::invalid(
                format!("roles.{name}"),
                format!("{target:?} is not a role name (letters, digits and _, at most 63)"),
            ));
        }
    }
    if input.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid("labels", format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in &input.labels {
        if k.is_empty() || k.len() > 63 || v.len() > 255 {
            return Err(ApiError::invalid(format!("labels.{k}"), "keys are 1 to 63 characters, values at most 255"));
        }
    }
    let credential = match (input.admin_credential, input.static_credential) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("admin_credential", "give admin_credential or static_credential, not both"));
        }
        (Some(c), None) => Some((CredentialMode::SessionRole, c)),
        (None, Some(c)) => Some((CredentialMode::Static, c)),
        (None, None) => None,
    };
    if let Some((mode, c)) = &credential {
        let field = if *mode == CredentialMode::Static { "static_credential.user" } else { "admin_credential.user" };
        if !is_identifier(&c.user) {
            return Err(ApiError::invalid(field, "must be a role name (letters, digits and _, at most 63)"));
        }
        if c.password.len() > 1024 {
            return Err(ApiError::invalid(field.replace("user", "password"), "at most 1024 bytes"));
        }
    }
    let (credential_mode, credential_user) = match &credential {
        Some((mode, c)) => (*mode, c.user.clone()),
        None => (CredentialMode::SessionRole, String::new()),
    };
    Ok(Validated {
        spec: ConnectionSpec {
            id,
            name: input.name,
            kind,
            address: input.address,
            database: input.database,
            tls,
            roles: input.roles,
            labels: input.labels,
            credential_mode,
            credential_user,
            secret_version: 0,
        },
        credential,
    })
}

fn validate_address(address: &str) -> Result<(), ApiError> {
    let bad = || ApiError::invalid("address", format!("{address:?} must be host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 253 || host.contains(['/', ' ', '@']) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn find<'a>(state: &'a TenantState, id_or_name: &str) -> Result<&'a ConnectionSpec, ApiError> {
    state.find_connection(id_or_name).ok_or_else(|| ApiError::not_found(format!("connection {id_or_name}")))
}

fn secret_name(id: &ConnectionId) -> String {
    format!("connection/{id}")
}

impl ControlPlane {
    pub async fn register_connection(
        &self,
        principal: &Principal,
        input: ConnectionInput,
    ) -> Result<ConnectionView, ApiError> {
        require_tenant_admin(principal)?;
        let tenant = principal.tenant_id;
        let id = ConnectionId::new();
        let Validated { mut spec, credential } = validate(input, id)?;
        let Some((_, credential)) = credential else {
            return Err(ApiError::invalid(
                "admin_credential",
                "a new connection needs admin_credential or static_credential",
            ));
        };
        if self.tenants.read(|t| t.get(&tenant).and_then(|s| s.connection_by_name(&spec.name).cloned())).is_some() {
            return Err(ApiError::conflict(format!("a connection named {:?} already exists", spec.name)));
        }
        spec.secret_version = self.store_credential(principal, &id, &credential).await?;
        let (_, view) = self
            .command(tenant, &principal.subject, |state| {
                if state.connection_by_name(&spec.name).is_some() {
                    return Err(ApiError::conflict(format!("a connection named {:?} already exists", spec.name)));
                }
                let view = ConnectionView::from(&spec);
                Ok((
                    Planned::one(
                        stream::connection(&id),
                        ExpectedVersion::NoStream,
                        Event::ConnectionRegistered { spec },
                    ),
                    view,
                ))
            })
            .await?;
        tracing::info!(tenant = %tenant, connection = %view.name, "connection registered");
        Ok(view)
    }

    pub async fn update_connection(
        &self,
        principal: &Principal,
        id_or_name: &str,
        input: ConnectionInput,
    ) -> Result<ConnectionView, ApiError> {
        require_tenant_admin(principal)?;
        let tenant = principal.tenant_id;
        let current = self
            .tenants
            .read(|t| t.get(&tenant).and_then(|s| s.find_connection(id_or_name).cloned()))
            .ok_or_else(|| ApiError::not_found(format!("connection {id_or_name}")))?;
        let Validated { mut spec, credential } = validate(input, current.id)?;
        match credential {
            Some((_, c)) => spec.secret_version = self.store_credential(principal, &current.id, &c).await?,
            None => {
                spec.credential_mode = current.credential_mode;
                spec.credential_user.clone_from(&current.credential_user);
                spec.secret_version = current.secret_version;
            }
        }
        let (_, view) = self
            .command(tenant, &principal.subject, |state| {
                let existing = find(state, &current.id.to_string())?;
                if let Some(other) = state.connection_by_name(&spec.name).filter(|o| o.id != existing.id) {
                    return Err(ApiError::conflict(format!("a connection named {:?} already exists", other.name)));
                }
                let view = ConnectionView::from(&spec);
                Ok((
                    Planned::one(stream::connection(&spec.id), ExpectedVersion::Any, Event::ConnectionUpdated { spec }),
                    view,
                ))
            })
            .await?;
        Ok(view)
    }

    pub async fn remove_connection(&self, principal: &Principal, id_or_name: &str) -> Result<(), ApiError> {
        require_tenant_admin(principal)?;
        let tenant = principal.tenant_id;
        let (_, id) = self
            .command(tenant, &principal.subject, |state| {
                let c = find(state, id_or_name)?;
                Ok((
                    Planned::one(
                        stream::connection(&c.id),
                        ExpectedVersion::Any,
                        Event::ConnectionRemoved { connection_id: c.id, name: c.name.clone() },
                    ),
                    c.id,
                ))
            })
            .await?;
        self.secrets
            .delete(tenant, &secret_name(&id))
            .await
            .map_err(|e| ApiError::internal("delete a credential", e))?;
        Ok(())
    }

    pub fn get_connection(&self, principal: &Principal, id_or_name: &str) -> Result<ConnectionView, ApiError> {
        self.tenants
            .read(|t| t.get(&principal.tenant_id).and_then(|s| s.find_connection(id_or_name).map(ConnectionView::from)))
            .ok_or_else(|| ApiError::not_found(format!("connection {id_or_name}")))
    }

    pub fn list_connections(&self, principal: &Principal) -> Vec<ConnectionView> {
        self.tenants.read(|t| {
            t.get(&principal.tenant_id)
                .map(|s| s.connections.values().map(ConnectionView::from).collect())
                .unwrap_or_default()
        })
    }

    async fn store_credential(
        &self,
        principal: &Principal,
        id: &ConnectionId,
        credential: &CredentialInput,
    ) -> Result<u64, ApiError> {
        let bytes = serde_json::to_vec(credential).map_err(|e| ApiError::internal("encode a credential", e))?;
        self.secrets
            .put(principal.tenant_id, &secret_name(id), &bytes)
            .await
            .map_err(|e| ApiError::internal("store a credential", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ConnectionInput {
        serde_json::from_str(
            r#"{"name": "pg-local", "kind": "postgres", "address": "127.0.0.1:5432", "database": "app",
                "tls": "prefer", "admin_credential": {"user": "postgres", "password": ""},
                "roles": {"readonly": "app_readonly", "readwrite": "app_readwrite"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_example_validates() {
        let v = validate(input(), ConnectionId::new()).unwrap();
        assert_eq!(v.spec.roles["readonly"], "app_readonly");
        assert_eq!(v.spec.credential_mode, CredentialMode::SessionRole);
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |f: fn(&mut ConnectionInput)| {
            let mut i = input();
            f(&mut i);
            validate(i, ConnectionId::new()).err().unwrap().field.unwrap()
        };
        assert_eq!(field(|i| i.address = "nohost".into()), "address");
        assert_eq!(field(|i| i.address = "h:99999".into()), "address");
        assert_eq!(field(|i| i.tls = Some("maybe".into())), "tls");
        assert_eq!(field(|i| i.kind = "mysql".into()), "kind");
        assert_eq!(field(|i| i.name = "Bad Name".into()), "name");
        assert_eq!(
            field(|i| {
                i.roles.insert("ro".into(), "x; drop".into());
            }),
            "roles.ro"
        );
    }

    #[test]
    fn credentials_never_print() {
        let text = format!("{:?}", CredentialInput { user: "u".into(), password: "hunter2".into() });
        assert!(!text.contains("hunter2"));
    }
}
