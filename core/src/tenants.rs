//! Every tenant's state side by side, with the lookups identity needs (which
//! tenant trusts this issuer, owns this signing key, issued this API key).
//! Both the control plane and every worker keep one of these.

use std::collections::BTreeMap;

use crate::event::{Event, TrustedIssuer};
use crate::ids::TenantId;
use crate::state::{ApiKey, Applied, ApplyError, SigningKey, TenantState};

#[derive(Clone, Debug, Default)]
pub struct Tenants {
    states: BTreeMap<TenantId, TenantState>,
}

impl Tenants {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one record of a tenant's log (idempotent by `seq`; a gap is an error).
    pub fn apply_at(&mut self, tenant: TenantId, seq: u64, event: &Event) -> Result<Applied, ApplyError> {
        self.states.entry(tenant).or_default().apply_at(seq, event)
    }

    /// Replaces a tenant's state wholesale (from a snapshot) unless what we hold is newer.
    pub fn install(&mut self, tenant: TenantId, state: TenantState) {
        let current = self.states.get(&tenant).map_or(0, |s| s.seq);
        if state.seq >= current {
            self.states.insert(tenant, state);
        }
    }

    pub fn get(&self, tenant: &TenantId) -> Option<&TenantState> {
        self.states.get(tenant)
    }

    /// The last `seq` applied for a tenant (0 when unknown).
    pub fn seq(&self, tenant: &TenantId) -> u64 {
        self.states.get(tenant).map_or(0, |s| s.seq)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TenantId, &TenantState)> {
        self.states.iter()
    }

    /// Tenants that have been created (an entry may exist for a tenant whose
    /// first event has not arrived yet).
    pub fn created(&self) -> impl Iterator<Item = (&TenantId, &TenantState)> {
        self.states.iter().filter(|(_, s)| s.tenant_id.is_some())
    }

    pub fn by_name(&self, name: &str) -> Option<(&TenantId, &TenantState)> {
        self.created().find(|(_, s)| s.name == name)
    }

    pub fn issuers_for(&self, iss: &str) -> Vec<(TenantId, TrustedIssuer)> {
        let mut out = Vec::new();
        for (tenant, state) in self.created() {
            out.extend(state.issuers.values().filter(|i| i.issuer_url == iss).map(|i| (*tenant, i.clone())));
        }
        out
    }

    pub fn signing_key(&self, kid: &str) -> Option<(TenantId, SigningKey)> {
        self.created().find_map(|(t, s)| s.signing_keys.get(kid).map(|k| (*t, k.clone())))
    }

    pub fn api_key(&self, sha256_hex: &str) -> Option<(TenantId, ApiKey)> {
        self.created().find_map(|(t, s)| s.api_keys.values().find(|k| k.sha256 == sha256_hex).map(|k| (*t, k.clone())))
    }
}
