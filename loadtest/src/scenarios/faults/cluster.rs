//! The deployment the `faults` scenario breaks: a private Postgres and NATS,
//! the recorder, the control plane and two gateways, each a child process in
//! its own process group (so SIGKILL reaches Postgres's backends too, and a
//! Ctrl-C at the terminal reaches only this process, which stops them).
//!
//! Every component keeps its data directory and ports across restarts, and
//! its log file is appended to, so one file holds every incarnation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::scenarios::pg_throughput::{Proc, READY_TIMEOUT, command_output, find_on_path, free_addr, tail};

/// The gateways' workers, two of them.
pub const GATEWAYS: usize = 2;
/// The database the gateways front, and the one the control plane keeps its log in.
pub const TARGET_DB: &str = "target";
const CONTROL_DB: &str = "airlock";
/// The template role the connection maps `readonly` to, and the table it may read.
pub const TEMPLATE: &str = "faults_reader";
pub const TABLE: &str = "faults_items";
/// Shared by the control plane, the gateways and the recorder.
const WORKER_TOKEN: &str = "loadtest-faults-worker-token";
/// 32 bytes of 7, base64: this deployment's secrets are thrown away with it.
const MASTER_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    Postgres,
    Nats,
    Recorder,
    ControlPlane,
    /// A gateway worker, by index.
    Gateway(usize),
}

impl Component {
    pub fn label(self) -> String {
        match self {
            Component::Postgres => "postgres".into(),
            Component::Nats => "nats".into(),
            Component::Recorder => "recorder".into(),
            Component::ControlPlane => "control-plane".into(),
            Component::Gateway(i) => format!("gateway-{}", i + 1),
        }
    }
}

/// Where everything listens; fixed for the run, so a restart comes back on the same ports.
#[derive(Debug, Clone, Serialize)]
pub struct Ports {
    pub postgres: u16,
    pub nats: u16,
    pub nats_monitor: u16,
    pub recorder: SocketAddr,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    /// Per gateway: its Postgres listener and its admin (health) address.
    pub gateways: Vec<(SocketAddr, SocketAddr)>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub ports: Ports,
    airlock: PathBuf,
    pg_bin: PathBuf,
    nats_bin: PathBuf,
    /// Postgres refuses to run as root: its processes run as this uid and gid then.
    pg_user: Option<(u32, u32)>,
    running: BTreeMap<Component, Proc>,
}

