//! TLS toward clients. A certificate and key from files, or a self-signed pair
//! made on first start (written beside the data so clients can pin it with
//! `sslrootcert`, which `sslmode=verify-full` needs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the gateway's certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
