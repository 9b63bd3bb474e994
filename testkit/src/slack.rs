//! A stand-in for Slack's Web API on `127.0.0.1:0`, for tests of Slack approvals.
//!
//! It serves `chat.postMessage` and `chat.update` and refuses what Slack
//! refuses, with Slack's error codes: a missing or wrong bot token, a body that
//! is not JSON, no channel, no text and no blocks, and blocks that break Block
//! Kit's rules (at most 50 blocks of known types, 1 to 25 elements in an actions
//! block, buttons with a plain-text label of at most 75 characters, an
//! `action_id` of at most 255 that is unique in the message, a `value` of at
//! most 2000, style `primary` or `danger` only, section text of at most 3000).
//! It records every call it accepted and every one it refused, so a test can
//! assert on the message an approver would have seen.
//!
//! It also builds what Slack sends back when a button is pressed: the
//! form-encoded `block_actions` payload and its `X-Slack-Signature`. They are
//! written here from Slack's documentation, apart from the control plane's
//! parser and verifier, so that a test pairing them checks the real format.
//!
//! Where it is stricter than Slack: it takes JSON bodies only (Slack also takes
//! form-encoded ones), and it wants `action_id`s unique across the message
//! (Slack asks it of each block).

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

const MAX_BLOCKS: usize = 50;
const MAX_ACTION_ELEMENTS: usize = 25;
const MAX_CONTEXT_ELEMENTS: usize = 10;
const MAX_SECTION_FIELDS: usize = 10;
const MAX_SECTION_TEXT: usize = 3000;
const MAX_FIELD_TEXT: usize = 2000;
const MAX_HEADER_TEXT: usize = 150;
const MAX_BUTTON_TEXT: usize = 75;
const MAX_ACTION_ID: usize = 255;
const MAX_BLOCK_ID: usize = 255;
const MAX_BUTTON_VALUE: usize = 2000;
const MAX_BUTTON_URL: usize = 3000;
const MAX_CONFIRM_TITLE: usize = 100;
const MAX_CONFIRM_TEXT: usize = 300;
const MAX_CONFIRM_BUTTON: usize = 30;
const MAX_MESSAGE_TEXT: usize = 40_000;

/// Interactive elements Slack knows besides buttons; the stand-in takes them
/// without looking inside, since Airlock sends none.
const OTHER_ELEMENTS: &[&str] = &[
    "checkboxes",
    "datepicker",
    "datetimepicker",
    "overflow",
    "radio_buttons",
    "static_select",
    "external_select",
    "users_select",
    "conversations_select",
    "channels_select",
    "multi_static_select",
    "multi_external_select",
    "multi_users_select",
    "multi_conversations_select",
    "multi_channels_select",
    "timepicker",
    "workflow_button",
];

/// A call the stand-in accepted: a message as posted, or its new content.
#[derive(Clone, Debug, PartialEq)]
pub struct SlackMessage {
    /// `chat.postMessage` or `chat.update`.
    pub method: String,
    pub channel: String,
    pub ts: String,
    pub text: Option<String>,
    /// The blocks as sent (`Value::Null` when there were none).
    pub blocks: Value,
    /// Slack's warnings, such as `missing_charset` for a JSON body whose
    /// `Content-Type` names no charset.
    pub warnings: Vec<String>,
}

/// A call the stand-in refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedCall {
    pub method: String,
    /// Slack's error code (`invalid_auth`, `invalid_blocks`, ...).
    pub error: String,
    /// What Slack says in `response_metadata.messages`: for `invalid_blocks`,
    /// which block broke which rule.
    pub details: Vec<String>,
    pub status: u16,
}

#[derive(Debug)]
enum Planned {
    RateLimited { retry_after_secs: u64 },
    Error(String),
}

struct Ledger {
    messages: Vec<SlackMessage>,
    rejected: Vec<RejectedCall>,
    ts_seconds: u64,
    ts_micros: u64,
    planned: VecDeque<Planned>,
}

