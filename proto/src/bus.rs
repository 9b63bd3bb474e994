//! The event bus: how committed events travel from the control plane's outbox
//! relay to every data-plane worker.
//!
//! NATS JetStream in a deployment (one subject per tenant, `{prefix}.events.{tenant}`),
//! an in-process broadcast channel in `airlock up`. Neither is the source of truth:
//! delivery is at least once and may skip (a lagging subscriber, a bus outage), so
//! consumers apply idempotently by `seq` and backfill any gap from the control plane.
//!
//! Nor is NATS trusted to say what the log holds: whoever may publish on its
//! subjects could otherwise hand every worker a grant that was never made. The
//! control plane tags each record it publishes with an HMAC under a key derived
//! from the worker token and the bus's prefix ([`RecordKey`]), and subscribers
//! drop every message without a valid tag; the gap it leaves is backfilled from
//! the control plane.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::ConnectErrorKind;
use async_nats::jetstream::{self, consumer::DeliverPolicy, stream};
use futures::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::Sha256;
use tokio::sync::broadcast;

use crate::v1::EventRecord;

pub type RecordStream = Pin<Box<dyn Stream<Item = EventRecord> + Send>>;

/// A Postgres cancel request a gateway worker got for a session it does not
/// hold: the backend key it names, passed on to every worker so that the one
/// holding the session forwards it (clients reach workers through a load
/// balancer, which sends the request to any of them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    pub key: [u8; 4],
}

impl std::fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is what cancels the session's statements.
        f.debug_struct("CancelRequest").field("pid", &self.pid).finish_non_exhaustive()
    }
}

/// How old a cancel request passed on NATS may be when it arrives: one held
/// back (a publisher reconnecting, a replay) would cancel whatever the session
/// runs by then.
const CANCEL_FRESH_FOR_MS: i64 = 5_000;

impl CancelRequest {
    /// pid, key, and when it was sent (ms since the epoch), big-endian.
    fn encode(self, sent_at_ms: i64) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&self.pid.to_be_bytes());
        out[4..8].copy_from_slice(&self.key);
        out[8..].copy_from_slice(&sent_at_ms.to_be_bytes());
        out
    }

    /// The request, when `bytes` hold one sent within `CANCEL_FRESH_FOR_MS` of `now_ms`.
    fn decode_fresh(bytes: &[u8], now_ms: i64) -> Option<Self> {
        let pid = i32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let key = bytes.get(4..8)?.try_into().ok()?;
        let sent_at_ms = i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16 && now_ms.abs_diff(sent_at_ms) <= CANCEL_FRESH_FOR_MS.unsigned_abs())
            .then_some(Self { pid, key })
    }
}

fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

pub type CancelStream = Pin<Box<dyn Stream<Item = CancelRequest> + Send>>;

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only records published from now on (a worker that has just taken a snapshot).
    New,
    /// Every record the bus still holds.
    Beginning,
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a committed record and returns once the bus has accepted it.
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()>;

    /// Publishes records in order; returns how many from the front the bus has
    /// accepted, and the error that stopped it, if any. Records after the
    /// accepted prefix may have reached the bus too (they will be published
    /// again: a duplicate, which consumers absorb by `seq`).
    async fn publish_batch(&self, records: &[EventRecord]) -> (usize, Option<anyhow::Error>) {
        for (i, record) in records.iter().enumerate() {
            if let Err(e) = self.publish(record).await {
                return (i, Some(e));
            }
        }
        (records.len(), None)
    }

    /// Records of every tenant. The stream ends when the bus is gone; it may skip
    /// records, which consumers notice as a gap in `seq`.
    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream>;

    /// Passes a cancel request on to every worker, the sender included, once
    /// and not kept: a worker away misses it, as a client's request to a
    /// worker that is away is lost. By default nowhere (a bus of one worker).
    async fn publish_cancel(&self, _cancel: CancelRequest) -> anyhow::Result<()> {
        Ok(())
    }

    /// The cancel requests workers pass on from now. By default none.
    async fn subscribe_cancels(&self) -> anyhow::Result<CancelStream> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

