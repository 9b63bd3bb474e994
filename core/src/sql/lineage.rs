//! Which result columns of a statement may carry masked values, and where the
//! statement uses masked columns other than by returning them.
//!
//! The gateway masks result rows. A result field that Postgres reports as a
//! plain column of a table is resolved exactly through the catalog; every
//! other field (`upper(email)`, `row_to_json(u)`, a UNION branch, a scalar
//! subquery) has no table behind it, and this module says which masked
//! columns it may be computed from. It reads the statement alone, without the
//! catalog, so it cannot know which columns a table has: wherever it is unsure
//! it answers "may carry", because a value masked needlessly costs little and
//! a value missed is a leak.
//!
//! It also finds the uses that masking rows cannot cover. Filtering, sorting,
//! grouping or joining on a masked column lets a client learn its values by
//! inference; copying one into a table, a view or a new name takes it where
//! masking does not follow; exporting it sends it out in a form the gateway
//! does not mask.
//!
//! A statement can hold an operator chain thousands of levels deep (`a + a +
//! ...` parses into a left-deep tree), and so can a chain of UNIONs. Expressions
//! are walked with sqlparser's visitor, as the classifier walks them, set
//! operations with an explicit stack, and this module's own recursion goes one
//! level per pair of parentheses, which the classifier bounds.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    AlterSchemaOperation, AlterTableOperation, AlterViewOperation, Assignment, CopySource, Distinct, Expr, FromTable,
    FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, JoinConstraint,
    JoinOperator, MergeAction, MergeInsertKind, MergeUpdateKind, ObjectName, ObjectNamePart, OnConflictAction,
    OnInsert, OrderBy, OrderByKind, OutputClause, Query, RenameTableNameKind, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetQuantifier, Statement, TableAlias, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind, Value, Values, Visit, Visitor, WildcardAdditionalOptions, WindowType,
};

use crate::policy::ColumnPattern;

/// How a statement uses a masked column other than by returning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    /// WHERE, JOIN ... ON / USING, HAVING, GROUP BY, ORDER BY, DISTINCT ON, a
    /// window's PARTITION BY / ORDER BY, an aggregate's FILTER (WHERE ...) or
    /// ORDER BY, LIMIT/OFFSET, anywhere in the statement including subqueries
    /// and CTEs: the client learns about the value by inference.
    Filter,
    /// Values taken somewhere masking does not follow: INSERT (from SELECT or
    /// VALUES expressions referencing it), UPDATE ... SET col = <expr
    /// referencing it> (and FROM-joined sources), MERGE, CREATE TABLE ... AS,
    /// SELECT ... INTO, CREATE [MATERIALIZED] VIEW, any other DDL that embeds a
    /// query referencing it, a function that keeps its argument (`set_config`,
    /// `pg_notify`, `setval`...), and a rename that would let the column
    /// escape its pattern: ALTER TABLE/VIEW ... RENAME [COLUMN], SET SCHEMA,
    /// INHERIT, ATTACH PARTITION and ALTER SCHEMA ... RENAME, when the pattern
    /// names that table, column or schema (a `*` part still matches after).
    Copy,
    /// COPY ... TO (STDOUT or a file): a table (without a column list: when a
    /// pattern's schema/table parts match the table, since the module cannot
    /// know the table's columns; with a column list: when a listed column
    /// matches) or a query whose outputs may carry masked values.
    Export,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// Index into `patterns` of a pattern the used column matches.
    pub pattern: usize,
    /// The column as written (`u.ssn`), or the table for a whole-row or table-level use.
    pub column: String,
    pub how: UseKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lineage {
    /// The statement's result columns in order (the top-level SELECT list, a
    /// top-level VALUES list, or the RETURNING list of a top-level INSERT,
    /// UPDATE, DELETE or MERGE), each with the sorted indices of the patterns
    /// whose columns it may derive from. For a set operation each position is
    /// the union over every branch. `None` when the top-level list holds a
    /// wildcard (`*`, `t.*`), so positions cannot be listed; `Some(vec![])` for
    /// statements that return no rows (DDL, SET, COPY, SELECT ... INTO...).
    pub outputs: Option<Vec<Vec<usize>>>,
    /// Sorted union of every pattern any result column may derive from,
    /// including under wildcards: `*` over a table contributes every pattern
    /// whose schema and table parts can match it, since the module does not
    /// know the table's columns.
    pub result: Vec<usize>,
    /// Every use found, one per (pattern, column, how).
    pub uses: Vec<Use>,
    /// A literal's value decided something: `ORDER BY 2` sorts by the second
    /// column, `ORDER BY 1` by the first.
    pub literal_sensitive: bool,
}

/// How many extra passes recursive WITH lists may take in one statement. A
/// recursive CTE is read twice (see [`Analyzer::with`]); nested ones would
/// double that at every level, so past this budget a self-reference is taken to
/// carry every pattern instead.
const RECURSIVE_PASSES: usize = 16;

/// Postgres returns at most 1664 columns. A shape wider than this was built by
/// wildcards multiplying (`SELECT *, * FROM` over and over) and is kept as one
/// column that carries everything, so its size stays bounded.
const MAX_COLUMNS: usize = 2048;

/// How many lookups (a relation, a column or a pattern examined) one statement
/// may cost. A statement within the classifier's bounds can still list tens of
/// thousands of relations and name tens of thousands of columns, and every name
/// is looked up against every relation in scope; past this budget the
/// statement is answered with every pattern everywhere instead, so the time
/// spent stays bounded. Real statements stay far below it.
const WORK_BUDGET: usize = 10_000_000;

/// Which result columns of `statement` may carry values of the columns
/// `patterns` name, and where it uses those columns other than by returning
/// them. Never panics. It recurses one level per pair of parentheses (the
/// statements that reach it have at most 64) and its work is capped by
/// [`WORK_BUDGET`], past which it answers that any column may carry any
/// pattern and every pattern is used in every way.
pub fn lineage(statement: &Statement, patterns: &[ColumnPattern]) -> Lineage {
    let mut an = Analyzer {
        patterns,
        uses: Vec::new(),
        seen: BTreeSet::new(),
        touched: vec![Taint::default()],
        passes: RECURSIVE_PASSES,
        work: Cell::new(0),
        literal_sensitive: false,
    };
    let shape = an.statement(statement, &Scope::ROOT);
    if an.work.get() > WORK_BUDGET {
        return everything(patterns);
    }
    let returns_rows = matches!(
        statement,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_)
    ) && !shape.into;
    let (outputs, result) = if returns_rows {
        let outputs = if shape.starred {
            None
        } else {
            shape
                .columns
                .iter()
                .map(|c| match c {
                    Col::Named { taint, .. } => Some(taint.patterns().into_iter().collect()),
                    Col::Star(_) => None,
                })
                .collect::<Option<Vec<Vec<usize>>>>()
        };
        (outputs, shape.result.patterns().into_iter().collect())
    } else {
        (Some(Vec::new()), Vec::new())
    };
    Lineage { outputs, result, uses: an.uses, literal_sensitive: an.literal_sensitive }
}

/// The answer for a statement too costly to follow: any column may carry any
/// pattern, and every pattern is taken to be filtered on, copied and exported.
fn everything(patterns: &[ColumnPattern]) -> Lineage {
    let all: Vec<usize> = (0..patterns.len()).collect();
    let column = "(the statement is too large to follow)";
    let uses = all
        .iter()
        .flat_map(|&pattern| {
            [UseKind::Filter, UseKind::Copy, UseKind::Export].map(|how| Use { pattern, column: column.to_owned(), how })
        })
        .collect();
    Lineage { outputs: None, result: all, uses, literal_sensitive: true }
}

type Set = BTreeSet<usize>;

/// Patterns a value may derive from, each with the reference that brought it
/// in as written, so a use can name the column the client wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Taint(BTreeSet<(usize, String)>);

impl Taint {
    fn add(&mut self, patterns: &Set, text: &str) {
        for &p in patterns {
            self.0.insert((p, text.to_owned()));
        }
    }

    fn extend(&mut self, other: &Taint) {
        for entry in &other.0 {
            if !self.0.contains(entry) {
                self.0.insert(entry.clone());
            }
        }
    }

    fn patterns(&self) -> Set {
        self.0.iter().map(|(p, _)| *p).collect()
    }
}

/// A relation a column reference can name.
#[derive(Debug, Clone)]
struct Binding {
    /// The name columns are qualified with: the alias, else the table's or the
    /// function's own name; `None` for a subquery without an alias.
    name: Option<String>,
    /// The schema written before an unaliased table, so `public.users.ssn` finds it.
    schema: Option<String>,
    /// The relation as written, for naming whole-row uses.
    text: String,
    rel: Rel,
}

#[derive(Debug, Clone)]
enum Rel {
    /// A table or a view, by the schema written (if any) and its bare name.
    /// `renamed` holds the names of a column alias list (`users AS u(a, b)`):
    /// they rename columns by position, which is unknown here, so each may be
    /// any of the table's columns.
    Table { schema: Option<String>, name: String, renamed: Vec<String> },
    /// A subquery or CTE, whose columns are known.
    Derived(Rc<Shape>),
    /// A function or other source whose every column may carry these patterns.
    Opaque(Set),
}

/// The columns a query returns.
#[derive(Debug, Clone, Default)]
struct Shape {
    columns: Vec<Col>,
    /// A wildcard in the list: positions cannot be listed.
    starred: bool,
    /// Every pattern any column may carry, wildcards included.
    result: Taint,
    /// Every pattern any reference anywhere inside the query matched: what a
    /// subquery used as a value may be computed from, filters included.
    touched: Taint,
    /// A SELECT ... INTO: the rows go into a new table, not to the client.
    into: bool,
}

#[derive(Debug, Clone)]
enum Col {
    /// One column; a name of `None` is not known, and may be any name. Shared,
    /// since a wildcard over a subquery copies all of its columns.
    Named { name: Option<Rc<str>>, taint: Rc<Taint> },
    /// The columns of a table or an opaque source, under a wildcard. Subqueries
    /// are never kept here: their columns are listed instead, so looking a name
    /// up never goes deeper than one level.
    Star(Binding),
}

impl Col {
    fn named(name: Option<String>, taint: Taint) -> Col {
        Col::Named { name: name.map(Rc::from), taint: Rc::new(taint) }
    }
}

/// The relations and CTEs visible at one level of a statement, and the levels
/// around it (correlated and LATERAL references reach outwards).
#[derive(Clone, Copy)]
struct Scope<'a> {
    parent: Option<&'a Scope<'a>>,
    bindings: &'a [Binding],
    ctes: &'a [(String, Rc<Shape>)],
    /// The output columns an ORDER BY, GROUP BY or DISTINCT ON may name.
    outputs: Option<&'a Shape>,
}

impl<'a> Scope<'a> {
    const ROOT: Scope<'static> = Scope { parent: None, bindings: &[], ctes: &[], outputs: None };

    fn child(parent: &'a Scope<'a>, bindings: &'a [Binding]) -> Scope<'a> {
        Scope { parent: Some(parent), bindings, ctes: &[], outputs: None }
    }

    fn levels(&'a self) -> impl Iterator<Item = &'a Scope<'a>> {
        std::iter::successors(Some(self), |s| s.parent)
    }
}

/// Postgres folds unquoted identifiers to lower case (ASCII letters only, in
/// the UTF-8 databases the gateway serves) and keeps quoted ones verbatim.
fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_ascii_lowercase() }
}

fn fold_part(part: &ObjectNamePart) -> String {
    match part.as_ident() {
        Some(ident) => fold(ident),
        None => super::fold(&part.to_string()),
    }
}

fn fold_name(name: &ObjectName) -> Vec<String> {
    name.0.iter().map(fold_part).collect()
}

/// The schema (if written) and the bare name of a relation name.
fn split_name(parts: &[String]) -> (Option<&str>, &str) {
    match parts.split_last() {
        Some((table, rest)) => (rest.last().map(String::as_str), table.as_str()),
        None => (None, ""),
    }
}

