//! `recorder-ingest`: how fast the recorder stores session frames, per core.
//!
//! `airlock recorder` runs as a child process, storing to a local directory
//! (and, with `--s3-url`, to an S3-compatible server). This process plays a
//! worker: one `Ingest` stream carries the frames of `--sessions` sessions in
//! batched requests, as fast as the recorder takes them, for `--seconds`;
//! then every session is ended and the run waits until the recorder has
//! closed each one (every frame stored, every manifest signed). Reported per
//! payload profile: MB/s of frame bodies stored, frames/s, and MB/s per core
//! (bytes over the recorder's CPU seconds, utime + stime from /proc).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1::recorder_service_client::RecorderServiceClient;
use airlock_proto::v1::{self, frame::Body};
use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pg_throughput::{Proc, clk_tck, cpu_model, cpu_ticks, find_airlock, free_addr, stop_child, tail};
use crate::report::{self, Document, Host, Table};

/// A request is filled to about this many bytes, as the worker's uploader does.
const REQUEST_BYTES: usize = 256 << 10;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The worker token both sides use.
const TOKEN: &str = "loadtest-recorder-ingest-token";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of streaming per (backend, profile).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Sessions on the stream.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Payload profiles: small (a `pgbench -S` exchange: ~60-byte queries,
    /// ~130-byte results) and large (8 KiB results of text rows).
    #[arg(long, value_delimiter = ',', default_values_t = vec![Profile::Small, Profile::Large])]
    pub profiles: Vec<Profile>,
    /// Also measure an S3-compatible store: `http://host:port/bucket` (path style;
    /// credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, default test/test).
    #[arg(long, env = "AIRLOCK_TEST_S3_URL")]
    pub s3_url: Option<String>,
    /// The `airlock` binary (default: next to this binary, i.e. target/release/airlock).
    #[arg(long)]
    pub airlock_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Small,
    Large,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Small => "small",
            Profile::Large => "large",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    backend: &'static str,
    profile: Profile,
    sessions: usize,
    frames: u64,
    body_bytes: u64,
    wall_s: f64,
    recorder_cpu_s: f64,
    mb_per_s: f64,
    frames_per_s: f64,
    mb_per_s_per_core: f64,
    stored_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Parameters {
    seconds: u64,
    sessions: usize,
    profiles: Vec<Profile>,
    request_bytes: usize,
    cpu_model: String,
}

pub async fn run(args: &Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0 && args.sessions > 0, "--seconds and --sessions must be at least 1");
    let airlock_bin = find_airlock(args.airlock_bin.as_deref())?;
    let started_at = report::unix_ms_now();
    let started = Instant::now();
    let clk_tck = clk_tck();
    let mut backends = vec![Backend::Local];
    if let Some(url) = &args.s3_url {
        backends.push(Backend::S3(url.clone()));
    }
    let mut runs = Vec::new();
    for backend in &backends {
        for &profile in &args.profiles {
            let dir = std::env::temp_dir().join(format!("airlock-recorder-ingest-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir)?;
            let result = measure(&airlock_bin, &dir, backend, profile, args, clk_tck).await;
            let _ = std::fs::remove_dir_all(&dir);
            let run = result.with_context(|| format!("{} / {profile}", backend.label()))?;
            eprintln!(
                "  {:<5} {profile:<5}: {:.1} MB/s, {:.0} frames/s, {:.1} MB/s per core",
                run.backend, run.mb_per_s, run.frames_per_s, run.mb_per_s_per_core
            );
            runs.push(run);
        }
    }

    let mut table =
        Table::new(&["backend", "profile", "frames", "MB", "MB/s", "frames/s", "recorder CPU s", "MB/s per core"]);
    for r in &runs {
        table.row(vec![
            r.backend.to_owned(),
            r.profile.to_string(),
            r.frames.to_string(),
            format!("{:.1}", r.body_bytes as f64 / 1e6),
            format!("{:.1}", r.mb_per_s),
            format!("{:.0}", r.frames_per_s),
            format!("{:.2}", r.recorder_cpu_s),
            format!("{:.1}", r.mb_per_s_per_core),
        ]);
    }
    println!("recorder-ingest: frames stored by `airlock recorder`, per core of its CPU\n");
    print!("{}", table.render());
    let notes = vec![
        format!(
            "One Ingest stream, {} sessions, requests of about {} KiB (as a worker batches), {} s per run; \
             every session is then ended and the run waits until each is closed (chunks stored, manifest signed).",
            args.sessions,
            REQUEST_BYTES >> 10,
            args.seconds
        ),
        "MB are frame bodies (bytes as relayed), 10^6 bytes; wall time from the first frame to the last close."
            .to_owned(),
        format!(
            "MB/s per core: body bytes over the recorder process's utime+stime (/proc, CLK_TCK {clk_tck}); the \
             load generator (this process) runs on the same cores."
        ),
        "small: a pgbench -S exchange per pair of frames; large: a 2-frame exchange whose result is 8 KiB of text \
         rows."
            .to_owned(),
    ];
    println!();
    for n in &notes {
        println!("note: {n}");
    }
    let doc = Document {
        scenario: "recorder-ingest",
        started_at_unix_ms: started_at,
        duration_s: started.elapsed().as_secs_f64(),
        host: Host::current(),
        parameters: Parameters {
            seconds: args.seconds,
            sessions: args.sessions,
            profiles: args.profiles.clone(),
            request_bytes: REQUEST_BYTES,
            cpu_model: cpu_model(),
        },
        notes,
        results: runs,
    };
    let path = report::write_json(out, &doc)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

enum Backend {
    Local,
    /// `http://host:port/bucket`.
    S3(String),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3(_) => "s3",
        }
    }
}

async fn measure(
    airlock_bin: &Path,
    dir: &Path,
    backend: &Backend,
    profile: Profile,
    args: &Args,
    clk_tck: u64,
) -> anyhow::Result<Run> {
    let addr = free_addr()?;
    let log = dir.join("recorder.log");
    let log_file = std::fs::File::create(&log)?;
    let mut command = Command::new(airlock_bin);
    command
        .args(["recorder", "--addr", &addr.to_string()])
        .env_remove("AIRLOCK_CONFIG")
        .env("AIRLOCK_DATA_DIR", dir.join("data"))
        .env("AIRLOCK_WORKER__TOKEN", TOKEN)
        .env("AIRLOCK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Backend::S3(url) = backend {
        let rest = url.strip_prefix("http://").context("--s3-url must be http://host:port/bucket")?;
        let (host, bucket) = rest.split_once('/').context("--s3-url must name a bucket: http://host:port/bucket")?;
        let key = |name: &str| std::env::var(name).unwrap_or_else(|_| "test".into());
        command
            .env("AIRLOCK_RECORDER__BACKEND", "s3")
            .env("AIRLOCK_RECORDER__S3__BUCKET", bucket.trim_end_matches('/'))
            .env("AIRLOCK_RECORDER__S3__ENDPOINT", format!("http://{host}"))
            .env("AIRLOCK_RECORDER__S3__REGION", "us-east-1")
            .env("AIRLOCK_RECORDER__S3__PATH_STYLE", "true")
            .env("AIRLOCK_RECORDER__S3__PREFIX", format!("loadtest-{}", uuid::Uuid::new_v4().simple()))
            .env("AIRLOCK_RECORDER__S3__ACCESS_KEY_ID", key("AWS_ACCESS_KEY_ID"))
            .env("AIRLOCK_RECORDER__S3__SECRET_ACCESS_KEY", key("AWS_SECRET_ACCESS_KEY"));
    }
    let child = command.spawn().with_context(|| format!("spawning {}", airlock_bin.display()))?;
    let pid = child.id();
    let proc = Proc { child, pid, log: log.clone() };
    let result = stream(addr, pid, profile, args, clk_tck, &log).await;
    stop_child(proc);
    let mut run = result?;
    run.backend = backend.label();
    if let Backend::Local = backend {
        run.stored_bytes = Some(dir_bytes(&dir.join("data/recorder/recordings")));
    }
    Ok(run)
}

async fn stream(
    addr: std::net::SocketAddr,
    pid: u32,
    profile: Profile,
    args: &Args,
    clk_tck: u64,
    log: &Path,
) -> anyhow::Result<Run> {
    let url = format!("http://{addr}");
    let deadline = Instant::now() + READY_TIMEOUT;
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(url.clone())?.connect().await {
            Ok(channel) => break channel,
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "the recorder did not answer: {e}: {}", tail(log));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut client = RecorderServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<v1::IngestRequest>(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let mut acks = client.ingest(request).await.context("opening the Ingest stream")?.into_inner();

    let tenant = TenantId::new();
    let sessions: Vec<SessionId> = (0..args.sessions).map(|_| SessionId::new()).collect();
    let opens = sessions
        .iter()
        .map(|id| v1::SessionOpen {
            tenant_id: tenant.to_string(),
            session_id: id.to_string(),
            connection_id: "loadtest".into(),
            principal_subject: "loadtest-recorder".into(),
            principal_issuer: "https://airlock.loadtest".into(),
            client_addr: "127.0.0.1:50000".into(),
            worker_id: "loadtest".into(),
            target_role: "readonly".into(),
            protocol: "postgres".into(),
            started_at_unix_ms: i64::try_from(report::unix_ms_now()).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .collect();
    tx.send(v1::IngestRequest { opens, ..Default::default() }).await?;
    let mut opened = 0;
    while opened < sessions.len() {
        let ack = acks.message().await?.context("the recorder ended the stream")?;
        opened += usize::from(ack.durable_seq == 0);
    }

    // Acks are read as they come; the run ends when every session is closed.
    let expected = sessions.len();
    let closer = tokio::spawn(async move {
        let mut closed = 0;
        while closed < expected {
            match acks.message().await {
                Ok(Some(ack)) => closed += usize::from(ack.closed),
                Ok(None) => anyhow::bail!("the recorder ended the stream with {closed} of {expected} closed"),
                Err(status) => anyhow::bail!("the recorder refused the stream: {status}"),
            }
        }
        Ok(())
    });

    let bodies = Bodies::new(profile);
    let ids: Vec<String> = sessions.iter().map(ToString::to_string).collect();
    // Each session's id and last seq.
    let mut streams: std::collections::VecDeque<(String, u64)> = ids.iter().map(|id| (id.clone(), 0)).collect();
    let (mut frames, mut body_bytes) = (0_u64, 0_u64);
    let cpu_start = cpu_ticks(pid)?;
    let start = Instant::now();
    let stop = start + Duration::from_secs(args.seconds);
    let mut turn = 0_usize;
    while Instant::now() < stop {
        let mut request = v1::IngestRequest::default();
        let mut size = 0;
        while size < REQUEST_BYTES {
            let Some((id, mut seq)) = streams.pop_front() else { break };
            // A session's exchange: what the client sent, then what came back.
            for way in [0, 1] {
                seq += 1;
                let body = bodies.pick(turn, way);
                size += body.len() + 64;
                body_bytes += body.len() as u64;
                frames += 1;
                let body = if way == 0 { Body::ClientBytes(body) } else { Body::ServerBytes(body) };
                request.frames.push(frame(&id, seq, body));
            }
            streams.push_back((id, seq));
            turn += 1;
        }
        tx.send(request).await.context("the recorder stopped taking requests")?;
    }
    let ends = streams
        .iter()
        .map(|(id, seq)| {
            let end = v1::SessionEnd { reason: "client closed".into(), client_bytes: 0, server_bytes: 0 };
            frame(id, seq + 1, Body::End(end))
        })
        .collect();
    tx.send(v1::IngestRequest { frames: ends, flush_sessions: ids.clone(), ..Default::default() }).await?;
    closer.await.context("the ack reader failed")??;
    let wall_s = start.elapsed().as_secs_f64();
    let recorder_cpu_s = (cpu_ticks(pid)? - cpu_start) as f64 / clk_tck as f64;
    drop(tx);
    let mb = body_bytes as f64 / 1e6;
    Ok(Run {
        backend: "",
        profile,
        sessions: sessions.len(),
        frames,
        body_bytes,
        wall_s,
        recorder_cpu_s,
        mb_per_s: mb / wall_s,
        frames_per_s: frames as f64 / wall_s,
        mb_per_s_per_core: if recorder_cpu_s > 0.0 { mb / recorder_cpu_s } else { 0.0 },
        stored_bytes: None,
    })
}

fn frame(session: &str, seq: u64, body: Body) -> v1::Frame {
    let at = i64::try_from(report::unix_ms_now() * 1000).unwrap_or(i64::MAX);
    v1::Frame { session_id: session.to_owned(), seq, at_unix_micros: at, body: Some(body) }
}

/// Pre-made frame bodies, each different (numbers vary as real ones do), so
/// that making a request costs the load generator little.
struct Bodies {
    client: Vec<Bytes>,
    server: Vec<Bytes>,
}

impl Bodies {
    const KINDS: usize = 512;

    fn new(profile: Profile) -> Self {
        let mut rng = Lcg(0x5eed);
        let client: Vec<Bytes> = (0..Self::KINDS)
            .map(|_| {
                let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", rng.below(1_000_000));
                Bytes::from(pg_message(b'Q', &[sql.as_bytes(), b"\0"].concat()))
            })
            .collect();
        let server = (0..Self::KINDS)
            .map(|_| match profile {
                Profile::Small => {
                    let mut out =
                        pg_message(b'T', b"\0\x01abalance\0\0\0\x40\x0b\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
                    let value = rng.below(100_000).to_string();
                    let mut row = vec![0, 1];
                    row.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
                    row.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(&pg_message(b'D', &row));
                    out.extend_from_slice(&pg_message(b'C', b"SELECT 1\0"));
                    out.extend_from_slice(&pg_message(b'Z', b"I"));
                    Bytes::from(out)
                }
                Profile::Large => {
                    let mut out = Vec::with_capacity(8 << 10);
                    while out.len() < 8 << 10 {
                        let text = format!(
                            "customer-{} {}@example.com order {} total {}.{:02}",
                            rng.below(100_000),
                            rng.pick(&WORDS),
                            rng.below(1_000_000),
                            rng.below(10_000),
                            rng.below(100)
                        );
                        let mut row = vec![0, 1];
                        row.extend_from_slice(&u32::try_from(text.len()).unwrap_or(0).to_be_bytes());
                        row.extend_from_slice(text.as_bytes());
                        out.extend_from_slice(&pg_message(b'D', &row));
                    }
                    Bytes::from(out)
                }
            })
            .collect();
        Self { client, server }
    }

    fn pick(&self, turn: usize, way: usize) -> Bytes {
        let pool = if way == 0 { &self.client } else { &self.server };
        pool.get(turn.wrapping_mul(7919) % pool.len().max(1)).cloned().unwrap_or_default()
    }
}

const WORDS: [&str; 8] = ["ada", "grace", "linus", "barbara", "ken", "dennis", "margaret", "edsger"];

/// A Postgres message: type byte, length, body.
fn pg_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(kind);
    out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A small deterministic generator: payloads are the same from run to run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        let i = usize::try_from(self.below(words.len() as u64)).unwrap_or(0);
        words.get(i).copied().unwrap_or_default()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
