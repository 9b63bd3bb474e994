//! The snapshot a worker starts from: a tenant's state, encoded as versioned JSON.
//! A worker that reads a format it does not know replays the log from seq 1.

use serde::{Deserialize, Serialize};

use crate::state::TenantState;

/// Bump when `TenantState`'s serialized shape changes incompatibly.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: u32,
    state: T,
}

pub fn encode(state: &TenantState) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Envelope { format: FORMAT, state })
}

/// `None` when the snapshot is of another format: replay instead.
pub fn decode(bytes: &[u8]) -> Option<TenantState> {
    let envelope: Envelope<serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    if envelope.format != FORMAT {
        return None;
    }
    serde_json::from_value(envelope.state).ok()
}
