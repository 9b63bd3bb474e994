//! The validated policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long a held command waits for review when the rule does not say.
pub const DEFAULT_REVIEW_TIMEOUT_SECS: u64 = 600;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub access: Vec<AccessRule>,
    pub commands: Vec<CommandRule>,
    pub masking: Vec<MaskingRule>,
}

/// Who may hold which role on which connections, for how long, with which approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    pub name: String,
    pub principals: PrincipalMatch,
    /// Connection names, or `*` for all.
    pub connections: Vec<String>,
    pub roles: Vec<String>,
    pub max_ttl_secs: u64,
    pub approval: Approval,
    pub reason_required: bool,
}

/// A principal matches when any listed subject, group or claim matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalMatch {
    pub subjects: Vec<String>,
    pub groups: Vec<String>,
    pub claims: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    None,
    /// `timeout_secs`: how long the request waits for its quorum before it expires.
    Review {
        approvers: Approvers,
        quorum: u32,
        timeout_secs: u64,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvers {
    pub groups: Vec<String>,
    pub subjects: Vec<String>,
}

/// Per statement or command: what matches, and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRule {
    pub name: String,
    pub connections: Vec<String>,
    pub matcher: CommandMatch,
    pub action: CommandAction,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMatch {
    pub kinds: Vec<StatementKind>,
    pub tables: Vec<String>,
    pub functions: Vec<String>,
    pub unbounded_write: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandAction {
    Allow,
    Deny,
    Review { approvers: Approvers, quorum: u32, timeout_secs: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Read,
    Write,
    Ddl,
    Dcl,
    Admin,
    Transaction,
    Utility,
    Unknown,
}

impl StatementKind {
    pub const NAMES: [&'static str; 8] = ["read", "write", "ddl", "dcl", "admin", "transaction", "utility", "unknown"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => StatementKind::Read,
            "write" => StatementKind::Write,
            "ddl" => StatementKind::Ddl,
            "dcl" => StatementKind::Dcl,
            "admin" => StatementKind::Admin,
            "transaction" => StatementKind::Transaction,
            "utility" => StatementKind::Utility,
            "unknown" => StatementKind::Unknown,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskingRule {
    pub name: String,
    pub connections: Vec<String>,
    pub columns: Vec<ColumnPattern>,
    pub detectors: Vec<Detector>,
    pub strategy: MaskStrategy,
    /// What happens to a statement that filters, sorts, joins or groups on a
    /// masked column, or copies its values where masking does not follow:
    /// such a statement learns the values by inference, or moves them.
    #[serde(default = "deny")]
    pub on_filter: CommandAction,
}

fn deny() -> CommandAction {
    CommandAction::Deny
}

/// `schema.table.column`, each part a name or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnPattern {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let [schema, table, column] = parts.as_slice() else {
            return Err(format!("{text:?} must be schema.table.column (use * for any part)"));
        };
        for part in [schema, table, column] {
            if part.is_empty() || part.len() > 63 {
                return Err(format!("{text:?}: each part must be 1 to 63 characters"));
            }
        }
        Ok(Self { schema: (*schema).to_owned(), table: (*table).to_owned(), column: (*column).to_owned() })
    }

    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        let part = |p: &str, v: &str| p == "*" || p == v;
        part(&self.schema, schema) && part(&self.table, table) && part(&self.column, column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    CreditCard,
    Email,
    Iban,
    NationalId,
    ApiKey,
}

impl Detector {
    pub const NAMES: [&'static str; 5] = ["credit_card", "email", "iban", "national_id", "api_key"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "credit_card" => Detector::CreditCard,
            "email" => Detector::Email,
            "iban" => Detector::Iban,
            "national_id" => Detector::NationalId,
            "api_key" => Detector::ApiKey,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    Redact,
    Partial,
    Hash,
}

impl MaskStrategy {
    /// How much a masked value still tells: a redacted value nothing, a hash
    /// whether two values are equal, a partial one its last characters.
    /// Where several rules mask one value, the one that tells least wins.
    pub fn reveals(self) -> u8 {
        match self {
            MaskStrategy::Redact => 0,
            MaskStrategy::Hash => 1,
            MaskStrategy::Partial => 2,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "redact" => MaskStrategy::Redact,
            "partial" => MaskStrategy::Partial,
            "hash" => MaskStrategy::Hash,
            _ => return None,
        })
    }
}

/// Does a rule's connection list cover this connection? A pattern is `*`, a
/// connection's name, or `key=value`, which matches a label.
pub fn covers(patterns: &[String], connection: &str, labels: &BTreeMap<String, String>) -> bool {
    patterns.iter().any(|p| match p.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => p == "*" || p == connection,
    })
}

impl PrincipalMatch {
    /// Any listed subject, group or claim matches (an empty match admits nobody).
    pub fn admits(&self, principal: &crate::principal::Principal) -> bool {
        self.subjects.contains(&principal.subject)
            || self.groups.iter().any(|g| principal.in_group(g))
            || self.claims.iter().any(|(k, v)| principal.claims.get(k) == Some(v))
    }
}

/// What an access request asks for.
#[derive(Debug, Clone, Copy)]
pub struct AccessAsk<'a> {
    pub principal: &'a crate::principal::Principal,
    pub connection: &'a crate::connection::ConnectionSpec,
    pub role: &'a str,
    pub ttl_secs: u64,
    pub reason: &'a str,
}

/// Why policy refuses an access request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefused {
    #[error("no access rule lets {subject} hold role {role} on {connection}")]
    NoRule { subject: String, role: String, connection: String },
    #[error("rule {rule} allows at most {max_ttl_secs}s; {asked}s was asked for")]
    TooLong { rule: String, max_ttl_secs: u64, asked: u64 },
    #[error("rule {rule} requires a reason")]
    ReasonRequired { rule: String },
}

