//! Secrets on Postgres, in the same database as the event log.

use std::sync::Arc;

use airlock_core::TenantId;
use anyhow::Context as _;
use sqlx::PgPool;

use super::sealer::Sealer;
use super::{Secret, SecretStore};
use crate::eventlog::records::{from_db, to_db};

pub struct PgSecretStore {
    pool: PgPool,
    sealer: Arc<Sealer>,
}

impl PgSecretStore {
    pub fn new(pool: PgPool, sealer: Arc<Sealer>) -> Self {
        Self { pool, sealer }
    }
}

#[async_trait::async_trait]
impl SecretStore for PgSecretStore {
    /// Writers of one secret take turns on a transaction-scoped advisory lock on
    /// its (tenant, name), so each gets the next version without retrying; the
    /// primary key still refuses a duplicate version should anything else write.
    async fn put(&self, tenant: TenantId, name: &str, plaintext: &[u8]) -> anyhow::Result<u64> {
        let tenant_id = tenant.to_string();
        let context = || format!("storing secret {name}");
        let mut tx = self.pool.begin().await.with_context(context)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(&tenant_id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM secrets WHERE tenant_id = $1 AND name = $2")
                .bind(&tenant_id)
                .bind(name)
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("reading secret {name}"))?;
        let version = from_db("secret version", latest.unwrap_or(0))? + 1;
        // The version is part of the associated data, so seal only once it is known.
        let sealed = self.sealer.seal(tenant, name, version, plaintext)?;
        sqlx::query("INSERT INTO secrets (tenant_id, name, version, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5)")
            .bind(&tenant_id)
            .bind(name)
            .bind(to_db(version)?)
            .bind(sealed.nonce.as_slice())
            .bind(&sealed.ciphertext)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(version)
    }

    async fn get(&self, tenant: TenantId, name: &str) -> anyhow::Result<Option<Secret>> {
        let row: Option<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT version, nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND name = $2 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant.to_string())
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading secret {name}"))?;
        let Some((version, nonce, ciphertext)) = row else { return Ok(None) };
        let version = from_db("secret version", version)?;
        let plaintext = self.sealer.open(tenant, name, version, &nonce, &ciphertext)?;
        Ok(Some(Secret { version, plaintext }))
    }

    async fn delete(&self, tenant: TenantId, name: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&self.pool)
            .await
            .with_context(|| format!("deleting secret {name}"))?;
        Ok(())
    }
}
