//! Replays the fuzzers' seed inputs (`fuzz/corpus/<target>/`) through the parsers they
//! target, so a regression shows up in the ordinary test suite without a fuzzer. An
//! input that once crashed a fuzzer belongs in the corpus too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use airlock_core::policy::Policy;
use airlock_core::{duration, snapshot};

/// Every file of `fuzz/corpus/<target>/`, by name; an empty or missing corpus fails.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed inputs in {}", dir.display());
    files
}

#[test]
fn policy_parse_seeds() {
    let mut accepted = 0;
    for (_name, bytes) in corpus("policy_parse") {
        let Ok(source) = std::str::from_utf8(&bytes) else { continue };
        accepted += usize::from(Policy::parse(source).is_ok());
    }
    // The README's example policy is among the seeds and must stay valid.
    assert!(accepted >= 1, "no seed policy parsed");
}

#[test]
fn snapshot_decode_seeds() {
    let mut decoded = 0;
    for (name, bytes) in corpus("snapshot_decode") {
        if let Some(state) = snapshot::decode(&bytes) {
            let again = snapshot::decode(&snapshot::encode(&state).unwrap());
            assert_eq!(again.as_ref(), Some(&state), "{name}: re-encoded snapshot differs");
            decoded += 1;
        }
    }
    assert!(decoded >= 1, "no seed snapshot decoded");
}

#[test]
fn duration_parse_seeds() {
    for (name, bytes) in corpus("duration_parse") {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Ok(d) = duration::parse(text) {
            assert_eq!(duration::parse(&duration::format(d)), Ok(d), "{name}: {text:?}");
        }
    }
}

#[test]
fn the_alias_expansion_seed_is_refused_before_it_expands() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/policy_parse/alias-expansion.yaml");
    let source = std::fs::read_to_string(path).unwrap();
    let e = airlock_core::policy::Policy::parse(&source).unwrap_err();
    assert!(e.reason.contains("aliases"), "{e}");
}

#[test]
fn sql_classify_seeds() {
    let policy = Policy::parse(include_str!("../testdata/example-policy.yaml")).unwrap();
    let connection = airlock_core::connection::ConnectionSpec {
        id: airlock_core::ConnectionId::new(),
        name: "pg-local".into(),
        kind: airlock_core::connection::ConnectionKind::Postgres,
        address: "127.0.0.1:5432".into(),
        database: "app".into(),
        tls: airlock_core::connection::TargetTls::Prefer,
        roles: Default::default(),
        labels: Default::default(),
        credential_mode: airlock_core::connection::CredentialMode::SessionRole,
        credential_user: "postgres".into(),
        secret_version: 1,
    };
    let mut classified = 0;
    for (name, bytes) in corpus("sql_classify") {
        let readable = airlock_core::sql::classify_bytes(&bytes).is_ok();
        classified += usize::from(readable);
        // Nothing the classifier cannot read runs.
        let verdict = policy.decide_statement(&connection, &bytes);
        assert!(
            readable || matches!(verdict, airlock_core::policy::CommandVerdict::Deny { .. }),
            "{name}: {verdict:?}"
        );
    }
    assert!(classified >= 1, "no seed statement classified");
}
