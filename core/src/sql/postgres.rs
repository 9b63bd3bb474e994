//! Postgres's own grammar (libpg_query), beside sqlparser: the fallback for
//! statements sqlparser cannot read but Postgres accepts (`VACUUM ANALYZE t`,
//! `DO '...'`, `TABLE t`, `WHERE CURRENT OF`, ...), and the cross-check for
//! those it can: when the two disagree on how many statements there are, or on
//! whether one writes, the statement is refused.

use std::collections::BTreeSet;

use pg_query::NodeRef;
use pg_query::protobuf::node::Node as NodeEnum;

use super::{Classified, ClassifyError};
use crate::policy::StatementKind;

/// What Postgres's grammar made of a statement.
pub(super) enum Parsed {
    Tree(Box<pg_query::ParseResult>),
    /// A syntax error: the server would refuse the statement too.
    Refused(String),
    /// Too deep for the library to hand back (its stack and decoding limits are
    /// far below the server's): nothing to compare with.
    Unavailable,
}

/// Parses with Postgres's grammar.
pub(super) fn parse(sql: &str) -> Parsed {
    match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(tree) => Parsed::Tree(Box::new(tree)),
        Err(pg_query::Error::Decode(_)) => Parsed::Unavailable,
        Err(pg_query::Error::Parse(m)) if m.contains("stack depth limit exceeded") => Parsed::Unavailable,
        Err(e) => Parsed::Refused(e.to_string()),
    }
}

/// Refuses what sqlparser and Postgres read differently.
pub(super) fn cross_check(ours: &[Classified], theirs: &pg_query::ParseResult) -> Result<(), ClassifyError> {
    let count = theirs.protobuf.stmts.len();
    if count != ours.len() {
        return Err(ClassifyError::Disagreement(format!(
            "{} statement(s) to the gateway's parser, {count} to Postgres's",
            ours.len()
        )));
    }
    for (i, (c, raw)) in ours.iter().zip(&theirs.protobuf.stmts).enumerate() {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else { continue };
        // A plain EXPLAIN plans what it names and runs nothing.
        if let NodeEnum::ExplainStmt(e) = node
            && !explain_analyzes(e)
        {
            continue;
        }
        if copy_binary_out(node) && !c.copy_binary_out {
            return Err(ClassifyError::Disagreement(format!(
                "statement {} copies out in binary format to Postgres's parser and not to the gateway's",
                i + 1
            )));
        }
        if binary_cursor(node) && !c.binary_cursor {
            return Err(ClassifyError::Disagreement(format!(
                "statement {} declares a binary cursor to Postgres's parser and not to the gateway's",
                i + 1
            )));
        }
        let writes = writes(node);
        let reads_only = matches!(c.kind(), StatementKind::Read | StatementKind::Utility | StatementKind::Transaction);
        if writes && reads_only {
            return Err(ClassifyError::Disagreement(format!(
                "statement {} writes to Postgres's parser and not to the gateway's",
                i + 1
            )));
        }
    }
    Ok(())
}

/// `COPY ... TO STDOUT` in binary format (`FORMAT binary`, or the older
/// `BINARY`, which Postgres's grammar turns into the same option).
fn copy_binary_out(node: &NodeEnum) -> bool {
    let NodeEnum::CopyStmt(copy) = node else { return false };
    !copy.is_from
        && !copy.is_program
        && copy.filename.is_empty()
        && copy.options.iter().filter_map(|o| o.node.as_ref()).any(|o| match o {
            NodeEnum::DefElem(d) if d.defname.eq_ignore_ascii_case("format") => {
                d.arg.as_ref().and_then(|a| a.node.as_ref()).is_some_and(|a| match a {
                    NodeEnum::String(s) => s.sval.eq_ignore_ascii_case("binary"),
                    _ => false,
                })
            }
            _ => false,
        })
}

/// `DECLARE ... BINARY CURSOR` (Postgres's `CURSOR_OPT_BINARY`).
fn binary_cursor(node: &NodeEnum) -> bool {
    const CURSOR_OPT_BINARY: i32 = 0x0001;
    matches!(node, NodeEnum::DeclareCursorStmt(d) if d.options & CURSOR_OPT_BINARY != 0)
}

