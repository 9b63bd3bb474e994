//! The statement classifier reads what clients send through the gateway: it must
//! classify or refuse, never panic or overflow its stack; and whatever it cannot
//! read, the command rules refuse (nothing unreadable runs as a read).

#![no_main]

use std::sync::OnceLock;

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode, TargetTls};
use airlock_core::policy::{CommandVerdict, Policy};
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
    let verdict = policy.decide_statement(connection, data);
    if classified.is_err() {
        assert!(matches!(verdict, CommandVerdict::Deny { .. }), "unreadable input was not refused: {verdict:?}");
    }
});
