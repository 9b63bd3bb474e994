//! What a session role's password costs the gateway: its SCRAM verifier
//! (PBKDF2-HMAC-SHA-256, 4096 iterations), and the client's side of the login
//! with the verifier's salted password reused, against the same login hashing
//! the password again (what it did before the salted password was kept).
//!
//!     cargo bench -p airlock-data-plane --bench scram

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::hint::black_box;

use airlock_data_plane::postgres::scram::{Login, SaltedPassword, verifier};
use criterion::{Criterion, criterion_group, criterion_main};

const PASSWORD: &[u8] = b"Zk3v0p1nq4uA8d2mT7yH5cW9eR6sL0xB1fJ2gN3kQ4r";
/// The salt the verifier carries, as a server's first message names it.
const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const SALT: [u8; 16] = [0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81];

/// The client's two steps against a server that names `SALT` and 4096 iterations.
fn login(salted: SaltedPassword) -> Vec<u8> {
    let mut login = Login::new(salted);
    let nonce = String::from_utf8(login.first().split_off(b"n,,n=,r=".len())).unwrap();
    let server_first = format!("r={nonce}server,s={SALT_B64},i=4096");
    login.respond(server_first.as_bytes()).unwrap()
}

fn scram(c: &mut Criterion) {
    c.bench_function("scram/verifier", |b| b.iter(|| black_box(verifier(black_box(PASSWORD)))));
    let salted = SaltedPassword::compute(PASSWORD, &SALT, 4096);
    c.bench_function("scram/login reusing the salted password", |b| b.iter(|| black_box(login(salted.clone()))));
    c.bench_function("scram/login hashing the password", |b| {
        b.iter(|| black_box(login(SaltedPassword::compute(PASSWORD, &SALT, 4096))))
    });
}

criterion_group!(benches, scram);
criterion_main!(benches);
