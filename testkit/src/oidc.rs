//! A real OIDC issuer on `127.0.0.1:0`, for tests of token verification and of
//! signing in through a provider.
//!
//! It serves `/.well-known/openid-configuration` and `/jwks` over plain HTTP
//! (allowed on loopback), signs RS256 tokens with one current key, rotates to a
//! new key (the old one disappears from `/jwks`), counts `/jwks` fetches, and
//! forges the tokens an attacker would send: `alg: none`, HS256 keyed with the
//! issuer's RSA public key, a payload swapped under a valid signature.
//!
//! It is also an authorization server for public clients (RFC 6749 §4.1 with
//! PKCE, RFC 7636, S256 only): `/authorize` signs in the user the test chose
//! ([`OidcIssuer::sign_in_as`]) with no page to click through, or answers
//! `error=access_denied`, and `/token` trades a code, once, for an ID token,
//! checking the request as a provider does (form encoding, grant type, client,
//! redirect URI, verifier). Its responses carry `Access-Control-Allow-Origin: *`
//! so that a browser may call it from another origin.
//!
//! RSA key generation is slow in debug builds, so the keys are pre-generated,
//! test-only PEM files in `testkit/testdata/` (never use them for anything else).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_core::IssuerId;
use airlock_core::event::TrustedIssuer;
use airlock_core::principal::PrincipalKind;
use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The audience of the tokens [`OidcIssuer::claims`] makes, and of
/// [`OidcIssuer::trusted_issuer`].
pub const AUDIENCE: &str = "airlock-test";

/// Test-only RSA-2048 keys, used in turn as the issuer rotates.
const KEY_PEMS: [&str; 3] = [
    include_str!("../testdata/oidc-rsa-1.pem"),
    include_str!("../testdata/oidc-rsa-2.pem"),
    include_str!("../testdata/oidc-rsa-3.pem"),
];

/// How the RSA public key is turned into an HMAC secret by a key-confusion
/// forgery: the bytes a naive verifier might have lying around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyBytes {
    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), as PEM text.
    SpkiPem,
    /// SubjectPublicKeyInfo, DER.
    SpkiDer,
    /// `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1), as PEM text.
    Pkcs1Pem,
    /// PKCS#1, DER.
    Pkcs1Der,
}

#[derive(Clone)]
struct IssuerKey {
    kid: String,
    encoding: EncodingKey,
    public: RsaPublicKey,
}

impl IssuerKey {
    fn load(index: usize) -> anyhow::Result<Self> {
        let pem = KEY_PEMS.get(index % KEY_PEMS.len()).context("no test key")?;
        let private = RsaPrivateKey::from_pkcs8_pem(pem).context("failed to read a test RSA key")?;
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).context("failed to load a test RSA key")?;
        Ok(Self { kid: format!("test-key-{}", uuid::Uuid::new_v4()), encoding, public: private.to_public_key() })
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
        })
    }
}

struct Shared {
    url: String,
    current: Mutex<IssuerKey>,
    rotations: AtomicUsize,
    extra_jwks: Mutex<Vec<Value>>,
    discovery_issuer: Mutex<Option<String>>,
    jwks_fetches: Arc<AtomicU64>,
    /// Registered clients: client id → its one redirect URI.
    clients: Mutex<HashMap<String, String>>,
    /// Who `/authorize` signs in; `None`: the user refuses (`access_denied`).
    user: Mutex<Option<TestUser>>,
    /// Codes not yet traded.
    codes: Mutex<HashMap<String, IssuedCode>>,
}

/// The user the issuer signs in at `/authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub subject: String,
    pub groups: Vec<String>,
    pub email: String,
}

/// What an authorization code was issued for, checked when it is traded.
#[derive(Debug, Clone)]
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    user: TestUser,
}