/// The in-process bus of the embedded mode.
#[derive(Clone)]
pub struct MemoryBus {
    // Bound: 4096 records. A subscriber that falls further behind skips ahead and
    // backfills the gap from the log; the publisher never waits.
    tx: broadcast::Sender<EventRecord>,
    cancels: broadcast::Sender<CancelRequest>,
}

impl MemoryBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (cancels, _) = broadcast::channel(256);
        Self { tx, cancels }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        // No subscribers is not an error: the record is in the log.
        let _ = self.tx.send(record.clone());
        Ok(())
    }

    async fn subscribe(&self, _start: StartAt) -> anyhow::Result<RecordStream> {
        let rx = self.tx.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| async move { r.ok() });
        Ok(Box::pin(stream))
    }

    async fn publish_cancel(&self, cancel: CancelRequest) -> anyhow::Result<()> {
        let _ = self.cancels.send(cancel);
        Ok(())
    }

    async fn subscribe_cancels(&self) -> anyhow::Result<CancelStream> {
        let rx = self.cancels.subscribe();
        Ok(Box::pin(tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| async move { r.ok() })))
    }
}

/// The NATS header that carries a record's tag.
const TAG_HEADER: &str = "Airlock-Record-Tag";

/// Tags and checks bus records: HMAC-SHA256 over a message's payload (the
/// encoded [`EventRecord`], tenant and `seq` included), under a key derived
/// from the worker token (and bound to the bus's prefix by [`NatsBus`]). The control plane and every worker hold that token,
/// and it already admits a worker to everything the control plane serves it.
#[derive(Clone)]
pub struct RecordKey {
    records: Hmac<Sha256>,
    /// What cancel requests passed between workers are tagged with
    /// (`for_cancels`): derived from the token apart from the records' key,
    /// so that no tag of one is a tag of the other.
    cancels: Hmac<Sha256>,
}

impl RecordKey {
    pub fn from_worker_token(token: &str) -> Self {
        // Derived, so that the token itself never keys anything but its own check.
        let derive =
            |label: &[u8]| Self::keyed(&Self::keyed(token.as_bytes()).chain_update(label).finalize().into_bytes());
        Self { records: derive(b"airlock bus record tag v1"), cancels: derive(b"airlock bus cancel request tag v1") }
    }

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// This key for the installation whose subjects start with `prefix`: a
    /// record tagged under one prefix does not pass under another, though
    /// both installations share a NATS server and a worker token.
    pub fn bound_to(&self, prefix: &str) -> Self {
        let bind = |key: &Hmac<Sha256>| {
            Self::keyed(&key.clone().chain_update(b"prefix\0").chain_update(prefix.as_bytes()).finalize().into_bytes())
        };
        Self { records: bind(&self.records), cancels: bind(&self.cancels) }
    }

    /// The key cancel requests passed between workers are tagged and checked
    /// with (its `tag` and `verify` use the cancel key).
    pub fn for_cancels(&self) -> Self {
        Self { records: self.cancels.clone(), cancels: self.cancels.clone() }
    }

    /// The tag of a message's payload, in hex.
    pub fn tag(&self, payload: &[u8]) -> String {
        hex::encode(self.records.clone().chain_update(payload).finalize().into_bytes())
    }

    /// Whether `tag` (hex) is the payload's, compared in constant time.
    pub fn verify(&self, payload: &[u8], tag: &str) -> bool {
        let Ok(tag) = hex::decode(tag) else { return false };
        self.records.clone().chain_update(payload).verify_slice(&tag).is_ok()
    }
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(<redacted>)")
    }
}

