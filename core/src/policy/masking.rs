//! Masking rules applied to one statement: which of its result columns are
//! masked whole, which content detectors read every value, and whether the
//! statement uses masked columns in ways masking cannot follow (a filter, a
//! copy into another table, an export).
//!
//! The gateway learns each result column's origin from Postgres itself: a
//! column that is a plain column of a table is reported with that table and
//! column, and masked if a rule names it ([`ResultMask::column`]). A column the
//! statement computes (`upper(email)`, a UNION, `row_to_json(u)`) has no
//! origin; for those, the statement's lineage (`crate::sql::lineage`) says
//! which masked columns it may derive from ([`ResultMask::computed`]).

use super::model::{ColumnPattern, Detector, MaskStrategy, MaskingRule, Policy, covers};
use crate::connection::ConnectionSpec;
use crate::sql::lineage::{Lineage, UseKind};

/// A value masked whole, and the rule that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeMask {
    pub rule: String,
    pub strategy: MaskStrategy,
}

/// What masking does to one statement's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultMask {
    /// The masking rules that cover the connection, in policy order.
    rules: Vec<MaskingRule>,
    /// For each result column, in order, the mask of a column the statement
    /// computes from masked ones; `None` when the columns cannot be listed
    /// (a `*` in the select list), and then `all_computed` applies.
    outputs: Option<Vec<Option<WholeMask>>>,
    all_computed: Option<WholeMask>,
    /// The statement reads masked columns at all: the text of its errors and
    /// notices may quote their values, and is withheld.
    pub involved: bool,
}

/// A statement's use of a masked column that masking cannot follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedUse {
    /// The rule naming the column.
    pub rule: usize,
    pub column: String,
    pub how: UseKind,
}

impl Policy {
    /// The masking rules that apply on this connection.
    pub fn masking_rules_for<'a>(&'a self, connection: &'a ConnectionSpec) -> impl Iterator<Item = &'a MaskingRule> {
        self.masking.iter().filter(|r| covers(&r.connections, &connection.name, &connection.labels))
    }
}

impl ResultMask {
    /// The mask of a statement from its lineage, computed against the column
    /// patterns of `rules` flattened in order (see [`patterns`]).
    pub fn from_lineage(rules: Vec<MaskingRule>, lineage: &Lineage) -> (ResultMask, Vec<MaskedUse>) {
        let owners = pattern_owners(&rules);
        let strongest = |patterns: &[usize]| -> Option<WholeMask> {
            patterns
                .iter()
                .filter_map(|p| owners.get(*p).and_then(|r| rules.get(*r)))
                .min_by_key(|r| r.strategy.reveals())
                .map(|r| WholeMask { rule: r.name.clone(), strategy: r.strategy })
        };
        let outputs = lineage.outputs.as_ref().map(|cols| cols.iter().map(|c| strongest(c)).collect::<Vec<_>>());
        let all_computed = if outputs.is_none() { strongest(&lineage.result) } else { None };
        let uses: Vec<MaskedUse> = lineage
            .uses
            .iter()
            .filter_map(|u| owners.get(u.pattern).map(|r| MaskedUse { rule: *r, column: u.column.clone(), how: u.how }))
            .collect();
        let involved = !lineage.result.is_empty() || !uses.is_empty();
        (ResultMask { rules, outputs, all_computed, involved }, uses)
    }

    /// The mask of a statement the gateway could not read: every column it
    /// computes is masked, by the rule that tells least.
    pub fn unread(rules: Vec<MaskingRule>) -> ResultMask {
        let all_computed = rules
            .iter()
            .filter(|r| !r.columns.is_empty())
            .min_by_key(|r| r.strategy.reveals())
            .map(|r| WholeMask { rule: r.name.clone(), strategy: r.strategy });
        let involved = all_computed.is_some();
        ResultMask { rules, outputs: None, all_computed, involved }
    }

    /// The mask of a result column Postgres reports as column `column` of
    /// table `schema.table`.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<WholeMask> {
        self.rules
            .iter()
            .filter(|r| r.columns.iter().any(|p| p.matches(schema, table, column)))
            .min_by_key(|r| r.strategy.reveals())
            .map(|r| WholeMask { rule: r.name.clone(), strategy: r.strategy })
    }

    /// The mask of the `index`th result column, which the statement computes.
    pub fn computed(&self, index: usize) -> Option<WholeMask> {
        match &self.outputs {
            Some(outputs) => outputs.get(index).cloned().flatten(),
            None => self.all_computed.clone(),
        }
    }

    /// The mask of a column whose origin cannot be read: the rule that tells
    /// least, among those naming columns.
    pub fn strongest(&self) -> Option<WholeMask> {
        self.rules
            .iter()
            .filter(|r| !r.columns.is_empty())
            .min_by_key(|r| r.strategy.reveals())
            .map(|r| WholeMask { rule: r.name.clone(), strategy: r.strategy })
    }

    /// Every rule's content detectors, with the rule's strategy.
    pub fn detectors(&self) -> impl Iterator<Item = (&MaskingRule, &[Detector])> {
        self.rules.iter().filter(|r| !r.detectors.is_empty()).map(|r| (r, r.detectors.as_slice()))
    }

    pub fn has_detectors(&self) -> bool {
        self.rules.iter().any(|r| !r.detectors.is_empty())
    }

    pub fn rules(&self) -> &[MaskingRule] {
        &self.rules
    }
}

