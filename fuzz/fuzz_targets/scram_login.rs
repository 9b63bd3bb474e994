//! A session role's login reads the target's SCRAM messages: the client must
//! refuse malformed or hostile ones (a foreign nonce, a salt or iteration
//! count other than its verifier's, a bad signature) and never panic. The
//! input is the server-first message after `r=<the client's nonce>`, a
//! newline, and the server-final message; the whole input is also tried as a
//! server-first message. The login holds the salted password for RFC 7677's
//! salt (`W22ZaJ0SNY7soEsUEjb6gQ==`, 4096 iterations), as a session role's does.

#![no_main]

use std::sync::OnceLock;

use airlock_data_plane::postgres::scram::{Login, SaltedPassword};
use libfuzzer_sys::fuzz_target;

/// The RFC's salt, decoded.
const SALT: [u8; 16] = [0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81];

fuzz_target!(|data: &[u8]| {
    static SALTED: OnceLock<SaltedPassword> = OnceLock::new();
    let salted = SALTED.get_or_init(|| SaltedPassword::compute(b"pencil", &SALT, 4096));
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
});
