//! Settings a client makes in its startup message. Postgres applies every
//! startup parameter but `user`, `database` and `replication` as a setting,
//! and the `-c name=value` switches of `options` (libpq's `PGOPTIONS`) too,
//! before the first statement: `role=admin_reader` in a startup message is a
//! `SET ROLE` no statement shows. Where the hook inspects a session, each such
//! setting goes to it as the `SET` it amounts to, and a login with one it would
//! not allow is refused.
//!
//! A few settings that only shape how values are read and shown, which every
//! driver sends, are not asked about (`PRESENTATION`).

use bytes::Bytes;

/// Settings drivers send with every login that change how text and values
/// look, not what a session may do. (`client_encoding` also changes how the
/// server reads statement text: the relay follows it from the server's
/// ParameterStatus, see `lexing_setting`.)
const PRESENTATION: &[&str] =
    &["application_name", "client_encoding", "datestyle", "timezone", "extra_float_digits", "intervalstyle"];

/// A startup parameter or setting: its name and value, as bytes.
pub type Param = (Vec<u8>, Vec<u8>);

/// A setting the hook is asked about: the name as the client gave it and the
/// statement it amounts to.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub statement: Bytes,
}

/// The settings of forwarded startup parameters (`user`, `database` and
/// `replication` already taken out) that the hook is asked about, or why the
/// login cannot go on.
pub fn settings(params: &[Param]) -> Result<Vec<Setting>, String> {
    let mut out = Vec::new();
    for (name, value) in params {
        if name == b"options" {
            for (name, value) in options(value)? {
                push(&mut out, &name, &value)?;
            }
        } else {
            push(&mut out, name, value)?;
        }
    }
    Ok(out)
}

fn push(out: &mut Vec<Setting>, name: &[u8], value: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(name).into_owned();
    // Postgres's setting names are ASCII letters, digits, `_` and `.`
    // (an extension's), in any case; nothing else names a setting.
    if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.')) {
        return Err(format!("the startup parameter {shown:?} is not a setting the gateway can check"));
    }
    let lower = name.to_ascii_lowercase();
    if PRESENTATION.iter().any(|p| p.as_bytes() == lower.as_slice()) {
        return Ok(());
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return Err(format!("the value of startup setting {shown} is not UTF-8, which the gateway cannot check"));
    };
    // `lower` is ASCII: letters, digits, `_` and `.` only.
    let name_sql = String::from_utf8_lossy(&lower);
    let statement = format!("SET {name_sql} TO '{}'", value.replace('\'', "''"));
    out.push(Setting { name: shown, statement: Bytes::from(statement) });
    Ok(())
}

