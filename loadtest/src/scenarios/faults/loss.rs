//! After the load has stopped: was anything acknowledged lost? Every acked
//! event must be in the log, as appended; every acked statement marker must be
//! in a session's recording, read back through the control plane's replay API
//! (what an auditor sees). A marker missing there is looked for in the
//! recorder's store directly, to tell a recording the log does not list from
//! one that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::load::{AckedEvent, markers_in, policy_document};

#[derive(Debug, Serialize)]
pub struct EventLoss {
    pub acked: usize,
    pub found: usize,
    /// Acked seqs missing from the log, or holding another event.
    pub lost: Vec<AckedEvent>,
    /// Appends the writer got no answer for that are in the log all the same.
    pub committed_unanswered: usize,
    pub head_seq: u64,
    /// `airlock verify`: whether it passed, and what it said.
    pub chain_intact: bool,
    pub chain_report: String,
}

#[derive(Debug, Serialize)]
pub struct StatementLoss {
    pub acked: usize,
    pub found: usize,
    /// Acked markers the sessions API cannot show but the recorder's store holds,
    /// in recordings of sessions the log does not list (the first 100).
    pub unlisted_markers: Vec<String>,
    pub unlisted: usize,
    /// Acked markers in no recording at all (the first 100).
    pub lost_markers: Vec<String>,
    pub lost: usize,
    /// Sessions the log lists, and session recordings in the recorder's store.
    pub sessions_listed: usize,
    pub recordings_stored: usize,
    /// Sessions the log still lists as open after the drain.
    pub sessions_open: Vec<String>,
    pub recordings_intact: usize,
    pub recordings_signed: usize,
    /// Sessions whose recording is not intact, or cannot be read: id and what was said.
    pub recordings_bad: Vec<(String, String)>,
    /// Close reasons of the listed sessions, with counts.
    pub close_reasons: BTreeMap<String, usize>,
}

/// A REST client for the control plane, with the admin token.
pub struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Api { http, url: url.to_owned(), token: token.to_owned() })
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {path} answered {status}: {}", response.text().await?);
        Ok(response)
    }

    async fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.get(path).await?.json().await.with_context(|| format!("reading GET {path}"))
    }

    /// Every session the log lists, newest first.
    pub async fn sessions(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/sessions?limit=500&cursor={c}"),
                None => "/v1/sessions?limit=500".to_owned(),
            };
            let page = self.json(&path).await?;
            out.extend(page.get("sessions").and_then(|s| s.as_array()).cloned().unwrap_or_default());
            match page.get("next").and_then(|n| n.as_str()) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(out),
            }
        }
    }
}

