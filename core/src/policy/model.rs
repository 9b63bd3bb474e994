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
    Review { approvers: Approvers, quorum: u32 },
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    Redact,
    Partial,
    Hash,
}

impl MaskStrategy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "redact" => MaskStrategy::Redact,
            "partial" => MaskStrategy::Partial,
            "hash" => MaskStrategy::Hash,
            _ => return None,
        })
    }
}

/// Does a rule's connection list cover this connection?
pub fn covers(patterns: &[String], connection: &str) -> bool {
    patterns.iter().any(|p| p == "*" || p == connection)
}
