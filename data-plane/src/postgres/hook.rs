//! The statement hook: every statement a client sends — a simple Query, and
//! each Parse, Bind and Execute of the extended protocol — passes through one
//! `StatementHook` before it is forwarded. Guardrails, approvals, masking and
//! recording plug in here; the default allows everything.

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
    /// Only a simple Query or a Parse, which carry statement text, is held.
    Review {
        rule: String,
    },
}

pub trait StatementHook: Send + Sync + 'static {
    fn check(&self, session: &SessionContext, statement: Statement<'_>) -> Verdict;
}

/// Allows every statement (what the gateway does until policy inspects statements).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl StatementHook for AllowAll {
    fn check(&self, _session: &SessionContext, _statement: Statement<'_>) -> Verdict {
        Verdict::Allow
    }
}