struct Shared {
    token: String,
    ledger: Mutex<Ledger>,
    accepted: watch::Sender<usize>,
    refused: watch::Sender<usize>,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stand-in. Dropping it stops the server.
pub struct SlackStandIn {
    shared: Arc<Shared>,
    base_url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SlackStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SlackStandIn {
    /// Starts a stand-in that accepts `bot_token` only.
    pub async fn start(bot_token: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("failed to bind")?;
        let base_url = format!("http://{}/api", listener.local_addr()?);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1_700_000_000, |d| d.as_secs());
        let shared = Arc::new(Shared {
            token: bot_token.to_owned(),
            ledger: Mutex::new(Ledger {
                messages: Vec::new(),
                rejected: Vec::new(),
                ts_seconds: now,
                ts_micros: 0,
                planned: VecDeque::new(),
            }),
            accepted: watch::Sender::new(0),
            refused: watch::Sender::new(0),
        });
        let app = Router::new().route("/api/{method}", any(api_call)).with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("Slack stand-in stopped: {e:#}");
            }
        });
        Ok(Self { shared, base_url, server })
    }

    /// The Web API base URL, `http://127.0.0.1:PORT/api`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every accepted call, in order.
    pub fn messages(&self) -> Vec<SlackMessage> {
        self.shared.ledger().messages.clone()
    }

    /// Every refused call, in order.
    pub fn rejected(&self) -> Vec<RejectedCall> {
        self.shared.ledger().rejected.clone()
    }

    /// The message at `ts` in `channel` as it reads now, after any updates.
    pub fn current(&self, channel: &str, ts: &str) -> Option<SlackMessage> {
        self.shared.ledger().messages.iter().rev().find(|m| m.channel == channel && m.ts == ts).cloned()
    }

    /// Waits until the `index`-th accepted call (from 0) has arrived, and returns it.
    pub async fn wait_for_message(&self, index: usize, timeout: Duration) -> anyhow::Result<SlackMessage> {
        let mut count = self.shared.accepted.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|n| *n > index))
            .await
            .with_context(|| format!("no Slack message #{index} within {timeout:?}"))?
            .context("the Slack stand-in stopped")?;
        self.shared.ledger().messages.get(index).cloned().context("the message was not recorded")
    }

    /// Waits until the `index`-th refused call (from 0) has arrived, and returns it.
    pub async fn wait_for_rejected(&self, index: usize, timeout: Duration) -> anyhow::Result<RejectedCall> {
        let mut count = self.shared.refused.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|n| *n > index))
            .await
            .with_context(|| format!("no refused Slack call #{index} within {timeout:?}"))?
            .context("the Slack stand-in stopped")?;
        self.shared.ledger().rejected.get(index).cloned().context("the refusal was not recorded")
    }

    /// Answers the next authenticated call with HTTP 429, `Retry-After` and
    /// `ratelimited`, as Slack does past a method's rate limit.
    pub fn rate_limit_next(&self, retry_after_secs: u64) {
        self.shared.ledger().planned.push_back(Planned::RateLimited { retry_after_secs });
    }

    /// Answers the next authenticated call with `{"ok": false, "error": error}`.
    pub fn fail_next(&self, error: &str) {
        self.shared.ledger().planned.push_back(Planned::Error(error.to_owned()));
    }
}

struct Refusal {
    status: StatusCode,
    error: String,
    details: Vec<String>,
    retry_after_secs: Option<u64>,
}

impl Refusal {
    fn new(error: &str) -> Self {
        Self { status: StatusCode::OK, error: error.to_owned(), details: Vec::new(), retry_after_secs: None }
    }
}