/// `EXPLAIN ANALYZE`, `EXPLAIN (ANALYZE)`, `EXPLAIN (ANALYZE true)`: the statement runs.
fn explain_analyzes(e: &pg_query::protobuf::ExplainStmt) -> bool {
    e.options.iter().filter_map(|o| o.node.as_ref()).any(|o| match o {
        NodeEnum::DefElem(d) if d.defname.eq_ignore_ascii_case("analyze") => {
            let value = d.arg.as_ref().and_then(|a| a.node.as_ref()).map(|a| match a {
                NodeEnum::Boolean(b) => b.boolval.to_string(),
                NodeEnum::String(s) => s.sval.to_lowercase(),
                NodeEnum::Integer(i) => i.ival.to_string(),
                _ => String::new(),
            });
            !matches!(value.as_deref(), Some("false" | "off" | "0" | "no"))
        }
        _ => false,
    })
}

/// Classifies from Postgres's parse tree, when sqlparser could not read the text.
pub(super) fn classify(result: &pg_query::ParseResult) -> Vec<Classified> {
    result
        .protobuf
        .stmts
        .iter()
        .map(|raw| match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(node) => classify_one(node),
            None => Classified { kind: Some(StatementKind::Unknown), ..Classified::default() },
        })
        // Read from a tree this module walks only in part.
        .map(|c| Classified { literal_sensitive: true, ..c })
        .collect()
}

fn classify_one(node: &NodeEnum) -> Classified {
    let mut c = Classified {
        defines_code: matches!(
            node,
            NodeEnum::CreateFunctionStmt(_)
                | NodeEnum::CreateTrigStmt(_)
                | NodeEnum::RuleStmt(_)
                | NodeEnum::DefineStmt(_)
                | NodeEnum::AlterFunctionStmt(_)
        ),
        ..Classified::default()
    };
    let mut functions = BTreeSet::new();
    for (n, _, _, _) in node.nodes() {
        match n {
            NodeRef::RangeVar(r) => {
                let name = r.relname.to_lowercase();
                if !r.schemaname.is_empty() {
                    c.tables.insert(format!("{}.{name}", r.schemaname.to_lowercase()));
                }
                c.tables.insert(name);
            }
            NodeRef::FuncCall(f) => {
                if let Some(name) = f.funcname.last().and_then(|n| n.node.as_ref()).and_then(string_of) {
                    functions.insert(name.to_lowercase());
                }
            }
            NodeRef::DeleteStmt(d) => c.unbounded_write |= unbounded(d.where_clause.as_deref()),
            NodeRef::UpdateStmt(u) => {
                c.unbounded_write |= unbounded(u.where_clause.as_deref());
                if u.relation.as_ref().is_some_and(|r| r.relname.eq_ignore_ascii_case("pg_settings")) {
                    c.settings.insert("*".to_owned());
                }
            }
            NodeRef::TruncateStmt(_) => c.unbounded_write = true,
            NodeRef::CopyStmt(copy) if copy.is_program => c.copy_program = true,
            NodeRef::VariableSetStmt(v) => {
                c.settings.insert(if v.name.is_empty() { "*".to_owned() } else { v.name.to_lowercase() });
            }
            _ => {}
        }
    }
    // What set_config changes cannot be read from here without its arguments: assume the worst.
    if functions.contains("set_config") {
        c.settings.insert("*".to_owned());
    }
    c.functions = functions;
    c.copy_binary_out = copy_binary_out(node);
    c.binary_cursor = binary_cursor(node);
    c.kind = Some(kind_of(node));
    c
}

