//! Command rules applied to a statement: the most restrictive matching action
//! wins (deny over review over allow), and a few refusals hold whatever the
//! policy says.

use super::model::{Approvers, CommandAction, CommandMatch, CommandRule, Policy, covers};
use crate::connection::ConnectionSpec;
use crate::sql::{Classified, classify_bytes};

/// Functions refused whatever the policy says: they read or write the
/// server's files, reach other servers, or act on other sessions.
pub const DENIED_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
];

/// Settings that change how the server splits statement text into tokens.
/// The gateway reads statements as UTF-8 with standard-conforming strings; a
/// session that changed these could make the server run text the gateway read
/// as something else (a backslash that ends a string for one and not the
/// other). Changing them is refused; `*` is a `set_config` whose target is
/// not a literal.
pub const LEXING_SETTINGS: &[&str] = &["standard_conforming_strings", "client_encoding", "backslash_quote", "*"];

/// What happens to a statement, and which rule said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandVerdict {
    /// No rule stops it (`rule`: the allow rule that matched, if one did).
    Allow {
        rule: Option<String>,
    },
    Deny {
        rule: String,
        reason: String,
    },
    Review {
        rule: String,
        approvers: Approvers,
        quorum: u32,
        timeout_secs: u64,
    },
}

impl CommandVerdict {
    fn severity(&self) -> u8 {
        match self {
            CommandVerdict::Allow { .. } => 0,
            CommandVerdict::Review { .. } => 1,
            CommandVerdict::Deny { .. } => 2,
        }
    }

    fn builtin(rule: &str, reason: impl Into<String>) -> Self {
        CommandVerdict::Deny { rule: format!("builtin:{rule}"), reason: reason.into() }
    }
}

impl Policy {
    /// The command rules that apply on this connection.
    pub fn command_rules_for<'a>(&'a self, connection: &'a ConnectionSpec) -> impl Iterator<Item = &'a CommandRule> {
        self.commands.iter().filter(|r| covers(&r.connections, &connection.name, &connection.labels))
    }

    /// Decides the statement text of a simple query or a Parse. Without any
    /// command rule for the connection, everything is allowed unread.
    pub fn decide_statement(&self, connection: &ConnectionSpec, sql: &[u8]) -> CommandVerdict {
        let rules: Vec<&CommandRule> = self.command_rules_for(connection).collect();
        if rules.is_empty() {
            return CommandVerdict::Allow { rule: None };
        }
        let statements = match classify_bytes(sql) {
            Ok(s) => s,
            Err(e) => return CommandVerdict::builtin("unreadable-statement", format!("{e}; it is refused")),
        };
        if statements.len() > 1 {
            return CommandVerdict::builtin(
                "one-statement-per-query",
                format!("{} statements in one query; send them one at a time", statements.len()),
            );
        }
        // An empty query (`;`) runs nothing.
        statements.first().map_or(CommandVerdict::Allow { rule: None }, |s| decide_one(&rules, s))
    }
}

fn decide_one(rules: &[&CommandRule], s: &Classified) -> CommandVerdict {
    if s.copy_program {
        return CommandVerdict::builtin("copy-program", "COPY to or from a program runs commands on the server");
    }
    if let Some(setting) = s.settings.iter().find(|n| LEXING_SETTINGS.contains(&n.as_str())) {
        let what = if setting == "*" { "a setting named by an expression".to_owned() } else { setting.clone() };
        return CommandVerdict::builtin(
            "session-lexing",
            format!("changing {what} would let statements be read differently by the gateway and the server"),
        );
    }
    // SET ROLE is a statement of kind dcl that rules decide; set_config('role', ...) hides
    // the same change inside a read.
    if s.functions.contains("set_config")
        && s.settings.iter().any(|n| matches!(n.as_str(), "role" | "session_authorization"))
    {
        return CommandVerdict::builtin("denied-function", "set_config() may not change the session's role");
    }
    if let Some(f) = s.functions.iter().find(|f| DENIED_FUNCTIONS.contains(&f.as_str())) {
        return CommandVerdict::builtin("denied-function", format!("{f}() is never allowed through the gateway"));
    }
    let mut verdict = CommandVerdict::Allow { rule: None };
    let mut matched = false;
    for rule in rules.iter().filter(|r| matches(&r.matcher, s)) {
        matched = true;
        let next = match &rule.action {
            CommandAction::Allow => CommandVerdict::Allow { rule: Some(rule.name.clone()) },
            CommandAction::Deny => {
                CommandVerdict::Deny { rule: rule.name.clone(), reason: format!("denied by rule {}", rule.name) }
            }
            CommandAction::Review { approvers, quorum, timeout_secs } => CommandVerdict::Review {
                rule: rule.name.clone(),
                approvers: approvers.clone(),
                quorum: *quorum,
                timeout_secs: *timeout_secs,
            },
        };
        // The first rule of the strongest action names the decision.
        if next.severity() > verdict.severity() || matches!(verdict, CommandVerdict::Allow { rule: None }) {
            verdict = next;
        }
    }
    if !matched && s.kind() == crate::policy::StatementKind::Unknown {
        return CommandVerdict::builtin(
            "unknown-statement",
            "the gateway cannot tell what this statement does; a rule matching kind unknown may allow it",
        );
    }
    verdict
}

