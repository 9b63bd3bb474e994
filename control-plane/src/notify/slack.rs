//! Slack approvals: the review message with its Approve and Deny buttons, the
//! Web API client that posts and updates it, and the checks on what Slack sends
//! when an approver presses a button.
//!
//! A button press reaches the interaction endpoint from the internet, so nothing
//! in it is believed before [`verify_request`] has accepted its signature, and
//! [`parse_interaction`] is bounded and total so it may run on hostile bytes.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use airlock_core::integration::SLACK_API_BASE_URL;
use airlock_core::review::Outcome;
use hmac::{Hmac, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

/// The `action_id` of the Approve button.
pub const APPROVE_ACTION_ID: &str = "airlock_approve";
/// The `action_id` of the Deny button.
pub const DENY_ACTION_ID: &str = "airlock_deny";
/// The header carrying the unix time Slack signed the request at.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// The header carrying `v0=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// How far a request's timestamp may be from now, either way: a captured
/// request replayed later than this is refused.
pub const MAX_TIMESTAMP_SKEW_SECS: u64 = 5 * 60;
/// The largest interaction body read. Slack's are a few KiB: the payload
/// repeats the message, whose blocks are bounded.
pub const MAX_INTERACTION_BODY: usize = 64 * 1024;

/// Slack refuses a section whose text is over 3000 characters; the statement
/// gets most of that, and the rest leaves room for the fences and the note.
const MAX_STATEMENT_CHARS: usize = 2500;
/// One-line values (subject, connection, role, rule) are names; anything
/// longer than this is not worth a message's room.
const MAX_NAME_CHARS: usize = 200;
const MAX_REASON_CHARS: usize = 1000;
const MAX_APPROVERS_CHARS: usize = 400;
const MAX_URL_CHARS: usize = 500;
/// Slack's answers echo the message; a megabyte is far beyond any real one.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Used when Slack rate-limits without saying for how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bounds what Slack's error strings may add to ours.
const MAX_ERROR_TEXT: usize = 200;

type HmacSha256 = Hmac<Sha256>;

/// What a review message shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewMessage {
    pub review_id: String,
    pub tenant_id: String,
    pub kind: ReviewKind,
    /// The requester's subject.
    pub requester: String,
    /// The connection's name.
    pub connection: String,
    /// Why the requester asks; may be empty.
    pub reason: String,
    /// The policy rule that asks for review.
    pub rule: String,
    /// Who may approve, in words (`a member of dba, sre`).
    pub approvers: String,
    /// How many distinct approvals close the review.
    pub quorum: u32,
    pub expires_at_unix: i64,
    /// The web UI's public URL; the message links to the review's page there.
    /// Empty: no link.
    pub public_url: String,
    /// `None` while the review is pending.
    pub outcome: Option<Decided>,
}

/// What is under review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewKind {
    AccessRequest { role: String },
    HeldStatement { statement: String },
}

impl ReviewKind {
    pub fn label(&self) -> &'static str {
        match self {
            ReviewKind::AccessRequest { .. } => "access request",
            ReviewKind::HeldStatement { .. } => "held statement",
        }
    }
}

/// How a review ended, for the message's last update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub outcome: Outcome,
    /// The approvers of an approval, the denier of a denial; empty when it expired.
    pub by: Vec<String>,
}

impl ReviewMessage {
    /// The review's page in the web inbox, if the public URL is known.
    pub fn inbox_url(&self) -> Option<String> {
        let base = self.public_url.trim_end_matches('/');
        (!base.is_empty()).then(|| format!("{base}/#/reviews/{}", self.review_id))
    }

    /// The value both buttons carry, so the interaction names the tenant
    /// without a lookup by message.
    pub fn button_value(&self) -> String {
        format!("{}:{}", self.tenant_id, self.review_id)
    }
}

/// The message's Block Kit blocks (a JSON array).
pub fn blocks(msg: &ReviewMessage) -> Value {
    let title = match msg.kind {
        ReviewKind::AccessRequest { .. } => "Access request",
        ReviewKind::HeldStatement { .. } => "Statement held for review",
    };
    let mut blocks =
        vec![json!({"type": "header", "text": {"type": "plain_text", "text": title}}), mrkdwn_section(summary(msg))];
    if let ReviewKind::HeldStatement { statement } = &msg.kind {
        blocks.push(mrkdwn_section(statement_text(statement)));
    }
    blocks.push(json!({"type": "context", "elements": [mrkdwn(context_text(msg))]}));
    match &msg.outcome {
        None => blocks.push(actions(msg)),
        Some(decided) => blocks.push(mrkdwn_section(outcome_text(decided))),
    }
    Value::Array(blocks)
}

/// The message's `text`: what notifications and clients without blocks show.
pub fn fallback_text(msg: &ReviewMessage) -> String {
    let requester = name(&msg.requester);
    let connection = name(&msg.connection);
    let what = match &msg.kind {
        ReviewKind::AccessRequest { role } => {
            format!("Access request from {requester} for role {} on {connection}", name(role))
        }
        ReviewKind::HeldStatement { .. } => format!("Statement by {requester} on {connection} held for review"),
    };
    match &msg.outcome {
        None => format!("{what}: approve or deny"),
        Some(decided) => format!("{what}: {}", decided.outcome.as_str()),
    }
}