/// A node's string value (function names are lists of them).
fn string_of(node: &NodeEnum) -> Option<String> {
    match node {
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// A WHERE clause bounds a write when it names a column, holds a subquery, or
/// is `CURRENT OF` a cursor; anything else is true (or false) for every row.
fn unbounded(where_clause: Option<&pg_query::protobuf::Node>) -> bool {
    let Some(node) = where_clause.and_then(|n| n.node.as_ref()) else { return true };
    if matches!(node, NodeEnum::CurrentOfExpr(_) | NodeEnum::ColumnRef(_) | NodeEnum::SubLink(_)) {
        return false;
    }
    !node.nodes().iter().any(|(n, _, _, _)| matches!(n, NodeRef::ColumnRef(_) | NodeRef::SubLink(_)))
}

/// Whether the statement writes rows anywhere in its tree.
fn writes(node: &NodeEnum) -> bool {
    let top = matches!(
        node,
        NodeEnum::InsertStmt(_) | NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_) | NodeEnum::MergeStmt(_)
    );
    top || node.nodes().iter().any(|(n, _, _, _)| {
        matches!(n, NodeRef::InsertStmt(_) | NodeRef::UpdateStmt(_) | NodeRef::DeleteStmt(_) | NodeRef::MergeStmt(_))
            || matches!(n, NodeRef::CopyStmt(copy) if copy.is_from)
            || matches!(n, NodeRef::TruncateStmt(_))
    })
}

fn kind_of(node: &NodeEnum) -> StatementKind {
    use StatementKind::*;
    match node {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => Ddl,
        NodeEnum::SelectStmt(_) if writes(node) => Write,
        NodeEnum::SelectStmt(_) => Read,
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_)
        | NodeEnum::TruncateStmt(_) => Write,
        NodeEnum::CopyStmt(copy) => {
            if copy.is_from || writes(node) {
                Write
            } else {
                Read
            }
        }
        NodeEnum::TransactionStmt(_) => Transaction,
        NodeEnum::VariableSetStmt(v) if matches!(v.name.as_str(), "role" | "session_authorization") => Dcl,
        NodeEnum::VariableSetStmt(_)
        | NodeEnum::VariableShowStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::NotifyStmt(_)
        | NodeEnum::DeclareCursorStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::LockStmt(_) => Utility,
        NodeEnum::GrantStmt(_)
        | NodeEnum::GrantRoleStmt(_)
        | NodeEnum::CreateRoleStmt(_)
        | NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::DropRoleStmt(_)
        | NodeEnum::AlterDefaultPrivilegesStmt(_)
        | NodeEnum::CreateUserMappingStmt(_)
        | NodeEnum::AlterUserMappingStmt(_)
        | NodeEnum::DropUserMappingStmt(_)
        | NodeEnum::ReassignOwnedStmt(_) => Dcl,
        NodeEnum::VacuumStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::LoadStmt(_) => Admin,
        NodeEnum::CreateStmt(_)
        | NodeEnum::CreateTableAsStmt(_)
        | NodeEnum::ViewStmt(_)
        | NodeEnum::IndexStmt(_)
        | NodeEnum::CreateSeqStmt(_)
        | NodeEnum::AlterSeqStmt(_)
        | NodeEnum::AlterTableStmt(_)
        | NodeEnum::AlterObjectSchemaStmt(_)
        | NodeEnum::AlterOwnerStmt(_)
        | NodeEnum::AlterEnumStmt(_)
        | NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateRangeStmt(_)
        | NodeEnum::CreateDomainStmt(_)
        | NodeEnum::AlterDomainStmt(_)
        | NodeEnum::CreateFunctionStmt(_)
        | NodeEnum::AlterFunctionStmt(_)
        | NodeEnum::CreateSchemaStmt(_)
        | NodeEnum::CreateExtensionStmt(_)
        | NodeEnum::AlterExtensionStmt(_)
        | NodeEnum::CreateTrigStmt(_)
        | NodeEnum::RuleStmt(_)
        | NodeEnum::DefineStmt(_)
        | NodeEnum::DropStmt(_)
        | NodeEnum::RenameStmt(_)
        | NodeEnum::CommentStmt(_)
        | NodeEnum::RefreshMatViewStmt(_)
        | NodeEnum::CreatePolicyStmt(_)
        | NodeEnum::AlterPolicyStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_) => Ddl,
        // What these run is not read here (DO bodies, EXPLAIN's statement, a
        // prepared statement's text): of unknown kind, which fails closed.
        _ => Unknown,
    }
}
