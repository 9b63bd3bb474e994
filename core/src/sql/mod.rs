//! What a SQL statement does, as command rules need to know it: its kind, the
//! tables it touches, the functions it calls, whether it writes without a
//! bound, and where COPY goes. Parsed with sqlparser's Postgres dialect.
//!
//! Anything this cannot read is reported as an error, and callers refuse it
//! (fail closed). A statement that parses but is of a sort not listed here is
//! of kind `unknown`.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyTarget, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Set, SetExpr,
    Statement as Ast, TableFactor, Value, Visit, Visitor, visit_expressions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::policy::{ColumnPattern, StatementKind};
use lineage::Lineage;

pub mod lineage;
pub mod normalize;
mod postgres;

/// The longest statement the classifier reads; longer ones are refused.
pub const MAX_STATEMENT_BYTES: usize = 1024 * 1024;
/// How deeply expressions may nest before the parser gives up.
const RECURSION_LIMIT: usize = 64;
/// The most operators and keywords a statement may hold. A flat chain
/// (`1 + 1 + ...`) parses without recursion but builds a tree as deep as it is
/// long, and walking or dropping that tree would overflow a thread's stack and
/// take the whole worker down; longer chains are refused before parsing.
pub const MAX_OPERATORS: usize = 8192;

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classified {
    pub kind: Option<StatementKind>,
    /// Every table or view it names, lowercased as Postgres folds unquoted names,
    /// each both qualified as written (`public.users`) and bare (`users`).
    pub tables: BTreeSet<String>,
    /// Functions it calls, by bare lowercased name.
    pub functions: BTreeSet<String>,
    /// A DELETE or UPDATE with no WHERE, or one whose WHERE names no column.
    pub unbounded_write: bool,
    /// `COPY ... TO/FROM PROGRAM`: runs a shell command on the database server.
    pub copy_program: bool,
    /// `COPY ... TO STDOUT` in binary format: rows for the client that no
    /// content detector can read.
    pub copy_binary_out: bool,
    /// `DECLARE ... BINARY CURSOR`: a `FETCH` from it in a simple query sends
    /// the client rows in binary format, which no content detector can read.
    pub binary_cursor: bool,
    /// Session settings it changes, lowercased: `SET x`, `SET NAMES` (`client_encoding`),
    /// `SET ROLE` (`role`), `SET SESSION AUTHORIZATION` (`session_authorization`),
    /// `set_config('x', ...)`; `*` when `set_config` names a setting that is not a literal.
    pub settings: BTreeSet<String>,
    /// It defines code that runs later, out of the gateway's sight: a
    /// function, procedure, trigger, rule, aggregate or operator.
    pub defines_code: bool,
    /// What it was found to be depends on the value of a literal in it
    /// (`set_config('role', ...)`, `WHERE 1 = 1`), or it was read by Postgres's
    /// grammar alone: another statement with the same [`normalize`]d form may
    /// be something else.
    pub literal_sensitive: bool,
}

impl Classified {
    pub fn kind(&self) -> StatementKind {
        self.kind.unwrap_or(StatementKind::Unknown)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("the statement is longer than {MAX_STATEMENT_BYTES} bytes")]
    TooLong,
    #[error("the statement is not valid UTF-8")]
    NotUtf8,
    #[error("the statement could not be parsed: {0}")]
    Parse(String),
    #[error("the statement chains more than {MAX_OPERATORS} operators, too many to check")]
    TooComplex,
    #[error("the statement nests more than {RECURSION_LIMIT} levels deep, too deep to check")]
    TooDeep,
    #[error("the gateway and Postgres read the statement differently: {0}")]
    Disagreement(String),
}

/// Classifies every statement in `sql` (a simple query may hold several).
pub fn classify(sql: &str) -> Result<Vec<Classified>, ClassifyError> {
    Ok(analyze(sql, &[])?.into_iter().map(|(c, _)| c).collect())
}