/// The column patterns of `rules`, flattened in order: what lineage is computed against.
pub fn patterns(rules: &[MaskingRule]) -> Vec<super::model::ColumnPattern> {
    rules.iter().flat_map(|r| r.columns.iter().cloned()).collect()
}

/// For each flattened pattern, the index of the rule it came from.
fn pattern_owners(rules: &[MaskingRule]) -> Vec<usize> {
    rules.iter().enumerate().flat_map(|(i, r)| std::iter::repeat_n(i, r.columns.len())).collect()
}

/// A relation of the target, as derivation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRelation {
    pub schema: String,
    pub name: String,
    /// Column names in order.
    pub columns: Vec<String>,
    /// A view's definition (a SELECT).
    pub definition: Option<String>,
    /// `(schema, name)` of every table it inherits from or is a partition of.
    pub ancestors: Vec<(String, String)>,
}

/// How many times view definitions are read again, for views over views.
const VIEW_ROUNDS: usize = 8;

/// The patterns the catalog adds to `rules`, by rule name: a column of a
/// table that inherits a masked column, and a column of a view whose
/// definition may derive it from one (all of a view's columns, where its
/// definition's columns cannot be listed). With these, a statement that
/// names the view or the child table is followed like one that names the
/// masked table itself: its computed columns masked, its filters caught.
pub fn derive_patterns(rules: &[MaskingRule], relations: &[CatalogRelation]) -> Vec<(String, ColumnPattern)> {
    let mut derived: Vec<(String, ColumnPattern)> = Vec::new();
    let add = |derived: &mut Vec<(String, ColumnPattern)>, rule: &str, schema: &str, table: &str, column: &str| {
        let pattern = ColumnPattern { schema: schema.to_owned(), table: table.to_owned(), column: column.to_owned() };
        let new = !derived.iter().any(|(r, p)| r == rule && p == &pattern);
        if new {
            derived.push((rule.to_owned(), pattern));
        }
        new
    };
    for rel in relations {
        for rule in rules {
            for p in &rule.columns {
                for (schema, table) in &rel.ancestors {
                    for column in &rel.columns {
                        if p.matches(schema, table, column) {
                            add(&mut derived, &rule.name, &rel.schema, &rel.name, column);
                        }
                    }
                }
            }
        }
    }
    for _ in 0..VIEW_ROUNDS {
        let mut grew = false;
        // The rules as they stand, with what was derived so far.
        let mut current = rules.to_vec();
        for (rule, pattern) in &derived {
            if let Some(r) = current.iter_mut().find(|r| &r.name == rule) {
                r.columns.push(pattern.clone());
            }
        }
        let flat = patterns(&current);
        let owners = pattern_owners(&current);
        for rel in relations {
            let Some(definition) = &rel.definition else { continue };
            let Ok(statements) = crate::sql::analyze(definition, &flat) else {
                // A view the gateway cannot read: every column is masked by every rule.
                for rule in &current {
                    grew |= add(&mut derived, &rule.name, &rel.schema, &rel.name, "*");
                }
                continue;
            };
            for (_, lineage) in statements {
                let Some(lineage) = lineage else {
                    for rule in &current {
                        grew |= add(&mut derived, &rule.name, &rel.schema, &rel.name, "*");
                    }
                    continue;
                };
                let rule_of = |p: &usize| owners.get(*p).and_then(|r| current.get(*r)).map(|r| r.name.clone());
                match &lineage.outputs {
                    Some(outputs) => {
                        for (column, from) in rel.columns.iter().zip(outputs) {
                            for rule in from.iter().filter_map(rule_of) {
                                grew |= add(&mut derived, &rule, &rel.schema, &rel.name, column);
                            }
                        }
                    }
                    None => {
                        for rule in lineage.result.iter().filter_map(rule_of) {
                            grew |= add(&mut derived, &rule, &rel.schema, &rel.name, "*");
                        }
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }
    derived
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_inheriting_tables_carry_the_masked_columns_they_show() {
        let policy = Policy::parse(
            "version: 1\nmasking:\n  - name: pii\n    columns: ['public.customers.email', 'public.customers.ssn']\n    strategy: redact\n",
        )
        .unwrap();
        let view = |name: &str, columns: &[&str], definition: &str| CatalogRelation {
            schema: "public".into(),
            name: name.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            definition: Some(definition.into()),
            ancestors: vec![],
        };
        let relations = vec![
            view("contacts", &["id", "contact"], "SELECT customers.id, customers.email AS contact FROM customers"),
            view("contacts2", &["who"], "SELECT contacts.contact AS who FROM contacts"),
            view("counts", &["n"], "SELECT count(*) AS n FROM customers"),
            CatalogRelation {
                schema: "public".into(),
                name: "customers_eu".into(),
                columns: vec!["id".into(), "email".into(), "ssn".into()],
                definition: None,
                ancestors: vec![("public".into(), "customers".into())],
            },
        ];
        let derived = derive_patterns(&policy.masking, &relations);
        let has = |t: &str, c: &str| derived.iter().any(|(r, p)| r == "pii" && p.table == t && p.column == c);
        assert!(has("contacts", "contact") && !has("contacts", "id"));
        assert!(has("contacts2", "who"), "a view over a view: {derived:?}");
        assert!(!has("counts", "n"));
        assert!(has("customers_eu", "email") && has("customers_eu", "ssn") && !has("customers_eu", "id"));
    }
}
