//! The statement hook that applies the tenant's command rules, read from the
//! worker's projection: no call leaves the worker to decide.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use airlock_core::connection::ConnectionSpec;
use airlock_core::policy::{CommandVerdict, Decision, Policy, ResultMask};
use airlock_core::review::fingerprint;
use airlock_core::sql::normalize::normalize;
use airlock_core::{ConnectionId, TenantId};
use bytes::Bytes;

use super::hook::{SessionContext, Statement, StatementHook, Verdict, shown_statement};
use super::statements::{MAX_PREPARED, MAX_PREPARED_TEXT};
use crate::projection::Projection;

/// Decisions remembered per worker; past this many the cache starts over.
const CACHE_ENTRIES: usize = 8192;
/// Statements longer than this are decided every time (they are rarely repeated).
const CACHE_MAX_STATEMENT: usize = 4096;

pub struct PolicyHook {
    projection: Arc<Projection>,
    /// Decisions by statement text and everything else they depend on, so a
    /// repeated statement skips the parser: by the exact text, and, for an
    /// allowed statement whose decision turned on no literal's value
    /// ([`Decision::reusable`]), by its normalized form too, so the same
    /// statement with other constants skips it as well.
    cache: Mutex<HashMap<CacheKey, Cached>>,
    /// Per target, the patterns its views and inheriting tables add to the
    /// masking rules, and when and under which policy they were derived.
    derived: Mutex<HashMap<(TenantId, ConnectionId), Arc<Derived>>>,
}

struct Derived {
    at: std::time::Instant,
    policy_version: u64,
    /// Distinguishes one derivation from the next in the decision cache.
    generation: u64,
    patterns: Vec<(String, airlock_core::policy::ColumnPattern)>,
}

/// How long derived patterns are used before a starting session reads the
/// catalog again.
const DERIVED_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A decision as the cache keeps it: the mask shared by every session that
/// runs the statement.
#[derive(Clone)]
struct Cached {
    verdict: CommandVerdict,
    mask: Option<Arc<ResultMask>>,
}

impl From<Decision> for Cached {
    fn from(d: Decision) -> Self {
        Cached { verdict: d.verdict, mask: d.mask.map(Arc::new) }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    tenant: TenantId,
    connection: ConnectionId,
    policy_version: u64,
    /// The connection's name and labels, which decide what rules cover it.
    coverage: u64,
    /// The derivation of catalog patterns the decision used (0: none).
    derived: u64,
    /// `sql` is a normalized form ([`airlock_core::sql::normalize`]), not text.
    normalized: bool,
    sql: Bytes,
}

fn coverage(connection: &ConnectionSpec) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    connection.name.hash(&mut h);
    connection.labels.hash(&mut h);
    h.finish()
}

impl PolicyHook {
    pub fn new(projection: Arc<Projection>) -> Self {
        Self { projection, cache: Mutex::new(HashMap::new()), derived: Mutex::new(HashMap::new()) }
    }

    /// What the policy says of `sql` on `connection`, from the cache when the
    /// same statement was decided under the same policy before.
    fn decide(
        &self,
        session: &SessionContext,
        policy: &Policy,
        version: u64,
        connection: &ConnectionSpec,
        sql: &Bytes,
    ) -> Cached {
        let derived = if policy.masking.is_empty() {
            None
        } else {
            self.derived
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(session.tenant, session.connection))
                .filter(|d| d.policy_version == version)
                .cloned()
        };
        let patterns = derived.as_ref().map_or(&[][..], |d| d.patterns.as_slice());
        if sql.len() > CACHE_MAX_STATEMENT {
            return policy.decide_with(connection, sql, patterns).into();
        }
        let key = CacheKey {
            tenant: session.tenant,
            connection: connection.id,
            policy_version: version,
            coverage: coverage(connection),
            derived: derived.as_ref().map_or(0, |d| d.generation),
            normalized: false,
            sql: sql.clone(),
        };
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return hit.clone();
        }
        let form = normalize(sql).map(Bytes::from);
        let by_form = form.map(|form| CacheKey { normalized: true, sql: form, ..key.clone() });
        if let Some(by_form) = &by_form
            && let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(by_form)
        {
            return hit.clone();
        }
        let decision = policy.decide_with(connection, sql, patterns);
        let shared = decision.reusable && matches!(decision.verdict, CommandVerdict::Allow { .. });
        let decided = Cached::from(decision);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        // A copy: a slice would keep the client's read buffer alive.
        cache.insert(CacheKey { sql: Bytes::copy_from_slice(sql), ..key }, decided.clone());
        // Only allows are shared by form: a refusal's reason may quote the text.
        if let (true, Some(by_form)) = (shared, by_form) {
            cache.insert(by_form, decided.clone());
        }
        decided
    }

    /// The tenant's usable policy and the session's connection, or why not.
    fn with_policy<T>(
        &self,
        session: &SessionContext,
        f: impl FnOnce(&airlock_core::TenantState, &Policy, u64, &ConnectionSpec) -> T,
    ) -> Result<T, Verdict> {
        self.projection.read(|tenants| {
            let Some(state) = tenants.get(&session.tenant) else {
                return Err(deny("builtin:no-tenant", "the tenant is gone".to_owned()));
            };
            let (policy, version) = match state.policy.as_ref().map(|p| (&p.parsed, p.version)) {
                None => return Err(Verdict::Allow),
                Some((Ok(policy), version)) => (policy, version),
                Some((Err(e), _)) => {
                    return Err(deny("builtin:unusable-policy", format!("the tenant's policy cannot be used: {e}")));
                }
            };
            let Some(connection) = state.connections.get(&session.connection) else {
                return Err(deny(
                    "builtin:no-connection",
                    format!("connection {} was removed", session.connection_name),
                ));
            };
            Ok(f(state, policy, version, connection))
        })
    }
}

