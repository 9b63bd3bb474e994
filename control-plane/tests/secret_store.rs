//! The secret store on both databases: versions, deletion, tenant separation,
//! and what an attacker with the database but not the master key gets.

// Helpers outside #[test] fns fail loudly too; clippy's allow-*-in-tests only covers the fns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[macro_use]
mod common;

use airlock_control_plane::store::Store;
use common::{Backend, tenant};

const PLAINTEXT: &[u8] = b"s3cr3t-admin-password-0123456789";

async fn versions_count_up_and_get_returns_the_latest(b: Backend) {
    let s = b.secrets();
    let t = tenant();
    assert!(s.get(t, "connection/a").await.unwrap().is_none());
    assert_eq!(s.put(t, "connection/a", b"one").await.unwrap(), 1);
    assert_eq!(s.put(t, "connection/a", b"two").await.unwrap(), 2);
    assert_eq!(s.put(t, "connection/b", b"other").await.unwrap(), 1);
    let got = s.get(t, "connection/a").await.unwrap().unwrap();
    assert_eq!((got.version, got.plaintext.as_slice()), (2, b"two".as_slice()));
    assert!(!format!("{got:?}").contains("two"));

    s.delete(t, "connection/a").await.unwrap();
    assert!(s.get(t, "connection/a").await.unwrap().is_none());
    assert_eq!(s.get(t, "connection/b").await.unwrap().unwrap().plaintext, b"other");
    // A deleted name starts again at version 1.
    assert_eq!(s.put(t, "connection/a", b"again").await.unwrap(), 1);
    s.delete(t, "never/stored").await.unwrap();
}

async fn tenants_do_not_see_each_others_secrets(b: Backend) {
    let s = b.secrets();
    let (ta, tb) = (tenant(), tenant());
    s.put(ta, "connection/a", b"a's").await.unwrap();
    assert!(s.get(tb, "connection/a").await.unwrap().is_none());
    s.delete(tb, "connection/a").await.unwrap();
    assert_eq!(s.get(ta, "connection/a").await.unwrap().unwrap().plaintext, b"a's");
}

async fn the_plaintext_is_not_in_the_stored_row(b: Backend) {
    let t = tenant();
    b.secrets().put(t, "connection/a", PLAINTEXT).await.unwrap();
    let cells = b.dump_bytes("secrets", &["tenant_id", "name", "nonce", "ciphertext"]).await;
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[2].len(), 24, "a 24-byte XChaCha20 nonce");
    for cell in &cells {
        assert!(!cell.windows(PLAINTEXT.len()).any(|w| w == PLAINTEXT), "plaintext stored in a column");
    }
}

async fn another_master_key_cannot_decrypt(b: Backend) {
    let t = tenant();
    b.secrets().put(t, "connection/a", PLAINTEXT).await.unwrap();
    let other = Store::open(&b.url(), [7; 32]).await.unwrap();
    let err = other.secrets().get(t, "connection/a").await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("secret connection/a (version 1) cannot be decrypted (wrong master key?)"), "{msg}");
    other.close().await;
}

async fn a_ciphertext_moved_to_another_name_does_not_decrypt(b: Backend) {
    let t = tenant();
    b.secrets().put(t, "connection/a", PLAINTEXT).await.unwrap();
    let n = b
        .exec(
            "INSERT INTO secrets (tenant_id, name, version, nonce, ciphertext) \
             SELECT tenant_id, 'connection/b', version, nonce, ciphertext FROM secrets \
             WHERE $1 = $1 AND tenant_id = $2 AND name = 'connection/a'",
            b"",
            &t.to_string(),
        )
        .await;
    assert_eq!(n, 1);
    let err = b.secrets().get(t, "connection/b").await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot be decrypted"), "{err:#}");
    // And moved to another tenant.
    let t2 = tenant();
    b.exec("UPDATE secrets SET tenant_id = $2 WHERE $1 = $1 AND name = 'connection/a'", b"", &t2.to_string()).await;
    assert!(b.secrets().get(t2, "connection/a").await.is_err());
}

async fn concurrent_puts_get_distinct_versions(b: Backend) {
    let s = b.secrets();
    let t = tenant();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.put(t, "signing-key/k", format!("v{i}").as_bytes()).await.unwrap() })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    assert_eq!(s.get(t, "signing-key/k").await.unwrap().unwrap().version, 10);
}

on_both_backends!(
    versions_count_up_and_get_returns_the_latest,
    tenants_do_not_see_each_others_secrets,
    the_plaintext_is_not_in_the_stored_row,
    another_master_key_cannot_decrypt,
    a_ciphertext_moved_to_another_name_does_not_decrypt,
    concurrent_puts_get_distinct_versions,
);

#[tokio::test]
async fn an_in_memory_sqlite_store_works() {
    let store = Store::open("sqlite::memory:", common::KEY).await.unwrap();
    let t = tenant();
    assert_eq!(store.secrets().put(t, "n", b"x").await.unwrap(), 1);
    let log = store.event_log();
    let r = log
        .append(t, "s", airlock_control_plane::eventlog::ExpectedVersion::Any, "a", &[common::event(1)])
        .await
        .unwrap();
    assert_eq!(log.read(t, 1, 10).await.unwrap(), r);
}
