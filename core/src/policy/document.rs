//! The document as written, and its validation into the model.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::PolicyError;
use super::model::*;
use crate::connection::validate_name;
use crate::duration;

const MAX_RULES: usize = 1000;
const MAX_QUORUM: u64 = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Document {
    version: Value,
    #[serde(default)]
    access: Vec<AccessDoc>,
    #[serde(default)]
    commands: Vec<CommandDoc>,
    #[serde(default)]
    masking: Vec<MaskingDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessDoc {
    name: String,
    principals: PrincipalsDoc,
    connections: Vec<String>,
    roles: Vec<String>,
    max_ttl: String,
    approval: Value,
    #[serde(default)]
    reason_required: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PrincipalsDoc {
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandDoc {
    name: String,
    #[serde(default = "all_connections")]
    connections: Vec<String>,
    #[serde(rename = "match")]
    matcher: MatchDoc,
    action: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDoc {
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    unbounded_write: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskingDoc {
    name: String,
    #[serde(default = "all_connections")]
    connections: Vec<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    detectors: Vec<String>,
    strategy: String,
    /// What happens to a statement that filters, sorts, joins or groups on a
    /// masked column, or copies its values elsewhere; deny when not given.
    #[serde(default)]
    on_filter: Option<Value>,
}

fn all_connections() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Document {
    pub(super) fn validate(self) -> Result<Policy, PolicyError> {
        match &self.version {
            Value::Number(n) if n.as_u64() == Some(1) => {}
            other => {
                return Err(PolicyError::new(
                    "version",
                    format!("unsupported version {other}; this build reads version 1"),
                ));
            }
        }
        if self.access.len() + self.commands.len() + self.masking.len() > MAX_RULES {
            return Err(PolicyError::new("", format!("more than {MAX_RULES} rules")));
        }
        let mut names = BTreeSet::new();
        let mut unique = |field: String, name: &str| -> Result<(), PolicyError> {
            validate_name(&field, name).map_err(|r| split(&r))?;
            if !names.insert(name.to_owned()) {
                return Err(PolicyError::new(
                    field,
                    format!("rule name {name:?} is used twice; rule names must be unique"),
                ));
            }
            Ok(())
        };

        let mut access = Vec::with_capacity(self.access.len());
        for (i, doc) in self.access.into_iter().enumerate() {
            let at = format!("access[{i}]");
            unique(format!("{at}.name"), &doc.name)?;
            access.push(doc.validate(&at)?);
        }
        let mut commands = Vec::with_capacity(self.commands.len());
        for (i, doc) in self.commands.into_iter().enumerate() {
            let at = format!("commands[{i}]");
            unique(format!("{at}.name"), &doc.name)?;
            commands.push(doc.validate(&at)?);
        }
        let mut masking = Vec::with_capacity(self.masking.len());
        for (i, doc) in self.masking.into_iter().enumerate() {
            let at = format!("masking[{i}]");
            unique(format!("{at}.name"), &doc.name)?;
            masking.push(doc.validate(&at)?);
        }
        Ok(Policy { access, commands, masking })
    }
}

/// `validate_name` reports `field: reason`; turn that back into a `PolicyError`.
fn split(text: &str) -> PolicyError {
    match text.split_once(": ") {
        Some((field, reason)) => PolicyError::new(field, reason),
        None => PolicyError::new("", text),
    }
}

fn connection_patterns(at: &str, list: Vec<String>) -> Result<Vec<String>, PolicyError> {
    if list.is_empty() {
        return Err(PolicyError::new(format!("{at}.connections"), "must name at least one connection (or \"*\")"));
    }
    for (i, c) in list.iter().enumerate() {
        let field = format!("{at}.connections[{i}]");
        match c.split_once('=') {
            _ if c == "*" => {}
            // A label: `key=value`.
            Some((key, value)) => {
                if key.is_empty() || key.len() > 63 || value.is_empty() || value.len() > 255 {
                    return Err(PolicyError::new(field, "a label pattern is key=value, each part non-empty"));
                }
            }
            None => validate_name(&field, c).map_err(|r| split(&r))?,
        }
    }
    Ok(list)
}

fn string_list(field: &str, list: &Value) -> Result<Vec<String>, PolicyError> {
    match list {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(PolicyError::new(format!("{field}[{i}]"), "must be a non-empty string")),
            })
            .collect(),
        _ => Err(PolicyError::new(field, "must be a list of strings")),
    }
}

fn object<'a>(field: &str, v: &'a Value) -> Result<&'a serde_json::Map<String, Value>, PolicyError> {
    v.as_object().ok_or_else(|| PolicyError::new(field, "must be a mapping"))
}

fn only_keys(field: &str, map: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), PolicyError> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(PolicyError::new(
                format!("{field}.{key}"),
                format!("unknown field, expected one of: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn approvers(field: &str, v: Option<&Value>) -> Result<Approvers, PolicyError> {
    let v = v.ok_or_else(|| PolicyError::new(field, "is required: name the approvers' groups or subjects"))?;
    let map = object(field, v)?;
    only_keys(field, map, &["groups", "subjects"])?;
    let groups = string_list(&format!("{field}.groups"), map.get("groups").unwrap_or(&Value::Null))?;
    let subjects = string_list(&format!("{field}.subjects"), map.get("subjects").unwrap_or(&Value::Null))?;
    if groups.is_empty() && subjects.is_empty() {
        return Err(PolicyError::new(field, "must name at least one group or subject"));
    }
    Ok(Approvers { groups, subjects })
}

/// A quorum larger than the approvers named one by one, with no group to draw
/// more from, could never be met.
fn reachable(field: &str, approvers: &Approvers, quorum: u32) -> Result<(), PolicyError> {
    if approvers.groups.is_empty() && approvers.subjects.len() < quorum as usize {
        return Err(PolicyError::new(
            field,
            format!("{quorum} approvals can never be reached from {} named subject(s)", approvers.subjects.len()),
        ));
    }
    Ok(())
}

fn quorum(field: &str, v: Option<&Value>) -> Result<u32, PolicyError> {
    match v {
        None => Ok(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(q) if (1..=MAX_QUORUM).contains(&q) => Ok(q as u32),
            _ => Err(PolicyError::new(field, format!("must be a whole number from 1 to {MAX_QUORUM}"))),
        },
        Some(_) => Err(PolicyError::new(field, format!("must be a whole number from 1 to {MAX_QUORUM}"))),
    }
}

fn duration_field(field: &str, v: &str) -> Result<u64, PolicyError> {
    duration::parse(v).map(|d| d.as_secs()).map_err(|r| PolicyError::new(field, r))
}

impl AccessDoc {
    fn validate(self, at: &str) -> Result<AccessRule, PolicyError> {
        let p = self.principals;
        if p.subjects.is_empty() && p.groups.is_empty() && p.claims.is_empty() {
            return Err(PolicyError::new(format!("{at}.principals"), "must name subjects, groups or claims"));
        }
        let connections = connection_patterns(at, self.connections)?;
        if self.roles.is_empty() {
            return Err(PolicyError::new(format!("{at}.roles"), "must name at least one role"));
        }
        for (i, r) in self.roles.iter().enumerate() {
            validate_name(&format!("{at}.roles[{i}]"), r).map_err(|r| split(&r))?;
        }
        let max_ttl_secs = duration_field(&format!("{at}.max_ttl"), &self.max_ttl)?;
        let field = format!("{at}.approval");
        let approval = match &self.approval {
            Value::String(s) if s == "none" => Approval::None,
            Value::String(s) => {
                return Err(PolicyError::new(
                    field,
                    format!("{s:?} is not an approval; use none or {{ approvers: ..., quorum: N }}"),
                ));
            }
            v => {
                let map = object(&field, v)?;
                only_keys(&field, map, &["approvers", "quorum", "timeout"])?;
                let approvers = approvers(&format!("{field}.approvers"), map.get("approvers"))?;
                let quorum = quorum(&format!("{field}.quorum"), map.get("quorum"))?;
                reachable(&format!("{field}.quorum"), &approvers, quorum)?;
                let timeout_secs = match map.get("timeout") {
                    None => crate::review::DEFAULT_REQUEST_TIMEOUT_SECS,
                    Some(Value::String(t)) => duration_field(&format!("{field}.timeout"), t)?,
                    Some(_) => {
                        return Err(PolicyError::new(format!("{field}.timeout"), "must be a duration such as 1h"));
                    }
                };
                Approval::Review { approvers, quorum, timeout_secs }
            }
        };
        Ok(AccessRule {
            name: self.name,
            principals: PrincipalMatch { subjects: p.subjects, groups: p.groups, claims: p.claims },
            connections,
            roles: self.roles,
            max_ttl_secs,
            approval,
            reason_required: self.reason_required,
        })
    }
}

impl CommandDoc {
    fn validate(self, at: &str) -> Result<CommandRule, PolicyError> {
        let connections = connection_patterns(at, self.connections)?;
        let m = self.matcher;
        let mut kinds = Vec::with_capacity(m.kinds.len());
        for (i, k) in m.kinds.iter().enumerate() {
            kinds.push(StatementKind::parse(k).ok_or_else(|| {
                PolicyError::new(
                    format!("{at}.match.kinds[{i}]"),
                    format!("unknown kind {k:?}, expected one of: {}", StatementKind::NAMES.join(", ")),
                )
            })?);
        }
        if kinds.is_empty() && m.tables.is_empty() && m.functions.is_empty() && m.unbounded_write.is_none() {
            return Err(PolicyError::new(
                format!("{at}.match"),
                "must match on at least one of kinds, tables, functions, unbounded_write",
            ));
        }
        let action = command_action(&format!("{at}.action"), &self.action)?;
        Ok(CommandRule {
            name: self.name,
            connections,
            matcher: CommandMatch {
                kinds,
                tables: m.tables,
                functions: m.functions,
                unbounded_write: m.unbounded_write,
            },
            action,
        })
    }
}

/// `allow`, `deny` or `{ review: { approvers, quorum, timeout } }`.
fn command_action(field: &str, value: &Value) -> Result<CommandAction, PolicyError> {
    let field = field.to_owned();
    let action = match value {
        Value::String(s) if s == "allow" => CommandAction::Allow,
        Value::String(s) if s == "deny" => CommandAction::Deny,
        Value::String(s) => {
            return Err(PolicyError::new(
                field,
                format!("unknown action {s:?}, expected allow, deny or {{ review: ... }}"),
            ));
        }
        v => {
            let map = object(&field, v)?;
            only_keys(&field, map, &["review"])?;
            let rf = format!("{field}.review");
            let review = object(&rf, map.get("review").unwrap_or(&Value::Null))?;
            only_keys(&rf, review, &["approvers", "quorum", "timeout"])?;
            let timeout_secs = match review.get("timeout") {
                None => DEFAULT_REVIEW_TIMEOUT_SECS,
                Some(Value::String(t)) => duration_field(&format!("{rf}.timeout"), t)?,
                Some(_) => return Err(PolicyError::new(format!("{rf}.timeout"), "must be a duration such as 10m")),
            };
            let approvers = approvers(&format!("{rf}.approvers"), review.get("approvers"))?;
            let quorum = quorum(&format!("{rf}.quorum"), review.get("quorum"))?;
            reachable(&format!("{rf}.quorum"), &approvers, quorum)?;
            CommandAction::Review { approvers, quorum, timeout_secs }
        }
    };
    Ok(action)
}

impl MaskingDoc {
    fn validate(self, at: &str) -> Result<MaskingRule, PolicyError> {
        let connections = connection_patterns(at, self.connections)?;
        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            columns.push(ColumnPattern::parse(c).map_err(|r| PolicyError::new(format!("{at}.columns[{i}]"), r))?);
        }
        let mut detectors = Vec::with_capacity(self.detectors.len());
        for (i, d) in self.detectors.iter().enumerate() {
            detectors.push(Detector::parse(d).ok_or_else(|| {
                PolicyError::new(
                    format!("{at}.detectors[{i}]"),
                    format!("unknown detector {d:?}, expected one of: {}", Detector::NAMES.join(", ")),
                )
            })?);
        }
        if columns.is_empty() && detectors.is_empty() {
            return Err(PolicyError::new(at, "must name columns or detectors"));
        }
        let strategy = MaskStrategy::parse(&self.strategy).ok_or_else(|| {
            PolicyError::new(
                format!("{at}.strategy"),
                format!("unknown strategy {:?}, expected redact, partial or hash", self.strategy),
            )
        })?;
        let on_filter = match &self.on_filter {
            None => CommandAction::Deny,
            Some(v) => command_action(&format!("{at}.on_filter"), v)?,
        };
        Ok(MaskingRule { name: self.name, connections, columns, detectors, strategy, on_filter })
    }
}