fn summary(msg: &ReviewMessage) -> String {
    let requester = name(&msg.requester);
    let connection = name(&msg.connection);
    let mut text = match &msg.kind {
        ReviewKind::AccessRequest { role } => {
            format!("*{requester}* asks for role *{}* on *{connection}*.", name(role))
        }
        ReviewKind::HeldStatement { .. } => format!("*{requester}* sent a statement to *{connection}*:"),
    };
    if !msg.reason.trim().is_empty() {
        let (reason, _) = escape_bounded(msg.reason.trim(), MAX_REASON_CHARS);
        text.push_str("\n*Reason:* ");
        text.push_str(&reason);
    }
    let approvals = if msg.quorum == 1 { "1 approval".to_owned() } else { format!("{} approvals", msg.quorum) };
    let (approvers, _) = escape_bounded(&one_line(&msg.approvers), MAX_APPROVERS_CHARS);
    text.push_str(&format!("\n*Rule:* {} · needs {approvals} from {approvers}", name(&msg.rule)));
    text
}

fn statement_text(statement: &str) -> String {
    let (shown, left_out) = escape_bounded(statement.trim(), MAX_STATEMENT_CHARS);
    let mut text = format!("```\n{shown}\n```");
    if left_out > 0 {
        text.push_str(&format!("\n_{left_out} more characters not shown; the whole statement is in the inbox._"));
    }
    text
}

fn context_text(msg: &ReviewMessage) -> String {
    let (id, _) = escape_bounded(&msg.review_id, MAX_NAME_CHARS);
    let mut text = format!("Review `{id}`");
    if msg.outcome.is_none() {
        // Slack shows `<!date^...>` in each reader's own time zone; the text after `|` is for clients that cannot.
        text.push_str(&format!(
            " · expires <!date^{}^{{date_short_pretty}} at {{time}}|{}>",
            msg.expires_at_unix,
            utc_time(msg.expires_at_unix)
        ));
    }
    if let Some(url) = msg.inbox_url() {
        let (url, left_out) = escape_bounded(&url, MAX_URL_CHARS);
        // A cut link leads nowhere useful, and `|` would end the URL early.
        if left_out == 0 && !url.contains('|') {
            text.push_str(&format!(" · <{url}|Open in Airlock>"));
        }
    }
    text
}

fn outcome_text(decided: &Decided) -> String {
    let by: Vec<String> = decided.by.iter().map(|who| name(who)).collect();
    let by = by.join(", ");
    match decided.outcome {
        Outcome::Approved if by.is_empty() => ":white_check_mark: *Approved*".to_owned(),
        Outcome::Approved => format!(":white_check_mark: *Approved* by {by}"),
        Outcome::Denied if by.is_empty() => ":no_entry: *Denied*".to_owned(),
        Outcome::Denied => format!(":no_entry: *Denied* by {by}"),
        Outcome::Expired => ":hourglass: *Expired*: nobody decided in time".to_owned(),
        Outcome::Withdrawn => {
            ":leftwards_arrow_with_hook: *Withdrawn*: the statement's session stopped waiting".to_owned()
        }
    }
}

fn actions(msg: &ReviewMessage) -> Value {
    let value = msg.button_value();
    let consequence = match msg.kind {
        ReviewKind::AccessRequest { .. } => "One denial closes the review: the access request is refused.",
        ReviewKind::HeldStatement { .. } => "One denial closes the review: the statement is refused.",
    };
    json!({
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION_ID,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": value,
            },
            {
                "type": "button",
                "action_id": DENY_ACTION_ID,
                "text": {"type": "plain_text", "text": "Deny"},
                "style": "danger",
                "value": value,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Deny this review?"},
                    "text": {"type": "plain_text", "text": consequence},
                    "confirm": {"type": "plain_text", "text": "Deny"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                    "style": "danger",
                },
            },
        ],
    })
}

fn mrkdwn_section(text: String) -> Value {
    json!({"type": "section", "text": mrkdwn(text)})
}

/// `verbatim` stops Slack from turning bare words such as `@here` into
/// mentions; the `<...>` forms that do mention are escaped in what users wrote.
fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text, "verbatim": true})
}

/// A user-provided name on one line, escaped and bounded.
fn name(text: &str) -> String {
    let (escaped, left_out) = escape_bounded(&one_line(text), MAX_NAME_CHARS);
    if left_out > 0 { format!("{escaped}…") } else { escaped }
}

fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Escapes `text` for mrkdwn and keeps at most `max_chars` characters of the
/// escaped form, never cutting an entity; also returns how many characters of
/// `text` were left out.
fn escape_bounded(text: &str, max_chars: usize) -> (String, usize) {
    let mut out = String::with_capacity(text.len().min(max_chars));
    let mut used = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let entity = match c {
            '&' => Some("&amp;"),
            '<' => Some("&lt;"),
            '>' => Some("&gt;"),
            _ => None,
        };
        let cost = entity.map_or(1, str::len);
        if used + cost > max_chars {
            return (out, 1 + chars.count());
        }
        match entity {
            Some(entity) => out.push_str(entity),
            None => out.push(c),
        }
        used += cost;
    }
    (out, 0)
}

/// Escapes `&`, `<` and `>`, the characters Slack's mrkdwn gives meaning to.
pub fn escape(text: &str) -> String {
    escape_bounded(text, usize::MAX).0
}

