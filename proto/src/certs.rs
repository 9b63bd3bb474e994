//! A server certificate read from PEM files and served to every TLS handshake,
//! read again while the server runs: a renewed certificate (one that
//! cert-manager or an ACME client writes in place) is served from the next
//! handshake on, without a restart and without touching connections under
//! way. Every server of Airlock's serves its certificate this way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// How often a server reads its certificate files again, unless told otherwise.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The certificate and key in `cert` and `key`: what serves them to
/// handshakes (a rustls certificate resolver), and what keeps them current.
/// Fails, naming the file, when either cannot be read or parsed or the key is
/// not the certificate's.
pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<(Arc<dyn ResolvesServerCert>, CertReloader)> {
    let (read, certified) = load(cert, key)?;
    let current = Arc::new(CurrentCert(ArcSwap::from_pointee(certified)));
    let reloader = CertReloader { cert: cert.to_owned(), key: key.to_owned(), read, current: current.clone() };
    Ok((current, reloader))
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

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
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

    /// The DER of the certificate served now (its chain's first).
    pub fn served(&self) -> Vec<u8> {
        self.current.0.load().cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

/// The digest of the files' contents and the certificate they hold with its key.
fn load(cert: &Path, key: &Path) -> anyhow::Result<([u8; 32], CertifiedKey)> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    let certified = certified_key(cert, &cert_pem, key, &key_pem)?;
    Ok((digest(&cert_pem, &key_pem), certified))
}

/// The certificate file's contents and the key file's; the key file's bytes
/// are overwritten when dropped. (Best effort: the DER that rustls parses
/// them into, and keeps as the signing key, is not.)
fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = Zeroizing::new(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    /// A new certificate and key for `localhost`, as PEM.
    fn pair() -> (String, String, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem(), made.cert.der().to_vec())
    }

    /// A renewed pair is served once both files hold it; anything else keeps
    /// the certificate served before, and says why.
    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        let (first_pem, first_key, first_der) = pair();
        std::fs::write(&cert, &first_pem).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let (_, mut reloader) = from_files(&cert, &key).unwrap();
        assert_eq!(reloader.served(), first_der);
        assert!(!reloader.check().unwrap(), "unchanged files are not loaded again");

        // Renewed: the certificate written first, then its key.
        let (second_pem, second_key, second_der) = pair();
        std::fs::write(&cert, &second_pem).unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("is not the key of the certificate"), "{e}");
        assert_eq!(reloader.served(), first_der, "a half-written renewal is not served");
        std::fs::write(&key, &second_key).unwrap();
        assert!(reloader.check().unwrap());
        assert_eq!(reloader.served(), second_der);

        std::fs::write(&cert, "not a certificate").unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("holds no PEM certificate"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = format!("{:#}", reloader.check().unwrap_err());
        assert!(e.contains("reading") && e.contains("server.key"), "{e}");
        assert_eq!(reloader.served(), second_der);
    }

    /// A certificate that does not match its key is refused at start, by name.
    #[test]
    fn a_mismatched_pair_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        let (first_pem, _, _) = pair();
        let (_, other_key, _) = pair();
        std::fs::write(&cert, first_pem).unwrap();
        std::fs::write(&key, other_key).unwrap();
        let Err(e) = from_files(&cert, &key) else { panic!("a mismatched pair was accepted") };
        assert!(format!("{e:#}").contains("is not the key of the certificate"), "{e:#}");
    }
}