async fn api_call(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&shared, &method, &headers, &body) {
        Ok(answer) => {
            shared.accepted.send_modify(|n| *n += 1);
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Err(refusal) => {
            shared.ledger().rejected.push(RejectedCall {
                method: method.clone(),
                error: refusal.error.clone(),
                details: refusal.details.clone(),
                status: refusal.status.as_u16(),
            });
            shared.refused.send_modify(|n| *n += 1);
            let mut answer = Map::new();
            answer.insert("ok".into(), json!(false));
            answer.insert("error".into(), json!(refusal.error));
            if !refusal.details.is_empty() {
                answer.insert("response_metadata".into(), json!({"messages": refusal.details}));
            }
            let mut response = (refusal.status, axum::Json(answer)).into_response();
            if let Some(secs) = refusal.retry_after_secs {
                response.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            response
        }
    }
}

fn handle(shared: &Shared, method: &str, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
    let update = match method {
        "chat.postMessage" => false,
        "chat.update" => true,
        _ => return Err(Refusal::new("unknown_method")),
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(authorization) = authorization.filter(|v| !v.trim().is_empty()) else {
        return Err(Refusal::new("not_authed"));
    };
    if authorization.strip_prefix("Bearer ") != Some(shared.token.as_str()) {
        return Err(Refusal::new("invalid_auth"));
    }
    if let Some(planned) = shared.ledger().planned.pop_front() {
        return Err(match planned {
            Planned::RateLimited { retry_after_secs } => Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after_secs: Some(retry_after_secs),
                ..Refusal::new("ratelimited")
            },
            Planned::Error(error) => Refusal::new(&error),
        });
    }
    let warnings = content_type_warnings(headers)?;
    let request: Value = serde_json::from_slice(body).map_err(|_| Refusal::new("invalid_json"))?;
    let Some(request) = request.as_object() else {
        return Err(Refusal::new("json_not_object"));
    };
    let channel = request.get("channel").and_then(Value::as_str).unwrap_or_default();
    if channel.is_empty() {
        return Err(Refusal::new("channel_not_found"));
    }
    let text = match request.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err(Refusal::new("invalid_arguments")),
    };
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_MESSAGE_TEXT) {
        return Err(Refusal::new("msg_too_long"));
    }
    let blocks = match request.get("blocks") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(blocks)) => {
            let errors = check_blocks(blocks);
            if !errors.is_empty() {
                return Err(Refusal { details: errors, ..Refusal::new("invalid_blocks") });
            }
            Value::Array(blocks.clone())
        }
        Some(_) => return Err(Refusal::new("invalid_blocks_format")),
    };
    let has_blocks = blocks.as_array().is_some_and(|b| !b.is_empty());
    if !has_blocks && text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(Refusal::new("no_text"));
    }

    let mut ledger = shared.ledger();
    let ts = if update {
        let ts = request.get("ts").and_then(Value::as_str).unwrap_or_default();
        let posted =
            ledger.messages.iter().any(|m| m.method == "chat.postMessage" && m.channel == channel && m.ts == ts);
        if !posted {
            return Err(Refusal::new("message_not_found"));
        }
        ts.to_owned()
    } else {
        ledger.ts_micros += 100;
        if ledger.ts_micros >= 1_000_000 {
            ledger.ts_seconds += 1;
            ledger.ts_micros = 0;
        }
        format!("{}.{:06}", ledger.ts_seconds, ledger.ts_micros)
    };
    ledger.messages.push(SlackMessage {
        method: method.to_owned(),
        channel: channel.to_owned(),
        ts: ts.clone(),
        text: text.clone(),
        blocks: blocks.clone(),
        warnings: warnings.clone(),
    });
    let mut message = Map::new();
    message.insert("type".into(), json!("message"));
    message.insert("subtype".into(), json!("bot_message"));
    message.insert("user".into(), json!("U0STANDIN01"));
    message.insert("bot_id".into(), json!("B0STANDIN01"));
    message.insert("text".into(), json!(text.clone().unwrap_or_default()));
    message.insert("ts".into(), json!(ts));
    if has_blocks {
        message.insert("blocks".into(), blocks);
    }
    let mut answer = Map::new();
    answer.insert("ok".into(), json!(true));
    answer.insert("channel".into(), json!(channel));
    answer.insert("ts".into(), json!(ts));
    if update {
        answer.insert("text".into(), json!(text.unwrap_or_default()));
    }
    answer.insert("message".into(), Value::Object(message));
    if !warnings.is_empty() {
        answer.insert("warning".into(), json!(warnings.join(",")));
        answer.insert("response_metadata".into(), json!({"warnings": warnings}));
    }
    Ok(Value::Object(answer))
}

/// A JSON body must say so; Slack warns, without refusing, when the charset is
/// missing or is not UTF-8.
fn content_type_warnings(headers: &HeaderMap) -> Result<Vec<String>, Refusal> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut parts = content_type.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(Refusal::new("invalid_post_type"));
    }
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, value)| value.trim().trim_matches('"').to_ascii_lowercase());
    Ok(match charset.as_deref() {
        None => vec!["missing_charset".to_owned()],
        Some("utf-8") => Vec::new(),
        Some(_) => vec!["superfluous_charset".to_owned()],
    })
}