fn text_of(parts: &[Ident]) -> String {
    parts.iter().map(Ident::to_string).collect::<Vec<_>>().join(".")
}

/// Whether `p` can name a column of the table `schema.table`. A table whose
/// schema is not written may be in any schema of the search path.
fn table_can_match(p: &ColumnPattern, schema: Option<&str>, table: &str) -> bool {
    (p.table == "*" || p.table == table) && (p.schema == "*" || schema.is_none_or(|s| s == p.schema))
}

fn column_matches(p: &ColumnPattern, column: &str) -> bool {
    p.column == "*" || p.column == column
}

/// The name Postgres gives a result column that has no alias, where it is
/// plain to see; `None` (any name) otherwise.
fn figure_name(mut expr: &Expr) -> Option<String> {
    loop {
        match expr {
            Expr::Identifier(i) => return Some(fold(i)),
            Expr::CompoundIdentifier(parts) => return parts.last().map(fold),
            Expr::CompoundFieldAccess { access_chain, .. } => {
                return match access_chain.last() {
                    Some(sqlparser::ast::AccessExpr::Dot(Expr::Identifier(i))) => Some(fold(i)),
                    _ => None,
                };
            }
            Expr::Function(f) => return f.name.0.last().map(fold_part),
            Expr::Cast { expr: inner, .. } | Expr::Nested(inner) => expr = inner,
            _ => return None,
        }
    }
}

/// The numeric position an ORDER BY or GROUP BY item names (`ORDER BY 2`).
fn ordinal(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok(),
            _ => None,
        },
        _ => None,
    }
}

struct Analyzer<'p> {
    patterns: &'p [ColumnPattern],
    uses: Vec<Use>,
    seen: BTreeSet<(usize, String, u8)>,
    /// One accumulator per query being read, innermost last: every reference
    /// resolved is noted in it, and a finished query's is merged outwards.
    touched: Vec<Taint>,
    /// Extra passes recursive WITH lists may still take.
    passes: usize,
    /// Work done so far, against [`WORK_BUDGET`].
    work: Cell<usize>,
    /// See [`Lineage::literal_sensitive`].
    literal_sensitive: bool,
}