fn utc_time(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// A Slack bot token (`xoxb-...`). `Debug` never shows it.
#[derive(Clone)]
pub struct BotToken(String);

impl BotToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// Where a posted message is: what [`SlackClient::update_message`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedMessage {
    /// The channel's id, as Slack answers it.
    pub channel: String,
    /// The message's timestamp, its id within the channel.
    pub ts: String,
}

/// Why a call to Slack failed. None of them carries the token.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("the Slack API base URL {url:?} cannot be used: {reason}")]
    BaseUrl { url: String, reason: &'static str },
    #[error("the Slack bot token has characters an HTTP header cannot carry")]
    TokenNotAHeader,
    #[error("could not call Slack's {method}: {reason}")]
    Transport { method: &'static str, reason: String },
    #[error("Slack's {method} answered HTTP {status}")]
    Status { method: &'static str, status: u16 },
    #[error("Slack's {method} is rate limited; retry after {} s", retry_after.as_secs())]
    RateLimited { method: &'static str, retry_after: Duration },
    #[error("Slack's {method} refused the call: {code}{}", details_suffix(details))]
    Api { method: &'static str, code: String, details: Vec<String> },
    #[error("Slack's {method} answered something that is not its JSON envelope: {reason}")]
    BadResponse { method: &'static str, reason: String },
}

fn details_suffix(details: &[String]) -> String {
    if details.is_empty() { String::new() } else { format!(" ({})", details.join("; ")) }
}

impl SlackError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            SlackError::Transport { .. } | SlackError::RateLimited { .. } => true,
            SlackError::Status { status, .. } => *status >= 500,
            SlackError::Api { code, .. } => {
                matches!(code.as_str(), "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout")
            }
            SlackError::BaseUrl { .. } | SlackError::TokenNotAHeader | SlackError::BadResponse { .. } => false,
        }
    }

    /// How long Slack asked to wait, when it rate-limited the call.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Slack's own error code (`channel_not_found`, `invalid_auth`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackError::Api { code, .. } => Some(code),
            SlackError::RateLimited { .. } => Some("ratelimited"),
            _ => None,
        }
    }
}

/// Slack's Web API, as the bot of one workspace.
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    base_url: String,
    authorization: HeaderValue,
}

impl fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackClient").field("base_url", &self.base_url).field("token", &"<redacted>").finish()
    }
}

impl SlackClient {
    /// A client of `https://slack.com/api`.
    pub fn new(token: BotToken) -> Result<Self, SlackError> {
        Self::with_base_url(SLACK_API_BASE_URL, token)
    }

    /// A client of another base URL: https, or plain http on loopback only
    /// (where a stand-in runs), since the token travels in every request.
    pub fn with_base_url(base_url: &str, token: BotToken) -> Result<Self, SlackError> {
        let trimmed = base_url.trim_end_matches('/');
        let refuse = |reason| SlackError::BaseUrl { url: base_url.to_owned(), reason };
        let url = reqwest::Url::parse(trimmed).map_err(|_| refuse("not a URL"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(refuse("plain http is allowed on loopback only")),
            _ => return Err(refuse("the scheme must be https")),
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("it may have no query, fragment or credentials"));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", token.0)).map_err(|_| SlackError::TokenNotAHeader)?;
        authorization.set_sensitive(true);
        // A redirect could carry the request somewhere the operator did not configure.
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SlackError::Transport { method: "client", reason: error_chain(&e) })?;
        Ok(Self { http, base_url: trimmed.to_owned(), authorization })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Posts a review message to `channel` (`chat.postMessage`).
    pub async fn post_message(&self, channel: &str, msg: &ReviewMessage) -> Result<PostedMessage, SlackError> {
        const METHOD: &str = "chat.postMessage";
        let body = json!({
            "channel": channel,
            "text": fallback_text(msg),
            "blocks": blocks(msg),
            // The inbox link would otherwise unfold into a preview of the web UI's login page.
            "unfurl_links": false,
            "unfurl_media": false,
        });
        let answer = self.call(METHOD, &body).await?;
        let ts = answer.get("ts").and_then(Value::as_str).filter(|ts| !ts.is_empty());
        let Some(ts) = ts else {
            return Err(SlackError::BadResponse { method: METHOD, reason: "no ts".to_owned() });
        };
        let channel = answer.get("channel").and_then(Value::as_str).filter(|c| !c.is_empty()).unwrap_or(channel);
        Ok(PostedMessage { channel: channel.to_owned(), ts: ts.to_owned() })
    }

    /// Replaces the message at `ts` in `channel` (`chat.update`), e.g. with its outcome.
    pub async fn update_message(&self, channel: &str, ts: &str, msg: &ReviewMessage) -> Result<(), SlackError> {
        let body = json!({
            "channel": channel,
            "ts": ts,
            "text": fallback_text(msg),
            "blocks": blocks(msg),
        });
        self.call("chat.update", &body).await.map(|_| ())
    }

    async fn call(&self, method: &'static str, body: &Value) -> Result<Value, SlackError> {
        let url = format!("{}/{method}", self.base_url);
        let transport = |e: reqwest::Error| SlackError::Transport { method, reason: error_chain(&e) };
        let mut response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            return Err(SlackError::RateLimited { method, retry_after });
        }
        if !status.is_success() {
            return Err(SlackError::Status { method, status: status.as_u16() });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(SlackError::BadResponse { method, reason: "the answer is too large".to_owned() });
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| SlackError::BadResponse { method, reason: bounded(&e.to_string()) })?;
        match answer.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(answer),
            Some(false) => {
                let code = answer.get("error").and_then(Value::as_str).unwrap_or("unknown_error");
                if code == "ratelimited" {
                    return Err(SlackError::RateLimited { method, retry_after: DEFAULT_RETRY_AFTER });
                }
                // For invalid_blocks Slack says which block and why; that is what someone fixing it needs.
                let details = answer
                    .pointer("/response_metadata/messages")
                    .and_then(Value::as_array)
                    .map(|messages| messages.iter().filter_map(Value::as_str).take(3).map(bounded).collect())
                    .unwrap_or_default();
                Err(SlackError::Api { method, code: bounded(code), details })
            }
            None => Err(SlackError::BadResponse { method, reason: "no boolean \"ok\"".to_owned() }),
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error with its causes; reqwest's own message alone says only "error sending request".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    bounded(&text)
}

fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_TEXT {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_ERROR_TEXT).collect();
        cut.push('…');
        cut
    }
}

