//! Secrets kept outside the event log: connection credentials and the private
//! halves of tenants' signing keys. Stored encrypted at rest (XChaCha20-Poly1305
//! under the installation's master key, bound by associated data to the tenant,
//! the secret's name and its version, so a ciphertext moved to another row does
//! not decrypt). Plaintext lives only in memory, in `Secret`, whose `Debug` never
//! prints it.

use airlock_core::TenantId;

pub mod postgres;
pub mod sealer;
pub mod sqlite;

/// A decrypted secret. `Debug` redacts the bytes.
pub struct Secret {
    pub version: u64,
    pub plaintext: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("version", &self.version).field("plaintext", &"<redacted>").finish()
    }
}

#[async_trait::async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores a new version of the named secret and returns its version (1, 2, ...).
    /// Names look like `connection/<id>` or `signing-key/<kid>`.
    async fn put(&self, tenant: TenantId, name: &str, plaintext: &[u8]) -> anyhow::Result<u64>;

    /// The current version of the named secret.
    async fn get(&self, tenant: TenantId, name: &str) -> anyhow::Result<Option<Secret>>;

    /// Removes every version of the named secret.
    async fn delete(&self, tenant: TenantId, name: &str) -> anyhow::Result<()>;
}
