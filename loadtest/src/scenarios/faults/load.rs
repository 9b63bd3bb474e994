//! The load that runs through every fault: statement clients through the
//! gateways and one writer appending events over REST. Each operation's
//! outcome goes into a shared [`Log`]; what the deployment acknowledged goes
//! into [`Acks`], for the loss check at the end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::scenarios::pg_throughput::{CONNECTION, ROLE};

use super::cluster::{TABLE, TARGET_DB};

/// How long one connect, statement or request may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits after a failure before it tries again.
const BACKOFF: Duration = Duration::from_millis(100);
/// Error messages are kept this long.
const MESSAGE_CHARS: usize = 160;

/// What a load is: statements through one gateway, or event appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Load {
    Statements { gateway: usize },
    Appends,
}

impl Load {
    pub fn label(self) -> String {
        match self {
            Load::Statements { gateway } => format!("statements@gateway-{}", gateway + 1),
            Load::Appends => "appends".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The server answered with an error (a Postgres ErrorResponse, an HTTP error status).
    Refused(String),
    /// No answer: the connection failed, was lost, or timed out.
    Error(String),
}

/// One operation's end.
#[derive(Debug, Clone)]
pub struct Sample {
    pub load: Load,
    /// Milliseconds since the run's start.
    pub at_ms: u64,
    pub outcome: Outcome,
}

/// Every operation's outcome, in the order they ended.
#[derive(Clone)]
pub struct Log {
    start: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Log {
    pub fn new(start: Instant) -> Log {
        Log { start, samples: Arc::default() }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn push(&self, load: Load, outcome: Outcome) {
        let sample = Sample { load, at_ms: self.now_ms(), outcome };
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
    }

    /// The samples that ended at or after `from_ms`.
    pub fn since(&self, from_ms: u64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // Samples are pushed about in time order: look back from the end only as far as needed.
        let start = samples.iter().rposition(|s| s.at_ms < from_ms.saturating_sub(1000)).map_or(0, |i| i + 1);
        samples.iter().skip(start).filter(|s| s.at_ms >= from_ms).cloned().collect()
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An event append the control plane acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct AckedEvent {
    pub seq: u64,
    /// The number in the appended policy's comment (`# faults append N`).
    pub n: u64,
}

/// What the deployment acknowledged: statement markers whose result a client
/// received, and appended events.
#[derive(Clone, Default)]
pub struct Acks {
    pub markers: Arc<Mutex<Vec<String>>>,
    pub events: Arc<Mutex<Vec<AckedEvent>>>,
}

impl Acks {
    pub fn markers(&self) -> Vec<String> {
        self.markers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn events(&self) -> Vec<AckedEvent> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The marker of client `client`'s `n`th statement: `faults-c<client>-<n>`.
pub fn marker(client: usize, n: u64) -> String {
    format!("faults-c{client}-{n}")
}

/// Every marker quoted in `text` (`'faults-c1-2'`).
pub fn markers_in(text: &str) -> Vec<&str> {
    text.split('\'').filter(|part| part.starts_with("faults-c")).collect()
}

/// The policy document of the `n`th append: valid, harmless, and recognizable in the log.
pub fn policy_document(n: u64) -> String {
    format!("# faults append {n}\nversion: 1\n")
}

/// How a statement client runs.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub interval: Duration,
    /// Statements per session before the client disconnects and opens a new one.
    pub statements_per_session: u64,
}

/// One client of `gateway`: sessions of `statements_per_session` statements, each
/// `SELECT '<marker>', name FROM faults_items WHERE id = ...`, reconnecting after any
/// failure, until `stop`. Every session it ends, it ends with a Terminate.
#[allow(clippy::too_many_arguments)]
pub async fn statement_client(
    client: usize,
    gateway: usize,
    addr: SocketAddr,
    token: String,
    options: ClientOptions,
    log: Log,
    acks: Acks,
    stop: CancellationToken,
) {
    let load = Load::Statements { gateway };
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(format!("{CONNECTION}.{ROLE}"))
        .dbname(TARGET_DB)
        .password(token)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(OP_TIMEOUT);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let connected = tokio::time::timeout(OP_TIMEOUT, config.connect(tokio_postgres::NoTls)).await;
        let (session, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                log.push(load, postgres_failure(&e));
                pause(&stop, BACKOFF).await;
                continue;
            }
            Err(_) => {
                log.push(load, Outcome::Error("connect: timed out".into()));
                continue;
            }
        };
        let driver = tokio::spawn(connection);
        for _ in 0..options.statements_per_session {
            if stop.is_cancelled() {
                break;
            }
            n += 1;
            let marker = marker(client, n);
            let sql = format!("SELECT '{marker}', name FROM {TABLE} WHERE id = {}", n % 100 + 1);
            let outcome = match tokio::time::timeout(OP_TIMEOUT, session.simple_query(&sql)).await {
                Ok(Ok(messages)) => {
                    let answered = messages.iter().any(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some(marker.as_str()),
                        _ => false,
                    });
                    if answered {
                        acks.markers.lock().unwrap_or_else(|e| e.into_inner()).push(marker);
                        Outcome::Ok
                    } else {
                        Outcome::Error("the result did not carry the marker".into())
                    }
                }
                Ok(Err(e)) => postgres_failure(&e),
                Err(_) => Outcome::Error("statement: timed out".into()),
            };
            let failed = outcome != Outcome::Ok;
            log.push(load, outcome);
            if failed {
                pause(&stop, BACKOFF).await;
                break;
            }
            pause(&stop, options.interval).await;
        }
        // Dropping the client sends Terminate; the driver ends when the session has.
        drop(session);
        let _ = tokio::time::timeout(OP_TIMEOUT, driver).await;
    }
}

/// Appends `PUT /v1/policy` every `interval` until `stop`, each with the next number.
pub async fn appender(
    api: String,
    admin_token: String,
    interval: Duration,
    log: Log,
    acks: Acks,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder().timeout(OP_TIMEOUT).build() {
        Ok(http) => http,
        Err(e) => {
            log.push(Load::Appends, Outcome::Error(truncate(&format!("building the HTTP client: {e}"))));
            return;
        }
    };
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let sent = http
            .put(format!("{api}/v1/policy"))
            .bearer_auth(&admin_token)
            .header("content-type", "application/yaml")
            .body(policy_document(n))
            .send()
            .await;
        let outcome = match sent {
            Ok(response) if response.status().is_success() => {
                match response.json::<serde_json::Value>().await.ok().and_then(|v| v.get("seq")?.as_u64()) {
                    Some(seq) => {
                        acks.events.lock().unwrap_or_else(|e| e.into_inner()).push(AckedEvent { seq, n });
                        Outcome::Ok
                    }
                    None => Outcome::Error("a success without a seq".into()),
                }
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                Outcome::Refused(truncate(&format!("{status}: {body}")))
            }
            Err(e) => Outcome::Error(truncate(&error_chain(&e))),
        };
        let failed = outcome != Outcome::Ok;
        log.push(Load::Appends, outcome);
        pause(&stop, if failed { BACKOFF } else { interval }).await;
    }
}

/// A server's error is a refusal (with its SQLSTATE); anything else is an error.
fn postgres_failure(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(db) => Outcome::Refused(truncate(&format!("{}: {}", db.code().code(), db.message()))),
        None => Outcome::Error(truncate(&error_chain(e))),
    }
}

/// The error and its sources, as `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_CHARS) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// Sleeps, or returns early when `stop` fires.
async fn pause(stop: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_markers_quoted_in_a_statement() {
        let sql = format!("SELECT '{}', name FROM t WHERE id = 3", marker(2, 17));
        assert_eq!(markers_in(&sql), vec!["faults-c2-17"]);
        assert!(markers_in("SELECT 1").is_empty());
    }

    #[test]
    fn truncates_on_a_character_boundary() {
        let long = "é".repeat(MESSAGE_CHARS + 5);
        assert_eq!(truncate(&long).chars().count(), MESSAGE_CHARS + 3);
        assert_eq!(truncate("short"), "short");
    }
}
