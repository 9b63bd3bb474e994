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
///
/// The policy is parsed again from its source rather than taken from the
/// snapshot: what a worker enforces is what this build's parser makes of the
/// document that was applied, exactly as when it folds the event itself.
pub fn decode(bytes: &[u8]) -> Option<TenantState> {
    let envelope: Envelope<serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    if envelope.format != FORMAT {
        return None;
    }
    let mut state: TenantState = serde_json::from_value(envelope.state).ok()?;
    if let Some(policy) = &mut state.policy {
        policy.parsed = crate::policy::Policy::parse(&policy.source);
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    #[test]
    fn a_snapshot_cannot_smuggle_in_a_policy_its_source_does_not_say() {
        let mut state = TenantState::default();
        state.apply(&Event::PolicyApplied { version: 1, source: "version: 1\n".into(), digest: String::new() });
        let mut forged: serde_json::Value = serde_json::from_slice(&encode(&state).unwrap()).unwrap();
        forged["state"]["policy"]["parsed"]["Ok"]["access"] = serde_json::json!([{
            "name": "everyone", "principals": {"subjects": ["*"], "groups": [], "claims": {}},
            "connections": ["*"], "roles": ["admin"], "max_ttl_secs": 999999999, "approval": "none",
            "reason_required": false
        }]);
        let decoded = decode(&serde_json::to_vec(&forged).unwrap()).unwrap();
        assert_eq!(decoded.policy.unwrap().parsed.unwrap().access, vec![]);
    }
}
