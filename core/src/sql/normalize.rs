//! Statement text with its literal values taken out, so that statements that
//! differ only in their constants (`... WHERE aid = 48213` and `... WHERE aid =
//! 17`) share one cached decision.
//!
//! Only a decision that does not depend on any literal's value may be shared
//! this way ([`crate::policy::Decision::reusable`] says which). For that to hold,
//! two texts with the same normalized form must be read by every parser as the
//! same tokens except for the values of literals. This module therefore takes
//! out only literals whose extent Postgres (with `standard_conforming_strings`
//! on, the only setting the gateway inspects statements under), sqlparser and
//! this lexer all agree on, and gives up (`None`) on anything else: dollar
//! quotes, block comments, prefixed strings (`E'...'`, `U&'...'`, `B'...'`),
//! backslashes in strings, and numbers in any form but `123` and `1.5`.
//!
//! Each literal becomes a marker byte `0xFF`, which valid UTF-8 never holds,
//! followed by its kind (`'` a string, `0` an integer, `.` a decimal): the
//! text between markers is the original's, byte for byte, so equal forms mean
//! equal text outside literals. Integers past 2147483647 are kept as they
//! are: parsers read some integers into 32 bits and refuse larger ones.

/// The byte that starts a marker in a normalized form.
const MARK: u8 = 0xFF;