/// Which check a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlackVerifyError {
    #[error("no Slack signing secret is configured")]
    NoSigningSecret,
    #[error("the request has no X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    #[error("the request has no X-Slack-Signature header")]
    MissingSignature,
    #[error("X-Slack-Request-Timestamp is not a unix time in seconds")]
    MalformedTimestamp,
    #[error(
        "X-Slack-Request-Timestamp is {skew_secs} s from now, outside the {MAX_TIMESTAMP_SKEW_SECS} s window \
         (a replay, or a clock that is off)"
    )]
    StaleTimestamp { skew_secs: u64 },
    #[error("X-Slack-Signature is not of the form v0=<64 hex digits>")]
    MalformedSignature,
    #[error("X-Slack-Signature does not match the request")]
    BadSignature,
}

/// Checks a request as Slack documents it: `X-Slack-Signature` must be
/// `v0=` and the hex HMAC-SHA256, keyed with the signing secret, of
/// `v0:{X-Slack-Request-Timestamp}:{body}`, and the timestamp within
/// [`MAX_TIMESTAMP_SKEW_SECS`] of `now_unix` either way.
pub fn verify_request(
    signing_secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SlackVerifyError> {
    // An empty key is one anybody can sign with.
    if signing_secret.is_empty() {
        return Err(SlackVerifyError::NoSigningSecret);
    }
    let timestamp_text = timestamp_header.ok_or(SlackVerifyError::MissingTimestamp)?;
    let signature_text = signature_header.ok_or(SlackVerifyError::MissingSignature)?;
    let timestamp = parse_timestamp(timestamp_text)?;
    let skew_secs = now_unix.abs_diff(timestamp);
    if skew_secs > MAX_TIMESTAMP_SKEW_SECS {
        return Err(SlackVerifyError::StaleTimestamp { skew_secs });
    }
    let given = signature_text
        .strip_prefix("v0=")
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or(SlackVerifyError::MalformedSignature)?;
    let mut mac = HmacSha256::new_from_slice(signing_secret).map_err(|_| SlackVerifyError::NoSigningSecret)?;
    // The header's own text is what Slack signed, not a re-rendering of the number.
    mac.update(b"v0:");
    mac.update(timestamp_text.as_bytes());
    mac.update(b":");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).map_err(|_| SlackVerifyError::BadSignature)
}

fn parse_timestamp(text: &str) -> Result<i64, SlackVerifyError> {
    // Digits only: `parse` would also take a sign, and a long run could only be an attack.
    if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SlackVerifyError::MalformedTimestamp);
    }
    text.parse().map_err(|_| SlackVerifyError::MalformedTimestamp)
}

/// A button press, as the interaction endpoint needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interaction {
    /// The Slack user who pressed (`U0123456789`).
    pub user_id: String,
    /// Their Slack user name, for messages only; empty if Slack sent none.
    pub user_name: String,
    /// Their workspace (`T0123456789`).
    pub team_id: String,
    /// Approve (`true`) or Deny.
    pub approve: bool,
    pub tenant_id: String,
    pub review_id: String,
    /// The channel and timestamp of the message pressed.
    pub channel: String,
    pub message_ts: String,
    /// Where Slack takes a reply to the presser, if it sent one.
    pub response_url: Option<String>,
}

/// Why an interaction body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InteractionError {
    #[error("the interaction body is {0} bytes, over the {MAX_INTERACTION_BODY} allowed")]
    TooLarge(usize),
    #[error("the interaction body has no payload field")]
    NoPayload,
    #[error("the interaction body has more than one payload field")]
    DuplicatePayload,
    #[error("the interaction payload is not the JSON expected: {0}")]
    Json(String),
    #[error("the interaction is of type {0:?}, not block_actions")]
    NotBlockActions(String),
    #[error("the interaction has no action")]
    NoAction,
    #[error("the action {0:?} is not one of Airlock's buttons")]
    UnknownAction(String),
    #[error("the button's value is not tenant:review")]
    BadValue,
    #[error("the interaction has no {0}")]
    Missing(&'static str),
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: Option<String>,
    user: Option<PayloadUser>,
    team: Option<WithId>,
    actions: Option<Vec<PayloadAction>>,
    response_url: Option<String>,
    container: Option<Container>,
    channel: Option<WithId>,
    message: Option<PayloadMessage>,
}

#[derive(Deserialize)]
struct PayloadUser {
    id: Option<String>,
    username: Option<String>,
    name: Option<String>,
    team_id: Option<String>,
}

#[derive(Deserialize)]
struct WithId {
    id: Option<String>,
}

