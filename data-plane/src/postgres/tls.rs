//! TLS toward clients. A certificate and key from files, or a self-signed pair
//! made on first start (written beside the data so clients can pin it with
//! `sslrootcert`, which `sslmode=verify-full` needs). The files are read again
//! every `GatewayOptions::tls_reload_every`: a renewed certificate (one that
//! cert-manager or an ACME client writes in place) is served from the next
//! handshake on, without a restart and without touching sessions under way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

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
    let (read, certified) = load(&cert, &key).context("the Postgres gateway's TLS certificate")?;
    let current = Arc::new(CurrentCert(ArcSwap::from_pointee(certified)));
    let config = airlock_proto::transport::server_config_builder()?.with_cert_resolver(current.clone());
    let reloader = CertReloader { cert, key, read, current };
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
}

/// The certificate every handshake is served, swapped whole on reload.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Reads the certificate and key files again and serves them once they
/// change and hold a certificate with its key. Files that cannot be read or
/// that do not match (a renewal caught between writing the certificate and
/// writing its key) keep the certificate served until then.
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    /// A digest of the files' contents as last loaded (not the key itself,
    /// which need not stay in memory beyond the signing key rustls holds).
    read: [u8; 32],
    current: Arc<CurrentCert>,
}

impl CertReloader {
    /// Checks the files every `every` until `cancel`. A failure is logged
    /// when it starts or changes, not on every check while it lasts.
    pub async fn run(mut self, every: Duration, cancel: CancellationToken) {
        let every = every.max(Duration::from_millis(50));
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.check() {
                Ok(renewed) => {
                    if renewed {
                        tracing::info!(cert = %self.cert.display(), "serving a renewed TLS certificate");
                    }
                    failing = None;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if failing.as_ref() != Some(&why) {
                        tracing::warn!("still serving the TLS certificate loaded before: {why}");
                        failing = Some(why);
                    }
                }
            }
        }
    }

    /// Loads the files when their contents changed; whether a new certificate is served.
    pub fn check(&mut self) -> anyhow::Result<bool> {
        let (cert, key) = read_pair(&self.cert, &self.key)?;
        let read = digest(&cert, &key);
        if read == self.read {
            return Ok(false);
        }
        let certified = certified_key(&self.cert, &cert, &self.key, &key)?;
        self.current.0.store(Arc::new(certified));
        self.read = read;
        Ok(true)
    }
}

/// The digest of the files' contents and the certificate they hold with its key.
fn load(cert: &Path, key: &Path) -> anyhow::Result<([u8; 32], CertifiedKey)> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    let certified = certified_key(cert, &cert_pem, key, &key_pem)?;
    Ok((digest(&cert_pem, &key_pem), certified))
}

/// The certificate file's contents and the key file's.
fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    Ok((cert_pem, key_pem))
}

/// SHA-256 of both files' contents, the first's length first.
fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update((cert_pem.len() as u64).to_be_bytes());
    hash.update(cert_pem);
    hash.update(key_pem);
    hash.finalize().into()
}

fn certified_key(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
    let private = PrivateKeyDer::from_pem_slice(key_pem).with_context(|| format!("parsing {}", key.display()))?;
    CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            anyhow::anyhow!("{} is not the key of the certificate in {}", key.display(), cert.display())
        }
        other => anyhow::anyhow!("the key in {}: {other}", key.display()),
    })
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

    /// A new certificate and key for `localhost`, as PEM.
    fn pair() -> (String, String, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem(), made.cert.der().to_vec())
    }

    fn served(reloader: &CertReloader) -> Vec<u8> {
        reloader.current.0.load().cert[0].to_vec()
    }

    /// A renewed pair is served once both files hold it; anything else keeps
    /// the certificate served before, and says why.
    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("gateway.crt"), dir.path().join("gateway.key"));
        let (first_pem, first_key, first_der) = pair();
        std::fs::write(&cert, &first_pem).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let (_, mut reloader) = acceptor(&TlsSource::Files { cert: cert.clone(), key: key.clone() }).unwrap();
        assert_eq!(served(&reloader), first_der);
        assert!(!reloader.check().unwrap(), "unchanged files are not loaded again");

        // Renewed: the certificate written first, then its key.
        let (second_pem, second_key, second_der) = pair();
        std::fs::write(&cert, &second_pem).unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("is not the key of the certificate"), "{e}");
        assert_eq!(served(&reloader), first_der, "a half-written renewal is not served");
        std::fs::write(&key, &second_key).unwrap();
        assert!(reloader.check().unwrap());
        assert_eq!(served(&reloader), second_der);

        std::fs::write(&cert, "not a certificate").unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("holds no PEM certificate"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("reading") && e.contains("gateway.key"), "{e}");
        assert_eq!(served(&reloader), second_der);
    }

    /// A certificate that does not match its key is refused at start, by name.
    #[test]
    fn a_mismatched_pair_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("gateway.crt"), dir.path().join("gateway.key"));
        let (first_pem, _, _) = pair();
        let (_, other_key, _) = pair();
        std::fs::write(&cert, first_pem).unwrap();
        std::fs::write(&key, other_key).unwrap();
        let Err(e) = acceptor(&TlsSource::Files { cert, key }) else { panic!("a mismatched pair was accepted") };
        assert!(format!("{e:#}").contains("is not the key of the certificate"), "{e:#}");
    }
}
