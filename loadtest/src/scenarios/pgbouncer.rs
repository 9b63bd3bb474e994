//! pgbouncer (Debian's package) as a child process with a generated config,
//! for the scenarios that put it in front of Postgres: `pg-connect` compares
//! against it, `idle-sessions` puts it between the gateway and Postgres so
//! the gateway can hold more upstream connections than Postgres has backends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::pg_throughput::{Proc, READY_TIMEOUT, command_output, find_on_path, stop_child, tail};

/// What goes into `pgbouncer.ini`.
pub(crate) struct Config {
    pub port: u16,
    /// `[databases]` entries: the name clients ask for, and its connection
    /// string (`host=... port=... dbname=... user=... pool_mode=...`).
    pub databases: Vec<(String, String)>,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    /// Startup parameters pgbouncer accepts from clients and does not pass
    /// on (it refuses a client that sends one it does not know).
    pub ignore_startup_parameters: &'static str,
}

impl Config {
    /// A database entry that logs in to Postgres as `user`, whoever the client
    /// says it is (with `auth_type = any`, loopback only).
    pub fn database(pg_host: &str, pg_port: u16, database: &str, user: &str, pool_mode: &str) -> String {
        format!("host={pg_host} port={pg_port} dbname={database} user={user} pool_mode={pool_mode}")
    }
}

/// The pgbouncer binary; when it is missing, Debian's package installed
/// with apt-get (as root, or through `sudo -n`), as the scenarios that
/// compare against it promise.
pub(crate) fn find() -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_on_path("pgbouncer") {
        return Ok(bin);
    }
    eprintln!("pgbouncer: not installed, installing Debian's package (apt-get install pgbouncer)");
    let root = command_output(Command::new("id").arg("-u")).is_ok_and(|id| id.trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            c.args(["-n", "apt-get"]);
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).stdout(Stdio::null());
        c.status().is_ok_and(|s| s.success())
    };
    // The package lists may be missing or stale on a fresh machine.
    let _ = apt(&["install", "-y", "-qq", "pgbouncer"])
        || (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "pgbouncer"]));
    find_on_path("pgbouncer").context(
        "pgbouncer is not installed and apt-get could not install it (it needs root or sudo without a \
         password, and Debian's package lists): install Debian's pgbouncer package and try again",
    )
}

/// `pgbouncer --version`'s first line.
pub(crate) fn version(bin: &Path) -> String {
    command_output(Command::new(bin).arg("--version"))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// Starts pgbouncer on `127.0.0.1:{config.port}` with `auth_type = any` and
/// waits until it accepts connections. As root it runs with `-u postgres` (the
/// same process, so the pid from its pidfile is the one to measure).
pub(crate) fn start(bin: &Path, dir: &Path, config: &Config) -> anyhow::Result<Proc> {
    let dir = dir.join("pgbouncer");
    std::fs::create_dir_all(&dir)?;
    let (ini, log, pidfile) = (dir.join("pgbouncer.ini"), dir.join("pgbouncer.log"), dir.join("pgbouncer.pid"));
    let mut text = String::from("[databases]\n");
    for (name, target) in &config.databases {
        text.push_str(&format!("{name} = {target}\n"));
    }
    text.push_str(&format!(
        "[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = any\n\
         pool_mode = transaction\n\
         server_tls_sslmode = disable\n\
         max_client_conn = {max_client_conn}\n\
         default_pool_size = {pool}\n\
         ignore_startup_parameters = {ignore}\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         logfile = {log}\n\
         pidfile = {pidfile}\n",
        port = config.port,
        max_client_conn = config.max_client_conn,
        pool = config.default_pool_size,
        ignore = config.ignore_startup_parameters,
        log = log.display(),
        pidfile = pidfile.display(),
    ));
    std::fs::write(&ini, text)?;
    let root = command_output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false);
    let mut command = Command::new(bin);
    if root {
        // pgbouncer refuses to run as root; -u switches user in the same process.
        let status = Command::new("chown").args(["-R", "postgres:"]).arg(&dir).status()?;
        anyhow::ensure!(status.success(), "chown -R postgres: {} failed", dir.display());
        let parent = dir.parent().context("pgbouncer dir has no parent")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        command.args(["-u", "postgres"]);
    }
    let stderr = dir.join("stderr.log");
    let child =
        command.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr)?).spawn()?;
    let mut proc = Proc { pid: child.id(), child, log: log.clone() };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            anyhow::bail!("pgbouncer exited with {status}: {} {}", tail(&stderr), tail(&log));
        }
        let pid = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && std::net::TcpStream::connect(("127.0.0.1", config.port)).is_ok()
        {
            proc.pid = pid;
            return Ok(proc);
        }
        if Instant::now() >= deadline {
            stop_child(proc);
            anyhow::bail!("pgbouncer was not ready after {READY_TIMEOUT:?}: {}", tail(&log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
