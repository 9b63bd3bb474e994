//! Content masking: find sensitive values inside result text (card numbers that
//! pass the Luhn check, email addresses, IBANs that pass mod 97, US social
//! security numbers, common API key formats) and replace them.
//!
//! Detection works on bytes and looks only at ASCII, so it reads a value in any
//! client encoding whose ASCII bytes mean ASCII (the gateway refuses sessions in
//! the few encodings where they may not), and the replacement is ASCII too.

use std::borrow::Cow;

use crate::policy::{Detector, MaskStrategy};

/// A found value: where it is in the text, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

/// What the one pass before the detectors notes of each byte (see [`find`]).
const DIGIT: u8 = 1;
const AT: u8 = 1 << 1;
const DASH: u8 = 1 << 2;
const UPPER: u8 = 1 << 3;
const UNDERSCORE: u8 = 1 << 4;
const CAPITAL_A: u8 = 1 << 5;
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        #[allow(clippy::indexing_slicing, reason = "b < 256, checked at compile time")]
        let slot = &mut table[b];
        *slot = if c.is_ascii_digit() {
            DIGIT
        } else if c == b'@' {
            AT
        } else if c == b'-' {
            DASH
        } else if c == b'_' {
            UNDERSCORE
        } else if c == b'A' {
            UPPER | CAPITAL_A
        } else if c.is_ascii_uppercase() {
            UPPER
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Every value the detectors find in `text`, in order, not overlapping.
pub fn find(text: &[u8], detectors: &[Detector]) -> Vec<Found> {
    let mut found = Vec::new();
    // The shortest value any detector finds is an email like `a@b.cd`.
    if text.len() < 6 {
        return found;
    }
    // One pass over the value says which detectors could find anything in it:
    // most values are short words or numbers, and skip every detector.
    let (mut seen, mut digits) = (0u8, 0u32);
    for b in text {
        let class = CLASSES.get(usize::from(*b)).copied().unwrap_or_default();
        seen |= class;
        digits += u32::from(class & DIGIT);
    }
    let has = |class: u8| seen & class != 0;
    for d in detectors {
        let possible = match d {
            Detector::CreditCard => digits >= 13,
            Detector::Email => has(AT),
            Detector::Iban => has(UPPER) && digits >= 2 && text.len() >= 15,
            Detector::NationalId => has(DASH) && digits >= 9,
            // Every prefix `api_keys` knows holds an underscore or a dash, or starts with `A`.
            Detector::ApiKey => text.len() >= 14 && has(UNDERSCORE | DASH | CAPITAL_A),
        };
        if !possible {
            continue;
        }
        let spans = match d {
            Detector::CreditCard => card_numbers(text),
            Detector::Email => emails(text),
            Detector::Iban => ibans(text),
            Detector::NationalId => ssns(text),
            Detector::ApiKey => api_keys(text),
        };
        found.extend(spans.into_iter().map(|(start, end)| Found { start, end, detector: *d }));
    }
    found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if kept.last().is_none_or(|k| f.start >= k.end) {
            kept.push(f);
        }
    }
    kept
}

/// `text` with every found value replaced per `strategy`, or `None` when
/// nothing was found. `salt` keys the hash strategy (the tenant), so hashes
/// compare within a tenant and not across.
pub fn mask(text: &[u8], detectors: &[Detector], strategy: MaskStrategy, salt: &[u8]) -> Option<Vec<u8>> {
    let found = find(text, detectors);
    if found.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for f in &found {
        out.extend_from_slice(text.get(at..f.start).unwrap_or_default());
        out.extend_from_slice(&replacement(text.get(f.start..f.end).unwrap_or_default(), strategy, salt));
        at = f.end;
    }
    out.extend_from_slice(text.get(at..).unwrap_or_default());
    Some(out)
}

/// The replacement for one whole value (a masked column's value, or a found span).
pub fn replacement(value: &[u8], strategy: MaskStrategy, salt: &[u8]) -> Cow<'static, [u8]> {
    match strategy {
        MaskStrategy::Redact => Cow::Borrowed(b"[redacted]"),
        MaskStrategy::Partial => {
            let mut out = Vec::with_capacity(value.len());
            partial_into(value, &mut out);
            Cow::Owned(out)
        }
        MaskStrategy::Hash => {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(salt);
            h.update([0]);
            h.update(value);
            let digest = hex::encode(h.finalize());
            Cow::Owned(format!("hash:{}", digest.get(..16).unwrap_or(&digest)).into_bytes())
        }
    }
}