/// Settings of the NATS bus.
#[derive(Clone)]
pub struct NatsOptions {
    pub url: String,
    /// Subject prefix and stream name stem, so several installations (or tests) can
    /// share one NATS server: subjects `{prefix}.events.{tenant}`, stream `{PREFIX}_EVENTS`.
    pub prefix: String,
    /// How long JetStream keeps records. Older ones are backfilled from the log.
    pub max_age: Duration,
    /// Tags what this side publishes and checks what it receives.
    pub record_key: RecordKey,
    /// CA certificates (PEM) the server's certificate must chain to (instead
    /// of the system's roots); set, the connection must be TLS.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for a server that verifies
    /// its clients; set, the connection must be TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password or a token.
        f.debug_struct("NatsOptions")
            .field("url", &airlock_core::redact::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl NatsOptions {
    /// The bus at `url` under `prefix`, records kept a day.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>, record_key: RecordKey) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            max_age: Duration::from_secs(24 * 3600),
            record_key,
            ca_file: None,
            client_cert: None,
        }
    }

    /// Whether the connection must be TLS (a `tls://` URL asks for it too).
    fn requires_tls(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.url.starts_with("tls://")
    }
}

/// JetStream: durable, deduplicated by `{tenant}:{seq}` within its window.
#[derive(Clone)]
pub struct NatsBus {
    js: jetstream::Context,
    /// Core NATS, for what is passed on and not kept (cancel requests).
    client: async_nats::Client,
    stream_name: String,
    prefix: String,
    record_key: RecordKey,
}

