//! A session role's login reads the target's SCRAM messages: the client must
//! refuse malformed or hostile ones (a foreign nonce, a bad signature, an
//! iteration count past its bound) and never panic. The input is the
//! server-first message after `r=<the client's nonce>`, a newline, and the
//! server-final message; the whole input as a server-first message too.

#![no_main]

use airlock_data_plane::postgres::scram::{Login, verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (rest, last) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (_, salted) = verifier(b"password");
    for reuse in [None, Some(salted)] {
        let mut login = Login::new(b"password", reuse.clone());
        let nonce = login.first().split_off(b"n,,n=,r=".len());
        let first = [b"r=", &nonce[..], rest].concat();
        if login.respond(&first).is_ok() {
            // A signature the input carries cannot sign this exchange's nonce.
            assert!(login.verify(last).is_err(), "a forged signature was taken");
        }
        let _ = Login::new(b"password", reuse).respond(data);
    }
});