/// Classifies every statement in `sql` and, when `patterns` names masked
/// columns, follows them through each statement ([`lineage::lineage`]). A
/// statement only Postgres's grammar could read has no lineage (`None`).
pub fn analyze(sql: &str, patterns: &[ColumnPattern]) -> Result<Vec<(Classified, Option<Lineage>)>, ClassifyError> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(ClassifyError::TooLong);
    }
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = PostgreSqlDialect {};
    let tokens =
        Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| ClassifyError::Parse(e.to_string()))?;
    let operators = tokens
        .iter()
        .filter(|t| match &t.token {
            // Keywords too: `x IS NULL IS NULL ...` and `NOT NOT ...` chain without symbols.
            // Identifiers and the literal keywords of a long VALUES list do not.
            Token::Word(w) => {
                use sqlparser::keywords::Keyword;
                !matches!(
                    w.keyword,
                    Keyword::NoKeyword | Keyword::NULL | Keyword::TRUE | Keyword::FALSE | Keyword::DEFAULT
                )
            }
            Token::Whitespace(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::Period
            | Token::SemiColon
            | Token::Placeholder(_)
            | Token::EOF => false,
            _ => true,
        })
        .count();
    if operators > MAX_OPERATORS {
        return Err(ClassifyError::TooComplex);
    }
    // `U&"..."` is an identifier with Unicode escapes to Postgres, and a column
    // `U`, an operator and another identifier to sqlparser: the two would name
    // different columns.
    let unicode_identifier = tokens.windows(3).any(|w| match w {
        [a, b, c] => {
            matches!(&a.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"))
                && matches!(b.token, Token::Ampersand)
                && matches!(&c.token, Token::Word(w) if w.quote_style == Some('"'))
        }
        _ => false,
    });
    if unicode_identifier {
        return Err(ClassifyError::Parse(
            "identifiers with Unicode escapes (U&\"...\") are not read by the gateway; write the name plainly"
                .to_owned(),
        ));
    }
    // Nesting is bounded before either parser sees it: each recurses per level.
    let mut depth = 0usize;
    for t in &tokens {
        match t.token {
            Token::LParen | Token::LBracket => {
                depth += 1;
                if depth > RECURSION_LIMIT {
                    return Err(ClassifyError::TooDeep);
                }
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let ours = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements();
    // Postgres's own grammar reads every statement too: the fallback when sqlparser
    // cannot, the cross-check when it can.
    match (ours, postgres::parse(sql)) {
        (Ok(statements), theirs) => {
            let classified: Vec<Classified> = statements.iter().map(classify_one).collect();
            match theirs {
                postgres::Parsed::Tree(theirs) => postgres::cross_check(&classified, &theirs)?,
                // The server would refuse it too.
                postgres::Parsed::Refused(why) => return Err(ClassifyError::Parse(why)),
                // A long chain of operators: sqlparser's reading stands alone.
                postgres::Parsed::Unavailable => {}
            }
            let lineages = statements.iter().map(|s| (!patterns.is_empty()).then(|| lineage::lineage(s, patterns)));
            Ok(classified.into_iter().zip(lineages).collect())
        }
        (Err(_), postgres::Parsed::Tree(theirs)) => {
            Ok(postgres::classify(&theirs).into_iter().map(|c| (c, None)).collect())
        }
        (Err(e), _) => Err(ClassifyError::Parse(e.to_string())),
    }
}

/// `analyze` of statement text given as bytes in the client's encoding; text
/// that is not UTF-8 cannot be read and is refused.
pub fn analyze_bytes(
    sql: &[u8],
    patterns: &[ColumnPattern],
) -> Result<Vec<(Classified, Option<Lineage>)>, ClassifyError> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(ClassifyError::TooLong);
    }
    analyze(std::str::from_utf8(sql).map_err(|_| ClassifyError::NotUtf8)?, patterns)
}

/// Classifies statement text given as bytes in the client's encoding; text
/// that is not UTF-8 cannot be read and is refused.
pub fn classify_bytes(sql: &[u8]) -> Result<Vec<Classified>, ClassifyError> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(ClassifyError::TooLong);
    }
    classify(std::str::from_utf8(sql).map_err(|_| ClassifyError::NotUtf8)?)
}

/// The statement with the literal after every `PASSWORD` keyword replaced, for
/// showing to approvers and keeping in the log (`ALTER ROLE x PASSWORD '...'`
/// must not put the password there). Text that cannot be tokenized is not
/// shown at all.
pub fn redact_secrets(sql: &str) -> String {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return "(statement not shown: it could not be read)".to_owned();
    };
    let mut out = String::with_capacity(sql.len());
    let mut after_password = false;
    for token in &tokens {
        let is_literal = matches!(
            token,
            Token::SingleQuotedString(_)
                | Token::DollarQuotedString(_)
                | Token::EscapedStringLiteral(_)
                | Token::NationalStringLiteral(_)
                | Token::UnicodeStringLiteral(_)
        );
        if after_password && is_literal {
            out.push_str("'<redacted>'");
            after_password = false;
            continue;
        }
        match token {
            Token::Whitespace(_) => {}
            Token::Word(w) if w.keyword == Keyword::PASSWORD => after_password = true,
            _ => after_password = false,
        }
        out.push_str(&token.to_string());
    }
    out
}

