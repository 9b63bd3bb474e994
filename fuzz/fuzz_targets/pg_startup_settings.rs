//! A client's startup parameters (`name\0value\0...`, as the startup message
//! carries them; `options` split as Postgres splits it) become the `SET`
//! statements the hook is asked about. Whatever the bytes, reading them never
//! panics, and each statement is `SET <name> TO '<value>'` with a name of
//! setting characters and every quote in the value doubled: no input can end
//! the literal and add SQL of its own.

#![no_main]

use airlock_data_plane::postgres::startup_settings::settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut params = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        params.push((name.to_vec(), value.to_vec()));
    }
    let Ok(made) = settings(&params) else { return };
    for setting in made {
        let sql = std::str::from_utf8(&setting.statement).expect("a statement is UTF-8");
        let rest = sql.strip_prefix("SET ").expect("a SET");
        let (name, literal) = rest.split_once(" TO '").expect("SET name TO '...'");
        assert!(
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'),
            "{sql}"
        );
        let value = literal.strip_suffix('\'').expect("a closed literal");
        assert!(!value.replace("''", "").contains('\''), "a quote left undoubled: {sql}");
    }
});
