//! Encryption at rest for the secret store.
//!
//! XChaCha20-Poly1305 under the installation's master key, with a fresh random
//! 24-byte nonce per stored version (192-bit nonces make random generation safe
//! for any number of versions). The associated data is
//! `tenant || 0 || name || 0 || version (big-endian u64)`, so a ciphertext copied
//! to another tenant, name or version fails authentication instead of decrypting
//! as someone else's secret.

use airlock_core::TenantId;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

pub const NONCE_LEN: usize = 24;

/// A sealed secret version, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// Seals and opens secrets under the master key. `Debug` never prints the key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

/// Why a stored secret could not be opened. The message names the secret, never
/// its bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret {name} (version {version}) cannot be decrypted (wrong master key?)")]
    Open { name: String, version: u64 },
    #[error("secret {name} could not be encrypted")]
    Seal { name: String },
}

impl Sealer {
    pub fn new(master_key: [u8; 32]) -> Self {
        Self { cipher: XChaCha20Poly1305::new(&master_key.into()) }
    }

    pub fn seal(&self, tenant: TenantId, name: &str, version: u64, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(tenant, name, version);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| SealError::Seal { name: name.to_owned() })?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// Opens a stored version. Any mismatch — another master key, a ciphertext
    /// moved from another row, a truncated nonce, a flipped bit — is one error.
    pub fn open(
        &self,
        tenant: TenantId,
        name: &str,
        version: u64,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let fail = || SealError::Open { name: name.to_owned(), version };
        if nonce.len() != NONCE_LEN {
            return Err(fail());
        }
        let aad = aad(tenant, name, version);
        self.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| fail())
    }
}

fn aad(tenant: TenantId, name: &str, version: u64) -> Vec<u8> {
    let tenant = tenant.to_string();
    let mut aad = Vec::with_capacity(tenant.len() + name.len() + 10);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Sealer::new([7; 32]);
        let t = TenantId::new();
        let sealed = s.seal(t, "connection/a", 1, b"hunter2").unwrap();
        assert_eq!(s.open(t, "connection/a", 1, &sealed.nonce, &sealed.ciphertext).unwrap(), b"hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn nonces_are_fresh_per_seal() {
        let s = Sealer::new([7; 32]);
        let t = TenantId::new();
        let a = s.seal(t, "n", 1, b"x").unwrap();
        let b = s.seal(t, "n", 1, b"x").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn wrong_key_is_an_error_naming_the_secret() {
        let t = TenantId::new();
        let sealed = Sealer::new([1; 32]).seal(t, "connection/a", 3, b"pw").unwrap();
        let err = Sealer::new([2; 32]).open(t, "connection/a", 3, &sealed.nonce, &sealed.ciphertext).unwrap_err();
        assert_eq!(err.to_string(), "secret connection/a (version 3) cannot be decrypted (wrong master key?)");
    }

    #[test]
    fn associated_data_binds_tenant_name_and_version() {
        let s = Sealer::new([1; 32]);
        let t = TenantId::new();
        let sealed = s.seal(t, "connection/a", 1, b"pw").unwrap();
        assert!(s.open(TenantId::new(), "connection/a", 1, &sealed.nonce, &sealed.ciphertext).is_err());
        assert!(s.open(t, "connection/b", 1, &sealed.nonce, &sealed.ciphertext).is_err());
        assert!(s.open(t, "connection/a", 2, &sealed.nonce, &sealed.ciphertext).is_err());
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let s = Sealer::new([1; 32]);
        let t = TenantId::new();
        let mut sealed = s.seal(t, "n", 1, b"pw").unwrap();
        assert!(s.open(t, "n", 1, &sealed.nonce[..10], &sealed.ciphertext).is_err());
        assert!(s.open(t, "n", 1, &sealed.nonce, &[]).is_err());
        sealed.ciphertext[0] ^= 1;
        assert!(s.open(t, "n", 1, &sealed.nonce, &sealed.ciphertext).is_err());
    }
}