/// The partial mask of `value`, appended to `out`: the last four letters or
/// digits stay; every other one becomes `*`. As long as `value`.
pub fn partial_into(value: &[u8], out: &mut impl Extend<u8>) {
    let keep_from =
        value.iter().enumerate().rev().filter(|(_, b)| b.is_ascii_alphanumeric()).nth(3).map_or(0, |(i, _)| i);
    out.extend(
        value
            .iter()
            .enumerate()
            .map(|(i, b)| if i < keep_from && (b.is_ascii_alphanumeric() || !b.is_ascii()) { b'*' } else { *b }),
    );
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// 13 to 19 digits, single spaces or dashes between them allowed, passing Luhn,
/// not part of a longer run of digits or letters.
fn card_numbers(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let starts =
            text.get(i).is_some_and(u8::is_ascii_digit) && (i == 0 || !text.get(i - 1).copied().is_some_and(is_word));
        if !starts {
            i += 1;
            continue;
        }
        let mut digits = Vec::new();
        let mut j = i;
        let mut end = i;
        while j < text.len() && digits.len() < 19 {
            match text.get(j) {
                Some(b) if b.is_ascii_digit() => {
                    digits.push(b - b'0');
                    j += 1;
                    end = j;
                }
                Some(b' ' | b'-') if text.get(j + 1).is_some_and(u8::is_ascii_digit) && end == j => j += 1,
                _ => break,
            }
        }
        let bounded = !text.get(end).copied().is_some_and(is_word);
        if (13..=19).contains(&digits.len()) && bounded && luhn(&digits) {
            out.push((i, end));
            i = end;
        } else {
            i = j.max(i + 1);
        }
    }
    out
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn emails(text: &[u8]) -> Vec<(usize, usize)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b".-".contains(&b);
    let mut out = Vec::new();
    let mut last_end = 0;
    for (at, _) in text.iter().enumerate().filter(|(_, b)| **b == b'@') {
        if at < last_end {
            continue;
        }
        let mut start = at;
        while start > last_end && text.get(start - 1).copied().is_some_and(local) {
            start -= 1;
        }
        let mut end = at + 1;
        while text.get(end).copied().is_some_and(domain) {
            end += 1;
        }
        // Trailing dots and dashes end a sentence, not the domain.
        while end > at + 1 && text.get(end - 1).is_some_and(|b| b"-.".contains(b)) {
            end -= 1;
        }
        let host = text.get(at + 1..end).unwrap_or_default();
        let tld = host.rsplit(|b| *b == b'.').next().unwrap_or_default();
        let dotted = host.contains(&b'.') && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
        if start < at && dotted {
            out.push((start, end));
            last_end = end;
        }
    }
    out
}

