//! What the target's catalog says about the relations results come from, for
//! masking: Postgres reports a result column that is a plain column of a table
//! by the table's OID and the column's number, and masking rules name
//! `schema.table.column`.
//!
//! Read with the connection's admin credential (the session's own role may not
//! see every schema's names) and kept per worker and target for a short while:
//! a relation renamed meanwhile is read again once its entry is stale. A rename
//! by a session whose results are masked is itself refused by masking rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::roles::{RoleError, RoleManager};

/// How long a relation's description is used before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(30);
/// Relations remembered per target; past this many the cache starts over.
const MAX_RELATIONS: usize = 50_000;

/// One relation as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// A view or materialized view: its columns come from `definition`.
    pub is_view: bool,
    pub definition: Option<String>,
    /// Column number → name.
    pub columns: BTreeMap<i16, String>,
    /// `(schema, name)` of every table it inherits from or is a partition
    /// of, at any depth: a rule naming the parent's column names the child's.
    pub ancestors: Vec<(String, String)>,
}

/// Relations of one target, by OID. `None`: no relation has that OID (any
/// more); a result column from it is masked whole.
#[derive(Default)]
pub struct Catalog {
    relations: Mutex<HashMap<u32, Entry>>,
}

/// A relation as read at a time; `None` when no relation had the OID.
type Entry = (Instant, Option<Arc<Relation>>);

impl Catalog {
    /// The relations with these OIDs, reading the ones not known or stale.
    /// The relations with these OIDs when every one is known and fresh, with
    /// no call to the target: `None` when any must be read (`relations`).
    pub fn cached(&self, oids: &[u32]) -> Option<HashMap<u32, Option<Arc<Relation>>>> {
        let now = Instant::now();
        let known = self.relations.lock().unwrap_or_else(|e| e.into_inner());
        oids.iter()
            .map(|oid| match known.get(oid) {
                Some((at, relation)) if now.duration_since(*at) < FRESH_FOR => Some((*oid, relation.clone())),
                _ => None,
            })
            .collect()
    }

    pub async fn relations(
        &self,
        oids: &[u32],
        admin: &RoleManager,
    ) -> Result<HashMap<u32, Option<Arc<Relation>>>, RoleError> {
        let now = Instant::now();
        let mut found = HashMap::with_capacity(oids.len());
        let mut missing = Vec::new();
        {
            let known = self.relations.lock().unwrap_or_else(|e| e.into_inner());
            for oid in oids {
                match known.get(oid) {
                    Some((at, relation)) if now.duration_since(*at) < FRESH_FOR => {
                        found.insert(*oid, relation.clone());
                    }
                    _ if !missing.contains(oid) => missing.push(*oid),
                    _ => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read = admin.describe_relations(&missing).await?;
        let mut known = self.relations.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + missing.len() > MAX_RELATIONS {
            known.clear();
        }
        for oid in missing {
            let relation = read.iter().find(|r| r.oid == oid).cloned().map(Arc::new);
            known.insert(oid, (now, relation.clone()));
            found.insert(oid, relation);
        }
        Ok(found)
    }
}
