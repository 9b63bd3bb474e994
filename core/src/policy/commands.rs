//! Command rules applied to a statement: the most restrictive matching action
//! wins (deny over review over allow), and a few refusals hold whatever the
//! policy says.

use super::masking::{MaskedUse, ResultMask, patterns};
use super::model::{Approvers, ColumnPattern, CommandAction, CommandMatch, CommandRule, MaskingRule, Policy, covers};
use crate::connection::ConnectionSpec;
use crate::sql::Classified;
use crate::sql::lineage::UseKind;

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
    /// command or masking rule for the connection, everything is allowed unread.
    pub fn decide_statement(&self, connection: &ConnectionSpec, sql: &[u8]) -> CommandVerdict {
        self.decide(connection, sql).verdict
    }

    /// Decides the statement text of a simple query or a Parse, and, where
    /// masking rules cover the connection, how its result is masked.
    pub fn decide(&self, connection: &ConnectionSpec, sql: &[u8]) -> Decision {
        self.decide_with(connection, sql, &[])
    }

    /// `decide`, with masked-column patterns the target's catalog adds to the
    /// rules (views and inheriting tables over masked columns, see
    /// [`super::masking::derive_patterns`]), by rule name.
    pub fn decide_with(
        &self,
        connection: &ConnectionSpec,
        sql: &[u8],
        derived: &[(String, ColumnPattern)],
    ) -> Decision {
        let rules: Vec<&CommandRule> = self.command_rules_for(connection).collect();
        let mut masking: Vec<MaskingRule> = self.masking_rules_for(connection).cloned().collect();
        for (rule, pattern) in derived {
            if let Some(r) = masking.iter_mut().find(|r| &r.name == rule) {
                r.columns.push(pattern.clone());
            }
        }
        if rules.is_empty() && masking.is_empty() {
            return Decision { verdict: CommandVerdict::Allow { rule: None }, mask: None, reusable: true };
        }
        let unread = |verdict: CommandVerdict, masking: Vec<MaskingRule>| Decision {
            verdict,
            mask: (!masking.is_empty()).then(|| ResultMask::unread(masking)),
            reusable: false,
        };
        let statements = match crate::sql::analyze_bytes(sql, &patterns(&masking)) {
            Ok(s) => s,
            Err(e) => {
                let verdict = CommandVerdict::builtin("unreadable-statement", format!("{e}; it is refused"));
                return unread(verdict, masking);
            }
        };
        if statements.len() > 1 {
            let verdict = CommandVerdict::builtin(
                "one-statement-per-query",
                format!("{} statements in one query; send them one at a time", statements.len()),
            );
            return unread(verdict, masking);
        }
        // An empty query (`;`) runs nothing.
        let Some((statement, lineage)) = statements.first() else {
            return Decision { verdict: CommandVerdict::Allow { rule: None }, mask: None, reusable: true };
        };
        let mut verdict = decide_one(&rules, statement);
        if masking.is_empty() {
            return Decision { verdict, mask: None, reusable: !statement.literal_sensitive };
        }
        let (mask, mut uses) = match lineage {
            Some(lineage) => ResultMask::from_lineage(masking, lineage),
            // Read only by Postgres's own grammar: its columns cannot be
            // followed, so every computed one is masked, and a statement that
            // names a masked column at all is taken to filter on it.
            None => {
                let uses = mentioned(&masking, sql);
                (ResultMask::unread(masking), uses)
            }
        };
        // Rows in binary format could be read only once they came, and then
        // refused (the relay's backstop) after the statement ran, while the
        // rest of its batch ran on.
        let binary = if statement.copy_binary_out {
            Some("COPY in binary format cannot be masked; use text or CSV")
        } else if statement.binary_cursor {
            Some("a BINARY cursor's rows cannot be masked; declare it without BINARY")
        } else {
            None
        };
        // A refusal decided already keeps its own rule.
        if let Some(why) = binary
            && mask.has_detectors()
            && !matches!(verdict, CommandVerdict::Deny { .. })
        {
            let verdict = CommandVerdict::builtin("masked-binary", why);
            return Decision { verdict, mask: Some(mask), reusable: false };
        }
        // Code defined now runs later where masking cannot see what it reads
        // (`CREATE FUNCTION f() ... AS 'SELECT * FROM users'`), and planner
        // statistics hold sample values of every column.
        let column_rules = mask.rules().iter().any(|r| !r.columns.is_empty());
        if column_rules && statement.defines_code {
            let verdict = CommandVerdict::builtin(
                "masked-code",
                "defining functions, procedures, triggers or rules is refused where columns are masked: \
                 what they read could not be masked",
            );
            return Decision { verdict, mask: Some(mask), reusable: false };
        }
        if column_rules && statement.tables.iter().any(|t| STATISTICS.contains(&t.as_str())) {
            let verdict = CommandVerdict::builtin(
                "masked-statistics",
                "planner statistics hold sample values of masked columns, and are not readable where columns are masked",
            );
            return Decision { verdict, mask: Some(mask), reusable: false };
        }
        // What masking cannot follow inside a statement that reads masked
        // columns: a function body or a trigger defined by text, a value kept
        // in a setting or sent as a notification.
        let stores = statement.functions.iter().any(|f| SIDE_CHANNELS.contains(&f.as_str()));
        let by_words = statement.kind() == crate::policy::StatementKind::Ddl || (stores && mask.involved);
        if by_words {
            for mut u in mentioned(mask.rules(), sql) {
                u.how = UseKind::Copy;
                uses.push(u);
            }
        }
        for u in &uses {
            if let Some(rule) = mask.rules().get(u.rule) {
                verdict = stronger(verdict, use_verdict(rule, u));
            }
        }
        // Words are looked for in literals too (`mentioned`).
        let reusable =
            !by_words && !statement.literal_sensitive && lineage.as_ref().is_some_and(|l| !l.literal_sensitive);
        Decision { verdict, mask: Some(mask), reusable }
    }
}

