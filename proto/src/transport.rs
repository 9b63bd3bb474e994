//! TLS for Airlock's own APIs. The control plane's worker API carries the
//! worker token and the targets' admin credentials; the recorder's carries
//! every recorded session's bytes; the REST API carries admin and access
//! tokens and connection credentials. None goes across a network in the clear
//! unless an operator says the network itself encrypts.
//!
//! A server serves TLS when it has a certificate and key. Without them it
//! refuses to listen anywhere but on loopback. A client speaks TLS to an
//! `https://` URL, checking the server's certificate against the configured
//! CA certificates or else the system's roots, and refuses an `http://` URL
//! that leaves the machine. `cleartext_off_loopback` lifts both refusals, for
//! a network that encrypts on its own (a service mesh, a proxy beside the
//! server that terminates TLS).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use std::sync::Arc;

use crate::certs::CertReloader;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A server's certificate chain and private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ServerTls {
    /// Both files or neither: `what` names the settings in errors.
    pub fn from_files(what: &str, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert_file: cert.to_owned(), key_file: key.to_owned() })),
            (None, None) => Ok(None),
            _ => anyhow::bail!("{what}: set both the TLS certificate file and the key file, or neither"),
        }
    }

    /// A rustls server configuration serving this certificate and key,
    /// offering the ALPN protocols `alpn` (none: no protocol is negotiated),
    /// and what serves a renewal of the files from the next handshake on
    /// (see [`certs`](crate::certs)), once run.
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> anyhow::Result<(Arc<rustls::ServerConfig>, CertReloader)> {
        let (resolver, reloader) = crate::certs::from_files(&self.cert_file, &self.key_file)?;
        let mut config = server_config_builder()?.with_cert_resolver(resolver);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok((Arc::new(config), reloader))
    }
}

/// What every rustls server configuration Airlock builds (the REST and gRPC
/// APIs', the recorder's, the Postgres gateway's) starts from, whatever its
/// certificate: rustls's ring provider, TLS 1.2 and 1.3, no client
/// certificates.
pub fn server_config_builder()
-> anyhow::Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth())
}

/// Refuses a cleartext server anywhere but on loopback, unless allowed.
/// `carries` says what would cross the network readable.
fn cleartext_allowed(
    what: &str,
    settings: &str,
    addr: SocketAddr,
    cleartext_off_loopback: bool,
    carries: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || cleartext_off_loopback,
        "{what} would listen on {addr} ({settings}addr) without TLS, and what it carries ({carries}) would \
         cross the network readable; set {settings}tls_cert_file and {settings}tls_key_file, or \
         {settings}cleartext_off_loopback = true where the network encrypts on its own"
    );
    Ok(())
}

/// The TLS a gRPC server listening on `addr` serves, offering the ALPN
/// protocols `alpn` (`h2`, and `http/1.1` for a server that answers health
/// checks over it), with what serves its renewed certificate; or `None` for
/// cleartext, which is allowed only on loopback or with cleartext off
/// loopback allowed. `what` names the server; `settings` is the prefix of its
/// settings (`api.grpc_`, `recorder.`), for errors that say what to set.
pub fn server_tls(
    what: &str,
    settings: &str,
    addr: SocketAddr,
    tls: Option<&ServerTls>,
    cleartext_off_loopback: bool,
    alpn: &[&[u8]],
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, CertReloader)>> {
    match tls {
        Some(tls) => tls.rustls_config(alpn).map(Some).with_context(|| format!("{what}: loading its TLS certificate")),
        None => {
            let carries = "the worker token, target credentials, session bytes";
            cleartext_allowed(what, settings, addr, cleartext_off_loopback, carries).map(|()| None)
        }
    }
}

/// The TLS the REST API (and the web console beside it) serves on `addr`,
/// with what serves its renewed certificate, or `None` for cleartext, on the
/// terms of [`server_tls`]. HTTP/2 and HTTP/1.1 are offered.
pub fn rest_server_tls(
    addr: SocketAddr,
    tls: Option<&ServerTls>,
    cleartext_off_loopback: bool,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, CertReloader)>> {
    match tls {
        Some(tls) => {
            tls.rustls_config(&[b"h2", b"http/1.1"]).map(Some).context("the REST API: loading its TLS certificate")
        }
        None => {
            let carries = "admin and access tokens, connection credentials";
            cleartext_allowed("the REST API", "api.", addr, cleartext_off_loopback, carries).map(|()| None)
        }
    }
}

/// How a worker reaches Airlock's gRPC services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM) that `https://` servers' certificates must chain
    /// to. `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when not the URL's host.
    pub server_name: Option<String>,
    /// Allows `http://` to a host other than this machine.
    pub cleartext_off_loopback: bool,
}

/// An endpoint for `url`: TLS for `https://`, cleartext for `http://` only to
/// this machine unless allowed. `what` names the setting in errors.
pub fn endpoint(what: &str, url: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("{what} is not a URL: {url}"))?;
    let host = endpoint.uri().host().unwrap_or_default().to_owned();
    let scheme = endpoint.uri().scheme_str().map(str::to_owned);
    match scheme.as_deref() {
        Some("https") => {
            let config = match &tls.ca_file {
                Some(path) => ClientTlsConfig::new().trust_anchors(ca_file_roots(path)?.roots),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            let name = tls.server_name.as_deref().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']'));
            endpoint.tls_config(config.domain_name(name)).with_context(|| format!("{what}: TLS settings for {url}"))
        }
        Some("http") if is_loopback_ip(&host) || tls.cleartext_off_loopback => Ok(endpoint),
        Some("http") => anyhow::bail!(
            "{what} is {url}: cleartext gRPC to another machine would carry the worker token, target \
             credentials and session bytes readable; use https://, or set \
             worker.grpc_cleartext_off_loopback = true where the network encrypts on its own (only a \
             loopback address, such as 127.0.0.1, counts as this machine)"
        ),
        _ => anyhow::bail!("{what} must be an http:// or https:// URL: {url}"),
    }
}

