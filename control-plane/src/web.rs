//! Serves the web console (`web/` at the repository root): a few static files,
//! embedded in the binary, each with its content type and a strict
//! Content-Security-Policy (scripts, styles and requests from this origin only,
//! plus requests to the console's OIDC provider when one is configured; no
//! inline script or style, no framing), and `/console/config.json`, what the
//! console needs to know before anyone signs in.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

/// The policy sent with every file of the console when no OIDC provider is
/// configured; [`ConsoleOptions::content_security_policy`] adds the
/// provider's origin to `connect-src`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The console's settings (`[console]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOptions {
    /// The provider the console signs in with; `None`: a pasted token only.
    pub oidc: Option<ConsoleOidc>,
}

/// An OIDC provider the console signs in with as a public client: the
/// authorization code flow with PKCE, no client secret. The browser talks to
/// the provider itself (discovery and the token endpoint), so the provider
/// must allow the console's origin (CORS), as providers do for single-page
/// applications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOidc {
    /// The issuer URL, exactly as its tokens' `iss` (discovery is under it).
    pub issuer: String,
    pub client_id: String,
    /// Space-separated; `openid` is required.
    pub scopes: String,
}

impl ConsoleOptions {
    /// Checks the settings: an `http(s)` issuer with no user, query or
    /// fragment; a client id; scopes that include `openid`.
    pub fn validate(&self) -> Result<(), String> {
        let Some(oidc) = &self.oidc else { return Ok(()) };
        issuer_origin(&oidc.issuer)?;
        if oidc.client_id.trim().is_empty() {
            return Err("console.oidc_client_id must be set with console.oidc_issuer".into());
        }
        if !oidc.scopes.split_ascii_whitespace().any(|s| s == "openid") {
            return Err(format!("console.oidc_scopes must include openid (it is {:?})", oidc.scopes));
        }
        Ok(())
    }

    /// The Content-Security-Policy of the console's files: [`CONTENT_SECURITY_POLICY`]
    /// with the provider's origin allowed in `connect-src`, and nowhere else.
    pub fn content_security_policy(&self) -> Result<String, String> {
        match &self.oidc {
            None => Ok(CONTENT_SECURITY_POLICY.to_owned()),
            Some(oidc) => {
                let origin = issuer_origin(&oidc.issuer)?;
                Ok(CONTENT_SECURITY_POLICY.replace("connect-src 'self';", &format!("connect-src 'self' {origin};")))
            }
        }
    }

    /// `/console/config.json`: `{"oidc": {"issuer", "client_id", "scopes"} | null}`.
    pub fn public_config(&self) -> serde_json::Value {
        serde_json::json!({ "oidc": self.oidc })
    }
}

/// `scheme://host[:port]` of an issuer URL, as a CSP source. Refuses anything
/// a policy header could be bent by (the `http` crate's URI parser allows no
/// space, quote, `;` or `,` in an authority) and URLs with user info, a
/// query or a fragment, which no issuer has.
pub fn issuer_origin(issuer: &str) -> Result<String, String> {
    let bad = |why: &str| format!("console.oidc_issuer {issuer:?} {why}");
    let uri: Uri = issuer.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("https" | "http")) => s,
        _ => return Err(bad("must be an http(s) URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry a user name"));
    }
    if uri.query().is_some() || issuer.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    if authority.as_str().chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))) {
        return Err(bad("has a host a Content-Security-Policy cannot name"));
    }
    Ok(format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

/// A file of the console: where it is served, its type, and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../../web/index.html") },
    Asset { path: "/app.css", content_type: "text/css; charset=utf-8", body: include_str!("../../web/app.css") },
    Asset { path: "/favicon.svg", content_type: "image/svg+xml", body: include_str!("../../web/favicon.svg") },
    Asset { path: "/app.js", content_type: JS, body: include_str!("../../web/app.js") },
    Asset { path: "/api.js", content_type: JS, body: include_str!("../../web/api.js") },
    Asset { path: "/auth.js", content_type: JS, body: include_str!("../../web/auth.js") },
    Asset { path: "/dom.js", content_type: JS, body: include_str!("../../web/dom.js") },
    Asset { path: "/format.js", content_type: JS, body: include_str!("../../web/format.js") },
    Asset { path: "/login.js", content_type: JS, body: include_str!("../../web/login.js") },
    Asset { path: "/oidc.js", content_type: JS, body: include_str!("../../web/oidc.js") },
    Asset { path: "/inbox.js", content_type: JS, body: include_str!("../../web/inbox.js") },
    Asset { path: "/sessions.js", content_type: JS, body: include_str!("../../web/sessions.js") },
    Asset { path: "/session.js", content_type: JS, body: include_str!("../../web/session.js") },
    Asset { path: "/config.js", content_type: JS, body: include_str!("../../web/config.js") },
];