/// Which text objects a field takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextKinds {
    PlainOnly,
    Any,
}

/// Walks the blocks and collects every rule broken, each named by its JSON
/// pointer, in the words Slack uses for `invalid_blocks`.
struct BlockCheck {
    errors: Vec<String>,
    action_ids: HashSet<String>,
    block_ids: HashSet<String>,
}

fn check_blocks(blocks: &[Value]) -> Vec<String> {
    let mut check = BlockCheck { errors: Vec::new(), action_ids: HashSet::new(), block_ids: HashSet::new() };
    if blocks.len() > MAX_BLOCKS {
        check.fail("/blocks", format!("no more than {MAX_BLOCKS} items allowed"));
    }
    for (i, block) in blocks.iter().enumerate() {
        check.block(&format!("/blocks/{i}"), block);
    }
    check.errors
}

impl BlockCheck {
    fn fail(&mut self, at: &str, why: impl std::fmt::Display) {
        self.errors.push(format!("[ERROR] {why} [json-pointer:{at}]"));
    }

    fn block(&mut self, at: &str, block: &Value) {
        let Some(block) = block.as_object() else {
            return self.fail(at, "must provide an object");
        };
        if let Some(block_id) = block.get("block_id") {
            self.unique_id(&format!("{at}/block_id"), block_id, MAX_BLOCK_ID, true);
        }
        match block.get("type").and_then(Value::as_str) {
            Some("section") => self.section(at, block),
            Some("actions") => self.actions(at, block),
            Some("context") => self.context(at, block),
            Some("header") => {
                self.text(&format!("{at}/text"), block.get("text"), TextKinds::PlainOnly, MAX_HEADER_TEXT)
            }
            Some("divider") => {}
            Some(other) => self.fail(&format!("{at}/type"), format!("unsupported type: {other}")),
            None => self.fail(&format!("{at}/type"), "must provide a string"),
        }
    }

    /// `block` ids must be unique among blocks, `action` ids among elements.
    fn unique_id(&mut self, at: &str, id: &Value, max: usize, is_block: bool) {
        let Some(id) = id.as_str() else {
            return self.fail(at, "must be a string");
        };
        if id.is_empty() {
            self.fail(at, "must be more than 0 characters");
        } else if id.chars().count() > max {
            self.fail(at, format!("must be less than {} characters", max + 1));
        }
        let seen = if is_block { &mut self.block_ids } else { &mut self.action_ids };
        if !seen.insert(id.to_owned()) {
            let what = if is_block { "block_id" } else { "action_id" };
            self.fail(at, format!("duplicate {what}: {id}"));
        }
    }

    fn text(&mut self, at: &str, text: Option<&Value>, kinds: TextKinds, max: usize) {
        let Some(text) = text.and_then(Value::as_object) else {
            return self.fail(at, "must provide an object");
        };
        let kind = text.get("type").and_then(Value::as_str);
        match (kind, kinds) {
            (Some("plain_text"), _) => {
                if text.get("verbatim").is_some() {
                    self.fail(&format!("{at}/verbatim"), "is not allowed with plain_text");
                }
                self.optional_bool(&format!("{at}/emoji"), text.get("emoji"));
            }
            (Some("mrkdwn"), TextKinds::Any) => {
                if text.get("emoji").is_some() {
                    self.fail(&format!("{at}/emoji"), "is not allowed with mrkdwn");
                }
                self.optional_bool(&format!("{at}/verbatim"), text.get("verbatim"));
            }
            (Some("mrkdwn"), TextKinds::PlainOnly) => {
                self.fail(&format!("{at}/type"), "must be plain_text");
            }
            _ => self.fail(&format!("{at}/type"), "must be plain_text or mrkdwn"),
        }
        self.string(&format!("{at}/text"), text.get("text"), 1, max);
    }