impl Analyzer<'_> {
    fn record(&mut self, taint: &Taint, how: UseKind) {
        for (pattern, column) in &taint.0 {
            if self.seen.insert((*pattern, column.clone(), how as u8)) {
                self.uses.push(Use { pattern: *pattern, column: column.clone(), how });
            }
        }
    }

    fn note(&mut self, taint: &Taint) {
        if let Some(top) = self.touched.last_mut() {
            top.extend(taint);
        }
    }

    /// Counts `units` of work; false once the budget is spent. From then on
    /// lookups answer nothing, and [`lineage`] gives its most cautious answer.
    fn spend(&self, units: usize) -> bool {
        let total = self.work.get().saturating_add(units);
        self.work.set(total);
        total <= WORK_BUDGET
    }

    fn matching(&self, keep: impl Fn(&ColumnPattern) -> bool) -> Set {
        if !self.spend(self.patterns.len()) {
            return Set::new();
        }
        self.patterns.iter().enumerate().filter(|(_, p)| keep(p)).map(|(i, _)| i).collect()
    }

    /// The relations `qualifier` (`t`, `s.t`, `db.s.t`) names at the nearest
    /// level that has any.
    fn find_relation<'s>(&self, scope: &'s Scope<'s>, qualifier: &[String]) -> Vec<&'s Binding> {
        let Some((name, rest)) = qualifier.split_last() else { return Vec::new() };
        let schema = rest.last();
        for level in scope.levels() {
            if !self.spend(level.bindings.len()) {
                return Vec::new();
            }
            let found: Vec<&Binding> = level
                .bindings
                .iter()
                .filter(|b| {
                    b.name.as_ref() == Some(name)
                        && (schema.is_none() || b.schema.is_none() || b.schema.as_ref() == schema)
                })
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    fn find_cte(&self, scope: &Scope<'_>, name: &str) -> Option<Rc<Shape>> {
        for level in scope.levels() {
            if !self.spend(level.ctes.len()) {
                return None;
            }
            if let Some((_, shape)) = level.ctes.iter().find(|(n, _)| n == name) {
                return Some(shape.clone());
            }
        }
        None
    }

    /// Patterns a whole row of a table may carry: its columns are unknown, so
    /// every pattern on the table, whatever its column part.
    fn table_row(&self, schema: Option<&str>, table: &str) -> Set {
        self.matching(|p| table_can_match(p, schema, table))
    }

    fn table_column(&self, schema: Option<&str>, table: &str, column: &str) -> Set {
        self.matching(|p| table_can_match(p, schema, table) && column_matches(p, column))
    }

    fn binding_column(&self, b: &Binding, column: &str) -> Set {
        match &b.rel {
            Rel::Table { schema, name, renamed } => {
                if renamed.iter().any(|r| r == column) {
                    self.table_row(schema.as_deref(), name)
                } else {
                    self.table_column(schema.as_deref(), name, column)
                }
            }
            Rel::Derived(shape) => self.shape_column(shape, column),
            Rel::Opaque(set) => set.clone(),
        }
    }

    fn binding_row(&self, b: &Binding) -> Set {
        match &b.rel {
            Rel::Table { schema, name, .. } => self.table_row(schema.as_deref(), name),
            Rel::Derived(shape) => shape.result.patterns(),
            Rel::Opaque(set) => set.clone(),
        }
    }

    fn shape_column(&self, shape: &Shape, column: &str) -> Set {
        let mut out = Set::new();
        if !self.spend(shape.columns.len()) {
            return out;
        }
        for c in &shape.columns {
            match c {
                Col::Named { name, taint } => {
                    if name.as_deref().is_none_or(|n| n == column) {
                        out.extend(taint.patterns());
                    }
                }
                Col::Star(b) => out.extend(self.binding_column(b, column)),
            }
        }
        out
    }

    /// A column named without a relation: it may come from any relation in
    /// scope, at this level or around it (Postgres takes the nearest that has
    /// it, and the tables' columns are unknown here).
    fn unqualified(&self, scope: &Scope<'_>, column: &str) -> Set {
        let mut out = Set::new();
        let mut anything = false;
        for level in scope.levels() {
            if !self.spend(level.bindings.len()) {
                return out;
            }
            for b in level.bindings {
                anything = true;
                out.extend(self.binding_column(b, column));
            }
            if let Some(outputs) = level.outputs {
                anything = true;
                out.extend(self.shape_column(outputs, column));
            }
        }
        if !anything {
            // Nothing is in scope (an expression outside any FROM): the column
            // may belong to any table.
            out = self.matching(|p| column_matches(p, column));
        }
        out
    }

    /// The patterns a column reference (`c`, `t.c`, `s.t.c`, `(c).f`...) may carry.
    fn reference(&self, scope: &Scope<'_>, parts: &[String]) -> Set {
        let Some((column, qualifier)) = parts.split_last() else { return Set::new() };
        let mut out = Set::new();
        if qualifier.is_empty() {
            out = self.unqualified(scope, column);
        } else {
            let found = self.find_relation(scope, qualifier);
            if !found.is_empty() {
                for b in found {
                    out.extend(self.binding_column(b, column));
                }
            } else {
                // Not a relation: Postgres reads `a.b` as field `b` of column `a`
                // (and `t.a.b` as field `b` of column `t.a`).
                if let Some((inner, rest)) = qualifier.split_last() {
                    if rest.is_empty() {
                        out.extend(self.unqualified(scope, inner));
                    } else {
                        for b in self.find_relation(scope, rest) {
                            out.extend(self.binding_column(b, inner));
                        }
                    }
                }
                // And in case the qualifier names something this module does
                // not track (RETURNING old.x, a missing FROM item), the column
                // by its own name, and the table the qualifier names.
                out.extend(self.unqualified(scope, column));
                let (schema, table) = split_name(qualifier);
                out.extend(self.table_column(schema, table, column));
            }
        }
        // The whole name may be a relation: a whole-row reference (`u`, `row_to_json(u)`).
        for b in self.find_relation(scope, parts) {
            out.extend(self.binding_row(b));
        }
        out
    }

    /// What `*` (no qualifier) or `t.*` expands to, as a taint.
    fn star_taint(&self, scope: &Scope<'_>, qualifier: Option<&ObjectName>) -> Taint {
        let mut taint = Taint::default();
        match qualifier {
            None => {
                if let Some(level) = scope.levels().find(|l| !l.bindings.is_empty()) {
                    for b in level.bindings {
                        taint.add(&self.binding_row(b), &b.text);
                    }
                }
            }
            Some(name) => {
                let parts = fold_name(name);
                let text = name.to_string();
                let found = self.find_relation(scope, &parts);
                if found.is_empty() {
                    let (schema, table) = split_name(&parts);
                    taint.add(&self.table_row(schema, table), &text);
                }
                for b in found {
                    taint.add(&self.binding_row(b), &text);
                }
            }
        }
        taint
    }

    /// The columns a wildcard over `bindings` adds to a select list.
    fn star_columns(&self, bindings: &[&Binding]) -> Vec<Col> {
        let mut cols = Vec::new();
        for b in bindings {
            if !self.spend(1) {
                break;
            }
            match &b.rel {
                Rel::Derived(shape) => {
                    if self.spend(shape.columns.len()) {
                        cols.extend(shape.columns.iter().cloned());
                    }
                }
                _ => cols.push(Col::Star((*b).clone())),
            }
        }
        cols
    }

    fn build_shape(&self, columns: Vec<Col>, starred: bool) -> Shape {
        let mut result = Taint::default();
        let columns = if self.spend(columns.len()) { columns } else { Vec::new() };
        for c in &columns {
            match c {
                Col::Named { taint, .. } => result.extend(taint),
                Col::Star(b) => result.add(&self.binding_row(b), &b.text),
            }
        }
        let (columns, starred) = if columns.len() > MAX_COLUMNS {
            (vec![Col::named(None, result.clone())], true)
        } else {
            (columns, starred)
        };
        Shape { columns, starred, result, ..Shape::default() }
    }

    /// Applies a column alias list (`AS s(a, b)`, `WITH c(a, b)`): names map by
    /// position when positions are known, else every name may be any column.
    fn rename(&self, mut shape: Shape, names: &[String]) -> Shape {
        if names.is_empty() {
            return shape;
        }
        if shape.starred {
            let mut columns: Vec<Col> =
                names.iter().map(|n| Col::named(Some(n.clone()), shape.result.clone())).collect();
            columns.push(Col::named(None, shape.result.clone()));
            shape.columns = columns;
        } else {
            for (c, n) in shape.columns.iter_mut().zip(names) {
                if let Col::Named { name, .. } = c {
                    *name = Some(Rc::from(n.as_str()));
                }
            }
        }
        shape
    }

    /// Walks the expressions in `node`: the patterns its value may carry, and
    /// the part of those found in filter-like clauses inside it (an aggregate's
    /// FILTER or ORDER BY, a window's PARTITION BY or ORDER BY).
    /// Values handed to a function that keeps them (see [`SINK_FUNCTIONS`])
    /// are recorded as copies here, whatever the expression is for.
    fn walk<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) -> (Taint, Taint) {
        let mut walker = Walker::new(self, scope);
        let _ = node.visit(&mut walker);
        let (value, filter, kept) = (walker.value, walker.filter, walker.kept);
        self.note(&value);
        self.record(&kept, UseKind::Copy);
        (value, filter)
    }

    /// Expressions whose every reference is a filter-like use.
    fn filter<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) {
        let (value, _) = self.walk(node, scope);
        self.record(&value, UseKind::Filter);
    }

    /// An expression whose value goes somewhere (a result column, an assigned
    /// value); the filter-like clauses inside it are recorded as such.
    fn value<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) -> Taint {
        let (value, filter) = self.walk(node, scope);
        self.record(&filter, UseKind::Filter);
        value
    }

    /// A function called in FROM: every column it returns may carry what its
    /// arguments carry.
    fn table_function(&mut self, name: &str, args: &[FunctionArg], scope: &Scope<'_>) -> Taint {
        let mut taint = self.function_args(args, scope);
        if SINK_FUNCTIONS.contains(&name) {
            self.record(&taint, UseKind::Copy);
        }
        if QUERY_TEXT_FUNCTIONS.contains(&name) {
            taint.extend(&every_pattern(self, &format!("{name}()")));
        }
        taint
    }

    fn function_args(&mut self, args: &[FunctionArg], scope: &Scope<'_>) -> Taint {
        let mut taint = Taint::default();
        for a in args {
            let (FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } | FunctionArg::Unnamed(arg)) = a;
            match arg {
                FunctionArgExpr::Expr(e) => taint.extend(&self.value(e, scope)),
                FunctionArgExpr::QualifiedWildcard(name) => {
                    let star = self.star_taint(scope, Some(name));
                    self.note(&star);
                    taint.extend(&star);
                }
                FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                    let star = self.star_taint(scope, None);
                    self.note(&star);
                    taint.extend(&star);
                }
            }
        }
        taint
    }

    /// An ORDER BY, GROUP BY or DISTINCT ON item: a position names an output
    /// column; anything else is an expression over the inputs or the outputs.
    /// Postgres reads `ORDER BY (2)` and `GROUP BY ROLLUP (1)` as positions too.
    fn sort_key(&mut self, expr: &Expr, scope: &Scope<'_>, shape: &Shape) {
        let mut bare = expr;
        while let Expr::Nested(inner) = bare {
            bare = inner;
        }
        match bare {
            Expr::Rollup(sets) | Expr::Cube(sets) | Expr::GroupingSets(sets) => {
                for item in sets.iter().flatten() {
                    self.sort_key(item, scope, shape);
                }
                return;
            }
            Expr::Value(_) => self.literal_sensitive = true,
            _ => {}
        }
        if let Some(n) = ordinal(bare) {
            let column = if shape.starred { None } else { n.checked_sub(1).and_then(|i| shape.columns.get(i)) };
            match column {
                Some(Col::Named { taint, .. }) => self.record(taint, UseKind::Filter),
                _ => self.record(&shape.result, UseKind::Filter),
            }
            return;
        }
        self.filter(expr, scope);
    }

    fn order_by(&mut self, order_by: &OrderBy, scope: &Scope<'_>, shape: &Shape) {
        match &order_by.kind {
            OrderByKind::All(_) => self.record(&shape.result, UseKind::Filter),
            OrderByKind::Expressions(items) => {
                for item in items {
                    self.sort_key(&item.expr, scope, shape);
                    self.filter(&item.with_fill, scope);
                }
            }
        }
        self.filter(&order_by.interpolate, scope);
    }

    fn statement(&mut self, statement: &Statement, scope: &Scope<'_>) -> Shape {
        match statement {
            Statement::Query(q) => self.query(q, scope),
            Statement::Insert(insert) => self.insert(insert, scope),
            Statement::Update(update) => self.update(update, scope),
            Statement::Delete(delete) => self.delete(delete, scope),
            Statement::Merge(merge) => self.merge(merge, scope),
            Statement::Copy { source, to, .. } => {
                // COPY ... FROM brings data in; only COPY ... TO sends it out.
                if *to {
                    match source {
                        CopySource::Table { table_name, columns } => {
                            let parts = fold_name(table_name);
                            let (schema, table) = split_name(&parts);
                            let mut taint = Taint::default();
                            if columns.is_empty() {
                                taint.add(&self.table_row(schema, table), &table_name.to_string());
                            }
                            for c in columns {
                                taint.add(&self.table_column(schema, table, &fold(c)), &c.to_string());
                            }
                            self.record(&taint, UseKind::Export);
                        }
                        CopySource::Query(q) => {
                            let shape = self.query(q, scope);
                            self.record(&shape.result, UseKind::Export);
                        }
                    }
                }
                Shape::default()
            }
            Statement::Declare { stmts, .. } => {
                // A cursor's rows come later through FETCH, where the gateway
                // cannot tell which columns they hold.
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let shape = self.query(q, scope);
                        self.record(&shape.result, UseKind::Export);
                    }
                }
                Shape::default()
            }
            Statement::CreateTable(create) => {
                if let Some(q) = &create.query {
                    let shape = self.query(q, scope);
                    self.record(&shape.result, UseKind::Copy);
                }
                if let Some(source) = &create.clone {
                    self.copy_table(source);
                }
                Shape::default()
            }
            Statement::CreateView(view) => {
                let shape = self.query(&view.query, scope);
                self.record(&shape.result, UseKind::Copy);
                Shape::default()
            }
            Statement::AlterView(alter) => {
                let parts = fold_name(&alter.name);
                let (schema, table) = split_name(&parts);
                let text = alter.name.to_string();
                match &alter.operation {
                    AlterViewOperation::As { query, .. } => {
                        let shape = self.query(query, scope);
                        self.record(&shape.result, UseKind::Copy);
                    }
                    AlterViewOperation::RenameTo { new_name } => {
                        let new = fold_name(new_name);
                        self.moved_table(schema, table, &text, |p| p.table == "*" || p.table == split_name(&new).1);
                    }
                    AlterViewOperation::SetSchema { schema_name } => {
                        let new = fold_name(schema_name);
                        self.moved_table(schema, table, &text, |p| {
                            p.schema == "*" || new.last().is_some_and(|s| *s == p.schema)
                        });
                    }
                    AlterViewOperation::RenameColumn { old_column_name, new_column_name } => {
                        self.renamed_column(schema, table, old_column_name, new_column_name);
                    }
                    _ => {}
                }
                Shape::default()
            }
            Statement::AlterTable(alter) => {
                self.alter_table(&alter.name, &alter.operations, scope);
                Shape::default()
            }
            Statement::AlterSchema(alter) => {
                let old = fold_name(&alter.name);
                let old = old.last().map(String::as_str).unwrap_or_default();
                for op in &alter.operations {
                    if let AlterSchemaOperation::Rename { name } = op {
                        let new = fold_name(name);
                        let new = new.last().map(String::as_str).unwrap_or_default();
                        let moved = self.matching(|p| p.schema == old && p.schema != new);
                        let mut taint = Taint::default();
                        taint.add(&moved, &alter.name.to_string());
                        self.record(&taint, UseKind::Copy);
                    }
                }
                Shape::default()
            }
            Statement::RenameTable(renames) => {
                for r in renames {
                    let old = fold_name(&r.old_name);
                    let new = fold_name(&r.new_name);
                    let (schema, table) = split_name(&old);
                    let (new_schema, new_table) = split_name(&new);
                    self.moved_table(schema, table, &r.old_name.to_string(), |p| {
                        (p.table == "*" || p.table == new_table)
                            && (p.schema == "*" || new_schema.or(schema).is_some_and(|s| s == p.schema))
                    });
                }
                Shape::default()
            }
            Statement::Explain { statement: inner, .. } => {
                // A plain EXPLAIN plans without running; EXPLAIN ANALYZE runs the
                // statement, and its filters and copies happen, though its rows
                // are not returned.
                if !super::is_plain_explain(statement) {
                    self.statement(inner, scope);
                }
                Shape::default()
            }
            Statement::Prepare { statement: inner, .. } => {
                self.statement(inner, scope);
                Shape::default()
            }
            other => {
                // Anything else returns no rows, but may embed queries (a rule,
                // a policy, a procedure call): what they produce is taken to be
                // kept somewhere.
                let mut embedded = Embedded { an: self, depth: 0, root: false };
                let _ = other.visit(&mut embedded);
                Shape::default()
            }
        }
    }

    /// `CREATE TABLE t CLONE source`: every column of the source is copied.
    fn copy_table(&mut self, source: &ObjectName) {
        let parts = fold_name(source);
        let (schema, table) = split_name(&parts);
        let mut taint = Taint::default();
        taint.add(&self.table_row(schema, table), &source.to_string());
        self.record(&taint, UseKind::Copy);
    }

    /// A table whose rows are about to be seen under another identity (renamed,
    /// moved to another schema, attached under a parent): a copy of every
    /// pattern that matches it now unless `still` says the pattern is sure to
    /// match it after.
    fn moved_table(&mut self, schema: Option<&str>, table: &str, text: &str, still: impl Fn(&ColumnPattern) -> bool) {
        let moved = self.matching(|p| table_can_match(p, schema, table) && !still(p));
        let mut taint = Taint::default();
        taint.add(&moved, text);
        self.record(&taint, UseKind::Copy);
    }

    fn renamed_column(&mut self, schema: Option<&str>, table: &str, old: &Ident, new: &Ident) {
        let (old_name, new_name) = (fold(old), fold(new));
        let moved = self.matching(|p| {
            table_can_match(p, schema, table) && p.column != "*" && p.column == old_name && p.column != new_name
        });
        let mut taint = Taint::default();
        taint.add(&moved, &old.to_string());
        self.record(&taint, UseKind::Copy);
    }

    fn alter_table(&mut self, name: &ObjectName, operations: &[AlterTableOperation], scope: &Scope<'_>) {
        let parts = fold_name(name);
        let (schema, table) = split_name(&parts);
        let text = name.to_string();
        let bindings = [Binding {
            name: Some(table.to_owned()),
            schema: schema.map(str::to_owned),
            text: text.clone(),
            rel: Rel::Table { schema: schema.map(str::to_owned), name: table.to_owned(), renamed: Vec::new() },
        }];
        let here = Scope::child(scope, &bindings);
        for op in operations {
            match op {
                AlterTableOperation::RenameColumn { old_column_name, new_column_name } => {
                    self.renamed_column(schema, table, old_column_name, new_column_name);
                }
                AlterTableOperation::ChangeColumn { old_name, new_name, .. } => {
                    self.renamed_column(schema, table, old_name, new_name);
                }
                AlterTableOperation::RenameTable { table_name } => {
                    let (RenameTableNameKind::As(new) | RenameTableNameKind::To(new)) = table_name;
                    let new = fold_name(new);
                    let new_table = split_name(&new).1;
                    self.moved_table(schema, table, &text, |p| p.table == "*" || p.table == new_table);
                }
                // Its rows become rows of the parent, which the pattern may not name.
                AlterTableOperation::Inherit { parent } => {
                    let parent_parts = fold_name(parent);
                    let (parent_schema, parent_table) = split_name(&parent_parts);
                    self.moved_table(schema, table, &text, |p| {
                        (p.table == "*" || p.table == parent_table)
                            && (p.schema == "*" || parent_schema.is_some_and(|s| s == p.schema))
                    });
                }
                // The partition's rows become rows of this table.
                AlterTableOperation::AttachPartitionOf { partition, .. } => {
                    let child = fold_name(partition);
                    let (child_schema, child_table) = split_name(&child);
                    self.moved_table(child_schema, child_table, &partition.to_string(), |p| {
                        (p.table == "*" || p.table == table)
                            && (p.schema == "*" || schema.is_some_and(|s| s == p.schema))
                    });
                }
                AlterTableOperation::SwapWith { table_name } => {
                    let other = fold_name(table_name);
                    let (other_schema, other_table) = split_name(&other);
                    self.moved_table(schema, table, &text, |_| false);
                    self.moved_table(other_schema, other_table, &table_name.to_string(), |_| false);
                }
                // New or rewritten column values computed from existing ones
                // (a generated column, `ALTER COLUMN ... TYPE ... USING`).
                AlterTableOperation::AddColumn { .. }
                | AlterTableOperation::ModifyColumn { .. }
                | AlterTableOperation::AlterColumn { .. } => {
                    let taint = self.value(op, &here);
                    self.record(&taint, UseKind::Copy);
                }
                // A constraint checked against existing rows fails or not by
                // their values.
                other => self.filter(other, &here),
            }
        }
    }

    fn query(&mut self, q: &Query, parent: &Scope<'_>) -> Shape {
        self.touched.push(Taint::default());
        let ctes = match &q.with {
            Some(with) => self.with(with, parent),
            None => Vec::new(),
        };
        let scope = Scope { parent: Some(parent), bindings: &[], ctes: &ctes, outputs: None };
        let mut shape = match q.body.as_ref() {
            SetExpr::Select(select) => self.select(select, &scope, q.order_by.as_ref()),
            body => {
                let shape = self.set_expr(body, &scope);
                if let Some(order_by) = &q.order_by {
                    let sorted = Scope { parent: Some(&scope), bindings: &[], ctes: &[], outputs: Some(&shape) };
                    self.order_by(order_by, &sorted, &shape);
                }
                shape
            }
        };
        // LIMIT, OFFSET and FETCH are computed once, outside the rows, but a
        // subquery in them can still filter on a masked column.
        self.filter(&q.limit_clause, &scope);
        self.filter(&q.fetch, &scope);
        if !q.pipe_operators.is_empty() {
            // Not Postgres syntax; a pipe can reshape the output, so every
            // column is taken to carry everything the query touches.
            self.filter(&q.pipe_operators, &scope);
            let all = self.touched.last().cloned().unwrap_or_default();
            let mut result = shape.result.clone();
            result.extend(&all);
            shape.columns = vec![Col::named(None, result.clone())];
            shape.starred = true;
            shape.result = result;
        }
        if shape.into {
            self.record(&shape.result, UseKind::Copy);
        }
        shape.touched = self.touched.pop().unwrap_or_default();
        shape.touched.extend(&shape.result);
        let touched = shape.touched.clone();
        self.note(&touched);
        shape
    }

    /// The CTEs of a WITH list, in order. In a recursive list a CTE may name
    /// itself or a later one before its columns are known. It is read twice:
    /// first with those references carrying nothing, then with them carrying
    /// the union U of everything the first pass found. The second pass cannot
    /// find more than U (what it adds comes through those references), so it
    /// is a sound bound on the least fixpoint; a self-reference loses only its
    /// positions.
    fn with(&mut self, with: &sqlparser::ast::With, parent: &Scope<'_>) -> Vec<(String, Rc<Shape>)> {
        let names: Vec<String> = with.cte_tables.iter().map(|c| fold(&c.alias.name)).collect();
        if !with.recursive {
            let mut done: Vec<(String, Rc<Shape>)> = Vec::with_capacity(names.len());
            for (cte, name) in with.cte_tables.iter().zip(&names) {
                let shape = {
                    let scope = Scope { parent: Some(parent), bindings: &[], ctes: &done, outputs: None };
                    self.query(&cte.query, &scope)
                };
                let shape = self.rename(shape, &alias_columns(&cte.alias));
                done.push((name.clone(), Rc::new(shape)));
            }
            return done;
        }
        let first_guess = if self.passes > 0 {
            self.passes -= 1;
            Some(Taint::default())
        } else {
            None
        };
        let guess = match first_guess {
            Some(nothing) => {
                let first = self.cte_pass(with, parent, &names, &nothing);
                let mut union = Taint::default();
                for (_, shape) in &first {
                    union.extend(&shape.result);
                }
                union
            }
            None => {
                let mut everything = Taint::default();
                everything.add(&(0..self.patterns.len()).collect(), "recursive CTE");
                everything
            }
        };
        self.cte_pass(with, parent, &names, &guess)
    }

    fn cte_pass(
        &mut self,
        with: &sqlparser::ast::With,
        parent: &Scope<'_>,
        names: &[String],
        guess: &Taint,
    ) -> Vec<(String, Rc<Shape>)> {
        let placeholder = Rc::new(Shape {
            columns: vec![Col::named(None, guess.clone())],
            starred: true,
            result: guess.clone(),
            ..Shape::default()
        });
        let mut visible: Vec<(String, Rc<Shape>)> = names.iter().map(|n| (n.clone(), placeholder.clone())).collect();
        for (i, cte) in with.cte_tables.iter().enumerate() {
            let shape = {
                let scope = Scope { parent: Some(parent), bindings: &[], ctes: &visible, outputs: None };
                self.query(&cte.query, &scope)
            };
            let shape = self.rename(shape, &alias_columns(&cte.alias));
            if let Some(slot) = visible.get_mut(i) {
                slot.1 = Rc::new(shape);
            }
        }
        visible
    }

    /// A set operation's branches, read left to right with an explicit stack:
    /// a chain of UNIONs nests as deep as it is long.
    fn set_expr(&mut self, body: &SetExpr, scope: &Scope<'_>) -> Shape {
        let mut leaves: Vec<&SetExpr> = Vec::new();
        let mut by_name = false;
        let mut stack = vec![body];
        while let Some(e) = stack.pop() {
            match e {
                SetExpr::SetOperation { left, right, set_quantifier, .. } => {
                    by_name |= matches!(
                        set_quantifier,
                        SetQuantifier::ByName | SetQuantifier::AllByName | SetQuantifier::DistinctByName
                    );
                    stack.push(right);
                    stack.push(left);
                }
                leaf => leaves.push(leaf),
            }
        }
        let mut combined: Option<Shape> = None;
        let mut collapse = by_name;
        for leaf in leaves {
            let shape = match leaf {
                SetExpr::Select(select) => self.select(select, scope, None),
                SetExpr::Query(q) => self.query(q, scope),
                SetExpr::Values(values) => self.values(values, scope),
                SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                    self.statement(s, scope)
                }
                SetExpr::Table(t) => self.table_shape(t, scope),
                SetExpr::SetOperation { .. } => Shape::default(),
            };
            combined = Some(match combined {
                None => shape,
                Some(mut acc) => {
                    acc.result.extend(&shape.result);
                    acc.touched.extend(&shape.touched);
                    acc.into |= shape.into;
                    if acc.starred || shape.starred || acc.columns.len() != shape.columns.len() {
                        collapse = true;
                    } else {
                        for (a, b) in acc.columns.iter_mut().zip(&shape.columns) {
                            if let (Col::Named { taint: a, .. }, Col::Named { taint: b, .. }) = (a, b) {
                                Rc::make_mut(a).extend(b);
                            }
                        }
                    }
                    acc
                }
            });
        }
        let mut shape = combined.unwrap_or_default();
        if collapse {
            shape.columns = vec![Col::named(None, shape.result.clone())];
            shape.starred = true;
        }
        shape
    }

    fn values(&mut self, values: &Values, scope: &Scope<'_>) -> Shape {
        let mut columns: Vec<Taint> = Vec::new();
        for row in &values.rows {
            for (i, e) in row.content.iter().enumerate() {
                let taint = self.value(e, scope);
                match columns.get_mut(i) {
                    Some(c) => c.extend(&taint),
                    None => columns.push(taint),
                }
            }
        }
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, taint)| Col::named(Some(format!("column{}", i + 1)), taint))
            .collect();
        self.build_shape(columns, false)
    }

    /// `TABLE t`: every column of t.
    fn table_shape(&mut self, table: &sqlparser::ast::Table, scope: &Scope<'_>) -> Shape {
        let Some(name) = &table.table_name else { return Shape::default() };
        let schema = table.schema_name.as_ref().map(fold);
        let bare = fold(name);
        let binding = match (&schema, self.find_cte(scope, &bare)) {
            (None, Some(shape)) => {
                Binding { name: Some(bare.clone()), schema: None, text: name.to_string(), rel: Rel::Derived(shape) }
            }
            _ => Binding {
                name: Some(bare.clone()),
                schema: schema.clone(),
                text: name.to_string(),
                rel: Rel::Table { schema, name: bare, renamed: Vec::new() },
            },
        };
        let columns = self.star_columns(&[&binding]);
        let shape = self.build_shape(columns, true);
        self.note(&shape.result);
        shape
    }

    fn select(&mut self, select: &Select, scope: &Scope<'_>, order_by: Option<&OrderBy>) -> Shape {
        let mut bindings = Vec::new();
        for from in &select.from {
            self.table_with_joins(from, scope, &mut bindings);
        }
        for lateral in &select.lateral_views {
            let taint = {
                let here = Scope::child(scope, &bindings);
                self.value(&lateral.lateral_view, &here)
            };
            let name = lateral.lateral_view_name.0.last().map(fold_part);
            bindings.push(Binding {
                name,
                schema: None,
                text: lateral.lateral_view_name.to_string(),
                rel: Rel::Opaque(taint.patterns()),
            });
        }
        let here = Scope::child(scope, &bindings);
        let mut shape = self.projection(&select.projection, &here);
        shape.into = select.into.is_some();
        for e in [&select.selection, &select.having, &select.qualify, &select.prewhere].into_iter().flatten() {
            self.filter(e, &here);
        }
        self.filter(&select.connect_by, &here);
        self.filter(&select.cluster_by, &here);
        self.filter(&select.distribute_by, &here);
        self.filter(&select.sort_by, &here);
        self.filter(&select.named_window, &here);
        self.filter(&select.top, &here);
        // ORDER BY, GROUP BY and DISTINCT ON may also name output columns, by
        // name or by position.
        let sorted = Scope { parent: Some(scope), bindings: &bindings, ctes: &[], outputs: Some(&shape) };
        match &select.group_by {
            GroupByExpr::All(_) => self.record(&shape.result, UseKind::Filter),
            GroupByExpr::Expressions(exprs, modifiers) => {
                for e in exprs {
                    self.sort_key(e, &sorted, &shape);
                }
                self.filter(modifiers, &sorted);
            }
        }
        if let Some(Distinct::On(exprs)) = &select.distinct {
            for e in exprs {
                self.sort_key(e, &sorted, &shape);
            }
        }
        if let Some(order_by) = order_by {
            self.order_by(order_by, &sorted, &shape);
        }
        shape
    }

    /// A select or RETURNING list.
    fn projection(&mut self, items: &[SelectItem], scope: &Scope<'_>) -> Shape {
        let mut columns = Vec::new();
        let mut starred = false;
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let taint = self.value(e, scope);
                    columns.push(Col::named(figure_name(e), taint));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let taint = self.value(expr, scope);
                    columns.push(Col::named(Some(fold(alias)), taint));
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let taint = self.value(expr, scope);
                    for alias in aliases {
                        columns.push(Col::named(Some(fold(alias)), taint.clone()));
                    }
                }
                SelectItem::QualifiedWildcard(kind, options) => {
                    starred = true;
                    match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => {
                            let parts = fold_name(name);
                            let found = self.find_relation(scope, &parts);
                            if found.is_empty() {
                                let (schema, table) = split_name(&parts);
                                let mut taint = Taint::default();
                                taint.add(&self.table_row(schema, table), &name.to_string());
                                columns.push(Col::named(None, taint));
                            } else {
                                columns.extend(self.star_columns(&found));
                            }
                        }
                        // `(expr).*`: the fields of a composite value.
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let taint = self.value(e, scope);
                            columns.push(Col::named(None, taint));
                        }
                    }
                    self.wildcard_options(options, scope, &mut columns);
                }
                SelectItem::Wildcard(options) => {
                    starred = true;
                    let all: Vec<&Binding> = scope.bindings.iter().collect();
                    columns.extend(self.star_columns(&all));
                    self.wildcard_options(options, scope, &mut columns);
                }
            }
        }
        let shape = self.build_shape(columns, starred);
        self.note(&shape.result);
        shape
    }

    /// `* REPLACE (expr AS c)`: not Postgres syntax, but its expressions become columns.
    fn wildcard_options(&mut self, options: &WildcardAdditionalOptions, scope: &Scope<'_>, columns: &mut Vec<Col>) {
        if let Some(replace) = &options.opt_replace {
            for item in &replace.items {
                let taint = self.value(&item.expr, scope);
                columns.push(Col::named(None, taint));
            }
        }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins, scope: &Scope<'_>, bindings: &mut Vec<Binding>) {
        let start = bindings.len();
        self.table_factor(&twj.relation, scope, bindings);
        for join in &twj.joins {
            self.table_factor(&join.relation, scope, bindings);
            let here = Scope::child(scope, bindings);
            let joined = bindings.get(start..).unwrap_or_default();
            self.join_condition(&join.join_operator, &here, joined);
        }
    }

    /// A join's condition, with `joined` the relations of the join so far.
    fn join_condition(&mut self, op: &JoinOperator, here: &Scope<'_>, joined: &[Binding]) {
        let constraint = match op {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c)
            | JoinOperator::StraightJoin(c) => Some(c),
            JoinOperator::AsOf { match_condition, constraint } => {
                self.filter(match_condition, here);
                Some(constraint)
            }
            JoinOperator::CrossApply
            | JoinOperator::OuterApply
            | JoinOperator::ArrayJoin
            | JoinOperator::LeftArrayJoin
            | JoinOperator::InnerArrayJoin => None,
        };
        match constraint {
            Some(JoinConstraint::On(e)) => self.filter(e, here),
            Some(JoinConstraint::Using(names) | JoinConstraint::UsingAlias(names, _)) => {
                let mut taint = Taint::default();
                for n in names {
                    if let Some(column) = n.0.last().map(fold_part) {
                        taint.add(&self.unqualified(here, &column), &n.to_string());
                    }
                }
                self.record(&taint, UseKind::Filter);
            }
            // NATURAL joins on every column the two sides share, which are unknown.
            Some(JoinConstraint::Natural) => {
                let mut taint = Taint::default();
                for b in joined {
                    taint.add(&self.binding_row(b), &b.text);
                }
                self.record(&taint, UseKind::Filter);
            }
            Some(JoinConstraint::None) | None => {}
        }
    }

    fn table_factor(&mut self, factor: &TableFactor, scope: &Scope<'_>, bindings: &mut Vec<Binding>) {
        // Items to the left are visible to LATERAL subqueries and to functions
        // (which are implicitly lateral); offering them to the rest too only
        // adds names Postgres would refuse.
        let binding = {
            let lateral = Scope::child(scope, bindings);
            match factor {
                TableFactor::Table { name, alias, args, with_hints, version, sample, .. } => {
                    self.filter(with_hints, &lateral);
                    self.filter(version, &lateral);
                    self.filter(sample, &lateral);
                    let parts = fold_name(name);
                    let (schema, table) = split_name(&parts);
                    if let Some(args) = args {
                        let taint = self.table_function(table, &args.args, &lateral);
                        opaque(alias, table, &name.to_string(), &taint)
                    } else if let (None, Some(shape)) = (schema, self.find_cte(scope, table)) {
                        derived(self, alias, Some(table.to_owned()), &name.to_string(), shape)
                    } else {
                        let renamed = alias.as_ref().map(alias_columns).unwrap_or_default();
                        let rel = Rel::Table { schema: schema.map(str::to_owned), name: table.to_owned(), renamed };
                        match alias {
                            Some(a) => {
                                Binding { name: Some(fold(&a.name)), schema: None, text: a.name.to_string(), rel }
                            }
                            None => Binding {
                                name: Some(table.to_owned()),
                                schema: schema.map(str::to_owned),
                                text: name.to_string(),
                                rel,
                            },
                        }
                    }
                }
                TableFactor::Derived { subquery, alias, sample, .. } => {
                    self.filter(sample, &lateral);
                    let shape = self.query(subquery, &lateral);
                    derived(self, alias, None, "subquery", Rc::new(shape))
                }
                TableFactor::TableFunction { expr, alias } => {
                    let taint = self.value(expr, &lateral);
                    opaque(alias, "table", "table", &taint)
                }
                TableFactor::Function { name, args, alias, .. } => {
                    let bare = name.0.last().map(fold_part).unwrap_or_default();
                    let taint = self.table_function(&bare, args, &lateral);
                    opaque(alias, &bare, &name.to_string(), &taint)
                }
                TableFactor::UNNEST { alias, array_exprs, .. } => {
                    let taint = self.value(array_exprs, &lateral);
                    opaque(alias, "unnest", "unnest", &taint)
                }
                TableFactor::JsonTable { json_expr, alias, .. } => {
                    let taint = self.value(json_expr, &lateral);
                    opaque(alias, "json_table", "json_table", &taint)
                }
                TableFactor::OpenJsonTable { json_expr, alias, .. } => {
                    let taint = self.value(json_expr, &lateral);
                    opaque(alias, "openjson", "openjson", &taint)
                }
                TableFactor::NestedJoin { table_with_joins, alias } => {
                    let start = bindings.len();
                    self.table_with_joins(table_with_joins, scope, bindings);
                    let Some(alias) = alias else { return };
                    let inner: Vec<&Binding> = bindings.get(start..).unwrap_or_default().iter().collect();
                    let columns = self.star_columns(&inner);
                    let shape = self.build_shape(columns, true);
                    derived(self, &Some(alias.clone()), None, "join", Rc::new(shape))
                }
                // XMLTABLE, and forms of other dialects (PIVOT, UNPIVOT,
                // MATCH_RECOGNIZE...): every column may carry whatever the
                // expressions and any table named inside carry.
                other => {
                    let mut walker = Walker::new(self, &lateral);
                    walker.relations = true;
                    let _ = other.visit(&mut walker);
                    let (value, filter) = (walker.value, walker.filter);
                    self.note(&value);
                    self.record(&filter, UseKind::Filter);
                    let alias = match other {
                        TableFactor::Pivot { alias, .. }
                        | TableFactor::Unpivot { alias, .. }
                        | TableFactor::MatchRecognize { alias, .. }
                        | TableFactor::XmlTable { alias, .. }
                        | TableFactor::SemanticView { alias, .. } => alias.clone(),
                        _ => None,
                    };
                    opaque(&alias, "table", "table", &value)
                }
            }
        };
        bindings.push(binding);
    }

    fn assignments(&mut self, assignments: &[Assignment], scope: &Scope<'_>) {
        for a in assignments {
            let taint = self.value(&a.value, scope);
            self.record(&taint, UseKind::Copy);
        }
    }

    fn returning(
        &mut self,
        returning: Option<&Vec<SelectItem>>,
        output: Option<&OutputClause>,
        scope: &Scope<'_>,
    ) -> Shape {
        let items = match (returning, output) {
            (Some(items), _) => items,
            (None, Some(OutputClause::Returning { select_items, .. } | OutputClause::Output { select_items, .. })) => {
                select_items
            }
            (None, None) => return Shape::default(),
        };
        self.projection(items, scope)
    }

    fn insert(&mut self, insert: &sqlparser::ast::Insert, scope: &Scope<'_>) -> Shape {
        let source = match &insert.source {
            Some(q) => {
                let shape = self.query(q, scope);
                self.record(&shape.result, UseKind::Copy);
                shape.result
            }
            None => Taint::default(),
        };
        self.assignments(&insert.assignments, scope);
        let target = match &insert.table {
            TableObject::TableName(name) => {
                let parts = fold_name(name);
                let (schema, table) = split_name(&parts);
                let rel = Rel::Table { schema: schema.map(str::to_owned), name: table.to_owned(), renamed: Vec::new() };
                match &insert.table_alias {
                    Some(a) => Binding { name: Some(fold(&a.alias)), schema: None, text: a.alias.to_string(), rel },
                    None => Binding {
                        name: Some(table.to_owned()),
                        schema: schema.map(str::to_owned),
                        text: name.to_string(),
                        rel,
                    },
                }
            }
            TableObject::TableFunction(f) => {
                let taint = self.value(f, scope);
                opaque(&None, "table", "table", &taint)
            }
            TableObject::TableQuery(q) => {
                let shape = self.query(q, scope);
                derived(self, &None, None, "subquery", Rc::new(shape))
            }
        };
        // ON CONFLICT DO UPDATE sees the row proposed for insertion as `excluded`.
        let excluded = Binding {
            name: Some("excluded".to_owned()),
            schema: None,
            text: "excluded".to_owned(),
            rel: Rel::Opaque(source.patterns()),
        };
        let bindings = [target, excluded];
        let here = Scope::child(scope, &bindings);
        match &insert.on {
            Some(OnInsert::OnConflict(conflict)) => {
                if let OnConflictAction::DoUpdate(update) = &conflict.action {
                    self.assignments(&update.assignments, &here);
                    self.filter(&update.selection, &here);
                }
            }
            Some(OnInsert::DuplicateKeyUpdate(assignments)) => self.assignments(assignments, &here),
            _ => {}
        }
        let targets = bindings.get(..1).unwrap_or_default();
        let target_scope = Scope::child(scope, targets);
        self.returning(insert.returning.as_ref(), insert.output.as_ref(), &target_scope)
    }

    fn update(&mut self, update: &sqlparser::ast::Update, scope: &Scope<'_>) -> Shape {
        let mut bindings = Vec::new();
        self.table_with_joins(&update.table, scope, &mut bindings);
        if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) = &update.from {
            for t in from {
                self.table_with_joins(t, scope, &mut bindings);
            }
        }
        let here = Scope::child(scope, &bindings);
        self.assignments(&update.assignments, &here);
        self.filter(&update.selection, &here);
        self.filter(&update.order_by, &here);
        self.filter(&update.limit, &here);
        self.returning(update.returning.as_ref(), update.output.as_ref(), &here)
    }

    fn delete(&mut self, delete: &sqlparser::ast::Delete, scope: &Scope<'_>) -> Shape {
        let mut bindings = Vec::new();
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
        for t in from {
            self.table_with_joins(t, scope, &mut bindings);
        }
        for t in delete.using.iter().flatten() {
            self.table_with_joins(t, scope, &mut bindings);
        }
        let here = Scope::child(scope, &bindings);
        self.filter(&delete.selection, &here);
        self.filter(&delete.order_by, &here);
        self.filter(&delete.limit, &here);
        self.returning(delete.returning.as_ref(), delete.output.as_ref(), &here)
    }

    fn merge(&mut self, merge: &sqlparser::ast::Merge, scope: &Scope<'_>) -> Shape {
        let mut bindings = Vec::new();
        self.table_factor(&merge.table, scope, &mut bindings);
        let start = bindings.len();
        self.table_factor(&merge.source, scope, &mut bindings);
        let mut source_row = Taint::default();
        for b in bindings.get(start..).unwrap_or_default() {
            source_row.add(&self.binding_row(b), &b.text);
        }
        let here = Scope::child(scope, &bindings);
        self.filter(merge.on.as_ref(), &here);
        for clause in &merge.clauses {
            self.filter(&clause.predicate, &here);
            match &clause.action {
                MergeAction::Insert(insert) => {
                    match &insert.kind {
                        MergeInsertKind::Values(values) => {
                            let shape = self.values(values, &here);
                            self.record(&shape.result, UseKind::Copy);
                        }
                        MergeInsertKind::Row | MergeInsertKind::Wildcard => self.record(&source_row, UseKind::Copy),
                    }
                    self.filter(&insert.insert_predicate, &here);
                }
                MergeAction::Update(update) => {
                    match &update.kind {
                        MergeUpdateKind::Set(assignments) => self.assignments(assignments, &here),
                        MergeUpdateKind::Wildcard => self.record(&source_row, UseKind::Copy),
                    }
                    self.filter(&update.update_predicate, &here);
                    self.filter(&update.delete_predicate, &here);
                }
                MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
            }
        }
        self.returning(None, merge.output.as_ref(), &here)
    }
}

