//! Claims of a verified token: the time checks, and the mapping to a
//! [`Principal`].
//!
//! Times are checked here rather than by `jsonwebtoken` so that the clock can
//! be injected, and so that a claim of the wrong JSON type is refused by code
//! we test rather than by a library detail (older `jsonwebtoken`s skipped the
//! check when `exp` was a string).

use airlock_core::TenantId;
use airlock_core::event::TrustedIssuer;
use airlock_core::principal::{AdminScope, Principal};
use serde_json::{Map, Value};

use crate::AuthError;

/// Groups kept from one token; the rest are dropped. Groups only ever grant,
/// so dropping some can only take access away.
pub const MAX_GROUPS: usize = 256;

pub(crate) type Claims = Map<String, Value>;

/// Checks `exp` (required) and `nbf` (if present) against `now`, allowing
/// `leeway` seconds of clock skew either way.
pub(crate) fn check_times(claims: &Claims, now_unix: i64, leeway_secs: u64) -> Result<(), AuthError> {
    let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::new("token has no exp claim"))?;
    if now_unix >= exp.saturating_add(leeway) {
        return Err(AuthError::new("token expired"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now_unix.saturating_add(leeway)
    {
        return Err(AuthError::new("token is not valid yet (nbf is in the future)"));
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds, possibly
/// fractional. Any other JSON type is refused, not ignored.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<i64>, AuthError> {
    let invalid = || AuthError::new(format!("claim {name} must be a number of seconds since the epoch"));
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                // In range (checked above); NumericDates may carry fractions of a second.
                Ok(Some(f.floor() as i64))
            } else {
                Err(invalid())
            }
        }
        Some(_) => Err(invalid()),
    }
}

/// Whether the token's `aud` (a string or an array of strings) names `audience`.
pub(crate) fn audience_contains(claims: &Claims, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// Builds the principal an OIDC token of a trusted issuer stands for.
pub(crate) fn oidc_principal(
    tenant: TenantId,
    issuer: &TrustedIssuer,
    claims: &Claims,
) -> Result<Principal, AuthError> {
    let subject = match claims.get(&issuer.subject_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(AuthError::new(format!(
                "token has no {} claim (a non-empty string), which names the subject for issuer {}",
                quoted(&issuer.subject_claim),
                issuer.issuer_url
            )));
        }
    };
    let groups = if issuer.groups_claim.is_empty() { Vec::new() } else { groups(claims.get(&issuer.groups_claim)) };
    Ok(Principal {
        tenant_id: tenant,
        issuer: issuer.issuer_url.clone(),
        subject,
        groups,
        claims: scalar_claims(claims),
        kind: issuer.principal_kind,
        admin: AdminScope::None,
    })
}

/// The claims policy rules can match on: those with a string, number or
/// boolean value, at most [`MAX_SCALAR_CLAIMS`] of them, each value at most
/// 256 bytes. Registered claims about the token itself are left out.
fn scalar_claims(claims: &Claims) -> std::collections::BTreeMap<String, String> {
    const SKIP: [&str; 6] = ["exp", "iat", "nbf", "jti", "aud", "iss"];
    claims
        .iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()) && k.len() <= 128)
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            (text.len() <= 256).then(|| (k.clone(), text))
        })
        .take(MAX_SCALAR_CLAIMS)
        .collect()
}

/// How many of a token's claims a principal keeps for policy matching.
pub const MAX_SCALAR_CLAIMS: usize = 64;

/// Groups from a claim that is an array of strings or a single string.
/// Entries of other types are ignored; at most [`MAX_GROUPS`] are kept.
pub(crate) fn groups(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::String(g)) if !g.is_empty() => vec![g.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| !g.is_empty())
            .take(MAX_GROUPS)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A value taken from a token, quoted and shortened for an error message: the
/// client sent it, so echoing it is safe, but it need not be echoed at length.
pub(crate) fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 100;
    let mut short: String = value.chars().take(MAX_CHARS).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use airlock_core::IssuerId;
    use airlock_core::principal::PrincipalKind;
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn exp_and_nbf_are_checked_with_leeway() {
        let now = 1_000_000;
        assert_eq!(check_times(&claims(json!({"exp": now + 1})), now, 0), Ok(()));
        assert_eq!(check_times(&claims(json!({"exp": now})), now, 0), Err(AuthError::new("token expired")));
        assert_eq!(check_times(&claims(json!({"exp": now - 10})), now, 30), Ok(()));
        assert_eq!(check_times(&claims(json!({"exp": now - 30})), now, 30), Err(AuthError::new("token expired")));
        assert_eq!(check_times(&claims(json!({"exp": now as f64 + 1.5})), now, 0), Ok(()));
        assert!(check_times(&claims(json!({"exp": now + 100, "nbf": now + 31})), now, 30).is_err());
        assert_eq!(check_times(&claims(json!({"exp": now + 100, "nbf": now + 30})), now, 30), Ok(()));
    }

    #[test]
    fn times_of_the_wrong_type_are_refused() {
        let now = 1_000_000;
        for bad in [
            json!({"exp": (now + 100).to_string()}),
            json!({"exp": null}),
            json!({"exp": [now + 100]}),
            json!({"exp": 1e300}),
            json!({"exp": now + 100, "nbf": "0"}),
            json!({}),
        ] {
            assert!(check_times(&claims(bad.clone()), now, 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_accept_a_string_or_an_array_of_strings() {
        assert_eq!(groups(Some(&json!("dba"))), ["dba"]);
        assert_eq!(groups(Some(&json!(["a", 1, null, "b", ""]))), ["a", "b"]);
        assert!(groups(Some(&json!({"a": 1}))).is_empty());
        assert!(groups(None).is_empty());
        let many: Vec<String> = (0..1000).map(|i| format!("g{i}")).collect();
        assert_eq!(groups(Some(&json!(many))).len(), MAX_GROUPS);
    }

    #[test]
    fn subject_must_be_a_non_empty_string() {
        let issuer = TrustedIssuer {
            id: IssuerId::new(),
            name: "ci".into(),
            issuer_url: "https://ci".into(),
            audience: "airlock".into(),
            subject_claim: "repository".into(),
            groups_claim: String::new(),
            principal_kind: PrincipalKind::Workload,
        };
        let tenant = TenantId::new();
        let p = oidc_principal(tenant, &issuer, &claims(json!({"repository": "acme/app", "groups": ["x"]}))).unwrap();
        assert_eq!(p.subject, "acme/app");
        assert!(p.groups.is_empty(), "an empty groups_claim means no groups");
        for bad in [json!({"repository": ""}), json!({"repository": 5}), json!({"sub": "x"})] {
            assert!(oidc_principal(tenant, &issuer, &claims(bad)).is_err());
        }
    }

    #[test]
    fn quoted_values_are_bounded() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        assert!(quoted(&"x".repeat(10_000)).len() < 110);
    }
}