/// A running test issuer. Dropping it stops the server.
pub struct OidcIssuer {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl OidcIssuer {
    /// Starts an issuer on `127.0.0.1:0`; its URL is [`OidcIssuer::url`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("failed to bind")?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            url,
            current: Mutex::new(IssuerKey::load(0)?),
            rotations: AtomicUsize::new(0),
            extra_jwks: Mutex::new(Vec::new()),
            discovery_issuer: Mutex::new(None),
            jwks_fetches: Arc::new(AtomicU64::new(0)),
            clients: Mutex::new(HashMap::new()),
            user: Mutex::new(None),
            codes: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .layer(axum::middleware::map_response(allow_any_origin))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("test OIDC issuer stopped: {e:#}");
            }
        });
        Ok(Self { shared, server })
    }

    /// The issuer URL: the `iss` of its tokens.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// How many times `/jwks` was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The fetch counter itself, to read from other tasks.
    pub fn jwks_fetch_counter(&self) -> Arc<AtomicU64> {
        self.shared.jwks_fetches.clone()
    }

    /// The `kid` of the current key.
    pub fn kid(&self) -> String {
        self.current().kid
    }

    /// Switches to a new key with a new `kid`; the old key is no longer
    /// published. Returns the new `kid`.
    pub fn rotate(&self) -> String {
        let n = self.shared.rotations.fetch_add(1, Ordering::SeqCst) + 1;
        let key = IssuerKey::load(n).unwrap_or_else(|e| panic!("{e:#}"));
        let kid = key.kid.clone();
        *self.shared.current.lock().unwrap_or_else(PoisonError::into_inner) = key;
        kid
    }

    /// The JWK of the current key, as `/jwks` publishes it.
    pub fn current_jwk(&self) -> Value {
        self.current().jwk()
    }

    /// Publishes an extra raw JWK next to the current key.
    pub fn add_jwk(&self, jwk: Value) {
        self.shared.extra_jwks.lock().unwrap_or_else(PoisonError::into_inner).push(jwk);
    }

    /// Makes the discovery document name another `issuer` (or the real one again).
    pub fn set_discovery_issuer(&self, issuer: Option<String>) {
        *self.shared.discovery_issuer.lock().unwrap_or_else(PoisonError::into_inner) = issuer;
    }

    /// Registers a public client and the one redirect URI `/authorize` sends
    /// its users back to.
    pub fn register_client(&self, client_id: &str, redirect_uri: &str) {
        lock(&self.shared.clients).insert(client_id.to_owned(), redirect_uri.to_owned());
    }

    /// Makes `/authorize` sign in `user` from now on; `None`: the user
    /// refuses, and the client is sent back `error=access_denied`.
    pub fn sign_in_as(&self, user: Option<TestUser>) {
        *lock(&self.shared.user) = user;
    }

    /// How many codes were issued and not traded.
    pub fn outstanding_codes(&self) -> usize {
        lock(&self.shared.codes).len()
    }

    /// This issuer as a tenant would trust it: audience [`AUDIENCE`], subject
    /// from `sub`, groups from `groups`, workloads. Change fields as needed.
    pub fn trusted_issuer(&self) -> TrustedIssuer {
        TrustedIssuer {
            id: IssuerId::new(),
            name: "test-issuer".into(),
            issuer_url: self.url().to_owned(),
            audience: AUDIENCE.into(),
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            principal_kind: PrincipalKind::Workload,
        }
    }

    /// Valid claims for `subject`: this `iss`, [`AUDIENCE`], issued now,
    /// expiring in five minutes.
    pub fn claims(&self, subject: &str) -> Value {
        let now = now_unix();
        json!({ "iss": self.url(), "aud": AUDIENCE, "sub": subject, "iat": now, "nbf": now, "exp": now + 300 })
    }

    /// `claims` signed RS256 with the current key.
    pub fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid());
        self.token_with_header(&header, claims)
    }

    /// `claims` signed with the current key under `header` (whose `alg` must be
    /// an RSA algorithm; its `kid` is used as given).
    pub fn token_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.current().encoding).unwrap_or_else(|e| panic!("failed to sign: {e}"))
    }

    /// The forgery of CVE-2015-9235 and kin: HS256 with the issuer's RSA public
    /// key as the HMAC secret, and the current `kid`.
    pub fn hs256_signed_with_public_key(&self, claims: &Value, bytes: PublicKeyBytes) -> String {
        let secret = self.public_key_bytes(bytes);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret))
            .unwrap_or_else(|e| panic!("failed to sign: {e}"))
    }

    /// The current public key in one of its encodings.
    pub fn public_key_bytes(&self, bytes: PublicKeyBytes) -> Vec<u8> {
        let public = self.current().public;
        let encoded = match bytes {
            PublicKeyBytes::SpkiPem => {
                public.to_public_key_pem(LineEnding::LF).map(String::into_bytes).map_err(|e| e.to_string())
            }
            PublicKeyBytes::SpkiDer => public.to_public_key_der().map(|d| d.into_vec()).map_err(|e| e.to_string()),
            PublicKeyBytes::Pkcs1Pem => {
                public.to_pkcs1_pem(LineEnding::LF).map(String::into_bytes).map_err(|e| e.to_string())
            }
            PublicKeyBytes::Pkcs1Der => public.to_pkcs1_der().map(|d| d.into_vec()).map_err(|e| e.to_string()),
        };
        encoded.unwrap_or_else(|e| panic!("failed to encode the public key: {e}"))
    }

    /// A token presenting `presented` claims under a valid signature over `signed`.
    pub fn tampered_token(&self, signed: &Value, presented: &Value) -> String {
        let token = self.token(signed);
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("jsonwebtoken made a token without three parts");
        };
        format!("{header}.{}.{signature}", b64_json(presented))
    }

    fn current(&self) -> IssuerKey {
        self.shared.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// An unsigned token: `{"alg":"none"}`, the claims, and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    assemble(&json!({"alg": "none", "typ": "JWT"}), claims, b"")
}

