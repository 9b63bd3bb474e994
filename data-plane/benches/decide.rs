//! What deciding a statement costs the gateway: classifying it, following its
//! masked columns and applying the command and masking rules of the example
//! policy (cold: sqlparser and Postgres's grammar both read it), and a
//! decision the cache already holds (warm), through the hook sessions call:
//! for the same text, and for the same statement with other constants (found
//! by its normalized form).
//!
//!     cargo bench -p airlock-data-plane --bench decide

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode, TargetTls};
use airlock_core::policy::Policy;
use airlock_core::principal::{AdminScope, Principal, PrincipalKind};
use airlock_core::{ConnectionId, Event, GrantId, SessionId, TenantId};
use airlock_data_plane::Projection;
use airlock_data_plane::postgres::hook::{SessionContext, Statement, StatementHook};
use airlock_data_plane::postgres::policy_hook::PolicyHook;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

const POLICY: &str = include_str!("../../core/testdata/example-policy.yaml");

const STATEMENTS: &[(&str, &str)] = &[
    ("point-select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"),
    (
        "join",
        "SELECT u.id, u.email, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.created_at > now() - interval '1 day' ORDER BY o.total DESC LIMIT 20",
    ),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 48213"),
    ("ddl", "ALTER TABLE orders ADD COLUMN note text"),
];

fn setup() -> (Arc<Projection>, SessionContext, ConnectionSpec) {
    let tenant = TenantId::new();
    let connection = ConnectionSpec {
        id: ConnectionId::new(),
        name: "pg-local".into(),
        kind: ConnectionKind::Postgres,
        address: "127.0.0.1:5432".into(),
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
        Event::PolicyApplied { version: 1, source: POLICY.into(), digest: "d".into() },
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
        connection_name: connection.name.clone(),
        grant: GrantId::new(),
        role: "readonly".into(),
    };
    (projection, session, connection)
}

fn decide(c: &mut Criterion) {
    let (projection, session, connection) = setup();
    let policy = Policy::parse(POLICY).unwrap();
    let hook = PolicyHook::new(projection);
    for (name, text) in STATEMENTS {
        let sql = Bytes::from_static(text.as_bytes());
        c.bench_function(&format!("cold/{name}"), |b| b.iter(|| black_box(policy.decide_statement(&connection, &sql))));
        c.bench_function(&format!("cached/{name}"), |b| {
            b.iter(|| black_box(hook.check(&session, Statement::Query { sql: &sql })))
        });
        // A masked session also asks for the statement's result mask, from the same cache.
        c.bench_function(&format!("cached-mask/{name}"), |b| {
            b.iter(|| black_box(hook.result_mask(&session, Some(&sql))))
        });
        if !text.contains("48213") {
            continue;
        }
        // Texts the cache holds no decision for, of a form it does.
        let texts: Vec<Bytes> =
            (0..4096).map(|i| Bytes::from(text.replace("48213", &(100_000 + i).to_string()))).collect();
        let mut next = texts.iter().cycle();
        c.bench_function(&format!("cached-by-form/{name}"), |b| {
            b.iter(|| black_box(hook.check(&session, Statement::Query { sql: next.next().unwrap() })))
        });
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