    fn string(&mut self, at: &str, value: Option<&Value>, min: usize, max: usize) {
        let Some(value) = value.and_then(Value::as_str) else {
            return self.fail(at, "must provide a string");
        };
        let len = value.chars().count();
        if len < min {
            self.fail(at, format!("must be more than {} characters", min.saturating_sub(1)));
        }
        if len > max {
            self.fail(at, format!("must be less than {} characters", max + 1));
        }
    }

    fn optional_bool(&mut self, at: &str, value: Option<&Value>) {
        if value.is_some_and(|v| !v.is_boolean()) {
            self.fail(at, "must be a boolean");
        }
    }

    fn elements<'a>(&mut self, at: &str, block: &'a Map<String, Value>, max: usize) -> &'a [Value] {
        let at = format!("{at}/elements");
        let Some(elements) = block.get("elements").and_then(Value::as_array) else {
            self.fail(&at, "must provide an array");
            return &[];
        };
        if elements.is_empty() {
            self.fail(&at, "must provide at least 1 item");
        }
        if elements.len() > max {
            self.fail(&at, format!("no more than {max} items allowed"));
        }
        elements
    }

    fn section(&mut self, at: &str, block: &Map<String, Value>) {
        let text = block.get("text");
        let fields = block.get("fields");
        if text.is_none() && fields.is_none() {
            self.fail(at, "must provide text or fields");
        }
        if text.is_some() {
            self.text(&format!("{at}/text"), text, TextKinds::Any, MAX_SECTION_TEXT);
        }
        if let Some(fields) = fields {
            match fields.as_array() {
                Some(fields) => {
                    if fields.is_empty() || fields.len() > MAX_SECTION_FIELDS {
                        self.fail(&format!("{at}/fields"), format!("must have 1 to {MAX_SECTION_FIELDS} items"));
                    }
                    for (i, field) in fields.iter().enumerate() {
                        self.text(&format!("{at}/fields/{i}"), Some(field), TextKinds::Any, MAX_FIELD_TEXT);
                    }
                }
                None => self.fail(&format!("{at}/fields"), "must provide an array"),
            }
        }
        if let Some(accessory) = block.get("accessory") {
            self.element(&format!("{at}/accessory"), accessory);
        }
    }

    fn actions(&mut self, at: &str, block: &Map<String, Value>) {
        for (i, element) in self.elements(at, block, MAX_ACTION_ELEMENTS).iter().enumerate() {
            self.element(&format!("{at}/elements/{i}"), element);
        }
    }

    fn context(&mut self, at: &str, block: &Map<String, Value>) {
        for (i, element) in self.elements(at, block, MAX_CONTEXT_ELEMENTS).iter().enumerate() {
            let at = format!("{at}/elements/{i}");
            match element.get("type").and_then(Value::as_str) {
                Some("image") => {
                    if element.get("image_url").is_none() && element.get("slack_file").is_none() {
                        self.fail(&at, "must provide image_url or slack_file");
                    }
                    self.string(&format!("{at}/alt_text"), element.get("alt_text"), 1, 2000);
                }
                _ => self.text(&at, Some(element), TextKinds::Any, MAX_SECTION_TEXT),
            }
        }
    }

    fn element(&mut self, at: &str, element: &Value) {
        let Some(element) = element.as_object() else {
            return self.fail(at, "must provide an object");
        };
        if let Some(action_id) = element.get("action_id") {
            self.unique_id(&format!("{at}/action_id"), action_id, MAX_ACTION_ID, false);
        }
        match element.get("type").and_then(Value::as_str) {
            Some("button") => self.button(at, element),
            Some(other) if OTHER_ELEMENTS.contains(&other) => {}
            Some(other) => self.fail(&format!("{at}/type"), format!("unsupported type: {other}")),
            None => self.fail(&format!("{at}/type"), "must provide a string"),
        }
    }

    fn button(&mut self, at: &str, button: &Map<String, Value>) {
        self.text(&format!("{at}/text"), button.get("text"), TextKinds::PlainOnly, MAX_BUTTON_TEXT);
        if button.contains_key("value") {
            self.string(&format!("{at}/value"), button.get("value"), 1, MAX_BUTTON_VALUE);
        }
        if button.contains_key("url") {
            self.string(&format!("{at}/url"), button.get("url"), 1, MAX_BUTTON_URL);
        }
        self.style(&format!("{at}/style"), button.get("style"));
        if let Some(confirm) = button.get("confirm") {
            self.confirm(&format!("{at}/confirm"), confirm);
        }
    }

    fn style(&mut self, at: &str, style: Option<&Value>) {
        if let Some(style) = style
            && !matches!(style.as_str(), Some("primary" | "danger"))
        {
            self.fail(at, "must be one of primary, danger");
        }
    }

    fn confirm(&mut self, at: &str, confirm: &Value) {
        let Some(confirm) = confirm.as_object() else {
            return self.fail(at, "must provide an object");
        };
        self.text(&format!("{at}/title"), confirm.get("title"), TextKinds::PlainOnly, MAX_CONFIRM_TITLE);
        self.text(&format!("{at}/text"), confirm.get("text"), TextKinds::Any, MAX_CONFIRM_TEXT);
        self.text(&format!("{at}/confirm"), confirm.get("confirm"), TextKinds::PlainOnly, MAX_CONFIRM_BUTTON);
        self.text(&format!("{at}/deny"), confirm.get("deny"), TextKinds::PlainOnly, MAX_CONFIRM_BUTTON);
        self.style(&format!("{at}/style"), confirm.get("style"));
    }
}

