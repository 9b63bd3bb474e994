//! The web console's files as the control plane serves them: each one the page
//! loads is there, with its content type and a Content-Security-Policy that
//! allows no inline script and nothing from another origin.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use std::collections::BTreeSet;

use harness::{Backend, Harness};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Served {
    status: u16,
    content_type: String,
    csp: String,
    nosniff: bool,
    body: String,
}

async fn fetch(h: &Harness, path: &str) -> Served {
    let r = reqwest::get(format!("{}{path}", h.base)).await.unwrap();
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    Served {
        status: r.status().as_u16(),
        content_type: header("content-type"),
        csp: header("content-security-policy"),
        nosniff: header("x-content-type-options") == "nosniff",
        body: r.text().await.unwrap(),
    }
}

/// The values of `attr="..."` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The modules a script imports (`from "./x.js"`), as paths from the root.
fn imports(js: &str) -> Vec<String> {
    js.match_indices("from \"./")
        .map(|(i, _)| {
            let rest = &js[i + "from \"./".len()..];
            format!("/{}", &rest[..rest.find('"').unwrap()])
        })
        .collect()
}

#[tokio::test]
async fn the_console_is_served_with_its_types_and_a_strict_content_security_policy() {
    let h = Harness::start(Backend::Sqlite).await;

    let index = fetch(&h, "/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.content_type, "text/html; charset=utf-8");
    assert_eq!(index.csp, CSP);
    assert!(index.nosniff);
    assert!(!index.csp.contains("unsafe"), "{}", index.csp);
    // No inline script or style: every script has a src, no style element, no handler attribute.
    assert_eq!(index.body.matches("<script").count(), index.body.matches("<script type=\"module\" src=").count());
    assert!(!index.body.contains("<style"), "inline style in index.html");
    assert!(!index.body.contains(" onclick="), "inline handler in index.html");

    // Everything the page loads, and every module those modules import.
    let mut pending: Vec<String> = attribute_values(&index.body, "src");
    pending.extend(attribute_values(&index.body, "href").into_iter().filter(|h| h.starts_with('/')));
    let mut seen = BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let file = fetch(&h, &path).await;
        assert_eq!(file.status, 200, "{path}");
        assert_eq!(file.csp, CSP, "{path}");
        assert!(file.nosniff, "{path}");
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => panic!("unexpected file {path}"),
        };
        assert_eq!(file.content_type, expected, "{path}");
        if path.ends_with(".js") {
            assert!(!file.body.contains("innerHTML"), "{path} builds markup from strings");
            pending.extend(imports(&file.body));
        }
    }
    for module in ["/app.js", "/inbox.js", "/sessions.js", "/session.js", "/login.js", "/oidc.js", "/config.js"] {
        assert!(seen.contains(module), "{module} is not loaded: {seen:?}");
    }

    // Nothing else is served from the console's place.
    let missing = fetch(&h, "/nope.js").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_console_config_names_no_provider_by_default() {
    let h = Harness::start(Backend::Sqlite).await;
    let config = fetch(&h, "/console/config.json").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.content_type, "application/json");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&config.body).unwrap(), serde_json::json!({"oidc": null}));
    assert_eq!(config.csp, CSP);
}

#[tokio::test]
async fn the_console_config_names_its_oidc_provider_unauthenticated_and_the_policy_allows_it() {
    use airlock_control_plane::web::{ConsoleOidc, ConsoleOptions};
    let console = ConsoleOptions {
        oidc: Some(ConsoleOidc {
            issuer: "https://login.example.com/tenant-1/v2.0".into(),
            client_id: "airlock-console".into(),
            scopes: "openid profile email groups".into(),
        }),
    };
    let h = Harness::start_console(
        Backend::Sqlite,
        std::sync::Arc::new(airlock_proto::bus::MemoryBus::new()),
        airlock_core::clock::system(),
        console,
    )
    .await;
    // No bearer token: the login page reads it before anyone signs in.
    let config = fetch(&h, "/console/config.json").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.content_type, "application/json");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&config.body).unwrap(),
        serde_json::json!({"oidc": {
            "issuer": "https://login.example.com/tenant-1/v2.0",
            "client_id": "airlock-console",
            "scopes": "openid profile email groups",
        }})
    );
    // The provider's origin may be fetched (discovery, the token endpoint), nothing else changes.
    let expected = CSP.replace("connect-src 'self';", "connect-src 'self' https://login.example.com;");
    for path in ["/", "/app.js", "/login.js", "/console/config.json"] {
        assert_eq!(fetch(&h, path).await.csp, expected, "{path}");
    }
}