impl NatsBus {
    /// Waits for acknowledgements in order; the count of the acknowledged prefix.
    async fn acknowledged(
        acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    ) -> (usize, Option<anyhow::Error>) {
        let total = acks.len();
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(e) = ack.await {
                return (i, Some(anyhow::anyhow!("NATS did not acknowledge: {e}")));
            }
        }
        (total, None)
    }

    /// Connects to the server at `options.url` and opens the stream. A server
    /// that refuses this side (its certificate not trusted, wrong credentials)
    /// is an error at once; one that cannot be reached is tried again until
    /// opening the stream gives up (two JetStream requests, 5 s each), and then
    /// the error says what the last attempt met.
    pub async fn connect(options: &NatsOptions) -> anyhow::Result<Self> {
        let last_error = Arc::new(Mutex::new(None::<String>));
        let seen = last_error.clone();
        let mut connect = async_nats::ConnectOptions::new()
            .name("airlock")
            .require_tls(options.requires_tls())
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            *seen = None;
                        }
                        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                        other => {
                            tracing::warn!("NATS: {other}");
                            *seen = Some(other.to_string());
                        }
                    }
                }
            });
        if let Some(ca_file) = &options.ca_file {
            // Checked here for an error that names what is wrong with the file.
            crate::transport::ca_file_roots(ca_file).context("bus.nats_ca_file")?;
            connect = connect.add_root_certificates(ca_file.clone());
        }
        if let Some((cert, key)) = &options.client_cert {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        // The client reads no credentials from the URL: they are taken out of it.
        let (servers, credentials) = split_credentials(&options.url);
        connect = match credentials {
            Some(Credentials::Password { user, password }) => connect.user_and_password(user, password),
            Some(Credentials::Token(token)) => connect.token(token),
            None => connect,
        };
        let client = match connect.clone().connect(servers.as_str()).await {
            Ok(client) => client,
            Err(e) if tls_refused(&e) => anyhow::bail!("the TLS handshake with NATS failed: {e}"),
            Err(e) if matches!(e.kind(), ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns) => {
                tracing::warn!("NATS cannot be reached yet ({e}); trying again");
                connect.retry_on_initial_connect().connect(servers.as_str()).await?
            }
            Err(e) => anyhow::bail!("{e}"),
        };
        if !options.requires_tls() && !nats_host_is_loopback(&options.url) {
            tracing::warn!(
                "NATS is reached without TLS: whoever can read the network sees every tenant's events; set \
                 bus.nats_ca_file (or use a tls:// URL)"
            );
        }
        Self::with_client(client, options).await.map_err(|e| {
            match last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                Some(why) => e.context(format!("NATS was not reached ({why})")),
                None => e,
            }
        })
    }

    pub async fn with_client(client: async_nats::Client, options: &NatsOptions) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let stream_name = format!("{}_EVENTS", options.prefix.to_uppercase().replace(['.', '-', '*', '>'], "_"));
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{}.events.>", options.prefix)],
            max_age: options.max_age,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating JetStream stream {stream_name}: {e}"))?;
        let record_key = options.record_key.bound_to(&options.prefix);
        Ok(Self { js, client, stream_name, prefix: options.prefix.clone(), record_key })
    }

    /// The key this bus tags and checks records with (bound to its prefix).
    pub fn record_key(&self) -> &RecordKey {
        &self.record_key
    }

    pub fn subject(&self, tenant_id: &str) -> String {
        format!("{}.events.{tenant_id}", self.prefix)
    }

    fn cancel_subject(&self) -> String {
        format!("{}.cancels", self.prefix)
    }

    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// A record as published: its encoding, and headers with JetStream's
    /// deduplication id and the record's tag.
    fn message(&self, record: &EventRecord) -> (async_nats::HeaderMap, bytes::Bytes) {
        let payload = record.encode_to_vec();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}:{}", record.tenant_id, record.seq).as_str());
        headers.insert(TAG_HEADER, self.record_key.tag(&payload).as_str());
        (headers, payload.into())
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        let (headers, payload) = self.message(record);
        let ack = self
            .js
            .publish_with_headers(self.subject(&record.tenant_id), headers, payload)
            .await
            .map_err(|e| anyhow::anyhow!("publishing to NATS: {e}"))?;
        ack.await.map_err(|e| anyhow::anyhow!("NATS did not acknowledge: {e}"))?;
        Ok(())
    }

    /// Sends the whole batch before waiting for the first acknowledgement:
    /// one round trip to JetStream per batch rather than per record.
    async fn publish_batch(&self, records: &[EventRecord]) -> (usize, Option<anyhow::Error>) {
        let mut acks = Vec::with_capacity(records.len());
        for record in records {
            let (headers, payload) = self.message(record);
            match self.js.publish_with_headers(self.subject(&record.tenant_id), headers, payload).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    // What was sent before still counts once acknowledged.
                    let error = anyhow::anyhow!("publishing to NATS: {e}");
                    return (Self::acknowledged(acks).await.0, Some(error));
                }
            }
        }
        Self::acknowledged(acks).await
    }

    async fn publish_cancel(&self, cancel: CancelRequest) -> anyhow::Result<()> {
        // A request held back until NATS is back would come too late to mean
        // anything, and is dropped by its age anyway.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            anyhow::bail!("NATS is not connected");
        }
        let payload = cancel.encode(unix_ms());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TAG_HEADER, self.record_key.for_cancels().tag(&payload).as_str());
        self.client
            .publish_with_headers(self.cancel_subject(), headers, bytes::Bytes::copy_from_slice(&payload))
            .await
            .map_err(|e| anyhow::anyhow!("publishing a cancel request to NATS: {e}"))
    }

    async fn subscribe_cancels(&self) -> anyhow::Result<CancelStream> {
        let messages = self
            .client
            .subscribe(self.cancel_subject())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to cancel requests on NATS: {e}"))?;
        // Subscribed once the server has it: requests from now on arrive.
        self.client.flush().await.map_err(|e| anyhow::anyhow!("subscribing to cancel requests on NATS: {e}"))?;
        let key = self.record_key.for_cancels();
        let warned = std::sync::Mutex::new(None::<std::time::Instant>);
        Ok(Box::pin(messages.filter_map(move |m| {
            let tag = m.headers.as_ref().and_then(|h| h.get(TAG_HEADER)).map(|v| v.as_str().to_owned());
            let cancel = if tag.is_some_and(|tag| key.verify(&m.payload, &tag)) {
                CancelRequest::decode_fresh(&m.payload, unix_ms())
            } else {
                let mut warned = warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    *warned = Some(std::time::Instant::now());
                    tracing::error!("dropping cancel requests on the bus without a valid tag (said once a minute)");
                }
                None
            };
            async move { cancel }
        })))
    }

    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream> {
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| anyhow::anyhow!("opening JetStream stream {}: {e}", self.stream_name))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.events.>", self.prefix),
                deliver_policy: match start {
                    StartAt::New => DeliverPolicy::New,
                    StartAt::Beginning => DeliverPolicy::All,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating NATS consumer: {e}"))?;
        let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("reading NATS consumer: {e}"))?;
        let key = self.record_key.clone();
        let records = messages.filter_map(move |m| {
            let key = key.clone();
            async move { Self::received(&key, m) }
        });
        Ok(Box::pin(records))
    }
}