/// The settings in an `options` startup parameter, split as Postgres splits
/// it (`pg_split_opts`: at whitespace, a backslash taking the next byte as
/// it is) and read as its switches are: `-c name=value`, `-cname=value` and
/// `--name=value`, a `-` in the name read as `_`. Any other switch is refused:
/// the gateway would not know what it sets.
fn options(value: &[u8]) -> Result<Vec<Param>, String> {
    // Postgres splits with C's isspace, which counts \v and \f (Rust's
    // `is_ascii_whitespace` does not: a vertical tab would hide a second
    // setting inside the first), and in some locales bytes above ASCII: those,
    // and other control bytes, are refused rather than guessed at.
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    if let Some(b) = value.iter().find(|b| !space(b) && (b.is_ascii_control() || !b.is_ascii())) {
        return Err(format!(
            "the startup parameter options holds the byte 0x{b:02x}, which the gateway cannot split as the \
             server would"
        ));
    }
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut rest = value.iter().copied().peekable();
    loop {
        while rest.next_if(space).is_some() {}
        if rest.peek().is_none() {
            break;
        }
        let mut word = Vec::new();
        while let Some(b) = rest.next_if(|b| !space(b)) {
            if b == b'\\' {
                match rest.next() {
                    Some(escaped) => word.push(escaped),
                    None => break,
                }
            } else {
                word.push(b);
            }
        }
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if let Some(long) = word.strip_prefix(b"--") {
            long.to_vec()
        } else if word == b"-c" {
            words.next().ok_or("the startup option -c has no setting after it")?
        } else if let Some(attached) = word.strip_prefix(b"-c") {
            attached.to_vec()
        } else {
            return Err(format!(
                "the startup option {:?} is not a setting (-c name=value) the gateway can check",
                String::from_utf8_lossy(&word)
            ));
        };
        let Some(eq) = setting.iter().position(|&b| b == b'=') else {
            return Err(format!("the startup option {:?} has no value", String::from_utf8_lossy(&setting)));
        };
        let (name, value) = setting.split_at(eq);
        let name = name.iter().map(|&b| if b == b'-' { b'_' } else { b }).collect();
        out.push((name, value.get(1..).unwrap_or_default().to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<Param> {
        pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn statements(pairs: &[(&str, &str)]) -> Vec<String> {
        settings(&p(pairs)).unwrap().into_iter().map(|s| String::from_utf8(s.statement.to_vec()).unwrap()).collect()
    }

    #[test]
    fn presentation_settings_are_not_asked_about() {
        let asked = statements(&[
            ("application_name", "psql"),
            ("client_encoding", "LATIN1"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "2"),
            ("IntervalStyle", "iso_8601"),
        ]);
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[test]
    fn other_parameters_become_the_set_they_amount_to() {
        assert_eq!(
            statements(&[("role", "pii_reader"), ("search_path", "it's, public"), ("Statement_Timeout", "5s")]),
            vec!["SET role TO 'pii_reader'", "SET search_path TO 'it''s, public'", "SET statement_timeout TO '5s'"]
        );
        let named = settings(&p(&[("Statement_Timeout", "5s")])).unwrap();
        assert_eq!(named[0].name, "Statement_Timeout", "errors name the parameter as the client sent it");
    }

    #[test]
    fn options_are_split_as_postgres_splits_them() {
        assert_eq!(
            statements(&[(
                "options",
                r"  -c role=admin --search-path=a\ b -cdefault_transaction_read_only=off -c my.flag=x\\y "
            )]),
            vec![
                "SET role TO 'admin'",
                "SET search_path TO 'a b'",
                "SET default_transaction_read_only TO 'off'",
                r"SET my.flag TO 'x\y'",
            ]
        );
        assert_eq!(statements(&[("options", "-c DateStyle=ISO")]), Vec::<String>::new());
        assert_eq!(statements(&[("options", "   ")]), Vec::<String>::new());
    }

    #[test]
    fn what_cannot_be_read_as_a_setting_is_refused() {
        for (name, value, why) in [
            ("options", "-d 5", "not a setting"),
            ("options", "-c", "no setting after it"),
            ("options", "--role", "has no value"),
            ("options", "-e", "not a setting"),
            ("bad name", "x", "not a setting the gateway can check"),
            ("role;", "x", "not a setting the gateway can check"),
            ("", "x", "not a setting the gateway can check"),
        ] {
            let err = settings(&p(&[(name, value)])).unwrap_err();
            assert!(err.contains(why), "{name}={value}: {err}");
        }
        let err = settings(&[(b"role".to_vec(), vec![0xff])]).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        for hidden in [&b"\x01"[..], b"\xa0", b"\x7f"] {
            let value = [&b"-capplication_name=x"[..], hidden, b"-crole=admin"].concat();
            let err = settings(&[(b"options".to_vec(), value)]).unwrap_err();
            assert!(err.contains("cannot split"), "{err}");
        }
    }

    /// Every byte C's isspace takes as a space splits, as the server splits:
    /// a vertical tab or form feed hides no setting.
    #[test]
    fn options_split_where_the_server_splits() {
        for space in [b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r'] {
            let value = [&b"-capplication_name=x"[..], &[space], b"-crole=admin"].concat();
            let made = settings(&[(b"options".to_vec(), value)]).unwrap();
            assert_eq!(made.len(), 1, "split at 0x{space:02x}");
            assert_eq!(made[0].statement, "SET role TO 'admin'");
        }
    }
}