/// `X-Slack-Signature` for `body` sent at `timestamp`: `v0=` and the hex
/// HMAC-SHA256 of `v0:{timestamp}:{body}` keyed with the signing secret.
pub fn sign_interaction(signing_secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut signed = format!("v0:{timestamp}:").into_bytes();
    signed.extend_from_slice(body);
    let mut signature = String::from("v0=");
    for byte in hmac_sha256(signing_secret, &signed) {
        let _ = write!(signature, "{byte:02x}");
    }
    signature
}

/// HMAC as RFC 2104 defines it, written out here so the signature does not
/// come from the same library the verifier uses.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut padded = [0u8; BLOCK];
    if key.len() > BLOCK {
        padded.iter_mut().zip(Sha256::digest(key)).for_each(|(p, k)| *p = k);
    } else {
        padded.iter_mut().zip(key).for_each(|(p, k)| *p = *k);
    }
    let inner = Sha256::new().chain_update(padded.map(|b| b ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(padded.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

/// The body Slack posts to the interaction URL when a user presses a button in
/// a message: `payload=` and the form-encoded JSON of a `block_actions` payload.
#[allow(clippy::too_many_arguments)]
pub fn interaction_body(
    user_id: &str,
    user_name: &str,
    team_id: &str,
    action_id: &str,
    value: &str,
    channel: &str,
    message_ts: &str,
    response_url: &str,
) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": "A0STANDIN01",
        "token": "verification-token-unused-since-signing",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": false},
        "trigger_id": format!("{message_ts}.{team_id}.a1b2c3d4e5f6"),
        "team": {"id": team_id, "domain": "standin"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": channel, "name": "approvals"},
        "message": {
            "type": "message",
            "subtype": "bot_message",
            "text": "A review",
            "user": "U0STANDIN01",
            "bot_id": "B0STANDIN01",
            "ts": message_ts,
        },
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [{
            "type": "button",
            "action_id": action_id,
            "block_id": "Qm9s",
            "text": {"type": "plain_text", "text": "Approve", "emoji": true},
            "value": value,
            "action_ts": format!("{message_ts}1"),
        }],
    });
    let mut body = String::from("payload=");
    form_encode(&payload.to_string(), &mut body);
    body.into_bytes()
}

/// `application/x-www-form-urlencoded` as browsers and Slack write it: a space
/// is `+`, and every byte but letters, digits and `*-._` is percent-encoded.
fn form_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "xoxb-1111-2222-standin";

    fn message(blocks: Value) -> Value {
        json!({"channel": "C0APPROVALS", "text": "A review", "blocks": blocks})
    }

    fn valid_blocks() -> Value {
        json!([
            {"type": "header", "text": {"type": "plain_text", "text": "Access request"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*alice* asks", "verbatim": true}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "Review `r1`"}]},
            {"type": "actions", "elements": [
                {"type": "button", "action_id": "approve", "style": "primary", "value": "t:r",
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "deny", "style": "danger", "value": "t:r",
                 "text": {"type": "plain_text", "text": "Deny"},
                 "confirm": {"title": {"type": "plain_text", "text": "Sure?"},
                             "text": {"type": "plain_text", "text": "Really."},
                             "confirm": {"type": "plain_text", "text": "Deny"},
                             "deny": {"type": "plain_text", "text": "Cancel"}}}
            ]}
        ])
    }

    async fn post(slack: &SlackStandIn, method: &str, token: Option<&str>, body: &Value) -> Value {
        let mut request = reqwest::Client::new()
            .post(format!("{}/{method}", slack.base_url()))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    #[tokio::test]
    async fn a_valid_message_is_accepted_recorded_and_updatable() {
        let slack = SlackStandIn::start(TOKEN).await.unwrap();
        let answer = post(&slack, "chat.postMessage", Some(TOKEN), &message(valid_blocks())).await;
        assert_eq!(answer["ok"], true, "{answer}");
        let ts = answer["ts"].as_str().unwrap().to_owned();
        let (seconds, micros) = ts.split_once('.').unwrap();
        assert!(seconds.len() == 10 && micros.len() == 6, "{ts}");
        assert_eq!(answer["channel"], "C0APPROVALS");
        assert_eq!(answer["message"]["blocks"], valid_blocks());

        let second = post(&slack, "chat.postMessage", Some(TOKEN), &message(valid_blocks())).await;
        assert_ne!(second["ts"], answer["ts"]);

        let update = json!({"channel": "C0APPROVALS", "ts": ts, "text": "Approved",
                            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Approved*"}}]});
        let answer = post(&slack, "chat.update", Some(TOKEN), &update).await;
        assert_eq!(answer["ok"], true, "{answer}");
        let recorded = slack.wait_for_message(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(recorded.method, "chat.update");
        assert_eq!(slack.current("C0APPROVALS", &ts).unwrap().text.as_deref(), Some("Approved"));
        assert!(slack.messages().iter().all(|m| m.warnings.is_empty()));

        let unknown = json!({"channel": "C0APPROVALS", "ts": "1.000001", "text": "x"});
        assert_eq!(post(&slack, "chat.update", Some(TOKEN), &unknown).await["error"], "message_not_found");
        let elsewhere = json!({"channel": "C0OTHER", "ts": ts, "text": "x"});
        assert_eq!(post(&slack, "chat.update", Some(TOKEN), &elsewhere).await["error"], "message_not_found");
        assert!(slack.rejected().len() == 2);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_is_refused() {
        let slack = SlackStandIn::start(TOKEN).await.unwrap();
        let body = message(valid_blocks());
        assert_eq!(post(&slack, "chat.postMessage", None, &body).await["error"], "not_authed");
        assert_eq!(post(&slack, "chat.postMessage", Some("xoxb-wrong"), &body).await["error"], "invalid_auth");
        assert!(slack.messages().is_empty());
        let rejected = slack.rejected();
        assert_eq!(rejected.iter().map(|r| r.error.as_str()).collect::<Vec<_>>(), ["not_authed", "invalid_auth"]);
    }

    #[tokio::test]
    async fn blocks_that_break_block_kit_are_refused_with_the_rule_and_where() {
        let slack = SlackStandIn::start(TOKEN).await.unwrap();
        let mut cases = Vec::new();
        let mut long_label = valid_blocks();
        long_label[3]["elements"][0]["text"]["text"] = json!("x".repeat(76));
        cases.push((long_label, "/blocks/3/elements/0/text/text"));
        let mut style = valid_blocks();
        style[3]["elements"][0]["style"] = json!("secondary");
        cases.push((style, "/blocks/3/elements/0/style"));
        let mut duplicate = valid_blocks();
        duplicate[3]["elements"][1]["action_id"] = json!("approve");
        cases.push((duplicate, "/blocks/3/elements/1/action_id"));
        let mut mrkdwn_label = valid_blocks();
        mrkdwn_label[3]["elements"][1]["text"]["type"] = json!("mrkdwn");
        cases.push((mrkdwn_label, "/blocks/3/elements/1/text/type"));
        let mut long_section = valid_blocks();
        long_section[1]["text"]["text"] = json!("y".repeat(3001));
        cases.push((long_section, "/blocks/1/text/text"));
        let mut unknown = valid_blocks();
        unknown[2]["type"] = json!("carousel");
        cases.push((unknown, "/blocks/2/type"));
        let mut empty_actions = valid_blocks();
        empty_actions[3]["elements"] = json!([]);
        cases.push((empty_actions, "/blocks/3/elements"));
        let too_many: Vec<Value> = (0..51).map(|_| json!({"type": "divider"})).collect();
        cases.push((Value::Array(too_many), "/blocks]"));
        for (blocks, pointer) in cases {
            let answer = post(&slack, "chat.postMessage", Some(TOKEN), &message(blocks)).await;
            assert_eq!(answer["error"], "invalid_blocks", "{answer}");
            let details = answer["response_metadata"]["messages"].to_string();
            assert!(details.contains(pointer), "{pointer}: {details}");
        }
        assert!(slack.messages().is_empty());

        let no_channel = json!({"text": "hi"});
        assert_eq!(post(&slack, "chat.postMessage", Some(TOKEN), &no_channel).await["error"], "channel_not_found");
        let no_text = json!({"channel": "C0APPROVALS"});
        assert_eq!(post(&slack, "chat.postMessage", Some(TOKEN), &no_text).await["error"], "no_text");
        let form = reqwest::Client::new()
            .post(format!("{}/chat.postMessage", slack.base_url()))
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("channel=C0APPROVALS&text=hi")
            .send()
            .await
            .unwrap();
        assert_eq!(form.json::<Value>().await.unwrap()["error"], "invalid_post_type");
    }

    #[tokio::test]
    async fn rate_limits_answer_429_with_retry_after_and_a_missing_charset_is_a_warning() {
        let slack = SlackStandIn::start(TOKEN).await.unwrap();
        slack.rate_limit_next(7);
        let limited = reqwest::Client::new()
            .post(format!("{}/chat.postMessage", slack.base_url()))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(message(valid_blocks()).to_string());
        let response = limited.try_clone().unwrap().send().await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        let refused = slack.wait_for_rejected(0, Duration::from_secs(5)).await.unwrap();
        assert_eq!(refused.error, "ratelimited");
        let answer: Value = limited.send().await.unwrap().json().await.unwrap();
        assert_eq!(answer["warning"], "missing_charset");
        assert_eq!(slack.messages()[0].warnings, ["missing_charset"]);
    }

    #[test]
    fn signatures_match_an_independent_computation() {
        // python3: hmac.new(b"airlock-test-signing-secret",
        //     b"v0:1700000000:payload=%7B%22type%22%3A%22block_actions%22%7D", hashlib.sha256).hexdigest()
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%7D";
        assert_eq!(
            sign_interaction(b"airlock-test-signing-secret", 1_700_000_000, body),
            "v0=43cfd9f8b90604c724f4210c7f50f3ef89572ad54e6baf2139552c51ef34a456"
        );
        // RFC 4231, test case 6: a key longer than the block is hashed first.
        let long_key = [0xaau8; 131];
        let mac = hmac_sha256(&long_key, b"Test Using Larger Than Block-Size Key - Hash Key First");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn interaction_bodies_are_one_form_encoded_block_actions_payload() {
        let body = interaction_body(
            "U0ALICE",
            "alice smith",
            "T0TEAM",
            "airlock_approve",
            "tenant:review",
            "C0APPROVALS",
            "1700000000.000100",
            "https://hooks.slack.com/actions/T0TEAM/1/abc",
        );
        let body = String::from_utf8(body).unwrap();
        let encoded = body.strip_prefix("payload=").unwrap();
        assert!(!encoded.contains(['&', '=', ' ', '"', '{']), "{encoded}");
        let decoded = percent_decode(encoded);
        let payload: Value = serde_json::from_str(&decoded).unwrap();
        assert_eq!(payload["type"], "block_actions");
        assert_eq!(payload["user"]["username"], "alice smith");
        assert_eq!(payload["actions"][0]["value"], "tenant:review");
        assert_eq!(payload["container"]["message_ts"], "1700000000.000100");
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
}