impl AccessRefused {
    /// The rule that refused, when one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            AccessRefused::NoRule { .. } => None,
            AccessRefused::TooLong { rule, .. } | AccessRefused::ReasonRequired { rule } => Some(rule),
        }
    }
}

impl Policy {
    /// The access rule that decides a request. Of the rules that match the
    /// principal, connection and role, allow the TTL and have the reason they
    /// need, the most restrictive wins: one that needs approval over one that
    /// does not; among equals, the first in the document.
    pub fn access_rule(&self, ask: &AccessAsk<'_>) -> Result<&AccessRule, AccessRefused> {
        let matching: Vec<&AccessRule> = self
            .access
            .iter()
            .filter(|r| {
                r.principals.admits(ask.principal)
                    && covers(&r.connections, &ask.connection.name, &ask.connection.labels)
                    && r.roles.iter().any(|role| role == ask.role)
            })
            .collect();
        if matching.is_empty() {
            return Err(AccessRefused::NoRule {
                subject: ask.principal.subject.clone(),
                role: ask.role.to_owned(),
                connection: ask.connection.name.clone(),
            });
        }
        let long_enough: Vec<&AccessRule> =
            matching.iter().copied().filter(|r| ask.ttl_secs <= r.max_ttl_secs).collect();
        if long_enough.is_empty() {
            let longest = matching.iter().copied().max_by_key(|r| r.max_ttl_secs);
            return Err(AccessRefused::TooLong {
                rule: longest.map(|r| r.name.clone()).unwrap_or_default(),
                max_ttl_secs: longest.map_or(0, |r| r.max_ttl_secs),
                asked: ask.ttl_secs,
            });
        }
        let has_reason = !ask.reason.trim().is_empty();
        let satisfied: Vec<&AccessRule> =
            long_enough.iter().copied().filter(|r| has_reason || !r.reason_required).collect();
        let Some(first) = satisfied.first() else {
            return Err(AccessRefused::ReasonRequired {
                rule: long_enough.first().map(|r| r.name.clone()).unwrap_or_default(),
            });
        };
        Ok(satisfied.iter().copied().find(|r| matches!(r.approval, Approval::Review { .. })).unwrap_or(first))
    }
}
