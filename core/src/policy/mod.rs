//! The policy model: a versioned YAML document per tenant with access rules
//! (who may hold which role on which connections, for how long, with which
//! approval), command rules (per statement: allow, deny or review) and masking
//! rules. `Policy::parse` reads and validates a document; a document it refuses
//! names the field and the reason.

mod commands;
mod document;
mod masking;
mod model;

pub use commands::{CommandVerdict, DENIED_FUNCTIONS, Decision, LEXING_SETTINGS};
pub use masking::{CatalogRelation, MaskedUse, ResultMask, WholeMask, derive_patterns};

pub use model::*;

use serde::{Deserialize, Serialize};

/// Why a policy document was refused: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    /// A path into the document, e.g. `access[1].max_ttl` (empty for the whole document).
    pub field: String,
    pub reason: String,
}

impl PolicyError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// The largest policy document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

impl Policy {
    /// Reads and validates a YAML policy document.
    pub fn parse(source: &str) -> Result<Policy, PolicyError> {
        if source.len() > MAX_DOCUMENT_BYTES {
            return Err(PolicyError::new("", format!("document is larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        reject_aliases(source)?;
        let doc: document::Document = serde_norway::from_str(source).map_err(yaml_error)?;
        doc.validate()
    }
}

/// Refuses YAML aliases (`*name`). An alias repeats a node without repeating
/// its bytes, so a small document can expand to gigabytes while it is read;
/// policies have nothing that needs them. The scan is deliberately simple: a
/// `*` that starts a token outside quotes and comments. A `*` inside a plain
/// word (`a*b`) or a quoted string (`"*.*.email"`) is not an alias.
fn reject_aliases(source: &str) -> Result<(), PolicyError> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    for (line_no, line) in source.lines().enumerate() {
        let mut prev: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Quote::Single => {
                    if c == '\'' {
                        // '' is an escaped quote inside a single-quoted scalar.
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            quote = Quote::None;
                        }
                    }
                }
                Quote::Double => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        quote = Quote::None;
                    }
                }
                Quote::None => {
                    let starts_token = prev.is_none_or(|p| p.is_whitespace() || matches!(p, '[' | '{' | ','));
                    match c {
                        '#' if prev.is_none_or(char::is_whitespace) => break,
                        '\'' if starts_token => quote = Quote::Single,
                        '"' if starts_token => quote = Quote::Double,
                        '*' if starts_token
                            && chars.peek().is_some_and(|n| !n.is_whitespace() && !matches!(n, ',' | ']' | '}')) =>
                        {
                            return Err(PolicyError::new(
                                "",
                                format!(
                                    "line {}: YAML aliases (*name) are not accepted in policy documents",
                                    line_no + 1
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
            }
            prev = Some(c);
        }
    }
    Ok(())
}

/// serde's YAML errors read `access[1]: unknown field ...`: split the path off as the field.
fn yaml_error(e: serde_norway::Error) -> PolicyError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((path, reason)) if !path.contains(' ') => PolicyError::new(path, reason),
        _ => PolicyError::new("", text),
    }
}

#[cfg(test)]
mod tests;