#[derive(Deserialize)]
struct PayloadAction {
    action_id: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct Container {
    channel_id: Option<String>,
    message_ts: Option<String>,
}

#[derive(Deserialize)]
struct PayloadMessage {
    ts: Option<String>,
}

/// Reads a `block_actions` interaction: the form-encoded body Slack posts, whose
/// one `payload` field holds the JSON. Verify the body's signature first.
pub fn parse_interaction(body: &[u8]) -> Result<Interaction, InteractionError> {
    if body.len() > MAX_INTERACTION_BODY {
        return Err(InteractionError::TooLarge(body.len()));
    }
    let mut payload = None;
    for (key, value) in form_urlencoded::parse(body) {
        if key == "payload" {
            // Two payloads could be read differently by two readers; neither is taken.
            if payload.replace(value).is_some() {
                return Err(InteractionError::DuplicatePayload);
            }
        }
    }
    let payload = payload.ok_or(InteractionError::NoPayload)?;
    let payload: Payload =
        serde_json::from_str(&payload).map_err(|e| InteractionError::Json(bounded(&e.to_string())))?;
    let kind = payload.kind.unwrap_or_default();
    if kind != "block_actions" {
        return Err(InteractionError::NotBlockActions(bounded(&kind)));
    }
    let action = payload.actions.unwrap_or_default().into_iter().next().ok_or(InteractionError::NoAction)?;
    let action_id = action.action_id.unwrap_or_default();
    let approve = match action_id.as_str() {
        APPROVE_ACTION_ID => true,
        DENY_ACTION_ID => false,
        _ => return Err(InteractionError::UnknownAction(bounded(&action_id))),
    };
    let value = action.value.unwrap_or_default();
    let (tenant_id, review_id) = value
        .split_once(':')
        .filter(|(tenant, review)| !tenant.is_empty() && !review.is_empty() && !review.contains(':'))
        .ok_or(InteractionError::BadValue)?;
    let user = payload.user.ok_or(InteractionError::Missing("user"))?;
    let user_id = present(user.id).ok_or(InteractionError::Missing("user.id"))?;
    let user_name = present(user.username).or(present(user.name)).unwrap_or_default();
    // An org-wide app may see `team: null`; the user still belongs to a workspace.
    let team_id = present(payload.team.and_then(|t| t.id))
        .or(present(user.team_id))
        .ok_or(InteractionError::Missing("team.id"))?;
    let (container_channel, container_ts) = match payload.container {
        Some(c) => (c.channel_id, c.message_ts),
        None => (None, None),
    };
    let channel = present(container_channel)
        .or(present(payload.channel.and_then(|c| c.id)))
        .ok_or(InteractionError::Missing("channel"))?;
    let message_ts = present(container_ts)
        .or(present(payload.message.and_then(|m| m.ts)))
        .ok_or(InteractionError::Missing("message ts"))?;
    Ok(Interaction {
        user_id,
        user_name,
        team_id,
        approve,
        tenant_id: tenant_id.to_owned(),
        review_id: review_id.to_owned(),
        channel,
        message_ts,
        response_url: present(payload.response_url),
    })
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_access() -> ReviewMessage {
        ReviewMessage {
            review_id: "0190a0b0-0000-7000-8000-000000000001".into(),
            tenant_id: "0190a0b0-0000-7000-8000-0000000000aa".into(),
            kind: ReviewKind::AccessRequest { role: "readwrite".into() },
            requester: "ci-bot".into(),
            connection: "orders-db".into(),
            reason: "Fix <b>ticket</b> #12 & more".into(),
            rule: "writes".into(),
            approvers: "a member of dba".into(),
            quorum: 2,
            expires_at_unix: 1_700_003_600,
            public_url: "https://airlock.example.com/".into(),
            outcome: None,
        }
    }

    fn buttons(blocks: &Value) -> Vec<Value> {
        blocks
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .collect()
    }

    fn all_text(blocks: &Value) -> String {
        blocks.to_string()
    }

    #[test]
    fn a_pending_review_has_approve_and_deny_buttons_naming_tenant_and_review() {
        let msg = pending_access();
        let blocks = blocks(&msg);
        let buttons = buttons(&blocks);
        assert_eq!(buttons.len(), 2);
        let value = "0190a0b0-0000-7000-8000-0000000000aa:0190a0b0-0000-7000-8000-000000000001";
        assert_eq!(buttons[0]["type"], "button");
        assert_eq!(buttons[0]["action_id"], APPROVE_ACTION_ID);
        assert_eq!(buttons[0]["style"], "primary");
        assert_eq!(buttons[0]["value"], value);
        assert_eq!(buttons[0]["text"]["type"], "plain_text");
        assert_eq!(buttons[1]["action_id"], DENY_ACTION_ID);
        assert_eq!(buttons[1]["style"], "danger");
        assert_eq!(buttons[1]["value"], value);
        assert_eq!(buttons[1]["confirm"]["confirm"]["text"], "Deny");
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        let text = all_text(&blocks);
        assert!(text.contains("https://airlock.example.com/#/reviews/0190a0b0-0000-7000-8000-000000000001"), "{text}");
        assert!(text.contains("<!date^1700003600^"), "{text}");
        assert!(text.contains("2023-11-14 23:13 UTC"), "{text}");
        assert!(fallback_text(&msg).contains("ci-bot"));
    }

    #[test]
    fn a_decided_review_has_no_buttons_and_says_who_decided() {
        let mut msg = pending_access();
        msg.outcome = Some(Decided { outcome: Outcome::Approved, by: vec!["alice".into(), "bob".into()] });
        let blocks = blocks(&msg);
        assert!(buttons(&blocks).is_empty());
        let last = blocks.as_array().unwrap().last().unwrap();
        assert_eq!(last["type"], "section");
        assert!(last["text"]["text"].as_str().unwrap().contains("*Approved* by alice, bob"));
        msg.outcome = Some(Decided { outcome: Outcome::Expired, by: vec![] });
        let expired = blocks_text(&msg);
        assert!(expired.contains("Expired") && !expired.contains("airlock_approve"), "{expired}");
        assert!(fallback_text(&msg).ends_with("expired"));
    }

    fn blocks_text(msg: &ReviewMessage) -> String {
        all_text(&blocks(msg))
    }

    #[test]
    fn user_text_is_escaped_so_it_cannot_mention_or_link() {
        let mut msg = pending_access();
        msg.requester = "<!channel>".into();
        msg.connection = "<https://evil.example|click>".into();
        let text = blocks_text(&msg);
        assert!(!text.contains("<!channel>") && text.contains("&lt;!channel&gt;"), "{text}");
        assert!(!text.contains("<https://evil") && text.contains("&lt;https://evil.example|click&gt;"), "{text}");
        assert!(text.contains("Fix &lt;b&gt;ticket&lt;/b&gt; #12 &amp; more"), "{text}");
        assert!(!fallback_text(&msg).contains("<!channel>"));
        assert_eq!(escape("a & <b>"), "a &amp; &lt;b&gt;");
    }

    #[test]
    fn a_long_statement_is_cut_in_its_code_block_with_a_note() {
        let mut msg = pending_access();
        let statement = format!("DELETE FROM orders WHERE id IN ({})", "1, ".repeat(2000));
        msg.kind = ReviewKind::HeldStatement { statement: statement.clone() };
        let blocks = blocks(&msg);
        let section = blocks[2]["text"]["text"].as_str().unwrap();
        assert!(section.starts_with("```\nDELETE FROM orders"), "{section}");
        assert!(section.chars().count() <= 3000);
        let left_out = statement.chars().count() - MAX_STATEMENT_CHARS;
        assert!(section.contains(&format!("_{left_out} more characters not shown")), "{section}");
        for block in blocks.as_array().unwrap() {
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(text.chars().count() <= 3000);
            }
        }
    }