/// Every criterion the rule names must hold; within a list, any entry.
fn matches(m: &CommandMatch, s: &Classified) -> bool {
    let kind_ok = m.kinds.is_empty() || m.kinds.contains(&s.kind());
    let tables_ok = m.tables.is_empty() || m.tables.iter().any(|t| s.tables.contains(&t.to_lowercase()));
    let functions_ok = m.functions.is_empty() || m.functions.iter().any(|f| s.functions.contains(&f.to_lowercase()));
    let unbounded_ok = m.unbounded_write.is_none_or(|u| u == s.unbounded_write);
    kind_ok && tables_ok && functions_ok && unbounded_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionKind, CredentialMode, TargetTls};
    use crate::ids::ConnectionId;

    fn connection() -> ConnectionSpec {
        ConnectionSpec {
            id: ConnectionId::new(),
            name: "pg-local".into(),
            kind: ConnectionKind::Postgres,
            address: "h:5432".into(),
            database: "app".into(),
            tls: TargetTls::Prefer,
            roles: Default::default(),
            labels: Default::default(),
            credential_mode: CredentialMode::SessionRole,
            credential_user: "postgres".into(),
            secret_version: 1,
        }
    }

    fn decide(sql: &str) -> CommandVerdict {
        let policy = Policy::parse(include_str!("../../testdata/example-policy.yaml")).unwrap();
        policy.decide_statement(&connection(), sql.as_bytes())
    }

    fn rule(v: &CommandVerdict) -> Option<&str> {
        match v {
            CommandVerdict::Allow { rule } => rule.as_deref(),
            CommandVerdict::Deny { rule, .. } | CommandVerdict::Review { rule, .. } => Some(rule),
        }
    }

    #[test]
    fn the_example_policy_decides_as_written() {
        assert_eq!(decide("SELECT * FROM orders WHERE id = 1"), CommandVerdict::Allow { rule: None });
        let ddl = decide("CREATE TABLE t (id int)");
        assert!(matches!(&ddl, CommandVerdict::Review { quorum: 1, timeout_secs: 600, .. }), "{ddl:?}");
        assert_eq!(rule(&ddl), Some("ddl-needs-dba"));
        assert_eq!(rule(&decide("DELETE FROM orders")), Some("no-unbounded-writes"));
        assert!(matches!(decide("DELETE FROM orders WHERE id = 4"), CommandVerdict::Allow { .. }));
        assert_eq!(rule(&decide("SELECT lo_export(1, '/tmp/x')")), Some("builtin:denied-function"));
        assert_eq!(rule(&decide("SELECT dblink('x', 'y')")), Some("no-file-or-network-functions"));
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        assert_eq!(rule(&decide("SELEC 1")), Some("builtin:unreadable-statement"));
        assert_eq!(rule(&decide("SELECT 1; DROP TABLE t")), Some("builtin:one-statement-per-query"));
        assert_eq!(rule(&decide("COPY t FROM PROGRAM 'id'")), Some("builtin:copy-program"));
        assert_eq!(rule(&decide("SET standard_conforming_strings = off")), Some("builtin:session-lexing"));
        assert_eq!(rule(&decide("SELECT set_config('client_encoding', 'GBK', false)")), Some("builtin:session-lexing"));
        assert_eq!(rule(&decide("SELECT * FROM pg_read_file('/etc/passwd')")), Some("builtin:denied-function"));
        assert_eq!(rule(&decide("EXPLAIN (ANALYZE) DELETE FROM orders")), Some("no-unbounded-writes"));
        assert_eq!(rule(&decide("SELECT set_config('role', 'postgres', false)")), Some("builtin:denied-function"));
        assert_eq!(
            rule(&decide("UPDATE pg_settings SET setting = 'on' WHERE name = 'x'")),
            Some("builtin:session-lexing")
        );
        assert_eq!(rule(&decide("TRUNCATE orders")), Some("no-unbounded-writes"));
        assert_eq!(rule(&decide("DELETE FROM orders WHERE id = 1 OR true")), Some("no-unbounded-writes"));
        assert_eq!(rule(&decide("UPDATE orders SET total = 0 WHERE id = id")), Some("no-unbounded-writes"));
    }

    #[test]
    fn without_command_rules_nothing_is_parsed() {
        let policy = Policy::parse("version: 1").unwrap();
        assert_eq!(policy.decide_statement(&connection(), b"SELEC garbage"), CommandVerdict::Allow { rule: None });
    }
}