fn alias_columns(alias: &TableAlias) -> Vec<String> {
    alias.columns.iter().map(|c| fold(&c.name)).collect()
}

/// A source whose every column carries `taint`, named by its alias or its own name.
fn opaque(alias: &Option<TableAlias>, own_name: &str, text: &str, taint: &Taint) -> Binding {
    let rel = Rel::Opaque(taint.patterns());
    match alias {
        Some(a) => Binding { name: Some(fold(&a.name)), schema: None, text: a.name.to_string(), rel },
        None => Binding { name: Some(own_name.to_owned()), schema: None, text: text.to_owned(), rel },
    }
}

/// A subquery, CTE or parenthesized join, named by its alias or its own name.
/// The shape is shared (a CTE may be read many times) and copied only to
/// apply a column alias list.
fn derived(
    an: &Analyzer<'_>,
    alias: &Option<TableAlias>,
    own_name: Option<String>,
    text: &str,
    shape: Rc<Shape>,
) -> Binding {
    match alias {
        Some(a) => {
            let names = alias_columns(a);
            let shape = if names.is_empty() { shape } else { Rc::new(an.rename((*shape).clone(), &names)) };
            Binding { name: Some(fold(&a.name)), schema: None, text: a.name.to_string(), rel: Rel::Derived(shape) }
        }
        None => Binding { name: own_name, schema: None, text: text.to_owned(), rel: Rel::Derived(shape) },
    }
}

