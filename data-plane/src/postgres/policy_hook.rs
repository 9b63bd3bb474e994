//! The statement hook that applies the tenant's command rules, read from the
//! worker's projection: no call leaves the worker to decide.

use std::sync::Arc;

use airlock_core::policy::CommandVerdict;
use airlock_core::review::fingerprint;

use super::hook::{SessionContext, Statement, StatementHook, Verdict};
use crate::projection::Projection;

pub struct PolicyHook {
    projection: Arc<Projection>,
}

impl PolicyHook {
    pub fn new(projection: Arc<Projection>) -> Self {
        Self { projection }
    }
}

impl StatementHook for PolicyHook {
    fn check(&self, session: &SessionContext, statement: Statement<'_>) -> Verdict {
        let sql = match statement {
            Statement::Query { sql } | Statement::Parse { sql, .. } => Some(sql),
            // A portal runs what its Parse was allowed to.
            Statement::Bind { .. } | Statement::Execute { .. } => return Verdict::Allow,
            Statement::FunctionCall => None,
        };
        self.projection.read(|tenants| {
            let Some(state) = tenants.get(&session.tenant) else {
                return deny("builtin:no-tenant", "the tenant is gone".to_owned());
            };
            let policy = match state.policy.as_ref().map(|p| &p.parsed) {
                None => return Verdict::Allow,
                Some(Ok(policy)) => policy,
                Some(Err(e)) => {
                    return deny("builtin:unusable-policy", format!("the tenant's policy cannot be used: {e}"));
                }
            };
            let Some(connection) = state.connections.get(&session.connection) else {
                return deny("builtin:no-connection", format!("connection {} was removed", session.connection_name));
            };
            let Some(sql) = sql else {
                // A fast-path call names a function by number; with command
                // rules to apply it cannot be checked.
                return if policy.command_rules_for(connection).next().is_some() {
                    deny("builtin:function-call", "fast-path function calls cannot be checked; use SQL".to_owned())
                } else {
                    Verdict::Allow
                };
            };
            match policy.decide_statement(connection, sql) {
                CommandVerdict::Allow { .. } => Verdict::Allow,
                CommandVerdict::Deny { rule, reason } => deny(&rule, reason),
                CommandVerdict::Review { rule, .. } => {
                    // An approver may have allowed this statement for the rest of the grant.
                    // The review was opened with the statement as approvers saw it.
                    let approved = state.approved_statements.get(&session.grant).is_some_and(|set| {
                        let text = String::from_utf8_lossy(sql);
                        set.contains(&fingerprint(&airlock_core::sql::redact_secrets(&text)))
                    });
                    if approved { Verdict::Allow } else { Verdict::Review { rule } }
                }
            }
        })
    }
}

fn deny(rule: &str, reason: String) -> Verdict {
    Verdict::Deny { rule: rule.to_owned(), message: format!("permission denied: {reason}") }
}
