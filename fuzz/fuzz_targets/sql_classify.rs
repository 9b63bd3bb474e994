//! The statement classifier reads what clients send through the gateway: it must
//! classify or refuse, never panic or overflow its stack.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airlock_core::sql::classify_bytes(data);
});