    #[test]
    fn escaping_never_cuts_an_entity() {
        assert_eq!(escape_bounded("a<b", 4), ("a".to_owned(), 2));
        assert_eq!(escape_bounded("a<b", 5), ("a&lt;".to_owned(), 1));
        assert_eq!(escape_bounded("é&", 6), ("é&amp;".to_owned(), 0));
    }

    // Computed independently with python3:
    //   hmac.new(b"airlock-test-signing-secret",
    //            b"v0:1700000000:payload=%7B%22type%22%3A%22block_actions%22%7D", hashlib.sha256).hexdigest()
    const SECRET: &[u8] = b"airlock-test-signing-secret";
    const BODY: &[u8] = b"payload=%7B%22type%22%3A%22block_actions%22%7D";
    const SIGNATURE: &str = "v0=43cfd9f8b90604c724f4210c7f50f3ef89572ad54e6baf2139552c51ef34a456";

    #[test]
    fn a_signature_computed_elsewhere_verifies() {
        assert_eq!(verify_request(SECRET, Some("1700000000"), Some(SIGNATURE), BODY, 1_700_000_030), Ok(()));
        // At the window's edges, either way.
        assert_eq!(verify_request(SECRET, Some("1700000000"), Some(SIGNATURE), BODY, 1_700_000_300), Ok(()));
        assert_eq!(verify_request(SECRET, Some("1700000000"), Some(SIGNATURE), BODY, 1_699_999_700), Ok(()));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let stale = verify_request(SECRET, Some("1700000000"), Some(SIGNATURE), BODY, 1_700_000_301);
        assert_eq!(stale, Err(SlackVerifyError::StaleTimestamp { skew_secs: 301 }));
        let future = verify_request(SECRET, Some("1700000000"), Some(SIGNATURE), BODY, 1_699_999_000);
        assert_eq!(future, Err(SlackVerifyError::StaleTimestamp { skew_secs: 1000 }));
    }

    #[test]
    fn tampering_and_missing_or_malformed_headers_are_refused() {
        let now = 1_700_000_000;
        let tampered = b"payload=%7B%22type%22%3A%22block_actionz%22%7D";
        let check = |secret: &[u8], ts: Option<&str>, sig: Option<&str>, body: &[u8]| {
            verify_request(secret, ts, sig, body, now).unwrap_err()
        };
        assert_eq!(check(SECRET, Some("1700000000"), Some(SIGNATURE), tampered), SlackVerifyError::BadSignature);
        assert_eq!(check(b"another-secret", Some("1700000000"), Some(SIGNATURE), BODY), SlackVerifyError::BadSignature);
        // The same instant written differently is not what Slack signed.
        assert_eq!(check(SECRET, Some("01700000000"), Some(SIGNATURE), BODY), SlackVerifyError::BadSignature);
        assert_eq!(check(SECRET, None, Some(SIGNATURE), BODY), SlackVerifyError::MissingTimestamp);
        assert_eq!(check(SECRET, Some("1700000000"), None, BODY), SlackVerifyError::MissingSignature);
        assert_eq!(check(SECRET, Some("+1700000000"), Some(SIGNATURE), BODY), SlackVerifyError::MalformedTimestamp);
        assert_eq!(check(SECRET, Some("1700000000"), Some("v1=00"), BODY), SlackVerifyError::MalformedSignature);
        let unprefixed = SIGNATURE.trim_start_matches("v0=");
        assert_eq!(check(SECRET, Some("1700000000"), Some(unprefixed), BODY), SlackVerifyError::MalformedSignature);
        assert_eq!(check(b"", Some("1700000000"), Some(SIGNATURE), BODY), SlackVerifyError::NoSigningSecret);
    }

