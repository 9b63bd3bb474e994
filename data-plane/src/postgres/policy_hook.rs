//! The statement hook that applies the tenant's command rules, read from the
//! worker's projection: no call leaves the worker to decide.

use std::sync::Arc;

use airlock_core::policy::CommandVerdict;
use airlock_core::review::fingerprint;

use super::hook::{SessionContext, Statement, StatementHook, Verdict, shown_statement};
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
        let (sql, params, is_parse) = match statement {
            Statement::Query { sql } => (Some(sql), None, false),
            Statement::Parse { sql, .. } => (Some(sql), None, true),
            Statement::Bind { sql, params, .. } => (sql, Some(params), false),
            // A portal runs what its Bind was allowed to.
            Statement::Execute { .. } => return Verdict::Allow,
            Statement::FunctionCall => (None, None, false),
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
                // A fast-path call names a function by number, and a Bind of a
                // statement this gateway did not see parsed has no text: with
                // command rules to apply, neither can be checked.
                return if policy.command_rules_for(connection).next().is_some() {
                    deny(
                        "builtin:unreadable-call",
                        "this call carries no statement the gateway can check; use SQL".to_owned(),
                    )
                } else {
                    Verdict::Allow
                };
            };
            match policy.decide_statement(connection, sql) {
                CommandVerdict::Allow { .. } => Verdict::Allow,
                CommandVerdict::Deny { rule, reason } => deny(&rule, reason),
                // Preparing runs nothing; each Bind of it is held, with its parameters.
                CommandVerdict::Review { .. } if is_parse => Verdict::Allow,
                CommandVerdict::Review { rule, .. } => {
                    // An approver may have allowed this statement for the rest of the
                    // grant; the review was opened with the statement as shown to them.
                    let approved = state.approved_statements.get(&session.grant).is_some_and(|set| {
                        let text = String::from_utf8_lossy(sql);
                        set.contains(&fingerprint(&shown_statement(&text, params.unwrap_or_default())))
                    });
                    if approved { Verdict::Allow } else { Verdict::Review { rule } }
                }
            }
        })
    }

    fn inspects(&self, session: &SessionContext) -> bool {
        self.projection.read(|tenants| {
            let Some(state) = tenants.get(&session.tenant) else { return true };
            let Some(connection) = state.connections.get(&session.connection) else { return true };
            match state.policy.as_ref().map(|p| &p.parsed) {
                None => false,
                Some(Ok(policy)) => policy.command_rules_for(connection).next().is_some(),
                Some(Err(_)) => true,
            }
        })
    }
}

fn deny(rule: &str, reason: String) -> Verdict {
    Verdict::Deny { rule: rule.to_owned(), message: format!("permission denied: {reason}") }
}
