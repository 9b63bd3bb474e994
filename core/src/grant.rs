//! Grants: a principal may hold a role on a connection until a time.

use serde::{Deserialize, Serialize};

use crate::ids::{ConnectionId, GrantId};
use crate::principal::Principal;

/// An active grant, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: GrantId,
    /// The principal's subject.
    pub subject: String,
    /// The issuer that must have vouched for the subject; empty: any issuer the tenant trusts.
    pub issuer: String,
    pub connection_id: ConnectionId,
    /// The grant role name (a key of the connection's `roles`).
    pub role: String,
    pub starts_at_unix: i64,
    pub expires_at_unix: i64,
    pub reason: String,
    /// Who made the grant (an admin's subject, or the approvers).
    pub granted_by: String,
}

impl Grant {
    /// Whether the grant lets `principal` in at `now_unix`.
    pub fn admits(&self, principal: &Principal, now_unix: i64) -> bool {
        self.subject == principal.subject
            && (self.issuer.is_empty() || self.issuer == principal.issuer)
            && self.is_live(now_unix)
    }

    pub fn is_live(&self, now_unix: i64) -> bool {
        self.starts_at_unix <= now_unix && now_unix < self.expires_at_unix
    }
}