impl Cluster {
    /// Finds the binaries and picks the ports; starts nothing.
    pub fn new(dir: &Path, airlock: &Path) -> anyhow::Result<Cluster> {
        let nats_bin = find_on_path("nats-server").context("nats-server not found on PATH or in /usr/sbin")?;
        let pg_bin = postgres_bin_dir()?;
        let root = command_output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false);
        let pg_user =
            if root { Some(postgres_ids().context("running as root needs a `postgres` user")?) } else { None };
        let ports = Ports {
            postgres: free_addr()?.port(),
            nats: free_addr()?.port(),
            nats_monitor: free_addr()?.port(),
            recorder: free_addr()?,
            api: free_addr()?,
            grpc: free_addr()?,
            gateways: (0..GATEWAYS).map(|_| Ok((free_addr()?, free_addr()?))).collect::<anyhow::Result<_>>()?,
        };
        Ok(Cluster {
            dir: dir.to_owned(),
            ports,
            airlock: airlock.to_owned(),
            pg_bin,
            nats_bin,
            pg_user,
            running: BTreeMap::new(),
        })
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.ports.api)
    }

    /// `postgres://` URL of a database on the private server.
    pub fn pg_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.ports.postgres)
    }

    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir(Component::ControlPlane).join("admin.token");
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
    }

    pub fn data_dir(&self, c: Component) -> PathBuf {
        self.dir.join(c.label())
    }

    pub fn log(&self, c: Component) -> PathBuf {
        self.dir.join(format!("{}.log", c.label()))
    }

    /// Creates the Postgres cluster and starts everything in dependency order;
    /// the two databases and the target's template role and table are made.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.init_postgres()?;
        for c in [Component::Postgres, Component::Nats, Component::Recorder] {
            self.start(c).await?;
        }
        self.create_databases().await?;
        self.start(Component::ControlPlane).await?;
        for i in 0..GATEWAYS {
            self.start(Component::Gateway(i)).await?;
        }
        Ok(())
    }

    /// Starts `c` (again) on its data directory and ports and waits until it is ready;
    /// returns how long that took.
    pub async fn start(&mut self, c: Component) -> anyhow::Result<Duration> {
        anyhow::ensure!(!self.running.contains_key(&c), "{} is already running", c.label());
        let started = Instant::now();
        let mut command = self.command(c)?;
        let log = self.log(c);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env_remove("AIRLOCK_CONFIG");
        let child = command.spawn().with_context(|| format!("starting {}", c.label()))?;
        self.running.insert(c, Proc { pid: child.id(), child, log });
        self.wait_ready(c).await.with_context(|| format!("{} did not come up", c.label()))?;
        Ok(started.elapsed())
    }

    /// SIGKILL to `c`'s process group: no shutdown path runs, Postgres's backends die with it.
    pub fn kill(&mut self, c: Component) -> anyhow::Result<()> {
        let mut p = self.running.remove(&c).with_context(|| format!("{} is not running", c.label()))?;
        signal_group(p.pid, "KILL")?;
        p.child.wait().with_context(|| format!("waiting for {} to die", c.label()))?;
        Ok(())
    }

    /// A graceful stop: SIGTERM (Postgres: SIGINT, its fast shutdown), then SIGKILL after 20 s.
    pub fn stop(&mut self, c: Component) {
        let Some(mut p) = self.running.remove(&c) else { return };
        let signal = if c == Component::Postgres { "INT" } else { "TERM" };
        let _ = signal_group(p.pid, signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    eprintln!("warning: {} did not stop on SIG{signal}; killing it", c.label());
                    let _ = signal_group(p.pid, "KILL");
                    let _ = p.child.wait();
                    break;
                }
            }
        }
        // What the group still holds (Postgres's backends after its postmaster went) goes too.
        let _ = signal_group(p.pid, "KILL");
    }

    /// Stops everything, the gateways first (they drop their session roles on the way out).
    pub fn stop_all(&mut self) {
        for c in [
            Component::Gateway(0),
            Component::Gateway(1),
            Component::ControlPlane,
            Component::Recorder,
            Component::Nats,
            Component::Postgres,
        ] {
            self.stop(c);
        }
        let rest: Vec<Component> = self.running.keys().copied().collect();
        for c in rest {
            self.stop(c);
        }
    }

    fn command(&self, c: Component) -> anyhow::Result<Command> {
        let p = &self.ports;
        let command = match c {
            Component::Postgres => {
                let mut command = self.as_postgres(self.pg_bin.join("postgres"));
                let data = self.data_dir(c);
                command
                    .arg("-D")
                    .arg(data.join("data"))
                    .args(["-p", &p.postgres.to_string(), "-c", "listen_addresses=127.0.0.1"])
                    .arg("-c")
                    .arg(format!("unix_socket_directories={}", data.display()))
                    .args(["-c", "max_connections=200"]);
                command
            }
            Component::Nats => {
                let mut command = Command::new(&self.nats_bin);
                command
                    .args(["-js", "-a", "127.0.0.1", "-p", &p.nats.to_string(), "-m", &p.nats_monitor.to_string()])
                    .arg("-sd")
                    .arg(self.data_dir(c));
                command
            }
            Component::Recorder => {
                let mut command = self.airlock(c);
                command.args(["recorder", "--addr", &p.recorder.to_string()]);
                command
            }
            Component::ControlPlane => {
                let mut command = self.airlock(c);
                command
                    .args(["control-plane", "--api-addr", &p.api.to_string(), "--grpc-addr", &p.grpc.to_string()])
                    .env("AIRLOCK_DATABASE__URL", self.pg_url(CONTROL_DB))
                    .env("AIRLOCK_SECRETS__MASTER_KEY", MASTER_KEY);
                command
            }
            Component::Gateway(i) => {
                let (pg, admin) = *p.gateways.get(i).with_context(|| format!("no gateway {i}"))?;
                let mut command = self.airlock(c);
                command
                    .args(["gateway", "--control-plane-url", &format!("http://{}", p.grpc)])
                    .args(["--admin-addr", &admin.to_string(), "--pg-addr", &pg.to_string()])
                    .env("AIRLOCK_WORKER__ID", format!("faults-{}", c.label()))
                    .env("AIRLOCK_WORKER__RECORDING__RECORDER_URL", format!("http://{}", p.recorder));
                command
            }
        };
        Ok(command)
    }

    /// The `airlock` binary with what every Airlock process of the deployment shares.
    fn airlock(&self, c: Component) -> Command {
        let mut command = Command::new(&self.airlock);
        command
            .env("AIRLOCK_DATA_DIR", self.data_dir(c))
            // The recorder keeps its key and recordings there; the control plane reads
            // recordings from the same directory and verifies them with that key's public half.
            .env("AIRLOCK_RECORDER__DATA_DIR", self.data_dir(Component::Recorder))
            .env("AIRLOCK_PUBLIC_URL", self.api_url())
            .env("AIRLOCK_WORKER__TOKEN", WORKER_TOKEN)
            .env("AIRLOCK_BUS__NATS_URL", format!("nats://127.0.0.1:{}", self.ports.nats))
            .env("AIRLOCK_BUS__PREFIX", "faults")
            .env("AIRLOCK_LOG", std::env::var("AIRLOCK_LOG").unwrap_or_else(|_| "info".into()));
        command
    }

    /// A Postgres binary, as the `postgres` user when this process is root.
    fn as_postgres(&self, bin: PathBuf) -> Command {
        let mut command = Command::new(bin);
        command.env("LC_ALL", "C").current_dir(&self.dir);
        if let Some((uid, gid)) = self.pg_user {
            command.uid(uid).gid(gid);
        }
        command
    }

    async fn wait_ready(&mut self, c: Component) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let p = self.ports.clone();
        let url = match c {
            Component::Postgres => None,
            Component::Nats => Some(format!("http://127.0.0.1:{}/healthz?js-enabled-only=true", p.nats_monitor)),
            Component::Recorder => Some(format!("http://{}/healthz", p.recorder)),
            Component::ControlPlane => Some(format!("http://{}/readyz", p.api)),
            Component::Gateway(i) => p.gateways.get(i).map(|(_, admin)| format!("http://{admin}/readyz")),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = match &url {
                Some(url) => http.get(url).send().await.is_ok_and(|r| r.status().is_success()),
                None => tokio_postgres::connect(&self.pg_url("postgres"), tokio_postgres::NoTls).await.is_ok(),
            };
            if ready {
                return Ok(());
            }
            let proc = self.running.get_mut(&c).context("not running")?;
            if let Ok(Some(status)) = proc.child.try_wait() {
                anyhow::bail!("exited with {status}: {}", tail(&proc.log));
            }
            anyhow::ensure!(Instant::now() < deadline, "not ready after {READY_TIMEOUT:?}: {}", tail(&proc.log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `initdb` into a directory the `postgres` user owns: trust authentication, no TLS.
    fn init_postgres(&self) -> anyhow::Result<()> {
        let home = self.data_dir(Component::Postgres);
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        if let Some((uid, gid)) = self.pg_user {
            std::os::unix::fs::chown(&home, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the postgres user", home.display()))?;
        }
        let out = self
            .as_postgres(self.pg_bin.join("initdb"))
            .arg("-D")
            .arg(home.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The control plane's database; the target database with a template role and a small table.
    async fn create_databases(&self) -> anyhow::Result<()> {
        let (admin, connection) = tokio_postgres::connect(&self.pg_url("postgres"), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        // One statement each: CREATE DATABASE cannot run in the implicit transaction of a batch.
        for sql in [
            format!("CREATE DATABASE {CONTROL_DB}"),
            format!("CREATE DATABASE {TARGET_DB}"),
            format!("CREATE ROLE {TEMPLATE} NOLOGIN"),
        ] {
            admin.batch_execute(&sql).await.with_context(|| format!("running {sql}"))?;
        }
        drop(admin);
        let _ = driver.await;
        let (target, connection) = tokio_postgres::connect(&self.pg_url(TARGET_DB), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        target
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (id int PRIMARY KEY, name text NOT NULL);
                 INSERT INTO {TABLE} SELECT i, 'item ' || i FROM generate_series(1, 100) i;
                 GRANT SELECT ON {TABLE} TO {TEMPLATE};"
            ))
            .await
            .context("filling the target database")?;
        drop(target);
        let _ = driver.await;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `kill -SIGNAL -- -PGID`: the whole process group a child leads.
fn signal_group(pgid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} -- -{pgid} failed");
    Ok(())
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `postgres`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("reading /usr/lib/postgresql (install the postgresql package)")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context("no /usr/lib/postgresql/*/bin with initdb and postgres")
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).context("no postgres user in /etc/passwd")?;
    let mut fields = line.split(':').skip(2);
    let uid = fields.next().context("no uid")?.parse()?;
    let gid = fields.next().context("no gid")?.parse()?;
    Ok((uid, gid))
}
