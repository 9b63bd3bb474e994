//! What data-plane workers read: a snapshot of every tenant, the heads of every
//! tenant's log (to notice a missed event), and a tenant's events from a `seq`.

use airlock_core::TenantId;
use airlock_proto::EventRecord;

use super::ControlPlane;
use crate::error::ApiError;

pub struct TenantSnapshot {
    pub tenant: TenantId,
    pub seq: u64,
    pub state: Vec<u8>,
}

impl ControlPlane {
    pub fn snapshot(&self) -> Result<Vec<TenantSnapshot>, ApiError> {
        self.tenants.read(|t| {
            t.created()
                .map(|(id, s)| {
                    let state =
                        airlock_core::snapshot::encode(s).map_err(|e| ApiError::internal("encode a snapshot", e))?;
                    Ok(TenantSnapshot { tenant: *id, seq: s.seq, state })
                })
                .collect()
        })
    }

    /// Every tenant's last `seq`, read from the log itself.
    pub async fn heads(&self) -> Result<Vec<(TenantId, u64)>, ApiError> {
        let tenants = self.log.tenants().await.map_err(|e| ApiError::internal("list tenants", e))?;
        let mut heads = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let (seq, _) = self.log.head(tenant).await.map_err(|e| ApiError::internal("read a log head", e))?;
            heads.push((tenant, seq));
        }
        Ok(heads)
    }

    pub async fn backfill(&self, tenant: TenantId, from_seq: u64) -> Result<(Vec<EventRecord>, u64), ApiError> {
        self.read_events(tenant, from_seq, None).await
    }
}