    fn form(payload: &Value) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    fn block_actions(action_id: &str, value: &str) -> Value {
        json!({
            "type": "block_actions",
            "user": {"id": "U04ABCD1234", "username": "alice", "name": "alice", "team_id": "T01TEAM0001"},
            "api_app_id": "A05APP00001",
            "token": "deprecated-verification-token",
            "container": {
                "type": "message",
                "message_ts": "1700000000.000100",
                "channel_id": "C07CHAN0001",
                "is_ephemeral": false
            },
            "trigger_id": "1700000001.1234.abcdef",
            "team": {"id": "T01TEAM0001", "domain": "example"},
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": {"id": "C07CHAN0001", "name": "approvals"},
            "message": {
                "type": "message",
                "subtype": "bot_message",
                "text": "Access request from ci-bot",
                "ts": "1700000000.000100",
                "bot_id": "B06BOT00001",
                "blocks": [{"type": "section", "block_id": "x1", "text": {"type": "mrkdwn", "text": "hi"}}]
            },
            "state": {"values": {}},
            "response_url": "https://hooks.slack.com/actions/T01TEAM0001/123/abc",
            "actions": [{
                "action_id": action_id,
                "block_id": "a1b2",
                "text": {"type": "plain_text", "text": "Approve", "emoji": true},
                "value": value,
                "style": "primary",
                "type": "button",
                "action_ts": "1700000001.000200"
            }]
        })
    }

    #[test]
    fn a_block_actions_payload_is_read() {
        let body = form(&block_actions("airlock_approve", "tenant-1:review-9"));
        let interaction = parse_interaction(&body).unwrap();
        assert_eq!(
            interaction,
            Interaction {
                user_id: "U04ABCD1234".into(),
                user_name: "alice".into(),
                team_id: "T01TEAM0001".into(),
                approve: true,
                tenant_id: "tenant-1".into(),
                review_id: "review-9".into(),
                channel: "C07CHAN0001".into(),
                message_ts: "1700000000.000100".into(),
                response_url: Some("https://hooks.slack.com/actions/T01TEAM0001/123/abc".into()),
            }
        );
        let deny = parse_interaction(&form(&block_actions("airlock_deny", "tenant-1:review-9"))).unwrap();
        assert!(!deny.approve);
    }

    #[test]
    fn without_a_container_the_channel_and_message_are_used() {
        let mut payload = block_actions("airlock_deny", "t:r");
        payload.as_object_mut().unwrap().remove("container");
        payload["team"] = Value::Null;
        let interaction = parse_interaction(&form(&payload)).unwrap();
        assert_eq!(interaction.channel, "C07CHAN0001");
        assert_eq!(interaction.message_ts, "1700000000.000100");
        assert_eq!(interaction.team_id, "T01TEAM0001");
    }

    #[test]
    fn other_payloads_actions_and_bodies_are_refused() {
        let unknown = parse_interaction(&form(&block_actions("something_else", "t:r")));
        assert_eq!(unknown, Err(InteractionError::UnknownAction("something_else".into())));
        let bad_value = parse_interaction(&form(&block_actions("airlock_approve", "no-colon")));
        assert_eq!(bad_value, Err(InteractionError::BadValue));
        let mut view = block_actions("airlock_approve", "t:r");
        view["type"] = json!("view_submission");
        assert_eq!(parse_interaction(&form(&view)), Err(InteractionError::NotBlockActions("view_submission".into())));
        let mut empty = block_actions("airlock_approve", "t:r");
        empty["actions"] = json!([]);
        assert_eq!(parse_interaction(&form(&empty)), Err(InteractionError::NoAction));
        assert_eq!(parse_interaction(b"other=1"), Err(InteractionError::NoPayload));
        assert_eq!(parse_interaction(b"payload=1&payload=2"), Err(InteractionError::DuplicatePayload));
        assert!(matches!(parse_interaction(b"payload=%7Bnot-json"), Err(InteractionError::Json(_))));
        let huge = vec![b'a'; MAX_INTERACTION_BODY + 1];
        assert_eq!(parse_interaction(&huge), Err(InteractionError::TooLarge(MAX_INTERACTION_BODY + 1)));
    }

    #[test]
    fn the_token_stays_out_of_debug_and_base_urls_are_checked() {
        let client = SlackClient::with_base_url("http://127.0.0.1:9/api/", BotToken::new("xoxb-secret-1")).unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:9/api");
        assert!(!format!("{client:?}").contains("xoxb-secret-1"));
        assert!(!format!("{:?}", BotToken::new("xoxb-secret-1")).contains("xoxb"));
        assert!(SlackClient::new(BotToken::new("xoxb-1")).is_ok());
        let plain = SlackClient::with_base_url("http://slack.example.com/api", BotToken::new("xoxb-1"));
        assert!(matches!(plain, Err(SlackError::BaseUrl { .. })));
        let newline = SlackClient::with_base_url("https://slack.com/api", BotToken::new("xoxb-1\nx"));
        assert!(matches!(newline, Err(SlackError::TokenNotAHeader)));
    }