/// What a marked subexpression is, for the walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A clause inside an expression that filters or orders (an aggregate's
    /// FILTER or ORDER BY, a window's PARTITION BY or ORDER BY).
    Filter,
    /// The name of a field in `(composite).field`, which is not a column.
    Field,
    /// An argument of a function that keeps the value somewhere.
    Kept,
}

/// Functions that run SQL given to them as text, or read a table named by
/// text: what they return may come from any table, so it carries every pattern.
const QUERY_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    "dblink",
    "dblink_exec",
    "dblink_fetch",
    "dblink_get_result",
    "dblink_send_query",
];

/// Functions that keep a value where it can be read back without masking: a
/// setting (`SHOW`), a notification, a sequence, a large object, a file or
/// another database. A masked value passed to one is a copy.
const SINK_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_notify",
    "setval",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "pg_logical_emit_message",
    "pg_file_write",
    "dblink_exec",
    "dblink_send_query",
    "dblink",
];

/// Every pattern, for a value that may come from any table.
fn every_pattern(an: &Analyzer<'_>, text: &str) -> Taint {
    let mut taint = Taint::default();
    taint.add(&(0..an.patterns.len()).collect(), text);
    taint
}

/// Collects the column references in expressions, with sqlparser's visitor so
/// that operator chains of any depth are walked as the classifier walks them.
/// Subqueries met on the way are read at once, in their own scope, and the
/// visitor's descent into them is then ignored.
struct Walker<'w, 'p, 's> {
    an: &'w mut Analyzer<'p>,
    scope: &'w Scope<'s>,
    value: Taint,
    filter: Taint,
    /// What is passed to functions that keep it.
    kept: Taint,
    /// How deep the visitor is inside a subquery already read.
    nested: usize,
    /// Subexpressions with a role, by address, set by their parent before
    /// the visitor reaches them.
    marks: BTreeMap<usize, Role>,
    /// The marked subexpressions the visitor is inside.
    open: Vec<(usize, Role)>,
    filtering: usize,
    fields: usize,
    keeping: usize,
    /// Also count every table named (for sources read only conservatively).
    relations: bool,
}