/// The console's routes; they read no state, so they merge into any router.
/// Fails when `console` is not valid ([`ConsoleOptions::validate`]).
pub fn router<S: Clone + Send + Sync + 'static>(console: &ConsoleOptions) -> Result<Router<S>, String> {
    console.validate()?;
    let csp = console.content_security_policy()?;
    let csp =
        HeaderValue::from_str(&csp).map_err(|e| format!("the Content-Security-Policy is not a header value: {e}"))?;
    let config = Bytes::from(console.public_config().to_string());
    let config_csp = csp.clone();
    let router = ASSETS.iter().fold(Router::new(), |router, asset| {
        let csp = csp.clone();
        router.route(asset.path, get(move || serve(asset.content_type, Bytes::from_static(asset.body.as_bytes()), csp)))
    });
    Ok(router.route("/console/config.json", get(move || serve("application/json", config.clone(), config_csp))))
}

async fn serve(content_type: &'static str, body: Bytes, csp: HeaderValue) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            // Small files, embedded: revalidate every time, so an upgrade is seen at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn oidc(issuer: &str) -> ConsoleOptions {
        ConsoleOptions {
            oidc: Some(ConsoleOidc {
                issuer: issuer.into(),
                client_id: "airlock-console".into(),
                scopes: "openid profile email".into(),
            }),
        }
    }

    #[test]
    fn the_policy_allows_the_provider_for_requests_only() {
        assert_eq!(ConsoleOptions::default().content_security_policy().unwrap(), CONTENT_SECURITY_POLICY);
        let csp = oidc("https://Login.Example.com/tenant/v2.0").content_security_policy().unwrap();
        assert!(csp.contains("connect-src 'self' https://login.example.com;"), "{csp}");
        assert_eq!(csp.matches("example.com").count(), 1, "{csp}");
        assert!(csp.contains("form-action 'self'") && csp.contains("script-src 'self';"), "{csp}");
        let csp = oidc("http://127.0.0.1:5556").content_security_policy().unwrap();
        assert!(csp.contains("connect-src 'self' http://127.0.0.1:5556;"), "{csp}");
    }

    #[test]
    fn issuers_that_would_bend_the_policy_are_refused() {
        for issuer in [
            "login.example.com",
            "ftp://login.example.com",
            "https://a.example.com; script-src *",
            "https://a.example.com,b",
            "https://user@a.example.com",
            "https://a.example.com/?x=1",
            "https://a.example.com/#x",
            "https://*.example.com",
            "'self'",
        ] {
            assert!(oidc(issuer).validate().is_err(), "{issuer} was accepted");
        }
        let mut no_client = oidc("https://a.example.com");
        if let Some(o) = no_client.oidc.as_mut() {
            o.client_id = " ".into();
        }
        assert!(no_client.validate().is_err());
        let mut no_openid = oidc("https://a.example.com");
        if let Some(o) = no_openid.oidc.as_mut() {
            o.scopes = "profile email".into();
        }
        assert!(no_openid.validate().is_err());
    }
}