/// Two letters, two check digits, then 11 to 30 letters or digits (groups of
/// four may be separated by single spaces), passing ISO 7064 mod 97.
fn ibans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= text.len() {
        let head = text.get(i..i + 4).unwrap_or_default();
        let starts = head.len() == 4
            && head.iter().take(2).all(u8::is_ascii_uppercase)
            && head.iter().skip(2).all(u8::is_ascii_digit)
            && (i == 0 || !text.get(i - 1).copied().is_some_and(is_word));
        if !starts {
            i += 1;
            continue;
        }
        let mut chars: Vec<u8> = head.to_vec();
        let mut j = i + 4;
        let mut end = j;
        while chars.len() < 34 {
            match text.get(j) {
                Some(b) if b.is_ascii_uppercase() || b.is_ascii_digit() => {
                    chars.push(*b);
                    j += 1;
                    end = j;
                }
                Some(b' ') if text.get(j + 1).is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) => j += 1,
                _ => break,
            }
        }
        let bounded = !text.get(end).copied().is_some_and(is_word);
        if (15..=34).contains(&chars.len()) && bounded && iban_checks(&chars) {
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn iban_checks(chars: &[u8]) -> bool {
    let (head, rest) = chars.split_at(4.min(chars.len()));
    let mut remainder: u32 = 0;
    for b in rest.iter().chain(head) {
        let value = if b.is_ascii_digit() { u32::from(b - b'0') } else { u32::from(b - b'A') + 10 };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

/// US social security numbers written `ddd-dd-dddd`, without the ranges never issued.
fn ssns(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 11 <= text.len() {
        let s = text.get(i..i + 11).unwrap_or_default();
        let shape = s.iter().enumerate().all(|(k, b)| if k == 3 || k == 6 { *b == b'-' } else { b.is_ascii_digit() });
        let bounded = (i == 0 || !text.get(i - 1).copied().is_some_and(|b| is_word(b) || b == b'-'))
            && !text.get(i + 11).copied().is_some_and(|b| is_word(b) || b == b'-');
        let area = s.get(..3).unwrap_or_default();
        let issued = shape
            && area != b"000"
            && area != b"666"
            && area.first() != Some(&b'9')
            && s.get(4..6) != Some(b"00".as_slice())
            && s.get(7..11) != Some(b"0000".as_slice());
        if issued && bounded {
            out.push((i, i + 11));
            i += 11;
        } else {
            i += 1;
        }
    }
    out
}

/// Keys by their published prefixes and lengths: Stripe, AWS access key ids,
/// GitHub tokens, Slack tokens, Google API keys.
fn api_keys(text: &[u8]) -> Vec<(usize, usize)> {
    const PREFIXES: &[(&[u8], usize)] = &[
        (b"sk_live_", 16),
        (b"sk_test_", 16),
        (b"rk_live_", 16),
        (b"AKIA", 16),
        (b"ghp_", 36),
        (b"gho_", 36),
        (b"ghs_", 36),
        (b"github_pat_", 22),
        (b"xoxb-", 10),
        (b"xoxp-", 10),
        (b"xoxa-", 10),
        (b"AIza", 35),
    ];
    let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        // Every prefix starts with one of these letters: most positions are passed at once.
        if !text.get(i).is_some_and(|b| matches!(b, b's' | b'r' | b'A' | b'g' | b'x')) {
            i += 1;
            continue;
        }
        let boundary = i == 0 || !text.get(i - 1).copied().is_some_and(key_char);
        let hit =
            boundary.then(|| PREFIXES.iter().find(|(p, _)| text.get(i..).is_some_and(|t| t.starts_with(p)))).flatten();
        let Some((prefix, min_rest)) = hit else {
            i += 1;
            continue;
        };
        let mut end = i + prefix.len();
        while text.get(end).copied().is_some_and(key_char) {
            end += 1;
        }
        if end - i - prefix.len() >= *min_rest {
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Detector] =
        &[Detector::CreditCard, Detector::Email, Detector::Iban, Detector::NationalId, Detector::ApiKey];

    fn masked(text: &str, strategy: MaskStrategy) -> String {
        String::from_utf8(mask(text.as_bytes(), ALL, strategy, b"tenant").unwrap_or_else(|| text.as_bytes().to_vec()))
            .unwrap()
    }

    #[test]
    fn cards_pass_luhn_and_are_masked_wherever_they_stand() {
        assert_eq!(masked("card 4111 1111 1111 1111 ok", MaskStrategy::Redact), "card [redacted] ok");
        assert_eq!(masked("4111-1111-1111-1111", MaskStrategy::Partial), "****-****-****-1111");
        assert_eq!(masked("4111111111111111", MaskStrategy::Partial), "************1111");
        // Fails Luhn, or is part of a longer number: left alone.
        assert_eq!(masked("4111111111111112", MaskStrategy::Redact), "4111111111111112");
        assert_eq!(masked("order 94111111111111111", MaskStrategy::Redact), "order 94111111111111111");
    }

    #[test]
    fn emails_ibans_ssns_and_keys() {
        assert_eq!(masked("write to ana.b+x@mail.example.org.", MaskStrategy::Redact), "write to [redacted].");
        assert_eq!(masked("not@an-email", MaskStrategy::Redact), "not@an-email");
        assert_eq!(masked("IBAN GB82 WEST 1234 5698 7654 32", MaskStrategy::Redact), "IBAN [redacted]");
        assert_eq!(masked("DE89370400440532013000", MaskStrategy::Partial), "******************3000");
        assert_eq!(
            masked("GB82WEST12345698765433", MaskStrategy::Redact),
            "GB82WEST12345698765433",
            "bad check digits"
        );
        assert_eq!(masked("ssn 123-45-6789", MaskStrategy::Redact), "ssn [redacted]");
        assert_eq!(masked("000-12-3456 and 123-45-67890", MaskStrategy::Redact), "000-12-3456 and 123-45-67890");
        assert_eq!(masked("key=AKIAIOSFODNN7EXAMPLE", MaskStrategy::Redact), "key=[redacted]");
        assert_eq!(masked("sk_live_0123456789abcdefXYZ", MaskStrategy::Redact), "[redacted]");
    }

    #[test]
    fn hashes_are_stable_within_a_tenant_and_differ_across() {
        let a = mask(b"x@example.com", &[Detector::Email], MaskStrategy::Hash, b"t1").unwrap();
        let b = mask(b"x@example.com", &[Detector::Email], MaskStrategy::Hash, b"t1").unwrap();
        let c = mask(b"x@example.com", &[Detector::Email], MaskStrategy::Hash, b"t2").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with(b"hash:"));
    }

    #[test]
    fn non_utf8_text_is_read_by_its_ascii() {
        let latin1 = b"caf\xe9 4111111111111111";
        assert_eq!(mask(latin1, ALL, MaskStrategy::Redact, b"").unwrap(), b"caf\xe9 [redacted]".to_vec());
    }
}