impl NatsBus {
    /// A consumed message's record, when it is one the control plane published.
    fn received(
        key: &RecordKey,
        message: Result<jetstream::Message, jetstream::consumer::pull::OrderedError>,
    ) -> Option<EventRecord> {
        match message {
            Ok(m) => {
                let tag = m.headers.as_ref().and_then(|h| h.get(TAG_HEADER)).map(|v| v.as_str());
                if !tag.is_some_and(|tag| key.verify(&m.payload, tag)) {
                    // Not from a control plane of this installation: forged, or
                    // published under another worker token. The gap it leaves is
                    // backfilled from the control plane.
                    tracing::error!(
                        subject = %m.subject,
                        "dropping a bus message without a valid record tag: something other than the control \
                         plane published it, or the control plane's worker token differs from this one's"
                    );
                    return None;
                }
                match EventRecord::decode(m.payload.as_ref()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("skipping an undecodable bus message: {e}");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!("NATS consumer error: {e}");
                None
            }
        }
    }
}

/// Whether a failed connection ended in the TLS handshake (which the client
/// reports as an I/O error): the server is there, and its certificate is
/// not trusted, or it did not take ours.
fn tls_refused(error: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let inner = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if cause.is::<rustls::Error>() || inner.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Credentials a NATS URL carries.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    Password { user: String, password: String },
    Token(String),
}

/// A NATS URL (servers separated by commas) without credentials, and the
/// credentials of the first server that carries any (`user:password@` or
/// `token@`, percent-encoded as URLs are).
fn split_credentials(url: &str) -> (String, Option<Credentials>) {
    let mut credentials = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), server),
            };
            let Some((userinfo, host)) = rest.rsplit_once('@') else { return server.to_owned() };
            if credentials.is_none() {
                credentials = Some(match userinfo.split_once(':') {
                    Some((user, password)) => {
                        Credentials::Password { user: percent_decoded(user), password: percent_decoded(password) }
                    }
                    None => Credentials::Token(percent_decoded(userinfo)),
                });
            }
            format!("{scheme}{host}")
        })
        .collect();
    (servers.join(","), credentials)
}

