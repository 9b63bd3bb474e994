//! The recorder's Ed25519 key, which signs every manifest. It is read from a
//! PKCS#8 PEM file, or generated on first start into the data directory.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// A public key's id: the hex SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Reads a public key from PEM (`-----BEGIN PUBLIC KEY-----`), as
/// [`Signer::public_key_pem`] writes it.
pub fn public_key_from_pem(pem: &str) -> anyhow::Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| anyhow::anyhow!("not an Ed25519 public key in PEM: {e}"))
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// Reads the key at `path` (PKCS#8 PEM).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 private key in PKCS#8 PEM: {e}", path.display()))?;
        Ok(Self::new(key))
    }

    /// Reads the key at `path`, or makes one there (readable by its owner only)
    /// when there is none.
    pub fn load_or_generate(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| anyhow::anyhow!("encoding a signing key: {e}"))?;
        match write_private(path, pem.as_bytes()) {
            Ok(()) => {
                let signer = Self::new(key);
                tracing::info!(path = %path.display(), key_id = %signer.key_id, "generated the recorder's signing key");
                Ok(signer)
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key in PEM, for whoever verifies recordings.
    pub fn public_key_pem(&self) -> anyhow::Result<String> {
        self.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding a public key: {e}"))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing-key.pem");
        let first = Signer::load_or_generate(&path).unwrap();
        let again = Signer::load_or_generate(&path).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        assert_eq!(first.key_id().len(), 64);
        let public = public_key_from_pem(&first.public_key_pem().unwrap()).unwrap();
        assert_eq!(key_id(&public), first.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(!format!("{first:?}").contains("key:"), "Debug must not show the key");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-key.pem");
        std::fs::write(&path, "not a key").unwrap();
        let e = Signer::load_or_generate(&path).unwrap_err();
        assert!(e.to_string().contains("PKCS#8"), "{e:#}");
    }
}
