//! Bounded HTTP fetches of issuers' discovery documents and key sets.
//!
//! Everything fetched here comes from an address a tenant configured, so it is
//! treated as hostile: plain HTTP is allowed only on loopback (where tests run
//! their issuers), redirects are not followed (a redirect could move the fetch
//! to plain HTTP or to an internal address), the whole request has a timeout,
//! and the body is read with a size limit rather than read whole and measured.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_LENGTH};
use serde::de::DeserializeOwned;

/// The largest discovery document or key set read. Real ones are a few KiB.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

pub(crate) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the HTTP client")
}

/// Parses `url` and checks it may be fetched: https, or http to a loopback host.
pub(crate) fn fetchable_url(url: &str) -> anyhow::Result<Url> {
    let parsed = Url::parse(url).with_context(|| format!("{url} is not a valid URL"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => bail!("{url} must use https (plain http is only allowed on loopback)"),
        other => bail!("{url} has unsupported scheme {other}"),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // IPv6 hosts come bracketed: `[::1]`.
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// GETs `url` and parses the body as JSON, reading at most [`MAX_BODY_BYTES`].
pub(crate) async fn get_json<T: DeserializeOwned>(client: &reqwest::Client, url: &Url) -> anyhow::Result<T> {
    let mut response = client
        .get(url.clone())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .with_context(|| format!("failed to GET {url}"))?;
    let status = response.status();
    ensure!(status.is_success(), "GET {url} answered {status}");
    let declared =
        response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared {
        ensure!(declared <= MAX_BODY_BYTES as u64, "GET {url}: body of {declared} bytes exceeds {MAX_BODY_BYTES}");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("failed to read the body of {url}"))? {
        ensure!(body.len() + chunk.len() <= MAX_BODY_BYTES, "GET {url}: body exceeds {MAX_BODY_BYTES} bytes");
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: body is not the expected JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_fetchable() {
        for ok in [
            "https://token.actions.githubusercontent.com",
            "http://127.0.0.1:8080",
            "http://127.0.0.2/x",
            "http://localhost:1234/realms/a",
            "http://[::1]:9000",
        ] {
            assert!(fetchable_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://example.com", "http://10.0.0.1", "ftp://127.0.0.1", "file:///etc/passwd", "not a url"] {
            assert!(fetchable_url(bad).is_err(), "{bad}");
        }
    }
}
