//! `Policy::parse` reads YAML that tenants PUT over the API: it must refuse, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let _ = airlock_core::policy::Policy::parse(source);
});