fn classify_one(statement: &Ast) -> Classified {
    let mut walk = Walk {
        c: Classified::default(),
        writes: false,
        explain_only: is_plain_explain(statement),
        explained: matches!(statement, Ast::Explain { .. }),
    };
    // `EXPLAIN (ANALYZE 0)` plans and `(ANALYZE 1)` runs. Whether COPY's
    // options, FETCH's count and DDL parse at all turns on their numbers and
    // strings (`DELIMITER 'ab'`, `varchar(0)`).
    walk.c.literal_sensitive |= match statement {
        Ast::Explain { options: Some(options), .. } => options.iter().any(|o| o.arg.is_some()),
        Ast::Copy { .. } | Ast::Fetch { .. } => true,
        _ => false,
    };
    let _ = statement.visit(&mut walk);
    let mut c = walk.c;
    let mut kind = kind_of(statement);
    // A statement that reads on top may write inside: a writable CTE, `COPY (DELETE ...
    // RETURNING *) TO`, `EXPLAIN ANALYZE`, `PREPARE`.
    if walk.writes && matches!(kind, StatementKind::Read | StatementKind::Utility) && !walk.explain_only {
        kind = StatementKind::Write;
    }
    c.kind = Some(kind);
    c.literal_sensitive |= kind == StatementKind::Ddl;
    c.defines_code = matches!(
        statement,
        Ast::CreateFunction(_)
            | Ast::CreateProcedure { .. }
            | Ast::CreateTrigger(_)
            | Ast::CreateRule(_)
            | Ast::CreateAggregate(_)
            | Ast::CreateOperator(_)
            | Ast::AlterFunction(_)
    );
    c
}

/// Collects what a statement touches, at every depth.
struct Walk {
    c: Classified,
    /// A write statement appears somewhere inside.
    writes: bool,
    /// `EXPLAIN` without `ANALYZE`: what it names is planned, not run.
    explain_only: bool,
    /// `EXPLAIN`, with or without `ANALYZE`: a `DECLARE` it names opens no
    /// cursor (Postgres explains the cursor's query, and its answer is text).
    explained: bool,
}

