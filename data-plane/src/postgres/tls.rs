//! TLS toward clients. A certificate and key from files, or a self-signed pair
//! made on first start (written beside the data so clients can pin it with
//! `sslrootcert`, which `sslmode=verify-full` needs). The files are read again
//! every `GatewayOptions::tls_reload_every`: a renewed certificate (one that
//! cert-manager or an ACME client writes in place) is served from the next
//! handshake on, without a restart and without touching sessions under way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_proto::certs;
pub use airlock_proto::certs::CertReloader;
use anyhow::Context;
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol of the Postgres protocol over TLS.
pub const POSTGRES_ALPN: &[u8] = b"postgresql";

/// The first byte of a TLS handshake record: a client that starts TLS at once
/// (`sslnegotiation=direct`) instead of with an SSLRequest. No startup packet
/// begins with it, since its length would be over the cap.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// Where the gateway's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, as an operator provides them.
    Files { cert: PathBuf, key: PathBuf },
    /// Self-signed for these names, kept in `dir` (made on first start, reused after).
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

/// The acceptor for client connections, and what keeps its certificate current.
pub fn acceptor(source: &TlsSource) -> anyhow::Result<(TlsAcceptor, CertReloader)> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned { dir, names } => ensure_self_signed(dir, names)?,
    };
    let (resolver, reloader) = certs::from_files(&cert, &key).context("the Postgres gateway's TLS certificate")?;
    let mut config = airlock_proto::transport::server_config_builder()?.with_cert_resolver(resolver);
    // Postgres's protocol name: a client that offers ALPN offers this (libpq
    // 17 does); one that starts TLS without an SSLRequest must.
    config.alpn_protocols = vec![POSTGRES_ALPN.to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    /// A self-signed pair is made once and reused, its key readable by the
    /// gateway's user alone, and served.
    #[test]
    fn a_self_signed_pair_is_made_once_and_served() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::SelfSigned { dir: dir.path().to_owned(), names: vec!["localhost".to_owned()] };
        let (_, reloader) = acceptor(&source).unwrap();
        let first = std::fs::read(dir.path().join("gateway.crt")).unwrap();
        let (_, again) = acceptor(&source).unwrap();
        assert_eq!(std::fs::read(dir.path().join("gateway.crt")).unwrap(), first, "made again");
        assert_eq!(reloader.served(), again.served());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("gateway.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