/// Views and tables of planner statistics, which keep sample values.
const STATISTICS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_catalog.pg_stats",
    "pg_catalog.pg_stats_ext",
    "pg_catalog.pg_stats_ext_exprs",
    "pg_catalog.pg_statistic",
    "pg_catalog.pg_statistic_ext_data",
];

/// Functions that keep or send a value where a later statement, or another
/// session, reads it unmasked.
const SIDE_CHANNELS: &[&str] = &["set_config", "pg_notify", "lo_from_bytea", "lo_put"];

/// A statement's verdict, and how its result is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: CommandVerdict,
    /// `None` when no masking rule covers the connection.
    pub mask: Option<ResultMask>,
    /// The same decision holds for every statement with the same
    /// [`crate::sql::normalize::normalize`]d form: nothing in it turned on a
    /// literal's value.
    pub reusable: bool,
}

/// What a rule says of a statement that uses one of its columns.
fn use_verdict(rule: &MaskingRule, u: &MaskedUse) -> CommandVerdict {
    let what = match u.how {
        UseKind::Filter => "filtering, sorting or joining on it reveals its values by inference",
        UseKind::Copy => "copying it into a table, a view or a new name takes its values out of masking",
        UseKind::Export => {
            return CommandVerdict::builtin(
                "masked-export",
                format!(
                    "{} is masked by rule {}, and COPY or a cursor cannot be masked; select the columns you need instead",
                    u.column, rule.name
                ),
            );
        }
    };
    match &rule.on_filter {
        CommandAction::Allow => CommandVerdict::Allow { rule: None },
        CommandAction::Deny => CommandVerdict::Deny {
            rule: rule.name.clone(),
            reason: format!("{} is masked by rule {}: {what}", u.column, rule.name),
        },
        CommandAction::Review { approvers, quorum, timeout_secs } => CommandVerdict::Review {
            rule: rule.name.clone(),
            approvers: approvers.clone(),
            quorum: *quorum,
            timeout_secs: *timeout_secs,
        },
    }
}

/// The more restrictive of two verdicts; on a tie, the first.
fn stronger(a: CommandVerdict, b: CommandVerdict) -> CommandVerdict {
    if b.severity() > a.severity() { b } else { a }
}