/// A compact JWS from any header, claims and signature bytes, for forgeries
/// no library will produce.
pub fn assemble(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64_json(header), b64_json(claims), URL_SAFE_NO_PAD.encode(signature))
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Seconds since the epoch.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let issuer = lock(&shared.discovery_issuer).clone().unwrap_or(shared.url.clone());
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", shared.url),
        "authorization_endpoint": format!("{}/authorize", shared.url),
        "token_endpoint": format!("{}/token", shared.url),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "subject_types_supported": ["public"],
    }))
}

async fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `BASE64URL(SHA-256(verifier))`, the S256 code challenge (RFC 7636 §4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is a code verifier (43 to 128 unreserved characters,
/// RFC 7636 §4.1) whose S256 challenge is `challenge`.
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && s256_challenge(verifier) == challenge
}

/// `base` with `params` added to its query.
fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", query.finish())
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `GET /authorize` (RFC 6749 §4.1.1, OIDC Core §3.1.2.1). An unknown client
/// or a redirect URI not registered for it is answered here (400), never
/// redirected to; every other problem goes back to the client as `error=`.
async fn authorize(State(shared): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let param = |name: &str| q.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(client_id), Some(redirect_uri)) = (param("client_id"), param("redirect_uri")) else {
        return (StatusCode::BAD_REQUEST, "client_id and redirect_uri are required").into_response();
    };
    if lock(&shared.clients).get(client_id).map(String::as_str) != Some(redirect_uri) {
        return (StatusCode::BAD_REQUEST, "unknown client, or a redirect_uri not registered for it").into_response();
    }
    let state = param("state").unwrap_or_default();
    let back = |params: &[(&str, &str)]| {
        let mut params = params.to_vec();
        if !state.is_empty() {
            params.push(("state", state));
        }
        Redirect::to(&with_query(redirect_uri, &params)).into_response()
    };
    let invalid = |why: &str| back(&[("error", "invalid_request"), ("error_description", why)]);
    if param("response_type") != Some("code") {
        return back(&[("error", "unsupported_response_type")]);
    }
    if !param("scope").is_some_and(|s| s.split(' ').any(|s| s == "openid")) {
        return back(&[("error", "invalid_scope"), ("error_description", "openid is required")]);
    }
    if param("code_challenge_method") != Some("S256") {
        return invalid("code_challenge_method must be S256");
    }
    let Some(code_challenge) = param("code_challenge").filter(|c| c.len() == 43) else {
        return invalid("code_challenge must be a base64url SHA-256");
    };
    let Some(user) = lock(&shared.user).clone() else {
        return back(&[("error", "access_denied"), ("error_description", "the user refused")]);
    };
    let code = random_token();
    lock(&shared.codes).insert(
        code.clone(),
        IssuedCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: code_challenge.to_owned(),
            nonce: param("nonce").map(str::to_owned),
            user,
        },
    );
    back(&[("code", &code)])
}

