//! A session's manifest, written when the session ends: what the session was,
//! its chunks with their hashes, and the recorder's Ed25519 signature over all
//! of it.
//!
//! ```json
//! {"manifest": {"format": 1, "session": {...}, "end": {...}, "last_seq": 42,
//!               "chunks": [{"index": 0, "key": "...", "first_seq": 1, ...}],
//!               "final_hash": "<hex>", "key_id": "<hex sha256 of the public key>"},
//!  "signature": "<hex>"}
//! ```
//!
//! The signature covers `airlock recording manifest v1\n` followed by the
//! `manifest` object as compact JSON with its fields in the order above, which
//! is how this module writes it: a verifier parses the object and writes it
//! again to get the signed bytes.

use airlock_proto::v1;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::signing::{self, Signer};

pub const FORMAT: u32 = 1;
const SIGNING_CONTEXT: &[u8] = b"airlock recording manifest v1\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: Manifest,
    /// Hex, 64 bytes.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub session: SessionInfo,
    pub end: EndInfo,
    pub last_seq: u64,
    pub chunks: Vec<ChunkEntry>,
    /// The last chunk's hash, hex.
    pub final_hash: String,
    /// The signing key's id: hex SHA-256 of its public key.
    pub key_id: String,
}

/// A session's metadata, as the worker opened it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInfo {
    pub tenant_id: String,
    pub session_id: String,
    pub connection_id: String,
    pub principal_subject: String,
    pub principal_issuer: String,
    pub client_addr: String,
    pub worker_id: String,
    pub target_role: String,
    pub protocol: String,
    pub started_at_unix_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndInfo {
    pub reason: String,
    /// The end frame's time.
    pub ended_at_unix_micros: i64,
    pub client_bytes: u64,
    pub server_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkEntry {
    pub index: u64,
    pub key: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub size: u64,
    /// Hex.
    pub hash: String,
}

impl SessionInfo {
    pub fn from_open(open: &v1::SessionOpen) -> Self {
        Self {
            tenant_id: open.tenant_id.clone(),
            session_id: open.session_id.clone(),
            connection_id: open.connection_id.clone(),
            principal_subject: open.principal_subject.clone(),
            principal_issuer: open.principal_issuer.clone(),
            client_addr: open.client_addr.clone(),
            worker_id: open.worker_id.clone(),
            target_role: open.target_role.clone(),
            protocol: open.protocol.clone(),
            started_at_unix_ms: open.started_at_unix_ms,
        }
    }
}

impl EndInfo {
    pub fn from_frame(frame: &v1::Frame) -> Option<Self> {
        match &frame.body {
            Some(v1::frame::Body::End(end)) => Some(Self {
                reason: end.reason.clone(),
                ended_at_unix_micros: frame.at_unix_micros,
                client_bytes: end.client_bytes,
                server_bytes: end.server_bytes,
            }),
            _ => None,
        }
    }
}

impl Manifest {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        // Serializing plain structs of strings and integers cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Signs the manifest, setting its key id to the signer's.
    pub fn sign(mut self, signer: &Signer) -> SignedManifest {
        self.key_id = signer.key_id().to_owned();
        let signature = signer.sign(&self.signed_bytes());
        SignedManifest { manifest: self, signature: hex::encode(signature.to_bytes()) }
    }
}

impl SignedManifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
        if manifest.manifest.format != FORMAT {
            return Err(format!("unknown manifest format {}", manifest.manifest.format));
        }
        Ok(manifest)
    }

    /// Checks that `trusted` made the signature over this manifest.
    pub fn check_signature(&self, trusted: &VerifyingKey) -> Result<(), String> {
        let trusted_id = signing::key_id(trusted);
        if self.manifest.key_id != trusted_id {
            return Err(format!("signed by key {}, not by the trusted key {trusted_id}", self.manifest.key_id));
        }
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        trusted
            .verify_strict(&self.manifest.signed_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| "the signature does not verify: the manifest was changed or signed by another key".to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ed25519_dalek::SigningKey;

    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            session: SessionInfo { tenant_id: "t".into(), protocol: "postgres".into(), ..SessionInfo::default() },
            end: EndInfo { reason: "client closed".into(), ..EndInfo::default() },
            last_seq: 3,
            chunks: vec![ChunkEntry {
                index: 0,
                key: "k".into(),
                first_seq: 1,
                last_seq: 3,
                size: 100,
                hash: "00".repeat(32),
            }],
            final_hash: "00".repeat(32),
            key_id: String::new(),
        }
    }

    #[test]
    fn signs_and_verifies_through_json() {
        let signer = Signer::new(SigningKey::from_bytes(&[7; 32]));
        let signed = manifest().sign(&signer);
        let parsed = SignedManifest::parse(&signed.to_json()).unwrap();
        assert_eq!(parsed, signed);
        parsed.check_signature(&signer.verifying_key()).unwrap();

        let mut changed = parsed.clone();
        changed.manifest.end.reason = "other".into();
        assert!(changed.check_signature(&signer.verifying_key()).unwrap_err().contains("does not verify"));

        let other = Signer::new(SigningKey::from_bytes(&[8; 32]));
        assert!(parsed.check_signature(&other.verifying_key()).unwrap_err().contains("not by the trusted key"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let signer = Signer::new(SigningKey::from_bytes(&[7; 32]));
        let mut json: serde_json::Value = serde_json::from_slice(&manifest().sign(&signer).to_json()).unwrap();
        json["manifest"]["note"] = "added".into();
        assert!(SignedManifest::parse(json.to_string().as_bytes()).is_err());
    }
}
