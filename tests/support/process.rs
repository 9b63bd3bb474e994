//! The `airlock` binary as a child process, and what tests around it need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_testkit::eventually;

pub const BIN: &str = env!("CARGO_BIN_EXE_airlock");

/// A child process, killed when dropped; its output goes to a log file shown on failure.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(name: &str, dir: &Path, args: &[S], env: &[(&str, String)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null());
        // `airlock up` runs a recorder: on a port of its own, so tests run side by side.
        cmd.env("AIRLOCK_RECORDER__ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().unwrap(), log }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("airlock-proc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// An address nothing listens on yet, for a child process to bind.
pub fn free_addr() -> SocketAddr {
    airlock_testkit::free_addr()
}

pub async fn wait_ready(url: &str) {
    eventually(Duration::from_secs(60), &format!("{url} to be ready"), || async {
        reqwest::get(url).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
}