/// An OAuth error response of the token endpoint (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(json!({"error": error, "error_description": description})))
        .into_response()
}

/// `POST /token` (RFC 6749 §4.1.3, RFC 7636 §4.5): form-encoded, public
/// client (no secret), the code traded once whatever the outcome.
async fn token(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap, body: String) -> Response {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim() == "application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the body must be form-encoded");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let param = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if param("grant_type") != "authorization_code" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only authorization_code");
    }
    let Some(issued) = lock(&shared.codes).remove(param("code")) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code");
    };
    if issued.client_id != param("client_id") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code was issued to another client");
    }
    if issued.redirect_uri != param("redirect_uri") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri differs from the authorization's");
    }
    if !verifier_matches(param("code_verifier"), &issued.code_challenge) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "code_verifier does not match the challenge");
    }
    let now = now_unix();
    let mut claims = json!({
        "iss": shared.url, "aud": issued.client_id, "sub": issued.user.subject, "groups": issued.user.groups,
        "email": issued.user.email, "iat": now, "nbf": now, "exp": now + 300,
    });
    if let (Some(nonce), Some(map)) = (issued.nonce, claims.as_object_mut()) {
        map.insert("nonce".into(), Value::String(nonce));
    }
    let key = lock(&shared.current).clone();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let id_token = match jsonwebtoken::encode(&header, &claims, &key.encoding) {
        Ok(t) => t,
        Err(e) => return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"id_token": id_token, "access_token": random_token(), "token_type": "Bearer", "expires_in": 300})),
    )
        .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mut keys = vec![shared.current.lock().unwrap_or_else(PoisonError::into_inner).jwk()];
    keys.extend(shared.extra_jwks.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned());
    Json(json!({ "keys": keys }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const CLIENT: &str = "airlock-console";
    const REDIRECT: &str = "http://127.0.0.1:1/";
    // 43 unreserved characters; its challenge computed independently (Python's hashlib).
    const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K6ZpCOuExCkzkW9YaEkBRTjmCXVZg";
    const CHALLENGE: &str = "B0jcE-BhPeSYGr498PuwnBkXaqSsoWadOzg11h4Rp48";

    #[test]
    fn the_s256_check_takes_only_the_verifier_of_the_challenge() {
        assert_eq!(s256_challenge(VERIFIER), CHALLENGE);
        assert!(verifier_matches(VERIFIER, CHALLENGE));
        // Another verifier, the challenge itself, the plain method's answer.
        assert!(!verifier_matches(&format!("{VERIFIER}x"), CHALLENGE));
        assert!(!verifier_matches(CHALLENGE, CHALLENGE));
        // Too short or long, or outside the unreserved characters, even when the hash matches.
        let short = "a".repeat(42);
        assert!(!verifier_matches(&short, &s256_challenge(&short)));
        let long = "a".repeat(129);
        assert!(!verifier_matches(&long, &s256_challenge(&long)));
        let spaced = format!("{} b", "a".repeat(42));
        assert!(!verifier_matches(&spaced, &s256_challenge(&spaced)));
        assert!(verifier_matches(&"a".repeat(128), &s256_challenge(&"a".repeat(128))));
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    /// `/authorize` for the test client; the query of where it sends the browser back.
    async fn authorize(issuer: &OidcIssuer, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("scope", "openid profile"),
            ("state", "s-1"),
            ("nonce", "n-1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            params.push((k, v));
        }
        let r = client().get(with_query(&format!("{}/authorize", issuer.url()), &params)).send().await.unwrap();
        assert!(r.status().is_redirection(), "{}", r.status());
        let location = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let query = location.strip_prefix(&format!("{REDIRECT}?")).unwrap_or_else(|| panic!("{location}"));
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    async fn trade(issuer: &OidcIssuer, form: &[(&str, &str)]) -> (u16, Value) {
        let body = with_query("", form).trim_start_matches('?').to_owned();
        let r = client()
            .post(format!("{}/token", issuer.url()))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        (r.status().as_u16(), r.json().await.unwrap())
    }

    fn form<'a>(code: &'a str, verifier: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", CLIENT),
            ("code_verifier", verifier),
        ]
    }

    async fn issuer() -> OidcIssuer {
        let issuer = OidcIssuer::start().await.unwrap();
        issuer.register_client(CLIENT, REDIRECT);
        issuer.sign_in_as(Some(TestUser {
            subject: "ana".into(),
            groups: vec!["dba".into()],
            email: "ana@example.com".into(),
        }));
        issuer
    }

    #[tokio::test]
    async fn a_code_is_traded_once_with_its_verifier_for_an_id_token() {
        let issuer = issuer().await;
        let back = authorize(&issuer, &[]).await;
        assert_eq!(back["state"], "s-1");
        let (status, body) = trade(&issuer, &form(&back["code"], VERIFIER)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        let id_token = body["id_token"].as_str().unwrap();
        let payload = id_token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["iss"], issuer.url());
        assert_eq!(claims["aud"], CLIENT);
        assert_eq!(claims["sub"], "ana");
        assert_eq!(claims["groups"], json!(["dba"]));
        assert_eq!(claims["nonce"], "n-1");
        // Once only.
        let (status, body) = trade(&issuer, &form(&back["code"], VERIFIER)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    }

    #[tokio::test]
    async fn the_token_endpoint_refuses_what_a_provider_refuses() {
        let issuer = issuer().await;
        // A wrong verifier: refused, and the code is spent.
        let code = authorize(&issuer, &[]).await["code"].clone();
        let wrong = "x".repeat(43);
        assert_eq!(trade(&issuer, &form(&code, &wrong)).await.1["error"], "invalid_grant");
        assert_eq!(trade(&issuer, &form(&code, VERIFIER)).await.1["error"], "invalid_grant");
        assert_eq!(issuer.outstanding_codes(), 0);
        // Another client, another redirect URI, no verifier, another grant type.
        for (k, v) in [("client_id", "other"), ("redirect_uri", "http://127.0.0.1:2/"), ("code_verifier", "")] {
            let code = authorize(&issuer, &[]).await["code"].clone();
            let mut f = form(&code, VERIFIER);
            f.retain(|(name, _)| *name != k);
            f.push((k, v));
            assert_eq!(trade(&issuer, &f).await.1["error"], "invalid_grant", "{k}={v}");
        }
        let code = authorize(&issuer, &[]).await["code"].clone();
        let mut f = form(&code, VERIFIER);
        f[0] = ("grant_type", "password");
        assert_eq!(trade(&issuer, &f).await.1["error"], "unsupported_grant_type");
        // JSON instead of a form.
        let r = client()
            .post(format!("{}/token", issuer.url()))
            .json(&json!({"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }

    #[tokio::test]
    async fn authorize_sends_errors_back_and_never_to_an_unregistered_uri() {
        let issuer = issuer().await;
        assert_eq!(authorize(&issuer, &[("code_challenge_method", "plain")]).await["error"], "invalid_request");
        assert_eq!(authorize(&issuer, &[("scope", "profile")]).await["error"], "invalid_scope");
        assert_eq!(authorize(&issuer, &[("response_type", "token")]).await["error"], "unsupported_response_type");
        issuer.sign_in_as(None);
        let back = authorize(&issuer, &[]).await;
        assert_eq!((back["error"].as_str(), back["state"].as_str()), ("access_denied", "s-1"));
        assert!(!back.contains_key("code"));
        let url = with_query(
            &format!("{}/authorize", issuer.url()),
            &[("client_id", CLIENT), ("redirect_uri", "http://evil.example/"), ("response_type", "code")],
        );
        assert_eq!(client().get(url).send().await.unwrap().status().as_u16(), 400);
    }
}