impl StatementHook for PolicyHook {
    fn check(&self, session: &SessionContext, statement: Statement<'_>) -> Verdict {
        let is_bind = matches!(statement, Statement::Bind { .. });
        let (sql, params, is_parse) = match statement {
            Statement::Query { sql } => (Some(sql), None, false),
            Statement::Parse { sql, .. } => (Some(sql), None, true),
            Statement::Bind { sql, params, .. } => (sql, Some(params), false),
            // A portal runs what its Bind was allowed to.
            Statement::Execute { .. } => return Verdict::Allow,
            Statement::FunctionCall => (None, None, false),
        };
        let decided = self.with_policy(session, |state, policy, version, connection| {
            let Some(sql) = sql else {
                // A fast-path call names a function by number, and a Bind of a
                // statement the gateway cannot know has no text: with command
                // or masking rules to apply, neither can be checked.
                let applies = policy.command_rules_for(connection).next().is_some()
                    || policy.masking_rules_for(connection).next().is_some();
                return if !applies {
                    Verdict::Allow
                } else if is_bind {
                    deny(
                        "builtin:unknown-statement",
                        format!(
                            "the gateway cannot tell which statement this Bind runs (its name was prepared by \
                             SQL, or before a statement that may deallocate or prepare statements, or past the \
                             {MAX_PREPARED} statements or {} MiB of their text the gateway remembers per session, \
                             or is 63 bytes or longer or not ASCII); close it and prepare it again",
                            MAX_PREPARED_TEXT >> 20
                        ),
                    )
                } else {
                    deny(
                        "builtin:unreadable-call",
                        "this call carries no statement the gateway can check; use SQL".to_owned(),
                    )
                };
            };
            match self.decide(session, policy, version, connection, sql).verdict {
                CommandVerdict::Allow { .. } => Verdict::Allow,
                CommandVerdict::Deny { rule, reason } => deny(&rule, reason),
                // Preparing runs nothing; each Bind of it is held, with its parameters.
                CommandVerdict::Review { .. } if is_parse => Verdict::Allow,
                CommandVerdict::Review { rule, .. } => {
                    // An approver may have allowed this statement for the rest of the
                    // grant; the review was opened with the statement as shown to them.
                    let approved = state.approved_statements.get(&session.grant).is_some_and(|set| {
                        let text = String::from_utf8_lossy(sql);
                        set.contains(&fingerprint(&shown_statement(&text, params.unwrap_or_default())))
                    });
                    if approved { Verdict::Allow } else { Verdict::Review { rule } }
                }
            }
        });
        decided.unwrap_or_else(|v| v)
    }

    fn inspects(&self, session: &SessionContext) -> bool {
        self.projection.read(|tenants| {
            let Some(state) = tenants.get(&session.tenant) else { return true };
            let Some(connection) = state.connections.get(&session.connection) else { return true };
            match state.policy.as_ref().map(|p| &p.parsed) {
                None => false,
                Some(Ok(policy)) => {
                    policy.command_rules_for(connection).next().is_some()
                        || policy.masking_rules_for(connection).next().is_some()
                }
                Some(Err(_)) => true,
            }
        })
    }

    fn masks(&self, session: &SessionContext) -> bool {
        self.projection.read(|tenants| {
            let Some(state) = tenants.get(&session.tenant) else { return false };
            let Some(connection) = state.connections.get(&session.connection) else { return false };
            match state.policy.as_ref().map(|p| &p.parsed) {
                Some(Ok(policy)) => policy.masking_rules_for(connection).next().is_some(),
                _ => false,
            }
        })
    }

    fn wants_catalog(&self, session: &SessionContext) -> bool {
        let version = self
            .projection
            .read(|t| t.get(&session.tenant).and_then(|s| s.policy.as_ref()).map(|p| p.version).unwrap_or_default());
        let derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        derived
            .get(&(session.tenant, session.connection))
            .is_none_or(|d| d.policy_version != version || d.at.elapsed() > DERIVED_FRESH_FOR)
    }

