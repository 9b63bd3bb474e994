//! A session role's login, and a login with a stored password, read the
//! target's SCRAM messages: the client must refuse malformed or hostile ones (a
//! foreign nonce, a salt or iteration count other than its verifier's, a bad
//! signature) and never panic. The input is the server-first message after
//! `r=<the client's nonce>`, a newline, and the server-final message; the whole
//! input is also tried as a server-first message. The session role's login
//! holds the salted password for RFC 7677's salt (`W22ZaJ0SNY7soEsUEjb6gQ==`,
//! 4096 iterations); the stored password's cache holds the same, and the
//! stored logins (unbound, unbound though able, bound) answer only what needs
//! no hashing, which must never hash.

#![no_main]

use std::sync::{Arc, OnceLock};

use airlock_data_plane::postgres::scram::{Login, SaltCache, SaltedPassword};
use libfuzzer_sys::fuzz_target;

/// The RFC's salt, decoded and as sent.
const SALT: [u8; 16] = [0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81];
const SALT_SENT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

fuzz_target!(|data: &[u8]| {
    static SALTED: OnceLock<SaltedPassword> = OnceLock::new();
    static CACHE: OnceLock<Arc<SaltCache>> = OnceLock::new();
    let salted = SALTED.get_or_init(|| SaltedPassword::compute(b"pencil", &SALT, 4096));
    let cache = CACHE.get_or_init(|| {
        let cache = Arc::new(SaltCache::default());
        let mut login = Login::stored("pencil", cache.clone()).expect("a printable password");
        let nonce = String::from_utf8(login.first().split_off(b"n,,n=,r=".len())).expect("a base64 nonce");
        let first = format!("r={nonce}x,s={SALT_SENT},i=4096");
        login.respond(first.as_bytes()).expect("the cache hashes the RFC's salt");
        cache
    });
    let (rest, last) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut login = Login::new(salted.clone());
    let nonce = login.first().split_off(b"n,,n=,r=".len());
    let first = [b"r=", &nonce[..], rest].concat();
    if login.respond(&first).is_ok() {
        // A signature the input carries cannot sign this exchange's nonce.
        assert!(login.verify(last).is_err(), "a forged signature was taken");
    }
    let _ = Login::new(salted.clone()).respond(data);

    let stored = || Login::stored("pencil", cache.clone()).expect("a printable password");
    for mut login in [stored(), stored().able_to_bind(), stored().bind(vec![0xab; 32])] {
        let client_first = login.first();
        let nonce = client_first.windows(3).position(|w| w == b",r=").map_or(&[][..], |at| &client_first[at + 3..]);
        let first = [b"r=", nonce, rest].concat();
        if let Some(Ok(_)) = login.respond_if_kept(&first) {
            assert!(login.verify(last).is_err(), "a forged signature was taken");
        }
    }
    assert_eq!(cache.hashed(), 1, "a stored login hashed where it must not");
});