impl Visitor for Walk {
    type Break = ();

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        add_table(&mut self.c.tables, name);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM pg_read_file('...')` calls a function, whatever it is named like.
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => {
                self.c.functions.insert(bare(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        // A type's modifiers (`float(10)`, `varchar(3)`, `int[2]`) are read as
        // numbers by both parsers, which refuse some values.
        let modified = |t: &sqlparser::ast::DataType| t.to_string().bytes().any(|b| b.is_ascii_digit());
        match expr {
            Expr::Cast { data_type, .. } if modified(data_type) => self.c.literal_sensitive = true,
            Expr::TypedString(t) if modified(&t.data_type) => self.c.literal_sensitive = true,
            Expr::Interval(i) if i.leading_precision.is_some() || i.fractional_seconds_precision.is_some() => {
                self.c.literal_sensitive = true;
            }
            _ => {}
        }
        if let Expr::Function(f) = expr {
            let name = bare(&f.name);
            if name == "set_config" {
                self.c.literal_sensitive = true;
                self.c.settings.insert(first_literal(&f.args).map_or_else(|| "*".to_owned(), |v| v.to_lowercase()));
            }
            self.c.functions.insert(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Ast) -> ControlFlow<()> {
        let mut sensitive = false;
        let mut unbounded = |selection: Option<&Expr>| selection.is_none_or(|e| trivially_true(e, &mut sensitive));
        match statement {
            Ast::Delete(d) => {
                self.writes = true;
                if !self.explain_only {
                    self.c.unbounded_write |= unbounded(d.selection.as_ref());
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                for t in from {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        add_table(&mut self.c.tables, name);
                    }
                }
            }
            // pg_settings is a view over the session's settings: writing it is SET.
            Ast::Update(u) if is_pg_settings(&u.table.relation) => {
                self.writes = true;
                self.c.settings.insert("*".to_owned());
            }
            Ast::Update(u) => {
                self.writes = true;
                if !self.explain_only {
                    self.c.unbounded_write |= unbounded(u.selection.as_ref());
                }
            }
            Ast::Insert(_) | Ast::Merge(_) => self.writes = true,
            // Every row, by definition.
            Ast::Truncate(_) => {
                self.writes = true;
                if !self.explain_only {
                    self.c.unbounded_write = true;
                }
            }
            Ast::Copy { target: CopyTarget::Program { .. }, .. } => self.c.copy_program = true,
            Ast::Declare { stmts, .. } if !self.explained => {
                self.c.binary_cursor |= stmts.iter().any(|d| d.binary == Some(true));
            }
            Ast::Copy { to: true, target: CopyTarget::Stdout, options, legacy_options, .. } => {
                use sqlparser::ast::{CopyLegacyOption, CopyOption};
                self.c.copy_binary_out |= options
                    .iter()
                    .any(|o| matches!(o, CopyOption::Format(f) if f.value.eq_ignore_ascii_case("binary")))
                    || legacy_options.iter().any(|o| matches!(o, CopyLegacyOption::Binary));
            }
            Ast::Copy { to: false, .. } => self.writes = true,
            Ast::Set(set) => {
                for name in set_names(set) {
                    self.c.settings.insert(name);
                }
            }
            _ => {}
        }
        self.c.literal_sensitive |= sensitive;
        ControlFlow::Continue(())
    }
}

fn is_pg_settings(relation: &TableFactor) -> bool {
    matches!(relation, TableFactor::Table { name, .. } if bare(name) == "pg_settings")
}

/// `EXPLAIN` without `ANALYZE` (in either spelling): plans, runs nothing.
fn is_plain_explain(statement: &Ast) -> bool {
    match statement {
        Ast::Explain { analyze, options, .. } => !*analyze && !options.as_ref().is_some_and(|o| o.iter().any(analyzes)),
        _ => false,
    }
}

/// `ANALYZE`, `ANALYZE true`, `ANALYZE on`, `ANALYZE 1` in an option list.
fn analyzes(option: &sqlparser::ast::UtilityOption) -> bool {
    if !option.name.value.eq_ignore_ascii_case("analyze") {
        return false;
    }
    match &option.arg {
        None => true,
        Some(arg) => {
            let text = arg.to_string().trim_matches('\'').to_ascii_lowercase();
            !matches!(text.as_str(), "false" | "off" | "0" | "no")
        }
    }
}

fn set_names(set: &Set) -> Vec<String> {
    let name = |n: &ObjectName| n.0.iter().map(|p| fold(&p.to_string())).collect::<Vec<_>>().join(".");
    match set {
        Set::SingleAssignment { variable, .. } => vec![name(variable)],
        Set::ParenthesizedAssignments { variables, .. } => variables.iter().map(name).collect(),
        Set::MultipleAssignments { assignments } => assignments.iter().map(|a| name(&a.name)).collect(),
        Set::SetSessionAuthorization(_) => vec!["session_authorization".to_owned()],
        Set::SetRole { .. } => vec!["role".to_owned()],
        Set::SetTimeZone { .. } => vec!["timezone".to_owned()],
        Set::SetNames { .. } | Set::SetNamesDefault {} => vec!["client_encoding".to_owned()],
        Set::SetTransaction { .. } => Vec::new(),
        // Anything else this parser knows as SET: assume the worst.
        _ => vec!["*".to_owned()],
    }
}

/// The first argument, when it is a string literal.
fn first_literal(args: &FunctionArguments) -> Option<String> {
    let FunctionArguments::List(list) = args else { return None };
    match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn kind_of(statement: &Ast) -> StatementKind {
    use StatementKind::*;
    match statement {
        Ast::Query(q) => match q.body.as_ref() {
            // SELECT ... INTO creates a table.
            SetExpr::Select(s) if s.into.is_some() => Ddl,
            _ if q.with.as_ref().is_some_and(|w| w.cte_tables.iter().any(|cte| !is_plain_query(&cte.query.body))) => {
                Write
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => Write,
            _ => Read,
        },
        Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_) | Ast::Merge(_) | Ast::Truncate(_) => Write,
        Ast::Copy { to, .. } => {
            if *to {
                Read
            } else {
                Write
            }
        }
        Ast::CreateView(_)
        | Ast::CreateTable(_)
        | Ast::CreateIndex(_)
        | Ast::CreateSchema { .. }
        | Ast::CreateDatabase { .. }
        | Ast::CreateFunction(_)
        | Ast::CreateTrigger(_)
        | Ast::CreateProcedure { .. }
        | Ast::CreateSequence { .. }
        | Ast::CreateDomain(_)
        | Ast::CreateType { .. }
        | Ast::CreateExtension(_)
        | Ast::CreateCollation(_)
        | Ast::CreatePolicy(_)
        | Ast::CreateRule(_)
        | Ast::CreateServer(_)
        | Ast::CreateForeignTable(_)
        | Ast::CreateForeignDataWrapper(_)
        | Ast::CreateOperator(_)
        | Ast::CreateOperatorFamily(_)
        | Ast::CreateOperatorClass(_)
        | Ast::CreateTextSearch(_)
        | Ast::CreateAggregate(_)
        | Ast::AlterTable(_)
        | Ast::AlterSchema(_)
        | Ast::AlterIndex { .. }
        | Ast::AlterView(_)
        | Ast::AlterFunction(_)
        | Ast::AlterType(_)
        | Ast::AlterCollation(_)
        | Ast::AlterOperator(_)
        | Ast::AlterOperatorFamily(_)
        | Ast::AlterOperatorClass(_)
        | Ast::AlterTextSearch(_)
        | Ast::AlterPolicy(_)
        | Ast::AlterTrigger(_)
        | Ast::Drop { .. }
        | Ast::DropFunction(_)
        | Ast::DropDomain(_)
        | Ast::DropProcedure { .. }
        | Ast::DropPolicy(_)
        | Ast::DropRule(_)
        | Ast::DropExtension(_)
        | Ast::DropOperator(_)
        | Ast::DropOperatorFamily(_)
        | Ast::DropOperatorClass(_)
        | Ast::DropTrigger(_)
        | Ast::Comment { .. }
        | Ast::RefreshMaterializedView(_)
        | Ast::RenameTable(_) => Ddl,
        Ast::Grant(_)
        | Ast::GrantRole(_)
        | Ast::Revoke(_)
        | Ast::RevokeRole(_)
        | Ast::AlterDefaultPrivileges(_)
        | Ast::CreateRole(_)
        | Ast::AlterRole { .. }
        | Ast::CreateUser(_)
        | Ast::AlterUser(_)
        | Ast::CreateUserMapping(_) => Dcl,
        Ast::StartTransaction { .. }
        | Ast::Commit { .. }
        | Ast::Rollback { .. }
        | Ast::Savepoint { .. }
        | Ast::ReleaseSavepoint { .. } => Transaction,
        Ast::Vacuum(_) | Ast::Analyze(_) | Ast::Kill { .. } => Admin,
        Ast::Set(set) => match set {
            // Changing who the session is, is about privileges.
            sqlparser::ast::Set::SetRole { .. } | sqlparser::ast::Set::SetSessionAuthorization(_) => Dcl,
            sqlparser::ast::Set::SetTransaction { .. } => Transaction,
            // The same change spelled as any setting (`SET role = 'x'`,
            // `SET session_authorization TO 'x'`, in any case, quoted or not,
            // since Postgres reads setting names so), or a setting this
            // parser cannot name.
            _ if set_names(set)
                .iter()
                .any(|n| matches!(n.to_ascii_lowercase().as_str(), "role" | "session_authorization" | "*")) =>
            {
                Dcl
            }
            _ => Utility,
        },
        Ast::ShowVariable { .. }
        | Ast::ShowVariables { .. }
        | Ast::Reset(_)
        | Ast::Discard { .. }
        | Ast::Declare { .. }
        | Ast::Fetch { .. }
        | Ast::Close { .. }
        | Ast::Deallocate { .. }
        | Ast::LISTEN { .. }
        | Ast::UNLISTEN { .. }
        | Ast::NOTIFY { .. }
        | Ast::Lock(_) => Utility,
        // What these run is decided elsewhere; they are read as what they contain.
        Ast::Explain { statement: inner, .. } => {
            if is_plain_explain(statement) {
                Read
            } else {
                kind_of(inner)
            }
        }
        Ast::Prepare { statement, .. } => kind_of(statement),
        _ => Unknown,
    }
}

fn is_plain_query(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => true,
        SetExpr::Query(q) => is_plain_query(&q.body),
        SetExpr::SetOperation { left, right, .. } => is_plain_query(left) && is_plain_query(right),
        _ => false,
    }
}

/// A WHERE clause that bounds nothing: one that names no column, `x = x`, or
/// an OR with such a term (`id = 1 OR true`). Walked with an explicit stack:
/// an OR chain can be as long as the operator bound allows.
fn trivially_true(selection: &Expr, literal_sensitive: &mut bool) -> bool {
    use sqlparser::ast::BinaryOperator;
    let mut terms = vec![selection];
    while let Some(e) = terms.pop() {
        match e {
            Expr::Nested(inner) => terms.push(inner),
            Expr::BinaryOp { left, op: BinaryOperator::Or, right } => {
                terms.push(left);
                terms.push(right);
            }
            Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                let (left, right) = (unparenthesized(left), unparenthesized(right));
                if left == right {
                    return true;
                }
                // `id + 1 = id + 2` holds for no row and `id + 1 = id + 1` for
                // every one: the answer turned on the literals.
                let (l, r) = (left.to_string(), right.to_string());
                let normalized = |s: &str| normalize::normalize(s.as_bytes());
                if normalized(&l).is_none_or(|l| Some(l) == normalized(&r)) {
                    *literal_sensitive = true;
                }
                if names_no_column(e) {
                    return true;
                }
            }
            e if names_no_column(e) => return true,
            _ => {}
        }
    }
    false
}

fn unparenthesized(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// An expression that names no column is the same for every row.
fn names_no_column(selection: &Expr) -> bool {
    let found = visit_expressions(selection, |e: &Expr| match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Subquery(_) | Expr::Exists { .. } => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_continue()
}

/// The last part of a name, folded as Postgres folds unquoted identifiers.
fn bare(name: &ObjectName) -> String {
    name.0.last().map(|part| fold(&part.to_string())).unwrap_or_default()
}

fn fold(part: &str) -> String {
    match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => part.to_lowercase(),
    }
}

fn add_table(tables: &mut BTreeSet<String>, name: &ObjectName) {
    let parts: Vec<String> = name.0.iter().map(|p| fold(&p.to_string())).collect();
    if let Some(last) = parts.last() {
        tables.insert(last.clone());
    }
    if parts.len() > 1 {
        tables.insert(parts.join("."));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Classified {
        let mut all = classify(sql).unwrap();
        assert_eq!(all.len(), 1, "{sql}");
        all.remove(0)
    }

    #[test]
    fn kinds() {
        use StatementKind::*;
        for (sql, kind) in [
            ("SELECT 1", Read),
            ("select * from users where id = 1", Read),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Write),
            ("INSERT INTO t VALUES (1)", Write),
            ("UPDATE t SET a = 1 WHERE id = 2", Write),
            ("DELETE FROM t WHERE id = 2", Write),
            ("TRUNCATE t", Write),
            ("COPY t FROM STDIN", Write),
            ("COPY t TO STDOUT", Read),
            ("CREATE TABLE t (id int)", Ddl),
            ("DROP TABLE t", Ddl),
            ("ALTER TABLE t ADD COLUMN b int", Ddl),
            ("SELECT * INTO t2 FROM t", Ddl),
            ("GRANT SELECT ON t TO bob", Dcl),
            ("SET ROLE postgres", Dcl),
            ("SET SESSION AUTHORIZATION postgres", Dcl),
            ("SET role = 'postgres'", Dcl),
            ("SET LOCAL role TO postgres", Dcl),
            ("SET \"ROLE\" = postgres", Dcl),
            ("SET session_authorization TO 'postgres'", Dcl),
            ("SET Session_Authorization = postgres", Dcl),
            ("SET search_path = public", Utility),
            ("BEGIN", Transaction),
            ("COMMIT", Transaction),
            ("SET statement_timeout = 5", Utility),
            ("EXPLAIN DELETE FROM t", Read),
            ("EXPLAIN ANALYZE DELETE FROM t", Write),
            ("VACUUM t", Admin),
        ] {
            assert_eq!(one(sql).kind(), kind, "{sql}");
        }
    }

    #[test]
    fn tables_functions_and_unbounded_writes() {
        let c = one(
            "SELECT pg_catalog.PG_READ_FILE('/etc/passwd'), lower(email) FROM public.Users u JOIN \"Orders\" o ON true",
        );
        assert!(c.functions.contains("pg_read_file") && c.functions.contains("lower"), "{c:?}");
        for t in ["users", "public.users", "Orders"] {
            assert!(c.tables.contains(t), "{t} in {c:?}");
        }
        assert!(one("DELETE FROM t").unbounded_write);
        assert!(one("DELETE FROM t WHERE 1 = 1").unbounded_write);
        assert!(one("DELETE FROM t WHERE (id + 1) = id + 1").unbounded_write);
        assert!(one("DELETE FROM t WHERE (id) = ((id))").unbounded_write);
        assert!(one("UPDATE t SET a = 1 WHERE true").unbounded_write);
        assert!(!one("DELETE FROM t WHERE id = 3").unbounded_write);
        assert!(!one("UPDATE t SET a = 1 WHERE id IN (SELECT 1)").unbounded_write);
        assert!(one("DELETE FROM t").tables.contains("t"));
        assert!(one("COPY t TO PROGRAM 'curl evil'").copy_program);
    }

    #[test]
    fn binary_copies_out_are_found_however_they_are_spelled() {
        for sql in [
            "COPY t TO STDOUT (FORMAT binary)",
            "copy (SELECT 1) to stdout with (format BINARY, header false)",
            "COPY t TO STDOUT (FORMAT 'binary')",
            "COPY t TO STDOUT WITH BINARY",
            "COPY t TO STDOUT BINARY",
            "COPY t TO STDOUT (FORMAT \"binary\")",
            "COPY BINARY t TO STDOUT",
        ] {
            assert!(one(sql).copy_binary_out, "{sql}");
        }
        for sql in [
            "COPY t TO STDOUT",
            "COPY t TO STDOUT (FORMAT csv)",
            "COPY t FROM STDIN (FORMAT binary)",
            // Nothing for the client to read.
            "COPY t TO '/tmp/t.bin' (FORMAT binary)",
            "COPY t TO PROGRAM 'gzip' (FORMAT binary)",
        ] {
            assert!(!one(sql).copy_binary_out, "{sql}");
        }
        assert!(one("COPY t TO PROGRAM 'gzip' (FORMAT binary)").copy_program);
        for sql in [
            "DECLARE c BINARY CURSOR FOR SELECT 1",
            "declare c binary no scroll cursor with hold for table t",
            // Options in an order only Postgres's grammar reads.
            "DECLARE c INSENSITIVE BINARY CURSOR FOR SELECT 1",
            "DECLARE c ASENSITIVE BINARY SCROLL CURSOR FOR SELECT 1",
        ] {
            assert!(one(sql).binary_cursor, "{sql}");
        }
        for sql in [
            "DECLARE c CURSOR FOR SELECT 1",
            "DECLARE c NO SCROLL CURSOR FOR SELECT 'binary'",
            // Explained: no cursor is opened, and the plan comes back as text.
            "EXPLAIN DECLARE c BINARY CURSOR FOR SELECT 1",
            "EXPLAIN ANALYZE DECLARE c BINARY CURSOR FOR SELECT 1",
            "EXPLAIN (ANALYZE, FORMAT json) DECLARE c BINARY CURSOR FOR SELECT 1",
        ] {
            assert!(!one(sql).binary_cursor, "{sql}");
        }
    }

    #[test]
    fn writes_inside_reads_are_writes() {
        for sql in [
            "EXPLAIN (ANALYZE) DELETE FROM t",
            "EXPLAIN (ANALYZE true, VERBOSE) DELETE FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "COPY (DELETE FROM t RETURNING *) TO STDOUT",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "PREPARE p AS DELETE FROM t",
        ] {
            let c = one(sql);
            assert_eq!(c.kind(), StatementKind::Write, "{sql}");
            assert!(c.unbounded_write, "{sql}");
            assert!(c.tables.contains("t"), "{sql}");
        }
        for sql in
            ["EXPLAIN DELETE FROM t", "EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE off) DELETE FROM t"]
        {
            let c = one(sql);
            assert_eq!(c.kind(), StatementKind::Read, "{sql}");
            assert!(!c.unbounded_write, "{sql}: plans only");
        }
        assert!(one("SELECT * FROM pg_read_file('/etc/passwd')").functions.contains("pg_read_file"));
        assert!(one("SELECT * FROM generate_series(1, 3) g").functions.contains("generate_series"));
    }

    #[test]
    fn settings_a_statement_changes() {
        let settings = |sql: &str| one(sql).settings.into_iter().collect::<Vec<_>>();
        assert_eq!(settings("SET standard_conforming_strings = off"), ["standard_conforming_strings"]);
        assert_eq!(settings("SET SESSION client_encoding TO 'GBK'"), ["client_encoding"]);
        assert_eq!(settings("SET NAMES 'GBK'"), ["client_encoding"]);
        assert_eq!(settings("SELECT set_config('Client_Encoding', 'SJIS', false)"), ["client_encoding"]);
        assert_eq!(settings("SELECT set_config(current_setting('x'), 'off', false)"), ["*"]);
        assert_eq!(settings("SET ROLE other"), ["role"]);
        assert!(settings("SELECT 1").is_empty());
    }

    #[test]
    fn postgres_grammar_reads_what_sqlparser_cannot() {
        use StatementKind::*;
        for (sql, kind) in [
            ("VACUUM ANALYZE t", Admin),
            ("COPY t FROM STDIN WITH (FREEZE ON)", Write),
            ("ALTER SEQUENCE s OWNED BY t.id", Ddl),
            ("CREATE MATERIALIZED VIEW v AS SELECT 1 WITH NO DATA", Ddl),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, NOT DEFERRABLE", Transaction),
            ("SELECT * FROM t FOR NO KEY UPDATE", Read),
            ("TABLE t", Read),
            ("ALTER SYSTEM SET work_mem = '64MB'", Admin),
            ("DO 'begin perform 1; end'", Unknown),
        ] {
            let c = one(sql);
            assert_eq!(c.kind(), kind, "{sql}");
        }
        let c = one("DELETE FROM t WHERE CURRENT OF c");
        assert_eq!(c.kind(), Write);
        assert!(!c.unbounded_write, "a cursor bounds the delete");
        assert!(c.tables.contains("t"));
    }

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_secrets("ALTER ROLE bob WITH LOGIN PASSWORD 's3cr''et' VALID UNTIL '2030-01-01'"),
            "ALTER ROLE bob WITH LOGIN PASSWORD '<redacted>' VALID UNTIL '2030-01-01'"
        );
        assert_eq!(redact_secrets("create user x password $p$hidden$p$"), "create user x password '<redacted>'");
        assert_eq!(redact_secrets("SELECT 'password', 1"), "SELECT 'password', 1");
    }

    #[test]
    fn identifiers_with_unicode_escapes_are_refused() {
        assert!(matches!(classify(r#"SELECT upper(U&"em\0061il") FROM users"#), Err(ClassifyError::Parse(_))));
        assert!(matches!(classify(r#"SELECT u&"x" FROM t"#), Err(ClassifyError::Parse(_))));
        // A Unicode string literal is read alike by both, and `u & "x"` is an operator.
        assert!(classify(r"SELECT U&'\0044ELETE'").is_ok());
        assert!(classify(r#"SELECT u & "x" FROM t"#).is_ok());
    }

    #[test]
    fn several_statements_and_garbage() {
        assert_eq!(classify("SELECT 1; DROP TABLE t").unwrap().len(), 2);
        assert!(matches!(classify("SELEC 1"), Err(ClassifyError::Parse(_))));
        assert_eq!(classify_bytes(b"SELECT '\xe9'"), Err(ClassifyError::NotUtf8));
        let deep = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert_eq!(classify(&deep), Err(ClassifyError::TooDeep), "deep nesting is refused, not a stack overflow");
        // A flat chain nests as deep as it is long once parsed: long ones are refused up front.
        let flat = |n: usize| format!("SELECT {}1", "1 + ".repeat(n));
        assert_eq!(classify(&flat(40_000)), Err(ClassifyError::TooComplex));
        assert_eq!(
            classify(&format!("SELECT 1 WHERE {}true", "true OR ".repeat(40_000))),
            Err(ClassifyError::TooComplex)
        );
        assert_eq!(classify(&flat(1000)).unwrap().len(), 1);
        assert_eq!(classify(&flat(MAX_OPERATORS - 1)).unwrap().len(), 1, "the longest chain let through is read");
        let is_null = format!("SELECT 1 {}", "IS NULL ".repeat(20_000));
        assert_eq!(classify(&is_null), Err(ClassifyError::TooComplex));
        // Long lists are not chains.
        let values = format!("INSERT INTO t VALUES {}(1, 'x')", "(1, 'x', NULL, true), ".repeat(20_000));
        assert_eq!(classify(&values).unwrap()[0].kind(), StatementKind::Write);
    }
}
