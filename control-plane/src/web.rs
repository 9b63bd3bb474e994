//! Serves the web console (`web/` at the repository root): a few static files,
//! embedded in the binary, each with its content type and a strict
//! Content-Security-Policy (scripts, styles and requests from this origin only;
//! no inline script or style, no framing).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Sent with every file of the console.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

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
    Asset { path: "/inbox.js", content_type: JS, body: include_str!("../../web/inbox.js") },
    Asset { path: "/sessions.js", content_type: JS, body: include_str!("../../web/sessions.js") },
    Asset { path: "/session.js", content_type: JS, body: include_str!("../../web/session.js") },
    Asset { path: "/config.js", content_type: JS, body: include_str!("../../web/config.js") },
];

/// The console's routes; they read no state, so they merge into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| router.route(asset.path, get(move || serve(asset))))
}

async fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            // Small files, embedded: revalidate every time, so an upgrade is seen at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
        ],
        asset.body,
    )
        .into_response()
}
