//! The pure fold: a tenant's state is its events applied in `seq` order.
//!
//! Both the control plane (to validate commands) and every data-plane worker (to
//! decide locally) hold a `TenantState` per tenant. Applying is idempotent by
//! `seq`: an event at or below the current `seq` is ignored, and one past the
//! next expected `seq` is refused as a gap so the caller can backfill.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::connection::ConnectionSpec;
use crate::event::{Event, TrustedIssuer};
use crate::grant::Grant;
use crate::ids::{ConnectionId, GrantId, IssuerId, KeyId, TenantId};
use crate::policy::{Policy, PolicyError};
use crate::principal::AdminScope;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
                self.grants.insert(grant.id, grant.clone());
            }
            Event::GrantRevoked { grant_id, .. } => {
                self.grants.remove(grant_id);
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
