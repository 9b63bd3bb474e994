//! Verifying a recording: every chunk read, decoded and linked to the one
//! before, and the manifest's chunk list and signature checked against a key
//! the caller trusts. The report names the first chunk that fails.

use airlock_core::{SessionId, TenantId};
use ed25519_dalek::VerifyingKey;

use crate::chunk::{self, ZERO_HASH};
use crate::error::Error;
use crate::manifest::{ChunkEntry, SignedManifest};
use crate::read::Recordings;
use crate::store::SessionRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub tenant: TenantId,
    pub session: SessionId,
    /// Chunks read and found good, from chunk 0 on.
    pub chunks: u64,
    /// The last seq in those chunks.
    pub last_seq: u64,
    /// The hash of the last good chunk (hex), where the chain stands.
    pub final_hash: Option<String>,
    pub signature: Signature,
    /// The first chunk that is missing, unreadable, out of the chain, or not
    /// what the signed manifest lists.
    pub first_bad_chunk: Option<BadChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// The trusted key signed the manifest, and the manifest seals the chain.
    Valid {
        key_id: String,
    },
    /// No manifest: the session is still open, or its recorder stopped before
    /// its end was stored.
    Unsigned,
    Invalid {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChunk {
    pub index: u64,
    pub key: String,
    pub reason: String,
}

impl Report {
    /// Signed by the trusted key, and every chunk is there and intact.
    pub fn is_valid(&self) -> bool {
        matches!(self.signature, Signature::Valid { .. }) && self.first_bad_chunk.is_none()
    }

    /// Every stored chunk is readable and linked, signed or not.
    pub fn chain_intact(&self) -> bool {
        self.first_bad_chunk.is_none()
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signature::Valid { key_id } => write!(f, "signed by key {key_id}"),
            Signature::Unsigned => write!(f, "unsigned: session not closed"),
            Signature::Invalid { reason } => write!(f, "bad signature: {reason}"),
        }
    }
}

impl std::fmt::Display for BadChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunk {} ({}): {}", self.index, self.key, self.reason)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {}: {} chunks, frames 1..={}; {}",
            self.session, self.chunks, self.last_seq, self.signature
        )?;
        if let Some(bad) = &self.first_bad_chunk {
            write!(f, "; first bad {bad}")?;
        }
        Ok(())
    }
}

impl Recordings {
    /// Checks a session's recording against `trusted`, the recorder's public key.
    /// Reads every chunk once, one at a time. Answers an error only when the
    /// store cannot be read or holds nothing for the session; what is wrong
    /// with the recording itself is in the report.
    pub async fn verify(&self, tenant: TenantId, session: SessionId, trusted: &VerifyingKey) -> Result<Report, Error> {
        let s = SessionRef::new(tenant, session);
        let manifest = self.store.get_manifest(&s).await?;
        let listed = self.store.list_chunks(&s).await?;
        if manifest.is_none() && listed.is_empty() {
            return Err(Error::NotFound { tenant, session });
        }
        let mut report = Report {
            tenant,
            session,
            chunks: 0,
            last_seq: 0,
            final_hash: None,
            signature: Signature::Unsigned,
            first_bad_chunk: None,
        };
        // The manifest's chunk list counts only once its signature is good.
        let mut signed: Option<SignedManifest> = None;
        if let Some(bytes) = manifest {
            report.signature = match SignedManifest::parse(&bytes) {
                Err(reason) => Signature::Invalid { reason: format!("manifest.json {reason}") },
                Ok(m) => match m.check_signature(trusted) {
                    Err(reason) => Signature::Invalid { reason },
                    Ok(())
                        if m.manifest.session.tenant_id != tenant.to_string()
                            || m.manifest.session.session_id != session.to_string() =>
                    {
                        Signature::Invalid { reason: "the manifest is another session's".into() }
                    }
                    Ok(()) => {
                        let key_id = m.manifest.key_id.clone();
                        signed = Some(m);
                        Signature::Valid { key_id }
                    }
                },
            };
        }
        let entries: Option<&[ChunkEntry]> = signed.as_ref().map(|m| m.manifest.chunks.as_slice());

        let mut prev = ZERO_HASH;
        let mut next_seq = 1u64;
        let mut expected = 0u64;
        for l in &listed {
            let bad = |index: u64, reason: String| BadChunk { index, key: s.chunk_key(index), reason };
            if l.index != expected {
                report.first_bad_chunk = Some(bad(
                    expected,
                    match expected.checked_sub(1) {
                        Some(before) => format!("missing: the chain goes from chunk {before} to chunk {}", l.index),
                        None => format!("missing: the first stored chunk is chunk {}", l.index),
                    },
                ));
                break;
            }
            let entry = match entries {
                Some(entries) => match entries.get(expected as usize) {
                    Some(entry) => Some(entry),
                    None => {
                        report.first_bad_chunk =
                            Some(bad(expected, format!("not in the signed manifest, which lists {}", entries.len())));
                        break;
                    }
                },
                None => None,
            };
            let raw = match self.store.get_chunk(&s, l.index).await {
                Ok(raw) => raw,
                Err(Error::Chunk { reason, .. }) => {
                    report.first_bad_chunk = Some(bad(expected, reason));
                    break;
                }
                Err(e) => return Err(e),
            };
            let hash = chunk::link(&prev, &raw);
            let problem = match chunk::decode(&raw) {
                Err(e) => Some(e.to_string()),
                Ok(c) if c.header.index != expected => Some(format!("its header says index {}", c.header.index)),
                Ok(c) if c.header.prev_hash != prev => {
                    Some("its previous-hash field does not match the chunk before it".to_string())
                }
                Ok(c) if c.header.first_seq != next_seq => {
                    Some(format!("starts at seq {}, the chain is at seq {next_seq}", c.header.first_seq))
                }
                Ok(c) => match c.check_frames() {
                    Err(e) => Some(e.to_string()),
                    Ok(_) => match entry {
                        Some(e) if e.hash != hex::encode(hash) => {
                            Some("its hash differs from the one in the signed manifest".to_string())
                        }
                        Some(e)
                            if e.index != expected
                                || e.key != l.key
                                || e.size != raw.len() as u64
                                || e.first_seq != c.header.first_seq
                                || e.last_seq != c.header.last_seq =>
                        {
                            Some("its entry in the signed manifest does not match it".to_string())
                        }
                        _ => {
                            next_seq = c.header.last_seq + 1;
                            None
                        }
                    },
                },
            };
            if let Some(reason) = problem {
                report.first_bad_chunk = Some(bad(expected, reason));
                break;
            }
            prev = hash;
            report.chunks += 1;
            report.last_seq = next_seq - 1;
            report.final_hash = Some(hex::encode(hash));
            expected += 1;
        }

        if report.first_bad_chunk.is_none()
            && let Some(m) = &signed
        {
            let m = &m.manifest;
            if let Some(missing) = m.chunks.get(expected as usize) {
                report.first_bad_chunk = Some(BadChunk {
                    index: missing.index,
                    key: s.chunk_key(missing.index),
                    reason: "missing: listed in the signed manifest".into(),
                });
            } else if m.final_hash != hex::encode(prev) || m.last_seq != report.last_seq {
                report.signature = Signature::Invalid {
                    reason: "the manifest's final hash or last seq does not match its chunks".into(),
                };
            }
        }
        Ok(report)
    }
}
