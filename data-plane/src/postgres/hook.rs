//! The statement hook: every statement a client sends — a simple Query, and
//! each Parse, Bind and Execute of the extended protocol — passes through one
//! `StatementHook` before it is forwarded. Guardrails, approvals, masking and
//! recording plug in here; the default allows everything.

use std::sync::Arc;

use airlock_core::policy::ResultMask;
use airlock_core::principal::Principal;
use airlock_core::{ConnectionId, GrantId, SessionId, TenantId};
use bytes::Bytes;

/// Who and what a session is, for the hook's decisions and its records.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub tenant: TenantId,
    pub session: SessionId,
    pub principal: Principal,
    pub connection: ConnectionId,
    pub connection_name: String,
    pub grant: GrantId,
    pub role: String,
}

/// A statement as the client sent it. Text stays bytes: the client's encoding
/// need not be UTF-8.
#[derive(Debug, Clone, Copy)]
pub enum Statement<'a> {
    Query {
        sql: &'a Bytes,
    },
    Parse {
        name: &'a Bytes,
        sql: &'a Bytes,
    },
    Bind {
        portal: &'a Bytes,
        statement: &'a Bytes,
        params: &'a [Option<Bytes>],
        /// The text of the prepared statement it binds, when this session's
        /// gateway saw its Parse.
        sql: Option<&'a Bytes>,
    },
    Execute {
        portal: &'a Bytes,
        max_rows: i32,
    },
    /// A fast-path function call: no statement text to inspect.
    FunctionCall,
}

/// What happens to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused with SQLSTATE 42501; the message names the rule.
    Deny {
        rule: String,
        message: String,
    },
    /// Held until approvers decide: the session opens a review through the
    /// control plane, tells the client where it can be approved, and waits.
    /// A simple Query or a Bind (with its parameters) is held; a Parse that
    /// needs review is let through, and each Bind of it is held.
    Review {
        rule: String,
    },
}

pub trait StatementHook: Send + Sync + 'static {
    fn check(&self, session: &SessionContext, statement: Statement<'_>) -> Verdict;

    /// Whether this hook looks at this session's statements at all; asked when
    /// the session starts and again whenever the worker's state changes. A
    /// session whose hook does not is relayed without calling it, and decodes
    /// no more than the relay itself needs. One whose hook does must keep the
    /// server reading text as the gateway does (a client encoding that cannot
    /// hide a quote, standard-conforming strings).
    fn inspects(&self, _session: &SessionContext) -> bool {
        true
    }

    /// Whether this session's results are masked; asked like `inspects`. A
    /// hook that masks must also inspect.
    fn masks(&self, _session: &SessionContext) -> bool {
        false
    }

    /// How the results of a statement are masked: `sql` is the text of a
    /// simple query or a Parse, `None` for a statement whose text the gateway
    /// does not know (every column it computes is then masked). `None` when no
    /// masking rule covers the session's connection.
    fn result_mask(&self, _session: &SessionContext, _sql: Option<&Bytes>) -> Option<Arc<ResultMask>> {
        None
    }

    /// Whether the hook wants to learn the target's views and inheriting
    /// tables (`learn_catalog`) before this session's statements are masked:
    /// asked when a masked session starts.
    fn wants_catalog(&self, _session: &SessionContext) -> bool {
        false
    }

    /// The target's views and inheriting tables, read for a session that
    /// starts, so that masking follows masked columns through them.
    fn learn_catalog(&self, _session: &SessionContext, _relations: &[airlock_core::policy::CatalogRelation]) {}
}

/// A statement as approvers see it: the text with any password replaced, and
/// a Bind's parameters after it (each cut to 200 characters; binary or
/// unreadable values by their size).
pub fn shown_statement(sql: &str, params: &[Option<Bytes>]) -> String {
    let mut shown = airlock_core::sql::redact_secrets(sql);
    for (i, p) in params.iter().enumerate() {
        shown.push_str(if i == 0 { "\n-- parameters: " } else { ", " });
        let value = match p {
            None => "NULL".to_owned(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if !text.chars().any(char::is_control) => {
                    let cut: String = text.chars().take(200).collect();
                    let more = if cut.len() < text.len() { "..." } else { "" };
                    format!("'{}'{more}", cut.replace('\'', "''"))
                }
                _ => format!("<{} bytes>", bytes.len()),
            },
        };
        shown.push_str(&format!("${} = {value}", i + 1));
    }
    shown
}

/// Allows every statement (what the gateway does until policy inspects statements).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl StatementHook for AllowAll {
    fn check(&self, _session: &SessionContext, _statement: Statement<'_>) -> Verdict {
        Verdict::Allow
    }

    fn inspects(&self, _session: &SessionContext) -> bool {
        false
    }
}
