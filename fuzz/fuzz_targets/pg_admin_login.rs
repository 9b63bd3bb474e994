//! An admin connection's login reads the target's messages before tokio_postgres
//! does (`roles::LoginGuard`), to refuse what would hand the admin password to
//! whoever answers at the target's address. Whatever the target sends, in
//! whatever pieces, the guard must never panic, and one that does not trust the
//! target must refuse a first message asking for the password in cleartext or
//! as MD5.
//!
//! The first input byte chooses the guard (bit 0: trusted, bit 1: TLS, bit 2:
//! a certificate to bind to) and the size of the pieces (the other bits, plus
//! one); the rest is what the target sends.

#![no_main]

use airlock_data_plane::postgres::roles::LoginGuard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, sent)) = data.split_first() else { return };
    let trusted = flags & 1 != 0;
    let binding = (flags & 4 != 0).then(|| vec![0xab; 32]);
    let mut guard = LoginGuard::new((), trusted, flags & 2 != 0, binding);
    let piece = usize::from(flags >> 3) + 1;
    let refused = sent.chunks(piece).any(|read| guard.inspect(read).is_err());
    if !trusted && asks_for_the_password(sent) {
        assert!(refused, "a request for the password passed a guard that does not trust the target");
    }
});

/// The first message is a whole authentication request for the password in
/// cleartext (3) or as MD5 (5).
fn asks_for_the_password(sent: &[u8]) -> bool {
    let (Some(b'R'), Some(len), Some(code)) = (sent.first(), sent.get(1..5), sent.get(5..9)) else { return false };
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    (8..64 * 1024).contains(&len) && usize::try_from(len).is_ok_and(|len| sent.len() > len) && matches!(code, 3 | 5)
}