fn address(expr: &Expr) -> usize {
    std::ptr::from_ref(expr) as usize
}

impl<'w, 'p, 's> Walker<'w, 'p, 's> {
    fn new(an: &'w mut Analyzer<'p>, scope: &'w Scope<'s>) -> Self {
        Walker {
            an,
            scope,
            value: Taint::default(),
            filter: Taint::default(),
            kept: Taint::default(),
            nested: 0,
            marks: BTreeMap::new(),
            open: Vec::new(),
            filtering: 0,
            fields: 0,
            keeping: 0,
            relations: false,
        }
    }

    fn add(&mut self, taint: &Taint) {
        self.value.extend(taint);
        if self.filtering > 0 {
            self.filter.extend(taint);
        }
        if self.keeping > 0 {
            self.kept.extend(taint);
        }
    }

    fn reference(&mut self, parts: &[Ident]) {
        let folded: Vec<String> = parts.iter().map(fold).collect();
        let set = self.an.reference(self.scope, &folded);
        if !set.is_empty() {
            let mut taint = Taint::default();
            taint.add(&set, &text_of(parts));
            self.add(&taint);
        }
    }

    fn mark(&mut self, expr: &Expr, role: Role) {
        self.marks.insert(address(expr), role);
    }

    fn function(&mut self, f: &sqlparser::ast::Function) {
        let name = f.name.0.last().map(fold_part).unwrap_or_default();
        if QUERY_TEXT_FUNCTIONS.contains(&name.as_str()) {
            let everything = every_pattern(self.an, &format!("{name}()"));
            self.add(&everything);
        }
        let keeps = SINK_FUNCTIONS.contains(&name.as_str());
        if let FunctionArguments::List(list) = &f.args {
            for a in &list.args {
                let (FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } | FunctionArg::Unnamed(arg)) =
                    a;
                if let (true, FunctionArgExpr::Expr(e)) = (keeps, arg) {
                    self.mark(e, Role::Kept);
                }
                let star = match arg {
                    // count(*) counts rows and reads no column.
                    FunctionArgExpr::Wildcard if name == "count" => continue,
                    FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                        self.an.star_taint(self.scope, None)
                    }
                    FunctionArgExpr::QualifiedWildcard(q) => self.an.star_taint(self.scope, Some(q)),
                    FunctionArgExpr::Expr(_) => continue,
                };
                self.add(&star);
            }
            for clause in &list.clauses {
                match clause {
                    FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => self.mark(e, Role::Filter),
                    FunctionArgumentClause::Having(sqlparser::ast::HavingBound(_, e)) => self.mark(e, Role::Filter),
                    FunctionArgumentClause::OrderBy(items) => {
                        for item in items {
                            self.mark(&item.expr, Role::Filter);
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = &f.filter {
            self.mark(e, Role::Filter);
        }
        for item in &f.within_group {
            self.mark(&item.expr, Role::Filter);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            for e in &spec.partition_by {
                self.mark(e, Role::Filter);
            }
            for item in &spec.order_by {
                self.mark(&item.expr, Role::Filter);
            }
        }
    }
}

impl Visitor for Walker<'_, '_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.nested == 0 {
            let shape = self.an.query(query, self.scope);
            self.add(&shape.touched);
        }
        self.nested += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.nested = self.nested.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.relations && self.nested == 0 {
            let parts = fold_name(relation);
            let (schema, table) = split_name(&parts);
            let mut taint = Taint::default();
            taint.add(&self.an.table_row(schema, table), &relation.to_string());
            self.add(&taint);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.nested > 0 {
            return ControlFlow::Continue(());
        }
        let at = address(expr);
        if let Some(role) = self.marks.remove(&at) {
            self.open.push((at, role));
            match role {
                Role::Filter => self.filtering += 1,
                Role::Field => self.fields += 1,
                Role::Kept => self.keeping += 1,
            }
        }
        if self.fields > 0 {
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::Identifier(ident) => self.reference(std::slice::from_ref(ident)),
            Expr::CompoundIdentifier(parts) => self.reference(parts),
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for access in access_chain {
                    if let sqlparser::ast::AccessExpr::Dot(e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_))) =
                        access
                    {
                        self.mark(e, Role::Field);
                    }
                }
            }
            Expr::Function(f) => self.function(f),
            Expr::QualifiedWildcard(name, _) => {
                let star = self.an.star_taint(self.scope, Some(name));
                self.add(&star);
            }
            Expr::Wildcard(_) => {
                let star = self.an.star_taint(self.scope, None);
                self.add(&star);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.nested > 0 {
            return ControlFlow::Continue(());
        }
        if let Some(&(at, role)) = self.open.last()
            && at == address(expr)
        {
            self.open.pop();
            match role {
                Role::Filter => self.filtering = self.filtering.saturating_sub(1),
                Role::Field => self.fields = self.fields.saturating_sub(1),
                Role::Kept => self.keeping = self.keeping.saturating_sub(1),
            }
        }
        ControlFlow::Continue(())
    }
}

/// Finds the queries and statements embedded in a statement this module does
/// not read otherwise, and takes what they produce as copied.
struct Embedded<'w, 'p> {
    an: &'w mut Analyzer<'p>,
    /// How deep the visitor is inside something already read.
    depth: usize,
    /// The statement being walked has been entered (it is not embedded in itself).
    root: bool,
}

impl Visitor for Embedded<'_, '_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if !self.root {
            self.root = true;
            return ControlFlow::Continue(());
        }
        if self.depth == 0 {
            let shape = self.an.statement(statement, &Scope::ROOT);
            self.an.record(&shape.result, UseKind::Copy);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            let shape = self.an.query(query, &Scope::ROOT);
            self.an.record(&shape.result, UseKind::Copy);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    use super::*;

    const EMAIL: usize = 0;
    const SSN: usize = 1;
    const CARD: usize = 2;
    /// A column that carries no masked pattern.
    const NONE: Vec<usize> = Vec::new();

    fn patterns() -> Vec<ColumnPattern> {
        ["*.*.email", "public.users.ssn", "public.payments.card_number"]
            .iter()
            .map(|p| ColumnPattern::parse(p).unwrap())
            .collect()
    }

    fn run(sql: &str) -> Lineage {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        assert_eq!(statements.len(), 1, "{sql}");
        lineage(&statements[0], &patterns())
    }

    fn outputs(sql: &str) -> Vec<Vec<usize>> {
        run(sql).outputs.unwrap_or_else(|| panic!("{sql}: outputs should be listed"))
    }

    fn uses(sql: &str, how: UseKind) -> Vec<(usize, String)> {
        let mut found: Vec<(usize, String)> =
            run(sql).uses.into_iter().filter(|u| u.how == how).map(|u| (u.pattern, u.column)).collect();
        found.sort();
        found.dedup();
        found
    }

    fn patterns_used(sql: &str, how: UseKind) -> Vec<usize> {
        let mut found: Vec<usize> = uses(sql, how).into_iter().map(|(p, _)| p).collect();
        found.dedup();
        found
    }

    fn one(pattern: usize, column: &str) -> Vec<(usize, String)> {
        vec![(pattern, column.to_owned())]
    }

    #[test]
    fn plain_columns_are_tainted_at_their_positions() {
        assert_eq!(outputs("SELECT id, email, ssn, name FROM users"), [vec![], vec![EMAIL], vec![SSN], vec![]]);
        let l = run("SELECT id, email, ssn FROM users");
        assert_eq!(l.result, [EMAIL, SSN]);
        assert!(l.uses.is_empty(), "{l:?}");
        assert_eq!(outputs("SELECT email AS e, id AS ssn FROM users"), [vec![EMAIL], vec![]]);
        assert_eq!(outputs("SELECT card_number FROM payments"), [vec![CARD]]);
        assert_eq!(outputs("SELECT card_number FROM users"), [NONE], "the pattern names payments");
    }

    #[test]
    fn computed_columns_carry_what_they_are_computed_from() {
        assert_eq!(
            outputs(
                "SELECT upper(email), email::varchar, substr(ssn, 1, 3), coalesce(name, email), email || '', \
                 CASE WHEN id > 1 THEN email ELSE 'x' END, length(name), CAST(ssn AS text) FROM users"
            ),
            [vec![EMAIL], vec![EMAIL], vec![SSN], vec![EMAIL], vec![EMAIL], vec![EMAIL], vec![], vec![SSN]]
        );
        assert_eq!(
            outputs("SELECT count(*), count(email), json_agg(email), 1 FROM users"),
            [vec![], vec![EMAIL], vec![EMAIL], vec![]]
        );
        assert_eq!(outputs("SELECT array[email, ssn], (ssn)[1] FROM users"), [vec![EMAIL, SSN], vec![SSN]]);
    }

    #[test]
    fn subqueries_in_the_select_list_carry_everything_they_read() {
        assert_eq!(
            outputs("SELECT id, (SELECT ssn FROM users u2 WHERE u2.id = u.id) FROM users u"),
            [vec![], vec![SSN]]
        );
        // A count filtered on a masked column reveals it as surely as the column.
        assert_eq!(outputs("SELECT (SELECT count(*) FROM payments WHERE card_number LIKE '4%')"), [vec![CARD]]);
        assert_eq!(
            outputs("SELECT (SELECT max(p.card_number) FROM payments p WHERE p.user_id = u.id) FROM users u"),
            [vec![CARD]]
        );
        assert_eq!(
            outputs("SELECT ARRAY(SELECT email FROM users), EXISTS (SELECT 1 FROM users)"),
            [vec![EMAIL], vec![]]
        );
    }

    #[test]
    fn subqueries_and_ctes_in_from_map_columns_by_name_and_position() {
        assert_eq!(outputs("SELECT x.email, x.id FROM (SELECT email, id FROM users) x"), [vec![EMAIL], vec![]]);
        assert_eq!(outputs("SELECT s.a, s.b FROM (SELECT email, id FROM users) AS s(a, b)"), [vec![EMAIL], vec![]]);
        assert_eq!(
            outputs("SELECT upper FROM (SELECT upper(ssn) FROM users) s"),
            [vec![SSN]],
            "Postgres names it upper"
        );
        assert_eq!(outputs("WITH c AS (SELECT ssn, id FROM users) SELECT id, ssn FROM c"), [vec![], vec![SSN]]);
        assert_eq!(outputs("WITH c(a, b) AS (SELECT id, ssn FROM users) SELECT b, a FROM c"), [vec![SSN], vec![]]);
        assert_eq!(
            outputs("WITH c AS (SELECT ssn AS x FROM users), d AS (SELECT x AS y FROM c) SELECT y FROM d"),
            [vec![SSN]]
        );
        // A wildcard inside keeps names: the subquery's `email` is found through it.
        assert_eq!(outputs("SELECT s.email, s.id FROM (SELECT * FROM users) s"), [vec![EMAIL], vec![]]);
        // With a column alias list over a wildcard, positions are unknown: any name may be anything.
        assert_eq!(outputs("SELECT s.a FROM (SELECT * FROM users) s(a)"), [vec![EMAIL, SSN]]);
        // A table's own columns renamed by position may be any of its columns.
        assert_eq!(outputs("SELECT u.a FROM users AS u(a)"), [vec![EMAIL, SSN]]);
    }

    #[test]
    fn set_operations_union_their_branches_position_by_position() {
        for op in ["UNION", "UNION ALL", "INTERSECT", "EXCEPT"] {
            let sql = format!("SELECT id, email FROM users {op} SELECT card_number, id FROM payments");
            assert_eq!(outputs(&sql), [vec![CARD], vec![EMAIL]], "{sql}");
        }
        assert_eq!(
            outputs("SELECT id FROM users UNION SELECT id FROM users UNION (SELECT ssn FROM users) UNION VALUES (1)"),
            [vec![SSN]]
        );
        assert_eq!(outputs("VALUES (1, 'a'), (2, (SELECT email FROM users LIMIT 1))"), [vec![], vec![EMAIL]]);
    }

    #[test]
    fn wildcards_hide_positions_but_not_what_they_carry() {
        let l = run("SELECT * FROM users");
        assert_eq!(l.outputs, None);
        assert_eq!(l.result, [EMAIL, SSN]);
        assert_eq!(run("SELECT * FROM payments").result, [EMAIL, CARD], "any table may have an email column");
        let l = run("SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id");
        assert_eq!((l.outputs, l.result), (None, vec![EMAIL, SSN]));
        assert_eq!(run("SELECT o.* FROM users u JOIN orders o ON o.user_id = u.id").result, [EMAIL]);
        assert_eq!(run("SELECT s.* FROM (SELECT id, upper(ssn) FROM users) s").result, [SSN]);
        assert_eq!(run("SELECT * FROM other.users").result, [EMAIL]);
    }

    #[test]
    fn whole_row_references_carry_every_column_of_the_row() {
        for sql in [
            "SELECT row_to_json(u) FROM users u",
            "SELECT to_jsonb(u.*) FROM users u",
            "SELECT u::text FROM users u",
            "SELECT u FROM users u",
            "SELECT ROW(u.*) FROM users u",
            "SELECT json_agg(u.*) FROM users u",
            "SELECT row_to_json(users) FROM users",
        ] {
            assert_eq!(outputs(sql), [vec![EMAIL, SSN]], "{sql}");
        }
        assert!(outputs("SELECT (u).ssn FROM users u")[0].contains(&SSN));
        assert_eq!(outputs("SELECT row_to_json(s) FROM (SELECT id, ssn FROM users) s"), [vec![SSN]]);
        // A field of a composite column is not a column of its own.
        assert_eq!(outputs("SELECT (address).email FROM shipments"), [NONE]);
    }

    #[test]
    fn qualifiers_and_schemas_decide_which_table_a_column_is_from() {
        let join = "FROM users u JOIN orders o ON o.user_id = u.id";
        assert_eq!(outputs(&format!("SELECT o.ssn, upper(o.ssn) {join}")), [NONE, NONE]);
        assert_eq!(outputs(&format!("SELECT u.ssn, upper(u.ssn) {join}")), [vec![SSN], vec![SSN]]);
        assert_eq!(outputs(&format!("SELECT upper(ssn) {join}")), [vec![SSN]], "either table may have it");
        assert_eq!(outputs("SELECT upper(ssn) FROM other.users"), [NONE]);
        assert_eq!(outputs("SELECT other.users.ssn FROM other.users"), [NONE]);
        assert_eq!(outputs("SELECT upper(ssn) FROM public.users"), [vec![SSN]]);
        assert_eq!(outputs("SELECT upper(public.users.ssn) FROM public.users"), [vec![SSN]]);
        assert_eq!(outputs("SELECT upper(ssn) FROM users"), [vec![SSN]], "the search path may find public");
        assert_eq!(outputs("SELECT upper(\"Email\") FROM users"), [NONE]);
        assert_eq!(outputs("SELECT upper(EMAIL), upper(\"email\") FROM users"), [vec![EMAIL], vec![EMAIL]]);
        assert_eq!(outputs("SELECT upper(ssn) FROM \"Users\""), [NONE]);
        assert_eq!(outputs("SELECT upper(ssn) FROM USERS"), [vec![SSN]]);
    }

    #[test]
    fn filters_anywhere_are_uses() {
        use UseKind::Filter;
        assert_eq!(uses("SELECT id FROM users WHERE email = 'a'", Filter), one(EMAIL, "email"));
        assert_eq!(
            uses("SELECT u.id FROM users u JOIN payments p ON p.card_number = u.ssn", Filter),
            [(SSN, "u.ssn".to_owned()), (CARD, "p.card_number".to_owned())]
        );
        assert_eq!(uses("SELECT id FROM users ORDER BY ssn", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT count(*) FROM users GROUP BY email", Filter), one(EMAIL, "email"));
        assert_eq!(uses("SELECT id FROM users GROUP BY id HAVING max(ssn) > '1'", Filter), one(SSN, "ssn"));
        assert_eq!(
            uses("SELECT rank() OVER (PARTITION BY email ORDER BY ssn) FROM users", Filter),
            [(EMAIL, "email".to_owned()), (SSN, "ssn".to_owned())]
        );
        assert_eq!(uses("SELECT rank() OVER w FROM users WINDOW w AS (ORDER BY ssn)", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT count(*) FILTER (WHERE ssn LIKE '1%') FROM users", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT string_agg(name, ',' ORDER BY ssn) FROM users", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM users", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT DISTINCT ON (email) id FROM users", Filter), one(EMAIL, "email"));
        assert_eq!(
            uses("SELECT id FROM users WHERE id IN (SELECT id FROM users WHERE ssn LIKE '1%')", Filter),
            one(SSN, "ssn")
        );
        assert_eq!(uses("WITH c AS (SELECT id FROM users WHERE ssn = '1') SELECT id FROM c", Filter), one(SSN, "ssn"));
        assert_eq!(uses("SELECT u.id FROM users u JOIN orders o USING (email)", Filter), one(EMAIL, "email"));
        assert_eq!(patterns_used("SELECT id FROM users NATURAL JOIN orders", Filter), [EMAIL, SSN]);
        assert_eq!(
            uses("SELECT id FROM users LIMIT (SELECT count(*) FROM users WHERE ssn > '5')", Filter),
            one(SSN, "ssn")
        );
        // Output names and positions in ORDER BY and GROUP BY.
        assert_eq!(patterns_used("SELECT upper(ssn) AS x FROM users ORDER BY x", Filter), [SSN]);
        assert_eq!(patterns_used("SELECT id, email FROM users ORDER BY 2", Filter), [EMAIL]);
        assert_eq!(patterns_used("SELECT id, email FROM users ORDER BY 1", Filter), NONE);
        assert_eq!(patterns_used("SELECT email, count(*) FROM users GROUP BY 1", Filter), [EMAIL]);
        assert_eq!(patterns_used("SELECT id FROM users UNION SELECT ssn FROM users ORDER BY 1", Filter), [SSN]);
        // Not masked, not a use; and returning a masked column is not a use either.
        assert!(run("SELECT email FROM users WHERE id = 1 ORDER BY id").uses.is_empty());
    }

    #[test]
    fn copies_into_tables_views_and_new_names() {
        use UseKind::Copy;
        assert_eq!(uses("INSERT INTO t SELECT email FROM users", Copy), one(EMAIL, "email"));
        assert_eq!(patterns_used("INSERT INTO t VALUES ((SELECT ssn FROM users LIMIT 1))", Copy), [SSN]);
        assert!(run("INSERT INTO t (a) VALUES ('x')").uses.is_empty());
        assert_eq!(uses("UPDATE users SET name = email", Copy), one(EMAIL, "email"));
        let l = run("UPDATE users SET name = 'x' WHERE email = 'a'");
        assert_eq!(l.uses, [Use { pattern: EMAIL, column: "email".to_owned(), how: UseKind::Filter }]);
        assert_eq!(patterns_used("UPDATE t SET x = u.ssn FROM users u WHERE u.id = t.id", Copy), [SSN]);
        assert_eq!(uses("CREATE TABLE t AS SELECT ssn FROM users", Copy), one(SSN, "ssn"));
        assert_eq!(uses("CREATE VIEW v AS SELECT email FROM users", Copy), one(EMAIL, "email"));
        assert_eq!(uses("CREATE MATERIALIZED VIEW v AS SELECT upper(email) FROM users", Copy), one(EMAIL, "email"));
        assert_eq!(patterns_used("CREATE VIEW v AS SELECT * FROM users", Copy), [EMAIL, SSN]);
        let l = run("SELECT email INTO t FROM users");
        assert_eq!((l.outputs, l.result.len()), (Some(vec![]), 0), "the rows go into the table");
        assert_eq!(patterns_used("SELECT email INTO t FROM users", Copy), [EMAIL]);
        assert_eq!(
            patterns_used(
                "MERGE INTO t USING users u ON t.id = u.id WHEN MATCHED THEN UPDATE SET x = u.ssn \
                 WHEN NOT MATCHED THEN INSERT (id, e) VALUES (u.id, u.email)",
                Copy
            ),
            [EMAIL, SSN]
        );
        assert_eq!(
            patterns_used("WITH i AS (INSERT INTO t SELECT ssn FROM users RETURNING id) SELECT id FROM i", Copy),
            [SSN]
        );
        assert!(
            patterns_used("INSERT INTO t VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET x = excluded.x", Copy)
                .is_empty()
        );
        assert_eq!(
            patterns_used(
                "INSERT INTO t SELECT id, ssn FROM users ON CONFLICT (id) DO UPDATE SET x = excluded.x",
                Copy
            ),
            [SSN]
        );
    }

    #[test]
    fn renames_that_let_a_column_escape_its_pattern_are_copies() {
        use UseKind::Copy;
        assert_eq!(uses("ALTER TABLE users RENAME COLUMN ssn TO x", Copy), one(SSN, "ssn"));
        assert!(uses("ALTER TABLE users RENAME COLUMN id TO x", Copy).is_empty());
        assert!(uses("ALTER TABLE other.users RENAME COLUMN ssn TO x", Copy).is_empty());
        assert_eq!(uses("ALTER TABLE orders RENAME COLUMN email TO x", Copy), one(EMAIL, "email"));
        // `*.*.email` still names it under any table name; `public.users.ssn` does not.
        assert_eq!(uses("ALTER TABLE users RENAME TO people", Copy), one(SSN, "users"));
        assert_eq!(
            uses("ALTER SCHEMA public RENAME TO old", Copy),
            [(SSN, "public".to_owned()), (CARD, "public".to_owned())]
        );
        assert_eq!(
            patterns_used("ALTER TABLE users ALTER COLUMN name TYPE text USING ssn", Copy),
            [SSN],
            "a rewrite copies the value"
        );
        assert_eq!(
            patterns_used("ALTER TABLE users ADD COLUMN x text GENERATED ALWAYS AS (upper(email)) STORED", Copy),
            [EMAIL]
        );
    }

    #[test]
    fn exports() {
        use UseKind::Export;
        assert_eq!(patterns_used("COPY users TO STDOUT", Export), [EMAIL, SSN]);
        assert_eq!(patterns_used("COPY public.users TO '/tmp/x'", Export), [EMAIL, SSN]);
        assert!(run("COPY users (id) TO STDOUT").uses.is_empty());
        assert_eq!(uses("COPY users (id, ssn) TO STDOUT", Export), one(SSN, "ssn"));
        assert_eq!(uses("COPY (SELECT email FROM users) TO STDOUT", Export), one(EMAIL, "email"));
        assert_eq!(patterns_used("COPY (DELETE FROM users RETURNING ssn) TO STDOUT", Export), [SSN]);
        assert!(run("COPY users FROM STDIN").uses.is_empty());
        assert_eq!(run("COPY users TO STDOUT").outputs, Some(vec![]));
        let l = run("DECLARE c CURSOR FOR SELECT email FROM users WHERE ssn = '1'");
        assert_eq!(l.outputs, Some(vec![]));
        assert_eq!(patterns_used("DECLARE c CURSOR FOR SELECT email FROM users WHERE ssn = '1'", Export), [EMAIL]);
        assert!(l.uses.contains(&Use { pattern: SSN, column: "ssn".to_owned(), how: UseKind::Filter }));
    }

    #[test]
    fn returning_lists_are_outputs() {
        assert_eq!(outputs("DELETE FROM users WHERE id = 1 RETURNING ssn"), [vec![SSN]]);
        assert_eq!(
            outputs("UPDATE users SET name = 'x' WHERE id = 1 RETURNING id, upper(email)"),
            [vec![], vec![EMAIL]]
        );
        assert_eq!(outputs("INSERT INTO users (id) VALUES (1) RETURNING ssn"), [vec![SSN]]);
        let l = run("DELETE FROM users RETURNING *");
        assert_eq!((l.outputs, l.result), (None, vec![EMAIL, SSN]));
        let l = run("WITH d AS (DELETE FROM users RETURNING email) SELECT * FROM d");
        assert_eq!((l.outputs, l.result), (None, vec![EMAIL]));
        assert_eq!(outputs("WITH d AS (DELETE FROM users RETURNING email) SELECT upper(email) FROM d"), [vec![EMAIL]]);
        assert_eq!(outputs("DELETE FROM users WHERE id = 1"), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn statements_that_return_no_data() {
        for sql in ["SELECT 1", "SELECT 'email', now()"] {
            let l = run(sql);
            assert!(l.result.is_empty() && l.uses.is_empty(), "{sql}: {l:?}");
            assert!(l.outputs.unwrap().iter().all(Vec::is_empty), "{sql}");
        }
        for sql in ["SET x = 1", "BEGIN", "CREATE TABLE t (id int, email text)", "DROP TABLE users"] {
            assert_eq!(run(sql), Lineage { outputs: Some(vec![]), ..Lineage::default() }, "{sql}");
        }
        assert_eq!(
            run("EXPLAIN SELECT upper(email) FROM users WHERE ssn = '1'"),
            Lineage { outputs: Some(vec![]), ..Lineage::default() },
            "a plan, not data"
        );
        let l = run("EXPLAIN ANALYZE SELECT upper(email) FROM users WHERE ssn = '1'");
        assert_eq!((l.outputs, l.result.len()), (Some(vec![]), 0));
        assert_eq!(l.uses, [Use { pattern: SSN, column: "ssn".to_owned(), how: UseKind::Filter }]);
        let l = run("PREPARE p AS SELECT id FROM users WHERE ssn = $1");
        assert_eq!(l.outputs, Some(vec![]));
        assert_eq!(patterns_used("PREPARE p AS SELECT id FROM users WHERE ssn = $1", UseKind::Filter), [SSN]);
    }

    #[test]
    fn functions_and_lateral_subqueries_in_from() {
        assert_eq!(outputs("SELECT x FROM users, unnest(array[email]) AS x"), [vec![EMAIL]]);
        assert_eq!(outputs("SELECT v FROM users u CROSS JOIN LATERAL unnest(ARRAY[u.ssn, u.id]) AS v"), [vec![SSN]]);
        assert_eq!(
            outputs("SELECT t.a FROM users u, LATERAL jsonb_to_recordset(to_jsonb(u)) AS t(a text)"),
            [vec![EMAIL, SSN]]
        );
        assert_eq!(outputs("SELECT g FROM generate_series(1, 3) g"), [NONE]);
        assert_eq!(
            outputs("SELECT l.e, l.n FROM users u, LATERAL (SELECT u.email AS e, length(u.name) AS n) l"),
            [vec![EMAIL], vec![]]
        );
    }

    #[test]
    fn functions_that_run_sql_text_or_keep_values() {
        let everything = vec![EMAIL, SSN, CARD];
        assert_eq!(outputs("SELECT query_to_xml('select ssn from users', true, false, '')"), [vec![EMAIL, SSN, CARD]]);
        assert_eq!(run("SELECT * FROM dblink('dbname=x', 'select ssn from users') AS t(s text)").result, everything);
        assert_eq!(run("SELECT * FROM ts_stat('select to_tsvector(ssn) from users')").result, everything);
        assert_eq!(uses("SELECT set_config('my.v', ssn, false) FROM users", UseKind::Copy), one(SSN, "ssn"));
        assert_eq!(uses("SELECT pg_notify('c', upper(email)) FROM users", UseKind::Copy), one(EMAIL, "email"));
        assert_eq!(patterns_used("SELECT id FROM users WHERE setval('s', length(ssn)) > 0", UseKind::Copy), [SSN]);
        assert_eq!(patterns_used("SELECT * FROM users, set_config('my.v', ssn, false)", UseKind::Copy), [SSN]);
        assert!(run("SELECT set_config('my.v', 'x', false), pg_notify('c', name) FROM users").uses.is_empty());
    }

    #[test]
    fn recursive_ctes_reach_a_fixpoint() {
        let sql = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT n FROM t";
        let l = run(sql);
        assert_eq!(l.outputs, Some(vec![vec![]]));
        assert!(l.uses.is_empty(), "{l:?}");
        let sql = "WITH RECURSIVE r(id, e) AS (SELECT id, email FROM users UNION ALL \
                   SELECT r.id, upper(r.e) FROM r WHERE r.id < 3) SELECT upper(e) FROM r";
        assert_eq!(outputs(sql), [vec![EMAIL]]);
        let sql = "WITH RECURSIVE r(n, s) AS (SELECT 1, '' UNION ALL \
                   SELECT n + 1, (SELECT ssn FROM users LIMIT 1) FROM r WHERE n < 3) SELECT s FROM r";
        assert_eq!(outputs(sql), [vec![SSN]], "what the recursive branch adds is found");
    }

    fn parse_deep(sql: &str) -> Vec<Statement> {
        let dialect = PostgreSqlDialect {};
        Parser::new(&dialect).with_recursion_limit(64).try_with_sql(sql).unwrap().parse_statements().unwrap()
    }

    /// Runs `f` on a thread with the stack a Tokio worker has.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(2 * 1024 * 1024).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn a_long_operator_chain_does_not_overflow_the_stack() {
        let outputs = on_small_stack(|| {
            let sql = format!("SELECT {}email FROM users", "email + ".repeat(7999));
            let statements = parse_deep(&sql);
            lineage(&statements[0], &patterns()).outputs
        });
        assert_eq!(outputs, Some(vec![vec![EMAIL]]));
    }

    #[test]
    fn deep_nesting_long_chains_and_long_unions_do_not_overflow_the_stack() {
        let l = on_small_stack(|| {
            // A chain at the bottom of nested subqueries, as deep as the parser allows.
            let mut sql = format!("SELECT {}ssn FROM users WHERE {}id = 1", "id + ".repeat(3000), "id + ".repeat(3000));
            for _ in 0..14 {
                sql = format!("SELECT (SELECT ({sql})) WHERE 1 = 1");
            }
            let statements = parse_deep(&sql);
            lineage(&statements[0], &patterns())
        });
        assert_eq!(l.outputs, Some(vec![vec![SSN]]));
        let l = on_small_stack(|| {
            let sql = format!("{} SELECT email FROM users", "SELECT id FROM users UNION ".repeat(2000));
            let statements = parse_deep(&sql);
            lineage(&statements[0], &patterns())
        });
        assert_eq!(l.outputs, Some(vec![vec![EMAIL]]));
        let l = on_small_stack(|| {
            let mut sql = "WITH c0 AS (SELECT email FROM users)".to_owned();
            for i in 1..1500 {
                sql.push_str(&format!(", c{i} AS (SELECT * FROM c{})", i - 1));
            }
            sql.push_str(" SELECT * FROM c1499");
            let statements = parse_deep(&sql);
            lineage(&statements[0], &patterns())
        });
        assert_eq!((l.outputs, l.result), (None, vec![EMAIL]));
    }

    #[test]
    fn a_statement_too_costly_to_follow_gets_the_most_cautious_answer() {
        // Every name looked up against every relation: 4000 x 3000 lookups.
        let tables: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
        let names: Vec<String> = (0..4000).map(|i| format!("c{i}")).collect();
        let sql = format!("SELECT {} FROM {}", names.join(", "), tables.join(", "));
        let l = run(&sql);
        assert_eq!((l.outputs, l.result), (None, vec![EMAIL, SSN, CARD]));
        for how in [UseKind::Filter, UseKind::Copy, UseKind::Export] {
            assert_eq!(l.uses.iter().filter(|u| u.how == how).count(), 3);
        }
        // A large but ordinary statement stays within the budget.
        let sql =
            format!("SELECT {} FROM {}", names.get(..1500).unwrap().join(", "), tables.get(..20).unwrap().join(", "));
        assert_eq!(run(&sql).outputs.map(|o| o.len()), Some(1500));
    }

    #[test]
    fn multiplying_wildcards_stay_bounded() {
        let mut sql = "WITH c0 AS (SELECT * FROM users)".to_owned();
        for i in 1..40 {
            sql.push_str(&format!(", c{i} AS (SELECT *, * FROM c{})", i - 1));
        }
        sql.push_str(" SELECT * FROM c39");
        assert_eq!(run(&sql).result, [EMAIL, SSN]);
        // Recursive CTEs nested as deep as the parser allows: each would
        // double the passes without the budget.
        let mut sql = "SELECT 1".to_owned();
        for _ in 0..20 {
            sql = format!("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r, ({sql}) s) SELECT n FROM r");
        }
        let l = lineage(&parse_deep(&sql)[0], &patterns());
        assert_eq!(l.outputs.map(|o| o.len()), Some(1));
    }
}
