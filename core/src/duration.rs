//! Durations as people write them in policies: `90s`, `15m`, `1h`, `1h30m`, `7d`.

use std::time::Duration;

/// Parses `1h30m`-style durations. Units: s, m, h, d. Bounded to 365 days.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.len() > 32 {
        return Err("duration too long".into());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d))).ok_or("duration too large")?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("unknown unit {c:?} in {text:?} (use s, m, h or d, e.g. 15m or 1h30m)")),
        };
        let n = number.take().ok_or_else(|| format!("expected a number before {c:?} in {text:?}"))?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or("duration too large")?;
    }
    if number.is_some() {
        return Err(format!("missing unit at the end of {text:?} (use s, m, h or d, e.g. 15m)"));
    }
    if total == 0 {
        return Err("duration must be greater than zero".into());
    }
    if total > 365 * 86400 {
        return Err("duration must be at most 365d".into());
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [('d', 86400), ('h', 3600), ('m', 60), ('s', 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in ["", "1", "h", "1x", "0s", "999999999999999999999h", "400d", "-1h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
