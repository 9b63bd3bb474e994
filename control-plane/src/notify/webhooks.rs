//! Standard Webhooks (<https://www.standardwebhooks.com>): how a delivery is
//! signed and how a receiver checks it.
//!
//! A delivery carries three headers: `webhook-id` (the same for every retry of
//! one message, so a receiver can drop duplicates), `webhook-timestamp` (unix
//! seconds of the attempt, so a captured request cannot be replayed later) and
//! `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`; a list, so a secret can be rotated with both the
//! old and the new signature sent for a while. Users see a secret as `whsec_`
//! followed by the base64 of its raw bytes.

use airlock_core::{Event, TenantId};
use airlock_proto::EventRecord;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How a secret is shown to users.
pub const SECRET_PREFIX: &str = "whsec_";
/// The range of raw secret lengths the scheme allows.
pub const SECRET_MIN_BYTES: usize = 24;
pub const SECRET_MAX_BYTES: usize = 64;
/// The length of secrets Airlock generates.
const GENERATED_SECRET_BYTES: usize = 32;

/// A receiver's default window around its own clock, as the scheme recommends.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with {SECRET_PREFIX}")]
    MissingPrefix,
    #[error("a webhook secret is {SECRET_PREFIX} followed by base64")]
    NotBase64,
    #[error("a webhook secret must be {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, not {0}")]
    Length(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("{HEADER_TIMESTAMP} is not unix seconds")]
    BadTimestamp,
    #[error("{HEADER_TIMESTAMP} is {0} s away from now, outside the tolerance")]
    OutsideTolerance(i64),
    #[error("no signature matches")]
    NoMatch,
}

/// A new random secret (raw bytes), for an endpoint being registered.
pub fn generate_secret() -> Vec<u8> {
    let mut raw = vec![0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw
}

/// `whsec_` + base64 of the raw secret.
pub fn secret_to_string(raw: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", BASE64.encode(raw))
}

/// The raw bytes of a `whsec_...` secret.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = s.trim().strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
    let raw = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
    if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&raw.len()) {
        return Err(SecretError::Length(raw.len()));
    }
    Ok(raw)
}

/// The MAC over `{id}.{timestamp}.{body}`. HMAC accepts a key of any length, so
/// `None` cannot happen; callers treat it as "no valid signature" rather than panic.
fn mac(secret: &[u8], msg_id: &str, timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `webhook-signature` header value: `v1,<base64>`.
pub fn sign(secret: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    match mac(secret, msg_id, &timestamp.to_string(), body) {
        Some(mac) => format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())),
        None => String::new(),
    }
}

/// Checks a delivery as a receiver would: `headers` are the values of
/// `webhook-id`, `webhook-timestamp` and `webhook-signature`. The timestamp must
/// be within `tolerance_secs` of `now_unix` either way; any one of the listed
/// `v1` signatures may match (compared in constant time), other versions are
/// ignored.
pub fn verify(
    secret: &[u8],
    headers: (&str, &str, &str),
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let (msg_id, timestamp, signatures) = headers;
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_ID));
    }
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_TIMESTAMP));
    }
    if signatures.trim().is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_SIGNATURE));
    }
    let at: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_unix.saturating_sub(at);
    if skew.saturating_abs() > tolerance_secs {
        return Err(VerifyError::OutsideTolerance(skew));
    }
    // Sign the timestamp exactly as it came: re-formatting the parsed number would
    // accept a header ("+17", "017") whose bytes were never signed.
    let expected = mac(secret, msg_id, timestamp, body).ok_or(VerifyError::NoMatch)?;
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
}

/// The `webhook-id` of an event's delivery: one per event, whatever the endpoint
/// or the attempt.
pub fn message_id(tenant: TenantId, seq: u64) -> String {
    format!("evt_{tenant}_{seq}")
}