/// The normalized form of `sql`, or `None` when it holds something this
/// module does not take apart (or is not UTF-8).
pub fn normalize(sql: &[u8]) -> Option<Vec<u8>> {
    std::str::from_utf8(sql).ok()?;
    let mut out = Vec::with_capacity(sql.len());
    let span = |from: usize, to: usize| sql.get(from..to).unwrap_or_default();
    let mut i = 0;
    while let Some(&b) = sql.get(i) {
        let previous = i.checked_sub(1).and_then(|p| sql.get(p).copied());
        let next = sql.get(i + 1).copied();
        match b {
            b'\'' => {
                // A quote right after a name is a prefixed string (E'..', B'..',
                // N'..', X'..') or U&'..': each reads its body in its own way.
                if previous.is_some_and(|p| p == b'&' || is_word_byte(p)) {
                    return None;
                }
                i = string_end(sql, i + 1)?;
                out.extend_from_slice(&[MARK, b'\'']);
            }
            b'"' => {
                let end = quoted_identifier_end(sql, i + 1)?;
                out.extend_from_slice(span(i, end));
                i = end;
            }
            b'0'..=b'9' => {
                // `.5` and `t.5`: the parsers read the dot as part of the number.
                if previous == Some(b'.') {
                    return None;
                }
                let end = number_end(sql, i)?;
                let number = span(i, end);
                let kind = if number.contains(&b'.') {
                    b'.'
                } else if std::str::from_utf8(number).ok()?.parse::<u32>().ok()? > i32::MAX.unsigned_abs() {
                    return None;
                } else {
                    b'0'
                };
                out.extend_from_slice(&[MARK, kind]);
                i = end;
            }
            b'$' => {
                // `$1`: a parameter, kept. Anything else is a dollar quote.
                let end = i + 1 + run(sql, i + 1, |c| c.is_ascii_digit());
                if end == i + 1 || sql.get(end).is_some_and(|&c| is_word_byte(c) || c == b'.') {
                    return None;
                }
                out.extend_from_slice(span(i, end));
                i = end;
            }
            b'-' if next == Some(b'-') => {
                let end = i + run(sql, i, |c| c != b'\n' && c != b'\r');
                out.extend_from_slice(span(i, end));
                i = end;
            }
            b'/' if next == Some(b'*') => return None,
            b'\\' | 0 | MARK => return None,
            b if is_word_start(b) => {
                let end = i + run(sql, i, is_word_byte);
                out.extend_from_slice(span(i, end));
                i = end;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// How many bytes from `from` on satisfy `f`.
fn run(sql: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    sql.get(from..).unwrap_or_default().iter().take_while(|&&c| f(c)).count()
}

/// A statement of the normalized `form` with every integer written as
/// `integer`, every decimal as `decimal` and every string as `string` (which
/// must be such literals themselves): how tests make statements that a shared
/// decision must fit.
#[doc(hidden)]
pub fn with_literals(form: &[u8], integer: &str, decimal: &str, string: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(form.len());
    let mut i = 0;
    while let Some(&b) = form.get(i) {
        match (b, form.get(i + 1)) {
            (MARK, Some(b'0')) => out.extend_from_slice(integer.as_bytes()),
            (MARK, Some(b'.')) => out.extend_from_slice(decimal.as_bytes()),
            (MARK, _) => out.extend_from_slice(string.as_bytes()),
            _ => {
                out.push(b);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_byte(b: u8) -> bool {
    is_word_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Where a string whose body starts at `i` ends (past its closing quote).
fn string_end(sql: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match sql.get(i)? {
            b'\\' => return None,
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Where a quoted identifier whose body starts at `i` ends (past its quote).
fn quoted_identifier_end(sql: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match sql.get(i)? {
            b'"' if sql.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Where a number starting at `i` ends: `123` or `1.5`, followed by neither a
/// name nor another dot (`1e5`, `0x1F`, `1_000` and `1.` are not taken apart).
fn number_end(sql: &[u8], i: usize) -> Option<usize> {
    let mut end = i + run(sql, i, |c| c.is_ascii_digit());
    if sql.get(end) == Some(&b'.') {
        let fraction = run(sql, end + 1, |c| c.is_ascii_digit());
        if fraction == 0 {
            return None;
        }
        end += 1 + fraction;
    }
    match sql.get(end) {
        Some(&c) if is_word_byte(c) || c == b'.' => None,
        _ => Some(end),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn same(a: &str, b: &str) -> bool {
        let (x, y) = (normalize(a.as_bytes()), normalize(b.as_bytes()));
        assert!(x.is_some() && y.is_some(), "{a:?} / {b:?} not normalized");
        x == y
    }

    #[test]
    fn literals_that_differ_share_a_form() {
        assert!(same(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;"
        ));
        assert!(same(
            "SELECT * FROM t WHERE name = 'ann' AND x > 1.5",
            "SELECT * FROM t WHERE name = 'it''s' AND x > 20.25"
        ));
        assert!(same("INSERT INTO t VALUES (1, 'a', $1)", "INSERT INTO t VALUES (99, '', $1)"));
        assert!(same("SELECT 2147483647", "SELECT 0"));
        assert!(same("SELECT 1 -- it's a comment\n, 'x'", "SELECT 2 -- it's a comment\n, 'y'"));
    }

    #[test]
    fn everything_but_literals_is_kept() {
        assert!(!same("SELECT a FROM t WHERE id = 1", "SELECT b FROM t WHERE id = 1"));
        assert!(!same("SELECT 1", "SELECT '1'"));
        assert!(!same("SELECT $1", "SELECT $2"));
        assert!(!same("SELECT t1 FROM t", "SELECT t2 FROM t"));
        assert!(!same("SELECT \"a'b\" FROM t", "SELECT \"a'c\" FROM t"));
        assert!(!same("SELECT 1 -- x\n", "SELECT 1 -- y\n"));
        assert!(!same("SELECT 1  FROM t", "SELECT 1 FROM t"));
        // Integers and decimals apart: some places take only the first.
        assert!(!same("SELECT x::numeric(10)", "SELECT x::numeric(1.5)"));
    }

    #[test]
    fn what_it_does_not_take_apart() {
        for sql in [
            "SELECT E'a\\'b'",
            "SELECT e'x'",
            "SELECT U&'d!0061t' UESCAPE '!'",
            "SELECT B'101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT 'a\\'",
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT /* c */ 1",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1.",
            "SELECT 1..2",
            "SELECT 1.x",
            "SELECT 1abc",
            "SELECT .5",
            "SELECT t.5",
            "SELECT 2147483648",
            "SELECT 99999999999999999999",
            "SELECT $1abc",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
        ] {
            assert_eq!(normalize(sql.as_bytes()), None, "{sql}");
        }
        assert_eq!(normalize(b"SELECT '\xff'"), None, "not UTF-8");
    }

    #[test]
    fn names_keep_their_digits_and_dollars() {
        assert_eq!(normalize(b"SELECT a1$b FROM t2").as_deref(), Some(&b"SELECT a1$b FROM t2"[..]));
        assert_eq!(normalize("SELECT é1 FROM t".as_bytes()).as_deref(), Some("SELECT é1 FROM t".as_bytes()));
    }
}