/// `%XX` decoded; anything else kept as it is.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match hex.and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(decoded) if b == b'%' => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every server in a NATS URL (a comma-separated list, each with an
/// optional scheme and credentials) is a literal loopback address.
fn nats_host_is_loopback(url: &str) -> bool {
    url.split(',').all(|server| {
        let rest = server.trim().split_once("://").map_or(server.trim(), |(_, rest)| rest);
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => host,
            _ => host_port,
        };
        crate::transport::is_loopback_ip(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel request passed on is read back only while fresh, and its
    /// tag is neither a record's nor under another token.
    #[test]
    fn a_cancel_request_is_read_back_fresh_and_tagged_apart_from_records() {
        let request = CancelRequest { pid: 4242, key: [1, 2, 3, 4] };
        let bytes = request.encode(1_000_000);
        assert_eq!(CancelRequest::decode_fresh(&bytes, 1_000_000), Some(request));
        assert_eq!(CancelRequest::decode_fresh(&bytes, 1_005_000), Some(request));
        assert_eq!(CancelRequest::decode_fresh(&bytes, 1_005_001), None, "held back");
        assert_eq!(CancelRequest::decode_fresh(&bytes, 994_999), None, "from the future");
        assert_eq!(CancelRequest::decode_fresh(&bytes[..15], 1_000_000), None);
        assert_eq!(CancelRequest::decode_fresh(&[bytes.as_slice(), &[0]].concat(), 1_000_000), None);

        let key = RecordKey::from_worker_token("worker-token").bound_to("airlock");
        let cancels = key.for_cancels();
        assert!(cancels.verify(&bytes, &cancels.tag(&bytes)));
        assert!(!key.verify(&bytes, &cancels.tag(&bytes)), "a cancel's tag passed as a record's");
        assert!(!cancels.verify(&bytes, &key.tag(&bytes)), "a record's tag passed as a cancel's");
        let elsewhere = RecordKey::from_worker_token("worker-token").bound_to("staging").for_cancels();
        assert!(!elsewhere.verify(&bytes, &cancels.tag(&bytes)));
        assert!(!format!("{request:?}").contains("[1, 2, 3, 4]"), "the key is in {request:?}");
    }

    #[test]
    fn a_record_tag_holds_only_for_its_bytes_and_its_key() {
        let key = RecordKey::from_worker_token("worker-token");
        let tag = key.tag(b"record");
        assert_eq!(tag.len(), 64);
        assert!(key.verify(b"record", &tag));
        assert!(!key.verify(b"recorD", &tag));
        assert!(!RecordKey::from_worker_token("worker-tokeN").verify(b"record", &tag));
        assert!(!key.verify(b"record", &tag[..62]));
        assert!(!key.verify(b"record", "zz"));
        assert!(!key.verify(b"record", ""));
        // Another installation's prefix, the same token: another tag.
        assert!(!key.bound_to("staging").verify(b"record", &key.bound_to("airlock").tag(b"record")));
        assert!(key.bound_to("airlock").verify(b"record", &key.bound_to("airlock").tag(b"record")));
        // The token does not key the tag directly.
        let direct = hex::encode(RecordKey::keyed(b"worker-token").chain_update(b"record").finalize().into_bytes());
        assert_ne!(tag, direct);
        assert_eq!(format!("{key:?}"), "RecordKey(<redacted>)");
    }

    #[test]
    fn credentials_are_taken_out_of_nats_urls() {
        let password = |user: &str, password: &str| {
            Some(Credentials::Password { user: user.to_owned(), password: password.to_owned() })
        };
        assert_eq!(split_credentials("nats://127.0.0.1:4222"), ("nats://127.0.0.1:4222".to_owned(), None));
        assert_eq!(split_credentials("nats://u:p%40ss%3A@h:1"), ("nats://h:1".to_owned(), password("u", "p@ss:")));
        assert_eq!(
            split_credentials("tls://s3cr3t@a:1, b:2,nats://x:y@c:3"),
            ("tls://a:1,b:2,nats://c:3".to_owned(), Some(Credentials::Token("s3cr3t".to_owned())))
        );
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        assert_eq!(percent_decoded("%+f"), "%+f");
    }

    #[test]
    fn loopback_nats_urls_are_told_apart() {
        for url in
            ["nats://127.0.0.1:4222", "127.0.0.1:4222", "nats://u:p@[::1]:4222", "nats://127.0.0.1:1,nats://[::1]:2"]
        {
            assert!(nats_host_is_loopback(url), "{url}");
        }
        for url in
            ["nats://nats:4222", "nats://localhost:4222", "nats://10.0.0.1:4222", "nats://127.0.0.1:1,nats://nats:2"]
        {
            assert!(!nats_host_is_loopback(url), "{url}");
        }
    }
}
