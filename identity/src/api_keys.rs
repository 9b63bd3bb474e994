//! Opaque API keys (`alk_...`): 32 random bytes, of which Airlock keeps only
//! the SHA-256. The key's name and admin scope come from the tenant's log.

use airlock_core::principal::{Principal, PrincipalKind};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::{API_KEY_PREFIX, AuthError, Directory};

/// The issuer named on principals that presented an API key.
const ISSUER: &str = "airlock";

/// A new API key and its SHA-256 (lowercase hex). Show the key once; record
/// only the hash.
pub fn generate_api_key() -> (String, String) {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = sha256_hex(&token);
    (token, hash)
}

/// The SHA-256 of the whole token, prefix included.
pub(crate) fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principal of an API key. Lookup is by hash, so comparing is not timing
/// sensitive: learning a prefix of a hash does not help find a key.
pub(crate) fn verify(token: &str, directory: &dyn Directory) -> Result<Principal, AuthError> {
    let (tenant, key) = directory.api_key(&sha256_hex(token)).ok_or_else(|| AuthError::new("unknown API key"))?;
    Ok(Principal {
        tenant_id: tenant,
        issuer: ISSUER.to_owned(),
        subject: format!("api-key:{}", key.name),
        groups: Vec::new(),
        claims: Default::default(),
        kind: PrincipalKind::Workload,
        admin: key.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_random_and_hashed_whole() {
        let (a, hash) = generate_api_key();
        let (b, _) = generate_api_key();
        assert!(a.starts_with("alk_"));
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(a, b);
        assert_eq!(hash, sha256_hex(&a));
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        // Known answer: the hash covers the prefix.
        assert_eq!(sha256_hex("alk_"), "c8a00042db809b9ce0a4345dcd170d8af2354ed528599217882ae07b20382c81");
    }
}