/// The JSON body delivered for `event`:
/// `{"type", "timestamp", "data": {"tenant_id", "seq", "stream", "actor", "event"}}`.
pub fn payload(tenant: TenantId, record: &EventRecord, event: &Event) -> anyhow::Result<Vec<u8>> {
    let occurred = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.occurred_at_unix_ms) * 1_000_000)?;
    let body = serde_json::json!({
        "type": event.type_name(),
        "timestamp": occurred.format(&time::format_description::well_known::Rfc3339)?,
        "data": {
            "tenant_id": tenant,
            "seq": record.seq,
            "stream": record.stream,
            "actor": record.actor,
            "event": event,
        },
    });
    Ok(serde_json::to_vec(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Standard Webhooks' published example, re-computed with Python's hmac module.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// Bytes 0..32, as computed with Python:
    /// `base64.b64encode(hmac.new(bytes(range(32)), msg, hashlib.sha256).digest())`.
    fn counting_secret() -> Vec<u8> {
        (0u8..32).collect()
    }
    const OWN_ID: &str = "evt_0190a5e4-0000-7000-8000-000000000001_7";
    const OWN_BODY: &[u8] = br#"{"type":"access_requested","data":{"seq":7}}"#;
    const OWN_SIGNATURE: &str = "v1,7BL5BtfLnHaCcTVQn6Xe4iHin2QRbDqViwRuZ4LKjy0=";

    fn spec_secret() -> Vec<u8> {
        parse_secret(SPEC_SECRET).unwrap()
    }

    fn spec_headers(signature: &str) -> (&'static str, String, String) {
        (SPEC_ID, SPEC_TIMESTAMP.to_string(), signature.to_owned())
    }

    fn check(signature: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        let (id, ts, sig) = spec_headers(signature);
        verify(&spec_secret(), (id, &ts, &sig), body, now, DEFAULT_TOLERANCE_SECS)
    }

    #[test]
    fn signs_the_known_answers() {
        assert_eq!(sign(&spec_secret(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), SPEC_SIGNATURE);
        assert_eq!(sign(&counting_secret(), OWN_ID, 1_700_000_000, OWN_BODY), OWN_SIGNATURE);
    }

    #[test]
    fn secrets_round_trip_through_their_display_form() {
        let raw = counting_secret();
        let shown = secret_to_string(&raw);
        assert_eq!(shown, "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(parse_secret(&shown).unwrap(), raw);
        let generated = generate_secret();
        assert_eq!(parse_secret(&secret_to_string(&generated)).unwrap(), generated);
        assert_ne!(generate_secret(), generated);
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SecretError::MissingPrefix));
        assert_eq!(parse_secret("whsec_not base64!"), Err(SecretError::NotBase64));
        assert_eq!(parse_secret(&secret_to_string(&[1; 23])), Err(SecretError::Length(23)));
        assert_eq!(parse_secret(&secret_to_string(&[1; 65])), Err(SecretError::Length(65)));
        assert!(parse_secret(&secret_to_string(&[1; 24])).is_ok());
        assert!(parse_secret(&secret_to_string(&[1; 64])).is_ok());
    }

    #[test]
    fn verifies_a_valid_delivery() {
        assert_eq!(check(SPEC_SIGNATURE, SPEC_BODY, SPEC_TIMESTAMP), Ok(()));
        assert_eq!(check(SPEC_SIGNATURE, SPEC_BODY, SPEC_TIMESTAMP + DEFAULT_TOLERANCE_SECS), Ok(()));
        assert_eq!(check(SPEC_SIGNATURE, SPEC_BODY, SPEC_TIMESTAMP - DEFAULT_TOLERANCE_SECS), Ok(()));
    }

    #[test]
    fn any_listed_v1_signature_may_match() {
        let rotated = format!("v1,Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg= v1a,ignored {SPEC_SIGNATURE}");
        assert_eq!(check(&rotated, SPEC_BODY, SPEC_TIMESTAMP), Ok(()));
        let other_version = SPEC_SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(check(&other_version, SPEC_BODY, SPEC_TIMESTAMP), Err(VerifyError::NoMatch));
    }

    #[test]
    fn tampering_is_refused() {
        assert_eq!(check(SPEC_SIGNATURE, br#"{"test": 2432232315}"#, SPEC_TIMESTAMP), Err(VerifyError::NoMatch));
        let secret = spec_secret();
        let ts = SPEC_TIMESTAMP.to_string();
        let other_id = verify(&secret, ("msg_other", &ts, SPEC_SIGNATURE), SPEC_BODY, SPEC_TIMESTAMP, 300);
        assert_eq!(other_id, Err(VerifyError::NoMatch));
        let later = (SPEC_TIMESTAMP + 1).to_string();
        let other_ts = verify(&secret, (SPEC_ID, &later, SPEC_SIGNATURE), SPEC_BODY, SPEC_TIMESTAMP, 300);
        assert_eq!(other_ts, Err(VerifyError::NoMatch));
        let padded = format!("0{SPEC_TIMESTAMP}");
        let reformatted = verify(&secret, (SPEC_ID, &padded, SPEC_SIGNATURE), SPEC_BODY, SPEC_TIMESTAMP, 300);
        assert_eq!(reformatted, Err(VerifyError::NoMatch));
        let wrong_key = verify(&[9; 32], (SPEC_ID, &ts, SPEC_SIGNATURE), SPEC_BODY, SPEC_TIMESTAMP, 300);
        assert_eq!(wrong_key, Err(VerifyError::NoMatch));
        let truncated = &SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 4];
        assert_eq!(check(truncated, SPEC_BODY, SPEC_TIMESTAMP), Err(VerifyError::NoMatch));
        assert_eq!(check("v1,not-base64!", SPEC_BODY, SPEC_TIMESTAMP), Err(VerifyError::NoMatch));
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let late = SPEC_TIMESTAMP + DEFAULT_TOLERANCE_SECS + 1;
        assert_eq!(check(SPEC_SIGNATURE, SPEC_BODY, late), Err(VerifyError::OutsideTolerance(301)));
        let early = SPEC_TIMESTAMP - DEFAULT_TOLERANCE_SECS - 1;
        assert_eq!(check(SPEC_SIGNATURE, SPEC_BODY, early), Err(VerifyError::OutsideTolerance(-301)));
        let secret = spec_secret();
        let far = verify(&secret, (SPEC_ID, "-9223372036854775808", SPEC_SIGNATURE), SPEC_BODY, i64::MAX, 300);
        assert!(matches!(far, Err(VerifyError::OutsideTolerance(_))));
        let bad = verify(&secret, (SPEC_ID, "yesterday", SPEC_SIGNATURE), SPEC_BODY, SPEC_TIMESTAMP, 300);
        assert_eq!(bad, Err(VerifyError::BadTimestamp));
    }

    #[test]
    fn missing_headers_are_named() {
        let secret = spec_secret();
        let ts = SPEC_TIMESTAMP.to_string();
        let at = SPEC_TIMESTAMP;
        assert_eq!(
            verify(&secret, ("", &ts, SPEC_SIGNATURE), SPEC_BODY, at, 300),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );
        assert_eq!(
            verify(&secret, (SPEC_ID, "", SPEC_SIGNATURE), SPEC_BODY, at, 300),
            Err(VerifyError::MissingHeader(HEADER_TIMESTAMP))
        );
        assert_eq!(
            verify(&secret, (SPEC_ID, &ts, " "), SPEC_BODY, at, 300),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
    }

    #[test]
    fn the_payload_names_the_event_and_where_it_sits_in_the_log() {
        let tenant = TenantId::new();
        let event = Event::WebhookRemoved { webhook_id: airlock_core::WebhookId::new() };
        let record = EventRecord {
            tenant_id: tenant.to_string(),
            seq: 12,
            stream: "webhook/x".into(),
            stream_version: 2,
            occurred_at_unix_ms: 1_700_000_000_123,
            actor: "alice".into(),
            payload: airlock_proto::convert::encode_event(&event),
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
        };
        let body: serde_json::Value = serde_json::from_slice(&payload(tenant, &record, &event).unwrap()).unwrap();
        assert_eq!(body["type"], "webhook_removed");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(body["data"]["tenant_id"], tenant.to_string());
        assert_eq!(body["data"]["seq"], 12);
        assert_eq!(body["data"]["stream"], "webhook/x");
        assert_eq!(body["data"]["actor"], "alice");
        assert_eq!(body["data"]["event"], serde_json::to_value(&event).unwrap());
        assert_eq!(message_id(tenant, 12), format!("evt_{tenant}_12"));
    }
}