/// For a statement only Postgres's grammar could read: each rule whose
/// column (or, for `*` columns, table) the text names as a word.
fn mentioned(rules: &[MaskingRule], sql: &[u8]) -> Vec<MaskedUse> {
    let text = String::from_utf8_lossy(sql).to_lowercase();
    let words: std::collections::BTreeSet<&str> =
        text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).filter(|w| !w.is_empty()).collect();
    let mut uses = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for p in &rule.columns {
            let name = if p.column != "*" { &p.column } else { &p.table };
            if name == "*" || words.contains(name.to_lowercase().as_str()) {
                uses.push(MaskedUse { rule: i, column: name.clone(), how: UseKind::Filter });
                break;
            }
        }
    }
    uses
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
    use crate::policy::MaskStrategy;

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

    const MASKING: &str = "version: 1\nmasking:\n  - name: pii\n    columns: ['*.*.email', 'public.users.ssn']\n    strategy: hash\n  - name: cards\n    columns: ['public.users.card']\n    detectors: [credit_card]\n    strategy: partial\n    on_filter: { review: { approvers: { groups: [dba] } } }\n";

    fn masked(sql: &str) -> Decision {
        Policy::parse(MASKING).unwrap().decide(&connection(), sql.as_bytes())
    }

    /// Statements whose decision turns on a literal, beside ones whose does not.
    const LITERAL_GAMES: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "SELECT id, email FROM users WHERE id = 1 ORDER BY 1",
        "SELECT id, ssn FROM users ORDER BY 2",
        "SELECT id, ssn FROM users GROUP BY 1, 2",
        "SELECT DISTINCT ON (1) id, ssn FROM users",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT set_config('role', 'postgres', false)",
        "DELETE FROM orders WHERE id + 1 = id + 2",
        "UPDATE orders SET total = 0 WHERE id * 2 = id * 3",
        "DELETE FROM orders WHERE id = 4 OR 1 = 2",
        "EXPLAIN (ANALYZE 0) DELETE FROM orders",
        "CREATE VIEW v AS SELECT 'x' AS a",
        "SELECT pg_notify('c', 'x')",
        "SELECT * FROM users WHERE id = 5 LIMIT 10",
        "INSERT INTO orders (id, total) VALUES (1, 2.5)",
        "SELECT upper(email), 'x' || name FROM users WHERE id = 3",
        "VACUUM ANALYZE orders",
        "SELECT 1",
        // Whether these parse at all turns on their numbers and strings.
        "SELECT id::float(10), email FROM users",
        "SELECT id::varchar(10), interval '1' second(3) FROM users",
        "SELECT id::numeric(10, 2) FROM users WHERE total > 1.5",
        "COPY orders (id) TO STDOUT DELIMITER ','",
        "FETCH 5 FROM c",
        "SELECT id, ssn FROM users ORDER BY (2)",
        "SELECT ssn, count(*) FROM users GROUP BY ROLLUP (1)",
    ];

    #[test]
    fn a_decision_shared_by_form_fits_every_statement_of_that_form() {
        let policies = [
            Policy::parse(include_str!("../../testdata/example-policy.yaml")).unwrap(),
            Policy::parse(MASKING).unwrap(),
        ];
        let literals = [
            ("0", "0.0", "''"),
            ("1", "1.5", "'role'"),
            ("2", "2.5", "'ssn'"),
            ("2147483647", "3.5", "'ab'"),
            ("48213", "0.5", "'application_name'"),
        ];
        let mut shared = 0;
        for policy in &policies {
            for sql in LITERAL_GAMES {
                let decided = policy.decide(&connection(), sql.as_bytes());
                let Some(form) = crate::sql::normalize::normalize(sql.as_bytes()) else { continue };
                if !decided.reusable {
                    continue;
                }
                shared += 1;
                for (integer, decimal, string) in literals {
                    let other = crate::sql::normalize::with_literals(&form, integer, decimal, string);
                    assert_eq!(crate::sql::normalize::normalize(&other).as_ref(), Some(&form));
                    let theirs = policy.decide(&connection(), &other);
                    assert_eq!(
                        (&theirs.verdict, &theirs.mask),
                        (&decided.verdict, &decided.mask),
                        "{sql} and {} decided apart",
                        String::from_utf8_lossy(&other)
                    );
                }
            }
        }
        assert!(shared > 10, "too few statements were shareable to test anything: {shared}");
        // What must not be shared.
        for sql in [
            "SELECT id, ssn FROM users ORDER BY 1",
            "SELECT set_config('application_name', 'x', false)",
            "DELETE FROM orders WHERE id + 1 = id + 2",
            "EXPLAIN (ANALYZE 0) DELETE FROM orders",
            "CREATE VIEW v AS SELECT 'x' AS a",
            "VACUUM ANALYZE orders",
            "SELECT id::float(10), email FROM users",
            "COPY orders (id) TO STDOUT DELIMITER ','",
            "SELECT id, ssn FROM users ORDER BY (1)",
        ] {
            assert!(!policies[1].decide(&connection(), sql.as_bytes()).reusable, "{sql}");
        }
        assert!(policies[1].decide(&connection(), b"SELECT abalance FROM t WHERE aid = 4").reusable);
    }

    #[test]
    fn masking_follows_computed_columns_and_refuses_what_it_cannot_follow() {
        let d = masked("SELECT id, upper(email), card || '' FROM users");
        assert_eq!(d.verdict, CommandVerdict::Allow { rule: None });
        let mask = d.mask.unwrap();
        assert_eq!(mask.computed(0), None);
        assert_eq!(mask.computed(1).map(|m| (m.rule, m.strategy)), Some(("pii".into(), MaskStrategy::Hash)));
        assert_eq!(mask.computed(2).map(|m| m.strategy), Some(MaskStrategy::Partial));
        assert_eq!(mask.column("public", "users", "ssn").map(|m| m.rule), Some("pii".into()));
        assert_eq!(mask.column("public", "orders", "ssn"), None);
        assert!(mask.has_detectors() && mask.involved);

        // Filters: denied by default, or held for review where the rule says so.
        assert_eq!(rule(&masked("SELECT id FROM users WHERE ssn LIKE '1%'").verdict), Some("pii"));
        // Positions name output columns, in parentheses and in grouping sets too.
        for sql in [
            "SELECT id, ssn FROM users ORDER BY (2)",
            "SELECT id, ssn FROM users ORDER BY ((2)) DESC",
            "SELECT id, ssn FROM users GROUP BY id, (2)",
            "SELECT DISTINCT ON ((2)) id, ssn FROM users",
            "SELECT ssn, count(*) FROM users GROUP BY ROLLUP (1)",
            "SELECT ssn, count(*) FROM users GROUP BY CUBE (1)",
            "SELECT ssn, count(*) FROM users GROUP BY GROUPING SETS ((1), ())",
        ] {
            assert_eq!(rule(&masked(sql).verdict), Some("pii"), "{sql}");
        }
        assert_eq!(masked("SELECT id, ssn FROM users ORDER BY (1)").verdict, CommandVerdict::Allow { rule: None });
        let held = masked("SELECT id FROM users ORDER BY card").verdict;
        assert!(matches!(held, CommandVerdict::Review { ref rule, .. } if rule == "cards"), "{held:?}");
        assert_eq!(rule(&masked("COPY users TO STDOUT").verdict), Some("builtin:masked-export"));
        // The detectors cannot read a binary copy of anything.
        assert_eq!(rule(&masked("COPY (SELECT 'x') TO STDOUT (FORMAT binary)").verdict), Some("builtin:masked-binary"));
        assert_eq!(masked("COPY (SELECT 'x') TO STDOUT (FORMAT csv)").verdict, CommandVerdict::Allow { rule: None });
        assert_eq!(rule(&masked("DECLARE c BINARY CURSOR FOR SELECT 'x'").verdict), Some("builtin:masked-binary"));
        assert_eq!(masked("DECLARE c CURSOR FOR SELECT 'x'").verdict, CommandVerdict::Allow { rule: None });
        let lexing = masked("COPY (SELECT set_config('client_encoding', 'SJIS', false)) TO STDOUT BINARY").verdict;
        assert_eq!(rule(&lexing), Some("builtin:session-lexing"), "the first refusal names its rule");
        let program = masked("COPY (SELECT 'x') TO PROGRAM 'gzip' (FORMAT binary)").verdict;
        assert_eq!(rule(&program), Some("builtin:copy-program"));
        let whole_columns_only =
            "version: 1\nmasking:\n  - name: pii\n    columns: ['*.*.email']\n    strategy: redact\n";
        let unread =
            Policy::parse(whole_columns_only).unwrap().decide(&connection(), b"COPY (SELECT 'x') TO STDOUT BINARY");
        assert_eq!(unread.verdict, CommandVerdict::Allow { rule: None }, "no detector would read it");
        // Side channels and definitions that name masked columns.
        assert_eq!(rule(&masked("SELECT set_config('app.x', email, false) FROM users").verdict), Some("pii"));
        let f = "CREATE FUNCTION f() RETURNS SETOF users LANGUAGE sql AS 'SELECT * FROM users'";
        assert_eq!(rule(&masked(f).verdict), Some("builtin:masked-code"));
        let stats = "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'users'";
        assert_eq!(rule(&masked(stats).verdict), Some("builtin:masked-statistics"));
        // Unreadable statements are refused and their results masked whole.
        let d = masked("SELEC email");
        assert_eq!(rule(&d.verdict), Some("builtin:unreadable-statement"));
        assert!(d.mask.unwrap().computed(0).is_some());
        // With masking alone, statements of unknown kind are refused too.
        assert_eq!(rule(&masked("DO $$BEGIN RAISE NOTICE '%', 1; END$$").verdict), Some("builtin:unknown-statement"));
        assert_eq!(masked("SELECT 1").verdict, CommandVerdict::Allow { rule: None });
    }
}
