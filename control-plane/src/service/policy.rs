//! The tenant's policy: one YAML document, validated before it is appended,
//! versioned by the `policy` stream (version N is the stream's Nth event, so two
//! concurrent applies cannot both become version N).

use airlock_core::Event;
use airlock_core::event::stream;
use airlock_core::policy::Policy;
use airlock_core::principal::Principal;
use serde::Serialize;

use super::{ControlPlane, Planned, require_tenant_admin, sha256_hex};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub version: u64,
    /// SHA-256 of the document, hex.
    pub digest: String,
    /// The document as it was applied.
    pub source: String,
    /// The tenant's event `seq` that applied it.
    pub seq: u64,
}

impl ControlPlane {
    pub async fn apply_policy(&self, principal: &Principal, source: &str) -> Result<PolicyView, ApiError> {
        require_tenant_admin(principal)?;
        Policy::parse(source).map_err(|e| ApiError::invalid(e.field, e.reason))?;
        let digest = sha256_hex(source.as_bytes());
        let (records, version) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let current = state.policy_version();
                let expected = if current == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(current) };
                let version = current + 1;
                let event = Event::PolicyApplied { version, source: source.to_owned(), digest: digest.clone() };
                Ok((Planned::one(stream::POLICY, expected, event), version))
            })
            .await?;
        let seq = records.last().map_or(0, |r| r.seq);
        tracing::info!(tenant = %principal.tenant_id, version, seq, "policy applied");
        Ok(PolicyView { version, digest, source: source.to_owned(), seq })
    }

    pub fn get_policy(&self, principal: &Principal) -> Result<PolicyView, ApiError> {
        self.tenants
            .read(|t| {
                t.get(&principal.tenant_id).and_then(|s| {
                    s.policy.as_ref().map(|p| PolicyView {
                        version: p.version,
                        digest: p.digest.clone(),
                        source: p.source.clone(),
                        seq: s.seq,
                    })
                })
            })
            .ok_or_else(|| ApiError::not_found("policy"))
    }
}