    fn learn_catalog(&self, session: &SessionContext, relations: &[airlock_core::policy::CatalogRelation]) {
        let learned = self.with_policy(session, |_, policy, version, connection| {
            let rules: Vec<_> = policy.masking_rules_for(connection).cloned().collect();
            (version, airlock_core::policy::derive_patterns(&rules, relations))
        });
        let Ok((policy_version, patterns)) = learned else { return };
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let derived = Derived { at: std::time::Instant::now(), policy_version, generation, patterns };
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((session.tenant, session.connection), Arc::new(derived));
    }

    fn result_mask(&self, session: &SessionContext, sql: Option<&Bytes>) -> Option<Arc<ResultMask>> {
        self.with_policy(session, |_, policy, version, connection| match sql {
            Some(sql) => self.decide(session, policy, version, connection, sql).mask,
            None => {
                let rules: Vec<_> = policy.masking_rules_for(connection).cloned().collect();
                (!rules.is_empty()).then(|| Arc::new(ResultMask::unread(rules)))
            }
        })
        .ok()
        .flatten()
    }
}

fn deny(rule: &str, reason: String) -> Verdict {
    Verdict::Deny { rule: rule.to_owned(), message: format!("permission denied: {reason}") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use airlock_core::connection::{ConnectionKind, CredentialMode, TargetTls};
    use airlock_core::principal::{AdminScope, Principal, PrincipalKind};
    use airlock_core::{Event, GrantId, SessionId};

    use super::*;

    const RULES: &str = "version: 1\ncommands:\n  - name: no-unbounded-writes\n    match: { unbounded_write: true }\n    action: deny\n";

    fn setup() -> (Arc<Projection>, SessionContext) {
        let tenant = TenantId::new();
        let connection = ConnectionSpec {
            id: ConnectionId::new(),
            name: "pg".into(),
            kind: ConnectionKind::Postgres,
            address: "h:5432".into(),
            database: "app".into(),
            tls: TargetTls::Prefer,
            roles: Default::default(),
            labels: Default::default(),
            credential_mode: CredentialMode::SessionRole,
            credential_user: "postgres".into(),
            secret_version: 1,
        };
        let projection = Arc::new(Projection::new());
        let events = [
            Event::TenantCreated { tenant_id: tenant, name: "t".into() },
            Event::ConnectionRegistered { spec: connection.clone() },
            Event::PolicyApplied { version: 1, source: RULES.into(), digest: "d".into() },
        ];
        for (i, e) in events.iter().enumerate() {
            projection.apply(tenant, i as u64 + 1, e).unwrap();
        }
        let session = SessionContext {
            tenant,
            session: SessionId::new(),
            principal: Principal {
                tenant_id: tenant,
                issuer: String::new(),
                subject: "agent".into(),
                groups: vec![],
                claims: Default::default(),
                kind: PrincipalKind::Workload,
                admin: AdminScope::None,
            },
            connection: connection.id,
            connection_name: "pg".into(),
            grant: GrantId::new(),
            role: "readonly".into(),
        };
        (projection, session)
    }

    #[test]
    fn repeated_statements_are_decided_once_per_policy() {
        let (projection, session) = setup();
        let hook = PolicyHook::new(projection.clone());
        let delete = Bytes::from_static(b"DELETE FROM t");
        for _ in 0..3 {
            assert!(matches!(hook.check(&session, Statement::Query { sql: &delete }), Verdict::Deny { .. }));
        }
        let select = Bytes::from_static(b"SELECT 1");
        assert_eq!(hook.check(&session, Statement::Query { sql: &select }), Verdict::Allow);
        // The refusal by its text; the allow by its text and by its form.
        assert_eq!(hook.cache.lock().unwrap().len(), 3, "one decision per distinct statement");

        // A new policy version is decided afresh: the old decision does not stick.
        projection
            .apply(
                session.tenant,
                4,
                &Event::PolicyApplied { version: 2, source: "version: 1\n".into(), digest: "e".into() },
            )
            .unwrap();
        assert_eq!(hook.check(&session, Statement::Query { sql: &delete }), Verdict::Allow);
    }

    #[test]
    fn statements_that_differ_in_constants_share_a_decision_unless_it_turns_on_them() {
        let (projection, session) = setup();
        let hook = PolicyHook::new(projection);
        let check =
            |sql: &'static str| hook.check(&session, Statement::Query { sql: &Bytes::from_static(sql.as_bytes()) });
        assert_eq!(check("DELETE FROM t WHERE id = 1"), Verdict::Allow);
        let entries = hook.cache.lock().unwrap().len();
        assert_eq!(check("DELETE FROM t WHERE id = 2"), Verdict::Allow);
        assert_eq!(check("DELETE FROM t WHERE id = 31337"), Verdict::Allow);
        assert_eq!(hook.cache.lock().unwrap().len(), entries, "found by form, nothing decided afresh");

        // `id + 1 = id + 2` bounds the delete (to nothing); `id + 1 = id + 1` does not.
        assert_eq!(check("DELETE FROM t WHERE id + 1 = id + 2"), Verdict::Allow);
        assert!(
            matches!(check("DELETE FROM t WHERE id + 1 = id + 1"), Verdict::Deny { rule, .. } if rule == "no-unbounded-writes")
        );
    }
}
