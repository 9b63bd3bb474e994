//! The statement classifier reads what clients send through the gateway: it must
//! classify or refuse, never panic or overflow its stack; and whatever it cannot
//! read, the command rules refuse (nothing unreadable runs as a read). A
//! decision said to hold for every statement of the same normalized form
//! must be the decision of each such statement.

#![no_main]

use std::sync::OnceLock;

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode, TargetTls};
use airlock_core::policy::{CommandVerdict, Policy};
use airlock_core::sql::normalize::{normalize, with_literals};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static (Policy, ConnectionSpec) {
    static POLICY: OnceLock<(Policy, ConnectionSpec)> = OnceLock::new();
    POLICY.get_or_init(|| {
        let policy = Policy::parse(include_str!("../../core/testdata/example-policy.yaml")).expect("example policy");
        let connection = ConnectionSpec {
            id: airlock_core::ConnectionId::new(),
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
        (policy, connection)
    })
}

fuzz_target!(|data: &[u8]| {
    let classified = airlock_core::sql::classify_bytes(data);
    let (policy, connection) = policy();
    let decided = policy.decide(connection, data);
    if classified.is_err() {
        let verdict = &decided.verdict;
        assert!(matches!(verdict, CommandVerdict::Deny { .. }), "unreadable input was not refused: {verdict:?}");
    }
    if let (true, Some(form)) = (decided.reusable, normalize(data)) {
        for (integer, decimal, string) in [("0", "0.0", "''"), ("2", "1.5", "'role'"), ("2147483647", "2.5", "'ab'")] {
            let other = with_literals(&form, integer, decimal, string);
            assert_eq!(normalize(&other).as_ref(), Some(&form), "a statement of the form has another form");
            let theirs = policy.decide(connection, &other);
            assert_eq!((&theirs.verdict, &theirs.mask), (&decided.verdict, &decided.mask), "decided apart");
        }
    }
});
