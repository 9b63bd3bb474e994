//! Whether a statement's text may deallocate, discard or prepare statements
//! by SQL, read as the server reads keywords. The relay forgets what it knows
//! of the session's prepared statements when a Query or a Bind runs such a
//! text (see `statements`). It reads client bytes: linear in them, and never
//! panics.

/// Whether `sql` may deallocate, discard or prepare statements: it has the
/// word DEALLOCATE, DISCARD, PREPARE or EXECUTE (which runs a prepared
/// statement, maybe one of those) as the server would read a keyword, in any
/// case. Words inside string literals, quoted names and comments do not
/// count (`WHERE state = 'prepare'`), nor inside a longer name
/// (`prepared_at`); words inside a dollar-quoted string do, wherever they
/// are, since such a string may be code (there `EXECUTE` counts wherever it
/// stands). A `DO` statement counts whatever it holds: its body, in any
/// quotes and any language, may build the words out of parts. A word after
/// a digit counts (older servers read `1prepare` as two tokens).
/// The session's strings are read with `standard_conforming_strings` on
/// (a session that reads them otherwise is refused every statement where
/// rules apply: `lexing_safe` in `session`).
pub fn mentions_deallocation(sql: &[u8]) -> bool {
    let at = |i: usize| sql.get(i).copied();
    // Where the identifier the scan is in began (none between tokens, and in
    // a number or parameter, which a `$` or a word ends).
    let mut name_from: Option<usize> = None;
    // Nothing but white space and comments since the start or a `;`.
    let mut statement_start = true;
    let mut i = 0;
    while let Some(c) = at(i) {
        match c {
            b'\'' => {
                // An E'...' string reads backslash escapes, and so do the parts
                // that continue it after a newline.
                let escapes = name_from == i.checked_sub(1) && matches!(at(i.wrapping_sub(1)), Some(b'e' | b'E'));
                i = string_end(sql, i + 1, escapes);
                while let Some(next) = continued_string(sql, i) {
                    i = string_end(sql, next + 1, escapes);
                }
                statement_start = false;
            }
            b'"' => {
                statement_start = false;
                i += 1;
                while let Some(c) = at(i) {
                    i += 1;
                    if c == b'"' {
                        if at(i) != Some(b'"') {
                            break;
                        }
                        i += 1;
                    }
                }
            }
            b'-' if at(i + 1) == Some(b'-') => {
                while at(i).is_some_and(|c| c != b'\n' && c != b'\r') {
                    i += 1;
                }
            }
            b'/' if at(i + 1) == Some(b'*') => {
                let mut depth = 0usize;
                while let Some(c) = at(i) {
                    if c == b'/' && at(i + 1) == Some(b'*') {
                        depth += 1;
                        i += 2;
                    } else if c == b'*' && at(i + 1) == Some(b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if name_from.is_none() => {
                let Some(tag_len) = dollar_tag(sql.get(i..).unwrap_or_default()) else {
                    // A parameter (`$1`), which a `$` after it ends.
                    i += 1;
                    continue;
                };
                let tag = sql.get(i..i + tag_len).unwrap_or_default();
                let body_start = i + tag_len;
                let body = sql.get(body_start..).unwrap_or_default();
                let body_len = memchr::memmem::find(body, tag).unwrap_or(body.len());
                statement_start = false;
                if words_anywhere(body.get(..body_len).unwrap_or_default()) {
                    return true;
                }
                i = body_start + body_len + tag_len;
            }
            b'd' | b'D' | b'p' | b'P' | b'e' | b'E' if name_from.is_none() && word_at(sql, i) => return true,
            _ => {
                if c == b';' {
                    statement_start = true;
                } else if statement_start && !is_space(c) {
                    if is_word(sql, i, b"do") {
                        return true;
                    }
                    statement_start = false;
                }
                if !continues_name(c) {
                    name_from = None;
                } else if name_from.is_none() && !c.is_ascii_digit() && c != b'$' {
                    name_from = Some(i);
                }
                i += 1;
                continue;
            }
        }
        name_from = None;
    }
    false
}

/// The name of the one prepared statement `sql` deallocates, when `sql` is
/// exactly `DEALLOCATE [PREPARE] name`, with white space and a final
/// semicolon allowed and nothing else: no comment, no second statement, no
/// character outside ASCII. An unquoted name is folded to lower case as the
/// server folds it; a quoted one is taken as written. `None` for anything
/// else (`DEALLOCATE ALL` among it), which `mentions_deallocation` then reads.
/// Linear in `sql`, and never panics.
pub fn deallocated_name(sql: &[u8]) -> Option<Vec<u8>> {
    if !sql.is_ascii() {
        return None;
    }
    let mut rest = skip_space(sql);
    rest = keyword(rest, b"deallocate")?;
    let mut name = identifier(rest)?;
    if let Some(after) = keyword(rest, b"prepare")
        && let Some(named) = identifier(after)
    {
        // `DEALLOCATE PREPARE name`.
        name = named;
    }
    let (folded, quoted, after) = name;
    if !quoted && matches!(folded.as_slice(), b"all" | b"prepare") {
        return None;
    }
    let after = skip_space(after);
    let after = after.strip_prefix(b";").map_or(after, skip_space);
    after.is_empty().then_some(folded)
}

/// `text` past the white space it starts with (of the kinds the server skips).
fn skip_space(text: &[u8]) -> &[u8] {
    let n = text.iter().take_while(|&&b| is_space(b)).count();
    text.get(n..).unwrap_or_default()
}

/// White space as the server's lexer reads it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `text` past `word` (lower case) and the white space after it, when it
/// starts with the word, in any case, and no part of a name follows.
fn keyword<'a>(text: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let head = text.get(..word.len())?;
    let after = text.get(word.len()..)?;
    (head.eq_ignore_ascii_case(word) && !after.first().copied().is_some_and(continues_name)).then(|| skip_space(after))
}

/// The identifier `text` starts with, as the server names it; whether it was
/// quoted; and the text after it. Unquoted: a letter or `_`, then letters,
/// digits, `_` and `$`. Quoted: anything between double quotes, a doubled
/// quote standing for one; never empty.
fn identifier(text: &[u8]) -> Option<(Vec<u8>, bool, &[u8])> {
    if let Some(quoted) = text.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        loop {
            match quoted.get(i).copied()? {
                b'"' if quoted.get(i + 1) == Some(&b'"') => {
                    name.push(b'"');
                    i += 2;
                }
                b'"' => break,
                c => {
                    name.push(c);
                    i += 1;
                }
            }
        }
        let after = quoted.get(i + 1..)?;
        return (!name.is_empty()).then_some((name, true, after));
    }
    let first = *text.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let len = text.iter().take_while(|&&b| continues_name(b)).count();
    let name = text.get(..len)?.to_ascii_lowercase();
    Some((name, false, text.get(len..)?))
}

/// Past the end of a quoted string whose text starts at `i`.
fn string_end(sql: &[u8], mut i: usize, escapes: bool) -> usize {
    while let Some(c) = sql.get(i).copied() {
        i += 1;
        match c {
            b'\\' if escapes => i += 1,
            b'\'' if sql.get(i) == Some(&b'\'') => i += 1,
            b'\'' => break,
            _ => {}
        }
    }
    i
}

/// Where a string ended at `i` goes on: after white space with a newline in
/// it (comments too), a quote continues it.
fn continued_string(sql: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match sql.get(i).copied()? {
            b'\n' | b'\r' => newline = true,
            b' ' | b'\t' | 0x0b | 0x0c => {}
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while sql.get(i).is_some_and(|&c| c != b'\n' && c != b'\r') {
                    i += 1;
                }
                continue;
            }
            b'\'' if newline => return Some(i),
            _ => return None,
        }
        i += 1;
    }
}

