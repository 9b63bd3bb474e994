//! What the recorder's library functions (storing, reading, verifying) answer
//! when they cannot do what was asked.

use airlock_core::{SessionId, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no recording of session {session} in tenant {tenant}")]
    NotFound { tenant: TenantId, session: SessionId },
    /// A stored chunk that cannot be read or does not fit the chain.
    #[error("chunk {index} ({key}): {reason}")]
    Chunk { index: u64, key: String, reason: String },
    #[error("{key}: {reason}")]
    Manifest { key: String, reason: String },
    /// An object the recorder was about to write is already there: another
    /// recorder writes this session, or a write thought lost was stored.
    #[error("{key} is already stored")]
    Exists { key: String },
    /// The store failed; the text has any configured credential removed.
    #[error("object storage: {0}")]
    Storage(String),
}
