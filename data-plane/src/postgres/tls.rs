//! TLS toward clients. A certificate and key from files, or a self-signed pair
//! made on first start (written beside the data so clients can pin it with
//! `sslrootcert`, which `sslmode=verify-full` needs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_rustls::TlsAcceptor;

/// Where the gateway's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, as an operator provides them.
    Files { cert: PathBuf, key: PathBuf },
    /// Self-signed for these names, kept in `dir` (made on first start, reused after).
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

pub fn acceptor(source: &TlsSource) -> anyhow::Result<TlsAcceptor> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned { dir, names } => ensure_self_signed(dir, names)?,
    };
    let files = airlock_proto::transport::ServerTls { cert_file: cert, key_file: key };
    let config = files.rustls_config(&[]).context("the Postgres gateway's TLS certificate")?;
    Ok(TlsAcceptor::from(config))
}

/// Paths of the self-signed certificate and key in `dir`, made if missing.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("gateway.crt");
    let key = dir.join("gateway.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pair = rcgen::generate_simple_self_signed(names.to_vec()).context("making a self-signed certificate")?;
    std::fs::write(&cert, pair.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    write_private(&key, &pair.signing_key.serialize_pem()).with_context(|| format!("writing {}", key.display()))?;
    tracing::info!(cert = %cert.display(), "made a self-signed certificate for the Postgres gateway");
    Ok((cert, key))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