/// Waits, up to `timeout`, for every session to be closed in the log and for the
/// gateways' spools to be empty (every recording uploaded and closed).
pub async fn drain(api: &Api, spools: &[&Path], timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let open = api.sessions().await?.iter().filter(|s| field(s, "outcome") == "open").count();
        let spooled: usize = spools.iter().map(|dir| files_under(dir, "spool")).sum();
        if open == 0 && spooled == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            eprintln!("  after {timeout:?}: {open} sessions still open in the log, {spooled} spool files left");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the whole log and checks every acked event is there as appended; runs `airlock verify`.
pub async fn check_events(api: &Api, acked: &[AckedEvent], airlock: &Path) -> anyhow::Result<EventLoss> {
    let mut log: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut from = 1u64;
    let head_seq = loop {
        let page = api.json(&format!("/v1/events?from_seq={from}&limit=10000")).await?;
        let head = page.get("head_seq").and_then(|h| h.as_u64()).unwrap_or(0);
        let events = page.get("events").and_then(|e| e.as_array()).cloned().unwrap_or_default();
        for e in &events {
            let seq = e.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
            let data = e.get("data").cloned().unwrap_or_default();
            log.insert(seq, (field(e, "type"), field(&data, "source")));
        }
        match events.last().and_then(|e| e.get("seq")?.as_u64()) {
            Some(last) if last < head => from = last + 1,
            _ => break head,
        }
    };
    let is_append = |seq: u64, n: u64| {
        log.get(&seq).is_some_and(|(kind, source)| kind == "policy_applied" && *source == policy_document(n))
    };
    let lost: Vec<AckedEvent> = acked.iter().filter(|a| !is_append(a.seq, a.n)).cloned().collect();
    let acked_n: BTreeSet<u64> = acked.iter().map(|a| a.n).collect();
    let committed_unanswered = log
        .values()
        .filter(|(kind, source)| kind == "policy_applied" && source.starts_with("# faults append "))
        .filter_map(|(_, source)| source.lines().next()?.strip_prefix("# faults append ")?.parse::<u64>().ok())
        .filter(|n| !acked_n.contains(n))
        .count();
    let out = Command::new(airlock)
        .arg("verify")
        .env("AIRLOCK_URL", &api.url)
        .env("AIRLOCK_TOKEN", &api.token)
        .output()
        .context("running airlock verify")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(EventLoss {
        acked: acked.len(),
        found: acked.len() - lost.len(),
        lost,
        committed_unanswered,
        head_seq,
        chain_intact: out.status.success(),
        chain_report: said.trim().to_owned(),
    })
}

/// Reads every listed session's timeline and verification; checks every acked marker was recorded.
pub async fn check_statements(api: &Api, acked: &[String], recordings: &Path) -> anyhow::Result<StatementLoss> {
    let sessions = api.sessions().await?;
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let mut loss = StatementLoss {
        acked: acked.len(),
        found: 0,
        unlisted_markers: Vec::new(),
        unlisted: 0,
        lost_markers: Vec::new(),
        lost: 0,
        sessions_listed: sessions.len(),
        recordings_stored: stored_sessions(recordings),
        sessions_open: Vec::new(),
        recordings_intact: 0,
        recordings_signed: 0,
        recordings_bad: Vec::new(),
        close_reasons: BTreeMap::new(),
    };
    for s in &sessions {
        let id = field(s, "id");
        if field(s, "outcome") == "open" {
            loss.sessions_open.push(id.clone());
        }
        let reason = s.get("close_reason").and_then(|r| r.as_str()).unwrap_or("(open)").to_owned();
        *loss.close_reasons.entry(reason).or_default() += 1;
        match api.json(&format!("/v1/sessions/{id}/verify")).await {
            Ok(v) => {
                let intact = v.get("intact").and_then(|b| b.as_bool()).unwrap_or(false);
                loss.recordings_intact += usize::from(intact);
                loss.recordings_signed += usize::from(v.get("signed").and_then(|b| b.as_bool()).unwrap_or(false));
                if !intact {
                    loss.recordings_bad.push((id.clone(), field(&v, "detail")));
                }
            }
            Err(e) => loss.recordings_bad.push((id.clone(), format!("{e:#}"))),
        }
        match timeline_statements(api, &id).await {
            Ok(statements) => {
                recorded.extend(statements.iter().flat_map(|s| markers_in(s)).map(str::to_owned));
            }
            Err(e) => loss.recordings_bad.push((id.clone(), format!("timeline: {e:#}"))),
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|m| !recorded.contains(*m)).collect();
    loss.found = acked.len() - missing.len();
    if !missing.is_empty() {
        let listed: BTreeSet<String> = sessions.iter().map(|s| field(s, "id")).collect();
        let stored = markers_in_store(recordings, &listed).await?;
        let (unlisted, lost): (Vec<&String>, Vec<&String>) = missing.into_iter().partition(|m| stored.contains(*m));
        (loss.unlisted, loss.lost) = (unlisted.len(), lost.len());
        loss.unlisted_markers = unlisted.into_iter().take(100).cloned().collect();
        loss.lost_markers = lost.into_iter().take(100).cloned().collect();
    }
    Ok(loss)
}

/// The markers in the recordings of the store's sessions that are not in `listed`,
/// read with the recorder's own timeline decoder.
async fn markers_in_store(recordings: &Path, listed: &BTreeSet<String>) -> anyhow::Result<BTreeSet<String>> {
    let config = airlock_recorder::Config { local_dir: Some(recordings.to_owned()), ..Default::default() };
    let store = airlock_recorder::Recordings::open(&config)?;
    let mut out = BTreeSet::new();
    for (tenant, session) in stored_session_ids(recordings) {
        if listed.contains(&session) {
            continue;
        }
        let (Ok(tenant), Ok(id)) = (tenant.parse(), session.parse()) else { continue };
        let mut reader = store.timeline_reader(tenant, id);
        while let Some(entries) = reader.next_entries().await.with_context(|| format!("reading recording {session}"))? {
            for statement in entries.iter().filter_map(|e| e.statement.as_deref()) {
                out.extend(markers_in(statement).into_iter().map(str::to_owned));
            }
        }
    }
    Ok(out)
}

/// The statement texts of a session's timeline (`/timeline.jsonl`, one entry a line).
async fn timeline_statements(api: &Api, id: &str) -> anyhow::Result<Vec<String>> {
    let text = api.get(&format!("/v1/sessions/{id}/timeline.jsonl")).await?.text().await?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line).context("a timeline line that is not JSON")?;
        if let Some(statement) = entry.get("statement").and_then(|s| s.as_str()) {
            out.push(statement.to_owned());
        }
    }
    Ok(out)
}

/// Roles named `airlock_%` on the target: session roles a gateway left behind.
pub async fn leftover_roles(target_url: &str) -> anyhow::Result<Vec<String>> {
    let (client, connection) = tokio_postgres::connect(target_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let rows = client
        .query("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'airlock\\_%' ORDER BY 1", &[])
        .await
        .context("listing roles")?;
    drop(client);
    let _ = driver.await;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Sessions in the recorder's local store: `tenants/<tenant>/sessions/<session>`.
fn stored_sessions(recordings: &Path) -> usize {
    stored_session_ids(recordings).len()
}

/// (tenant, session) of every recording in the recorder's local store.
fn stored_session_ids(recordings: &Path) -> Vec<(String, String)> {
    let name = |e: &std::fs::DirEntry| e.file_name().to_string_lossy().into_owned();
    let Ok(tenants) = std::fs::read_dir(recordings.join("tenants")) else { return Vec::new() };
    let mut out = Vec::new();
    for tenant in tenants.filter_map(Result::ok) {
        let Ok(sessions) = std::fs::read_dir(tenant.path().join("sessions")) else { continue };
        out.extend(sessions.filter_map(Result::ok).map(|s| (name(&tenant), name(&s))));
    }
    out
}

/// Files named `*.{ext}` under `dir`: `spool` for sessions a gateway has not
/// finished uploading, `failed` for those the recorder refused.
pub fn files_under(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path, ext)
            } else {
                usize::from(path.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}

fn field(v: &serde_json::Value, name: &str) -> String {
    v.get(name).and_then(|f| f.as_str()).unwrap_or_default().to_owned()
}