    mod with_the_stand_in {
        use std::time::Duration;

        use airlock_testkit::slack::{SlackStandIn, interaction_body, sign_interaction};

        use super::*;

        const TOKEN: &str = "xoxb-1234-5678-stand-in";
        const WAIT: Duration = Duration::from_secs(10);

        #[tokio::test]
        async fn messages_are_posted_and_updated_as_slack_accepts_them() {
            let slack = SlackStandIn::start(TOKEN).await.unwrap();
            let client = SlackClient::with_base_url(slack.base_url(), BotToken::new(TOKEN)).unwrap();
            let msg = pending_access();
            let posted = client.post_message("C0APPROVALS", &msg).await.unwrap();
            let recorded = slack.wait_for_message(0, WAIT).await.unwrap();
            assert_eq!((recorded.channel.as_str(), recorded.ts.as_str()), ("C0APPROVALS", posted.ts.as_str()));
            assert_eq!(recorded.blocks, blocks(&msg));
            assert_eq!(recorded.text, Some(fallback_text(&msg)));
            assert!(recorded.warnings.is_empty(), "{:?}", recorded.warnings);

            let mut held = pending_access();
            held.review_id = "0190a0b0-0000-7000-8000-000000000002".into();
            held.kind = ReviewKind::HeldStatement { statement: format!("UPDATE t SET a = '{}'", "<&>".repeat(3000)) };
            held.reason = "r".repeat(5000);
            held.requester = "s".repeat(5000);
            client.post_message("C0APPROVALS", &held).await.unwrap();

            let mut decided = msg.clone();
            decided.outcome = Some(Decided { outcome: Outcome::Denied, by: vec!["carol".into()] });
            client.update_message(&posted.channel, &posted.ts, &decided).await.unwrap();
            let current = slack.current(&posted.channel, &posted.ts).unwrap();
            assert_eq!(current.method, "chat.update");
            assert!(!current.blocks.to_string().contains(APPROVE_ACTION_ID));
            assert!(current.blocks.to_string().contains("*Denied* by carol"));
            assert!(slack.rejected().is_empty(), "{:?}", slack.rejected());
        }

        #[tokio::test]
        async fn slack_errors_are_named_and_never_show_the_token() {
            let slack = SlackStandIn::start(TOKEN).await.unwrap();
            let wrong = SlackClient::with_base_url(slack.base_url(), BotToken::new("xoxb-wrong-token")).unwrap();
            let error = wrong.post_message("C0APPROVALS", &pending_access()).await.unwrap_err();
            assert_eq!(error.code(), Some("invalid_auth"));
            assert!(!error.is_retryable());
            assert!(!format!("{error} {error:?}").contains("xoxb"), "{error:?}");

            let client = SlackClient::with_base_url(slack.base_url(), BotToken::new(TOKEN)).unwrap();
            let missing = client.update_message("C0APPROVALS", "1700000000.000100", &pending_access()).await;
            assert_eq!(missing.unwrap_err().code(), Some("message_not_found"));

            slack.rate_limit_next(3);
            let limited = client.post_message("C0APPROVALS", &pending_access()).await.unwrap_err();
            assert!(limited.is_retryable());
            assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));

            slack.fail_next("channel_not_found");
            let error = client.post_message("C0APPROVALS", &pending_access()).await.unwrap_err();
            assert!(error.to_string().contains("channel_not_found"), "{error}");
            assert!(slack.messages().is_empty());
        }

        #[test]
        fn a_button_press_as_slack_sends_it_verifies_and_parses() {
            let secret = b"8f0c1d2e3a4b5c6d7e8f9a0b1c2d3e4f";
            let value = pending_access().button_value();
            let body = interaction_body(
                "U04ALICE01",
                "alice.smith",
                "T01TEAM001",
                DENY_ACTION_ID,
                &value,
                "C0APPROVALS",
                "1700000000.000100",
                "https://hooks.slack.com/actions/T01TEAM001/1/x",
            );
            let signature = sign_interaction(secret, 1_700_000_000, &body);
            assert_eq!(verify_request(secret, Some("1700000000"), Some(&signature), &body, 1_700_000_100), Ok(()));
            let interaction = parse_interaction(&body).unwrap();
            assert_eq!(interaction.user_id, "U04ALICE01");
            assert_eq!(interaction.user_name, "alice.smith");
            assert_eq!(interaction.team_id, "T01TEAM001");
            assert!(!interaction.approve);
            assert_eq!(format!("{}:{}", interaction.tenant_id, interaction.review_id), value);
            assert_eq!(
                (interaction.channel.as_str(), interaction.message_ts.as_str()),
                ("C0APPROVALS", "1700000000.000100")
            );
            assert_eq!(interaction.response_url.as_deref(), Some("https://hooks.slack.com/actions/T01TEAM001/1/x"));
            let replayed = verify_request(secret, Some("1700000000"), Some(&signature), &body, 1_700_000_400);
            assert_eq!(replayed, Err(SlackVerifyError::StaleTimestamp { skew_secs: 400 }));
        }
    }
}
