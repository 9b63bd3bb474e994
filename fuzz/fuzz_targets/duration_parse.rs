//! Durations come from policies and API requests (`max_ttl: 1h30m`): parsing must refuse,
//! never panic, and what it accepts must read back the same after `format`.

#![no_main]

use airlock_core::duration::{format, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse(text) {
        assert_eq!(parse(&format(d)), Ok(d), "{text:?} parsed as {d:?}");
    }
});