/// The certificates of a PEM file as trust anchors, each checked to parse: a
/// file that holds none, or a damaged one, is an error at start rather than
/// a trust store that refuses every server later. For Airlock's gRPC and for
/// targets' TLS alike.
pub fn ca_file_roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!ders.is_empty(), "{} holds no PEM certificate", path.display());
    let mut roots = rustls::RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(ders);
    anyhow::ensure!(unusable == 0, "{}: {unusable} of its certificates cannot be read", path.display());
    Ok(roots)
}

/// A literal loopback address (`[::1]` as a URL writes it). Not the name
/// `localhost`, which resolves as the resolver says.
pub fn is_loopback_ip(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_stays_on_this_machine_unless_allowed() {
        let strict = ClientTls::default();
        for url in ["http://127.0.0.1:8081", "http://[::1]:8081", "http://127.9.9.9:1"] {
            endpoint("worker.control_plane_url", url, &strict).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        }
        // A name is not an address: `localhost` resolves as the resolver says.
        for url in [
            "http://10.0.0.5:8081",
            "http://airlock-control-plane:8081",
            "http://0.0.0.0:8081",
            "http://localhost:8081",
            "http://[::ffff:127.0.0.1]:8081",
        ] {
            let err = endpoint("worker.control_plane_url", url, &strict).unwrap_err().to_string();
            assert!(err.contains("worker.control_plane_url is") && err.contains("https://"), "{url}: {err}");
        }
        let mesh = ClientTls { cleartext_off_loopback: true, ..ClientTls::default() };
        endpoint("worker.control_plane_url", "http://airlock-control-plane:8081", &mesh).unwrap();
        let err = endpoint("x", "ftp://h:1", &strict).unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn servers_listen_in_cleartext_only_on_loopback_unless_allowed() {
        let loopback: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert!(server_tls("the gRPC API", "api.grpc_", loopback, None, false, &[]).unwrap().is_none());
        let err = server_tls("the gRPC API", "api.grpc_", everywhere, None, false, &[]).unwrap_err().to_string();
        assert!(err.contains("would listen on 0.0.0.0:8081 (api.grpc_addr) without TLS"), "{err}");
        assert!(err.contains("set api.grpc_tls_cert_file and api.grpc_tls_key_file"), "{err}");
        assert!(server_tls("the gRPC API", "api.grpc_", everywhere, None, true, &[]).unwrap().is_none());
        // The REST API likewise, under its own settings.
        assert!(rest_server_tls(loopback, None, false).unwrap().is_none());
        let err = rest_server_tls(everywhere, None, false).unwrap_err().to_string();
        assert!(err.contains("the REST API would listen on 0.0.0.0:8081 (api.addr) without TLS"), "{err}");
        assert!(err.contains("(admin and access tokens, connection credentials)"), "{err}");
        assert!(err.contains("set api.tls_cert_file and api.tls_key_file, or api.cleartext_off_loopback"), "{err}");
        assert!(rest_server_tls(everywhere, None, true).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_empty_certificate_is_named_at_start() {
        let dir = std::env::temp_dir().join(format!("airlock-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let tls = ClientTls { ca_file: Some(empty.clone()), ..ClientTls::default() };
        let err = endpoint("x", "https://cp:8081", &tls).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let damaged = dir.join("damaged.pem");
        std::fs::write(&damaged, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let tls = ClientTls { ca_file: Some(damaged), ..ClientTls::default() };
        let err = endpoint("x", "https://cp:8081", &tls).unwrap_err().to_string();
        assert!(err.contains("1 of its certificates cannot be read"), "{err}");
        let tls = ClientTls { ca_file: Some(dir.join("missing.pem")), ..ClientTls::default() };
        let err = format!("{:#}", endpoint("x", "https://cp:8081", &tls).unwrap_err());
        assert!(err.contains("missing.pem"), "{err}");
        let server = ServerTls { cert_file: dir.join("missing.crt"), key_file: empty };
        let err = format!(
            "{:#}",
            server_tls("the recorder", "recorder.", "0.0.0.0:1".parse().unwrap(), Some(&server), false, &[])
                .unwrap_err()
        );
        assert!(err.contains("the recorder: loading its TLS certificate") && err.contains("missing.crt"), "{err}");
        let err = format!("{:#}", rest_server_tls("0.0.0.0:1".parse().unwrap(), Some(&server), false).unwrap_err());
        assert!(err.contains("the REST API: loading its TLS certificate") && err.contains("missing.crt"), "{err}");
        let no_certificate = ServerTls { cert_file: server.key_file.clone(), key_file: server.key_file.clone() };
        let err = format!("{:#}", no_certificate.rustls_config(&[]).unwrap_err());
        assert!(err.contains("empty.pem holds no PEM certificate"), "{err}");
        assert!(ServerTls::from_files("api", Some(Path::new("c")), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
