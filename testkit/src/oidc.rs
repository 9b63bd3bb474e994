//! A real OIDC issuer on `127.0.0.1:0`, for tests of token verification.
//!
//! It serves `/.well-known/openid-configuration` and `/jwks` over plain HTTP
//! (allowed on loopback), signs RS256 tokens with one current key, rotates to a
//! new key (the old one disappears from `/jwks`), counts `/jwks` fetches, and
//! forges the tokens an attacker would send: `alg: none`, HS256 keyed with the
//! issuer's RSA public key, a payload swapped under a valid signature.
//!
//! RSA key generation is slow in debug builds, so the keys are pre-generated,
//! test-only PEM files in `testkit/testdata/` (never use them for anything else).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_core::IssuerId;
use airlock_core::event::TrustedIssuer;
use airlock_core::principal::PrincipalKind;
use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};

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
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
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

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let issuer =
        shared.discovery_issuer.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or(shared.url.clone());
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", shared.url),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mut keys = vec![shared.current.lock().unwrap_or_else(PoisonError::into_inner).jwk()];
    keys.extend(shared.extra_jwks.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned());
    Json(json!({ "keys": keys }))
}