/// A byte that goes on a name: after it, a word is part of the name.
fn continues_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$') || b >= 0x80
}

/// Whether `word` (lower case) starts at `i`, in any case, and no part of a
/// name follows it.
fn is_word(sql: &[u8], i: usize, word: &[u8]) -> bool {
    sql.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word))
        && !sql.get(i + word.len()).copied().is_some_and(continues_name)
}

/// Whether one of the words starts at `i` and no part of a name follows it.
/// `EXECUTE` before `FUNCTION`, `PROCEDURE` or `ON` (a trigger's action, a
/// privilege) runs no prepared statement, outside code.
fn word_at(sql: &[u8], i: usize) -> bool {
    let is = |at: usize, word: &[u8]| is_word(sql, at, word);
    if is(i, b"execute") {
        let next = (i + 7..).find(|&n| !sql.get(n).is_some_and(u8::is_ascii_whitespace)).unwrap_or(sql.len());
        return ![&b"function"[..], b"procedure", b"on"].iter().any(|w| is(next, w));
    }
    is(i, b"deallocate") || is(i, b"discard") || is(i, b"prepare")
}

/// Whether one of the words is anywhere in `text` as a token, quotes or not:
/// after no part of a name but a digit or a `$` (which may end a quote).
/// Code may name a variable `function`: `EXECUTE` always counts here.
fn words_anywhere(text: &[u8]) -> bool {
    (0..text.len()).any(|i| {
        let before = i.checked_sub(1).and_then(|b| text.get(b)).copied();
        !before.is_some_and(|b| continues_name(b) && !b.is_ascii_digit() && b != b'$')
            && (word_at(text, i) || is_word(text, i, b"execute"))
    })
}

