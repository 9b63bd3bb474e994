//! The admin connection binds its login to the target's certificate, whose
//! bytes, under `require`, nothing else has read: finding the certificate's
//! signature algorithm must never panic or read past a declared length, and
//! whatever it finds, the binding is a hash of the certificate's own bytes.

#![no_main]

use airlock_data_plane::postgres::scram::tls_server_end_point;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(hash) = tls_server_end_point(data) {
        assert!(matches!(hash.len(), 32 | 48 | 64), "{} bytes", hash.len());
    }
});