/// The length of the dollar-quote tag (`$$`, `$body$`) `text` starts with.
fn dollar_tag(text: &[u8]) -> Option<usize> {
    let rest = text.get(1..)?;
    let end = rest.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80))?;
    let first_ok = rest.first().is_some_and(|b| !b.is_ascii_digit());
    (rest.get(end) == Some(&b'$') && (end == 0 || first_ok)).then_some(end + 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn deallocation_is_found_where_the_server_reads_it() {
        let found = |sql: &str| super::mentions_deallocation(sql.as_bytes());
        for sql in [
            "DEALLOCATE s1",
            "select 1; discard all",
            "/* d */ DeAlLoCaTe ALL",
            "prepare s as delete from t",
            "select 1;PREPARE\ts AS SELECT 2",
            "select 1prepare",
            "select f('x');deallocate",
            "EXECUTE d",
            "EXPLAIN ANALYZE EXECUTE d",
            "EXECUTE ondemand",
            "CREATE TABLE t AS EXECUTE d (1)",
            "DO $$BEGIN EXECUTE 'x'; END$$",
            "DO $q$ BEGIN PERFORM 'DEALLOCATE s'; END $q$",
            "DO $$$$; DEALLOCATE s",
            "select 'it''s' ; discard all",
            r"select E'\\' ; deallocate s",
            "select \"a\"\"b\" ; deallocate s",
            "select 1 /* a /* nested */ still */ ; deallocate s",
            "select 1 -- note\n deallocate s",
            "select $1; deallocate s",
            "select E'a'\n'\\' ' ; DEALLOCATE s ; SELECT '1'",
            "select 1$$ x $$; deallocate s",
            "select $1$$ deallocate $$",
            r"select $t$ x $t$e'\' ' ; deallocate s ; select '1'",
            "select $t$ x $t$prepare",
            "DO $$ BEGIN EXECUTE $q$DEALLOCATE s$q$; END $$",
            // A DO block, its body in any quotes and any language.
            "DO 'BEGIN EXECUTE ''DEALLOCATE s1''; END'",
            "do language plpgsql 'begin perform 1; end'",
            "/* a /* b */ */ DO\n'BEGIN PERFORM 1; END' LANGUAGE plpgsql",
            "DO 'BEGIN EXEC'\n'UTE ''DEALL'\n'OCATE s1''; END'",
            "DO U&'BEGIN !0045XECUTE ''!0044EALLOCATE s1''; END' UESCAPE '!'",
            "\x0bDO 'BEGIN PERFORM 1; END'",
            "select 1;DO LANGUAGE plperl $$spi_exec_query('DEALL'.'OCATE s1')$$",
            "DO $$DECLARE function text := 'x'; BEGIN EXECUTE function; END$$",
            "SELECT $$ EXECUTE ON $$",
        ] {
            assert!(found(sql), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select 'discar'",
            "UPDATE orders SET prepared_at = now()",
            "SELECT name FROM pg_prepared_statements",
            "SELECT discarded FROM t",
            "SELECT executed_by FROM jobs",
            "SELECT * FROM jobs WHERE state IN ('prepare', 'execute')",
            "SELECT E'it\\'s prepare'",
            "SELECT \"execute\" FROM t",
            "SELECT 1 -- then deallocate",
            "SELECT 1 /* discard /* all */ prepare */",
            "SELECT a$prepare FROM t",
            "SELECT a$$ FROM t WHERE b = 'discard'",
            "SELECT 'a'\n'x'' ; prepare' FROM t",
            "GRANT SELECT, EXECUTE ON FUNCTION f() TO app",
            "CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE   FUNCTION f()",
            "CREATE TRIGGER t AFTER INSERT ON x EXECUTE\nPROCEDURE f()",
            "SELECT E'a'\n'\\' ; prepare' FROM t",
            // Strings of statements other than DO are not code.
            "INSERT INTO t VALUES ('prepare') ON CONFLICT DO NOTHING",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET state = 'discard'",
            "SELECT 'do'; SELECT 'prepare'",
            "SELECT 1 AS do, 'execute' FROM t",
            "SELECT 1 /* ; DO */",
            "SELECT 'a;' || 'DO'",
            "",
        ] {
            assert!(!found(sql), "{sql}");
        }
    }

    #[test]
    fn one_statement_deallocated_by_name_is_read_exactly() {
        let name = |sql: &str| super::deallocated_name(sql.as_bytes()).map(|n| String::from_utf8(n).unwrap());
        for (sql, expected) in [
            ("DEALLOCATE s1", "s1"),
            ("deallocate _pg3_12;", "_pg3_12"),
            ("  DeAllocate\tPREPARE  A1 ;  \n", "a1"),
            ("DEALLOCATE \"S1\"", "S1"),
            ("DEALLOCATE \"a\"\"b\";", "a\"b"),
            ("DEALLOCATE PREPARE \"all\"", "all"),
            ("DEALLOCATE \"all\"", "all"),
            ("DEALLOCATE x$1", "x$1"),
        ] {
            assert_eq!(name(sql).as_deref(), Some(expected), "{sql}");
        }
        for sql in [
            "DEALLOCATE ALL",
            "DEALLOCATE PREPARE ALL",
            "DEALLOCATE prepare",
            "DEALLOCATE",
            "DEALLOCATE \"\"",
            "DEALLOCATE \"s1",
            "DEALLOCATE s1; DEALLOCATE s2",
            "DEALLOCATE s1; SELECT 1",
            "DEALLOCATE s1 -- note",
            "/* c */ DEALLOCATE s1",
            "DEALLOCATEs1",
            "DEALLOCATE 1s",
            "DEALLOCATE s1 s2",
            "DEALLOCATE caf\u{e9}",
            "DEALLOCATE U&\"s1\"",
            "DISCARD ALL",
            "SELECT 1",
            "",
        ] {
            assert_eq!(name(sql), None, "{sql}");
        }
    }
}
