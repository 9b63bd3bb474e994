//! SCRAM-SHA-256 (RFC 5802 with SHA-256, RFC 7677) for the session roles the
//! gateway makes and for static credentials.
//!
//! A session role's password is made by the gateway and used once, by the
//! gateway, to log in as that role. Both the role's verifier and the login
//! need the salted password: PBKDF2-HMAC-SHA-256 over 4096 iterations, about
//! 0.6 ms of CPU (`benches/scram.rs`). The verifier is computed once ([`verifier`]), and the
//! login ([`Login`]) reuses its salted password. A server that names another
//! salt or iteration count does not hold that verifier (or the role was
//! changed behind the gateway's back): the login is refused, without hashing
//! anything on the session's thread.
//!
//! A stored credential's password (a static credential's) is hashed at its
//! first login and kept with the credential ([`SaltCache`]): a target names
//! its verifier's salt and iteration count at every login, so the logins
//! after the first hash nothing either.
//!
//! Only for printable ASCII passwords, which SASLprep leaves as they are (every
//! password the gateway makes). Any other stored one logs in with
//! postgres-protocol's client, which normalizes it, and is hashed every time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The iteration count of the verifiers made here (Postgres's default).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// The most iterations a server may ask of a login: past it the login is
/// refused rather than spending the session thread's time on it.
const MAX_ITERATIONS: u32 = 100_000;
/// The same for a stored password (a static credential's), which may meet a
/// target whose `scram_iterations` is far above the default. Each new salt and
/// count is hashed once, off the session thread; past this a server (or an
/// impostor) could hold a core for minutes with every login.
const MAX_STORED_ITERATIONS: u32 = 1_000_000;
/// Random bytes in the client's nonce (base64: no commas).
const NONCE_LEN: usize = 18;

/// A password salted and hashed for one salt and iteration count: as good as
/// the password for logging in with those. `Debug` prints no key.
#[derive(Clone)]
pub struct SaltedPassword {
    salt: Vec<u8>,
    iterations: u32,
    key: [u8; 32],
}

impl fmt::Debug for SaltedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltedPassword").field("iterations", &self.iterations).field("key", &"<redacted>").finish()
    }
}

impl Drop for SaltedPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl SaltedPassword {
    /// Hi(password, salt, iterations) of RFC 5802: PBKDF2 with HMAC-SHA-256
    /// and one block of output.
    pub fn compute(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let keyed =
            HmacSha256::new_from_slice(password).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let mut block = keyed.clone();
        block.update(salt);
        block.update(&1u32.to_be_bytes());
        let mut u: [u8; 32] = block.finalize().into_bytes().into();
        let mut key = u;
        for _ in 1..iterations {
            let mut next = keyed.clone();
            next.update(&u);
            u = next.finalize().into_bytes().into();
            key.iter_mut().zip(u).for_each(|(k, x)| *k ^= x);
        }
        SaltedPassword { salt: salt.to_vec(), iterations, key }
    }

    fn client_key(&self) -> [u8; 32] {
        hmac(&self.key, b"Client Key")
    }

    fn server_key(&self) -> [u8; 32] {
        hmac(&self.key, b"Server Key")
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A new verifier for `password` (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`,
/// the form `CREATE ROLE ... PASSWORD` stores as it is), with a random salt,
/// and the salted password a login can reuse.
pub fn verifier(password: &[u8]) -> (String, SaltedPassword) {
    verifier_with(password, ITERATIONS)
}

/// [`verifier`] with `iterations` instead of Postgres's default.
pub fn verifier_with(password: &[u8], iterations: u32) -> (String, SaltedPassword) {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salted = SaltedPassword::compute(password, &salt, iterations);
    let stored_key = Sha256::digest(salted.client_key());
    let text = format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        salted.iterations,
        STANDARD.encode(&salted.salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(salted.server_key()),
    );
    (text, salted)
}

/// A stored password's salted form from its last login, kept with the
/// credential (one cache per credential and version): reused while the target
/// names the same salt and iteration count; another salt or count (the
/// password set again on the target, or another server answering) is hashed
/// and kept in its place.
#[derive(Default)]
pub struct SaltCache {
    /// The salted password, with a digest of the password it was made from,
    /// so that a cache given another password hashes that one.
    last: Mutex<Option<(Zeroizing<[u8; 32]>, SaltedPassword)>>,
    hashed: AtomicU64,
}

impl fmt::Debug for SaltCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltCache").field("hashed", &self.hashed()).finish_non_exhaustive()
    }
}

impl SaltCache {
    /// How many times a password was hashed for a login through this cache.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// `password` (of `digest`) salted for `salt` and `iterations` now, and
    /// kept in place of what was (outside the lock: two logins at once may
    /// both hash).
    fn hash(&self, password: &[u8], digest: Zeroizing<[u8; 32]>, salt: &[u8], iterations: u32) -> SaltedPassword {
        let fresh = SaltedPassword::compute(password, salt, iterations);
        self.hashed.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((digest, fresh.clone()));
        fresh
    }

    /// The salted password kept for the password of this digest, salt and count.
    fn kept(&self, digest: &[u8; 32], salt: &[u8], iterations: u32) -> Option<SaltedPassword> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (made_from, salted) = last.as_ref()?;
        (**made_from == *digest && salted.salt == salt && salted.iterations == iterations).then(|| salted.clone())
    }
}

/// What a login proves it knows the password with.
enum Key {
    /// The password salted as the verifier has it: another salt or count is
    /// another verifier's.
    Salted(SaltedPassword),
    /// A stored password, salted as the server says through its cache.
    Stored { password: Zeroizing<Vec<u8>>, cache: Arc<SaltCache> },
}

/// Why a login failed on the client's side of the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("the server's SCRAM message is malformed: {0}")]
    Malformed(&'static str),
    #[error("the server's SCRAM nonce does not extend the client's")]
    Nonce,
    #[error("the server asks for {0} SCRAM iterations (at most {1} are done)")]
    Iterations(u32, u32),
    #[error("the server reported a SCRAM error: {0}")]
    Server(String),
    #[error("the server's SCRAM signature is wrong: it does not know this password")]
    Signature,
    #[error("SCRAM messages arrived out of order")]
    OutOfOrder,
    #[error("the server's SCRAM salt or iteration count is not the verifier's the gateway made for this role")]
    NotOurVerifier,
}

/// The client's side of one SCRAM-SHA-256 login, bound to the server's TLS
/// certificate ([`Login::bound`], SCRAM-SHA-256-PLUS) or not:
/// [`first`](Login::first), then [`respond`](Login::respond) to the server's
/// first message, then [`verify`](Login::verify) its last, which proves the
/// server holds this password's verifier.
pub struct Login {
    key: Option<Key>,
    nonce: String,
    first_bare: String,
    /// `p=tls-server-end-point,,` bound; `y,,` unbound by a client that could
    /// have bound it; `n,,` unbound.
    gs2_header: &'static str,
    /// The channel binding data (empty unbound).
    binding: Vec<u8>,
    /// What the server's final message must sign, once the proof is sent.
    expected: Option<HmacSha256>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            Some(Key::Salted(salted)) => format!("{salted:?}"),
            Some(Key::Stored { cache, .. }) => format!("stored password, {cache:?}"),
            None => "used".to_owned(),
        };
        f.debug_struct("Login").field("key", &key).finish_non_exhaustive()
    }
}

impl Login {
    /// A login with the password as `salted` holds it: a server naming
    /// another salt or iteration count is refused.
    pub fn new(salted: SaltedPassword) -> Self {
        Self::with_key(Key::Salted(salted))
    }

    /// A login with a stored password, salted through `cache`; `None` for a
    /// password SASLprep might change (anything but printable ASCII), which
    /// this client does not normalize.
    pub fn stored(password: &str, cache: Arc<SaltCache>) -> Option<Self> {
        let printable = password.bytes().all(|b| (0x20..0x7f).contains(&b));
        printable.then(|| Self::with_key(Key::Stored { password: Zeroizing::new(password.as_bytes().to_vec()), cache }))
    }

    fn with_key(key: Key) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self::with_nonce(key, &STANDARD.encode(nonce))
    }

    /// A login bound to the server's certificate by its
    /// [`tls_server_end_point`] data (SCRAM-SHA-256-PLUS): a server that saw
    /// another certificate refuses it.
    pub fn bound(salted: SaltedPassword, end_point: Vec<u8>) -> Self {
        Self::new(salted).bind(end_point)
    }

    /// An unbound login from a client that could have bound it (`y,,`): the
    /// server offered no SCRAM-SHA-256-PLUS. A server that did offer it (the
    /// offer was struck out on the way) refuses the login.
    pub fn unbound_though_able(salted: SaltedPassword) -> Self {
        Self::new(salted).able_to_bind()
    }

    /// This login, bound by `end_point` (see [`Login::bound`]).
    pub fn bind(mut self, end_point: Vec<u8>) -> Self {
        self.gs2_header = "p=tls-server-end-point,,";
        self.binding = end_point;
        self
    }

    /// This login, unbound though able (see [`Login::unbound_though_able`]).
    pub fn able_to_bind(mut self) -> Self {
        self.gs2_header = "y,,";
        self
    }

    fn with_nonce(key: Key, nonce: &str) -> Self {
        Login {
            key: Some(key),
            nonce: nonce.to_owned(),
            // Postgres takes the user from the startup message and ignores this one.
            first_bare: format!("n=,r={nonce}"),
            gs2_header: "n,,",
            binding: Vec::new(),
            expected: None,
        }
    }

    /// The client-first message: the channel binding header, then the bare part.
    pub fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.first_bare).into_bytes()
    }

    /// The client-final message (with the proof), from the server-first
    /// message. A stored password may be hashed here: see
    /// [`respond_if_kept`](Login::respond_if_kept).
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.respond_hashing(server_first, true).unwrap_or(Err(ScramError::OutOfOrder))
    }

    /// [`respond`](Login::respond), unless that would hash the password (a
    /// stored one whose cache does not hold it salted as `server_first` asks):
    /// then `None`, and the login is as it was, for `respond` elsewhere.
    pub fn respond_if_kept(&mut self, server_first: &[u8]) -> Option<Result<Vec<u8>, ScramError>> {
        self.respond_hashing(server_first, false)
    }

    /// `None` only when it would hash and `may_hash` is false.
    fn respond_hashing(&mut self, server_first: &[u8], may_hash: bool) -> Option<Result<Vec<u8>, ScramError>> {
        if self.expected.is_some() {
            return Some(Err(ScramError::OutOfOrder));
        }
        let (text, nonce, salt, iterations) = match server_first_parts(server_first) {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Some(Err(ScramError::Nonce));
        }
        // The cap keeps a server from making a login hash at length; a stored
        // password is hashed off the session thread, once per salt and count,
        // and may meet a target above the default (Postgres 16's
        // `scram_iterations`): its cap is higher.
        let cap = if matches!(self.key, Some(Key::Stored { .. })) { MAX_STORED_ITERATIONS } else { MAX_ITERATIONS };
        if iterations == 0 || iterations > cap {
            return Some(Err(ScramError::Iterations(iterations, cap)));
        }
        let salted = match self.salted_for(&salt, iterations, may_hash)? {
            Ok(salted) => salted,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(self.proof(&salted, text, nonce)))
    }

    /// The password salted for `salt` and `iterations`: `None` when it would
    /// have to be hashed and `may_hash` is false (the key is kept then).
    fn salted_for(
        &mut self,
        salt: &[u8],
        iterations: u32,
        may_hash: bool,
    ) -> Option<Result<SaltedPassword, ScramError>> {
        let salted = match self.key.take() {
            Some(Key::Salted(s)) if s.salt == salt && s.iterations == iterations => s,
            Some(Key::Stored { password, cache }) => {
                // Looked up once: what is found is what is used.
                let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(password.as_slice())));
                match cache.kept(&digest, salt, iterations) {
                    Some(kept) => kept,
                    None if may_hash => cache.hash(&password, digest, salt, iterations),
                    None => {
                        self.key = Some(Key::Stored { password, cache });
                        return None;
                    }
                }
            }
            _ => return Some(Err(ScramError::NotOurVerifier)),
        };
        Some(Ok(salted))
    }

    /// The client-final message proving `salted`, for the server-first `text`
    /// and the combined `nonce`; what the server's final message must sign
    /// is kept for [`verify`](Login::verify).
    fn proof(&mut self, salted: &SaltedPassword, text: &str, nonce: &str) -> Vec<u8> {
        // The header again, with the binding data: `biws` (`n,,`) unbound.
        let binding = STANDARD.encode([self.gs2_header.as_bytes(), &self.binding].concat());
        let without_proof = format!("c={binding},r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let client_key = salted.client_key();
        let signature = hmac(&Sha256::digest(client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        let mut server = HmacSha256::new_from_slice(&salted.server_key())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        server.update(auth_message.as_bytes());
        self.expected = Some(server);
        format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
    }

    /// Checks the server-final message: the server's signature of the
    /// exchange, or its error.
    pub fn verify(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let Some(server) = self.expected.take() else { return Err(ScramError::OutOfOrder) };
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = text.split(',').next();
        if let Ok(error) = attribute(first, 'e') {
            return Err(ScramError::Server(error.to_owned()));
        }
        let signature = attribute(first, 'v')?;
        let signature = STANDARD.decode(signature).map_err(|_| ScramError::Malformed("the signature is not base64"))?;
        // Compared in constant time.
        server.verify_slice(&signature).map_err(|_| ScramError::Signature)
    }
}

/// The iteration count a server-first message asks for; `None` for a message
/// that does not parse (which a login then refuses).
pub fn iterations_asked(server_first: &[u8]) -> Option<u32> {
    server_first_parts(server_first).ok().map(|(_, _, _, iterations)| iterations)
}

/// The server-first message's text, nonce, salt and iteration count.
/// Further attributes are extensions, which a client may ignore; a mandatory
/// one (`m=`) would come first, and is refused.
fn server_first_parts(server_first: &[u8]) -> Result<(&str, &str, Vec<u8>, u32), ScramError> {
    let text = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut attributes = text.split(',');
    let nonce = attribute(attributes.next(), 'r')?;
    let salt = attribute(attributes.next(), 's')?;
    let iterations = attribute(attributes.next(), 'i')?;
    let salt = STANDARD.decode(salt).map_err(|_| ScramError::Malformed("the salt is not base64"))?;
    let iterations: u32 = iterations.parse().map_err(|_| ScramError::Malformed("the iteration count"))?;
    Ok((text, nonce, salt, iterations))
}

/// The `tls-server-end-point` channel binding data (RFC 5929, section 4.1)
/// of a TLS server's certificate (DER): its hash by the hash function of the
/// certificate's signature, SHA-256 where that is MD5 or SHA-1. `None` for a
/// signature that names no hash of its own (Ed25519, RSASSA-PSS, whose hash is
/// in its parameters) or an algorithm not listed here, and for bytes that are
/// not a certificate: such a certificate cannot bind a login.
///
/// The certificate is the target's, and under `require` nothing else has
/// read it: only its outer structure is walked, never past a length.
pub fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    // 1.2.840.113549.1.1 (PKCS #1) and 1.2.840.10045.4 (ECDSA signatures).
    const PKCS1: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: [u8; 6] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    enum Hash {
        Sha256,
        Sha384,
        Sha512,
    }
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (SEQUENCE, certificate, after) = der_element(der)? else { return None };
    // What is hashed: the certificate's encoding, whole.
    let whole = der.get(..der.len() - after.len())?;
    let (SEQUENCE, _, rest) = der_element(certificate)? else { return None };
    let (SEQUENCE, algorithm, _) = der_element(rest)? else { return None };
    let (OID, oid, _) = der_element(algorithm)? else { return None };
    let hash = if let Some(last) = oid.strip_prefix(&PKCS1[..]) {
        match last {
            // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption
            [0x04 | 0x05 | 0x0b] => Hash::Sha256,
            [0x0c] => Hash::Sha384,
            [0x0d] => Hash::Sha512,
            _ => return None,
        }
    } else if let Some(last) = oid.strip_prefix(&ECDSA[..]) {
        match last {
            // ecdsa-with-SHA1, ecdsa-with-SHA256
            [0x01] | [0x03, 0x02] => Hash::Sha256,
            [0x03, 0x03] => Hash::Sha384,
            [0x03, 0x04] => Hash::Sha512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match hash {
        Hash::Sha256 => Sha256::digest(whole).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(whole).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(whole).to_vec(),
    })
}

/// One DER element of `der`: its tag, its contents, and the bytes after it.
/// `None` when a length is indefinite, longer than four bytes or past the end.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        (bytes.iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The value of `name=value`.
fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("an attribute is missing"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("attributes out of order"));
    }
    Ok(chars.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> SaltedPassword {
        SaltedPassword::compute(b"pencil", &STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(), 4096)
    }

    fn rfc_login(salted: SaltedPassword) -> Login {
        let mut login = Login::with_nonce(Key::Salted(salted), CLIENT_NONCE);
        // The RFC's client names its user; Postgres's send an empty name.
        login.first_bare = format!("n=user,r={CLIENT_NONCE}");
        login
    }

    fn certificate(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_binds_by_its_signatures_hash() {
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(tls_server_end_point(&p256), Some(Sha256::digest(&p256).to_vec()));
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(tls_server_end_point(&p384), Some(sha2::Sha384::digest(&p384).to_vec()));
        // Ed25519 names no hash: nothing to bind with.
        assert_eq!(tls_server_end_point(&certificate(&rcgen::PKCS_ED25519)), None);
        // Cut anywhere, or not a certificate at all: no binding, and no panic.
        for end in 0..p256.len() {
            assert_eq!(tls_server_end_point(&p256[..end]), None, "cut at {end}");
        }
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }

    /// Each signature algorithm's hash, on the smallest DER that has one:
    /// an empty tbsCertificate, then the algorithm.
    #[test]
    fn each_signature_algorithm_binds_with_its_hash() {
        let pkcs1 = |last: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last];
        let ecdsa = |tail: &[u8]| [&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04][..], tail].concat();
        let der = |oid: &[u8]| {
            let algorithm = [&[0x06, u8::try_from(oid.len()).unwrap()][..], oid].concat();
            let contents = [&[0x30, 0x00, 0x30, u8::try_from(algorithm.len()).unwrap()][..], &algorithm].concat();
            [&[0x30, u8::try_from(contents.len()).unwrap()][..], &contents].concat()
        };
        let sha256 = |d: &[u8]| Some(Sha256::digest(d).to_vec());
        let sha384 = |d: &[u8]| Some(sha2::Sha384::digest(d).to_vec());
        let sha512 = |d: &[u8]| Some(sha2::Sha512::digest(d).to_vec());
        let none = |_: &[u8]| None;
        type Hashing = fn(&[u8]) -> Option<Vec<u8>>;
        let cases: [(Vec<u8>, Hashing); 11] = [
            (pkcs1(0x04), sha256), // md5WithRSAEncryption: SHA-256, as RFC 5929 says
            (pkcs1(0x05), sha256), // sha1WithRSAEncryption: likewise
            (pkcs1(0x0b), sha256),
            (pkcs1(0x0c), sha384),
            (pkcs1(0x0d), sha512),
            (pkcs1(0x0a), none), // RSASSA-PSS: its hash is in its parameters
            (ecdsa(&[0x01]), sha256),
            (ecdsa(&[0x03, 0x02]), sha256),
            (ecdsa(&[0x03, 0x03]), sha384),
            (ecdsa(&[0x03, 0x04]), sha512),
            (ecdsa(&[0x03, 0x01]), none), // ecdsa-with-SHA224
        ];
        for (oid, expected) in cases {
            let certificate = der(&oid);
            assert_eq!(tls_server_end_point(&certificate), expected(&certificate), "{oid:02x?}");
        }
    }

    #[test]
    fn the_rfc_7677_exchange_is_reproduced() {
        let mut login = rfc_login(pencil());
        assert_eq!(login.respond(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        login.verify(SERVER_FINAL.as_bytes()).unwrap();
    }

    /// A bound login names the binding in its first message and proves the
    /// binding data in its last; one that could have bound says so (`y`).
    #[test]
    fn a_bound_login_carries_the_binding_data() {
        let server_first = |login: &Login| {
            let nonce = String::from_utf8(login.first()).unwrap().rsplit_once("r=").unwrap().1.to_owned();
            format!("r={nonce}server,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        };
        let mut bound = Login::bound(pencil(), vec![1, 2, 3]);
        assert!(bound.first().starts_with(b"p=tls-server-end-point,,n=,r="));
        let last = String::from_utf8(bound.respond(server_first(&bound).as_bytes()).unwrap()).unwrap();
        let expected = STANDARD.encode([&b"p=tls-server-end-point,,"[..], &[1, 2, 3]].concat());
        assert!(last.starts_with(&format!("c={expected},r=")), "{last}");

        let mut able = Login::unbound_though_able(pencil());
        assert!(able.first().starts_with(b"y,,n=,r="));
        let last = String::from_utf8(able.respond(server_first(&able).as_bytes()).unwrap()).unwrap();
        assert!(last.starts_with("c=eSws,r="), "{last}");
    }

    #[test]
    fn a_salted_password_for_the_servers_salt_is_used_as_it_is() {
        // A key that is not pencil's: the proof shows which one was used.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let other = SaltedPassword { salt: salt.clone(), iterations: 4096, key: [7; 32] };
        let mut login = rfc_login(other);
        assert_ne!(login.respond(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());

        // Another salt or count: that server does not hold the verifier.
        for (salt, iterations) in [(vec![1; 16], 4096), (salt, 4095)] {
            let mut login = rfc_login(SaltedPassword { salt, iterations, key: [7; 32] });
            let refused = login.respond(SERVER_FIRST.as_bytes()).unwrap_err();
            assert!(matches!(refused, ScramError::NotOurVerifier), "{refused:?}");
        }
    }

    #[test]
    fn a_verifier_logs_in_with_its_own_salted_password_and_with_its_password_hashed_again() {
        let (text, salted) = verifier(b"s3cret");
        let parts: Vec<&str> = text.split(['$', ':']).collect();
        assert_eq!(parts.len(), 5, "{text}");
        assert_eq!(parts[0], "SCRAM-SHA-256");
        assert_eq!(parts[1], "4096");
        let (salt, stored_key, server_key) = (parts[2], parts[3], parts[4]);
        // A server holding this verifier, answering a login.
        let server_first = |client_first: &[u8]| {
            let bare = std::str::from_utf8(client_first).unwrap().strip_prefix("n,,").unwrap().to_owned();
            let nonce = bare.strip_prefix("n=,r=").unwrap().to_owned();
            (bare, format!("r={nonce}srv,s={salt},i=4096"))
        };
        let again = SaltedPassword::compute(b"s3cret", &STANDARD.decode(salt).unwrap(), 4096);
        for reused in [salted, again] {
            let mut login = Login::new(reused);
            let (bare, first) = server_first(&login.first());
            let last = String::from_utf8(login.respond(first.as_bytes()).unwrap()).unwrap();
            let (without_proof, proof) = last.rsplit_once(",p=").unwrap();
            let auth = format!("{bare},{first},{without_proof}");
            let stored = STANDARD.decode(stored_key).unwrap();
            let signature = hmac(&stored, auth.as_bytes());
            let client_key: Vec<u8> =
                STANDARD.decode(proof).unwrap().iter().zip(signature).map(|(p, s)| p ^ s).collect();
            assert_eq!(Sha256::digest(&client_key).to_vec(), stored, "the proof checks against the verifier");
            let server_signature = hmac(&STANDARD.decode(server_key).unwrap(), auth.as_bytes());
            login.verify(format!("v={}", STANDARD.encode(server_signature)).as_bytes()).unwrap();
        }
    }

    /// A stored password is hashed at its first login through a cache, and
    /// reused at the next while the server names the same salt and count.
    #[test]
    fn a_stored_password_is_hashed_once_per_salt() {
        let cache = Arc::new(SaltCache::default());
        let stored = |password: &str| {
            let key = Key::Stored { password: Zeroizing::new(password.as_bytes().to_vec()), cache: cache.clone() };
            let mut login = Login::with_nonce(key, CLIENT_NONCE);
            login.first_bare = format!("n=user,r={CLIENT_NONCE}");
            login
        };
        // The first login would hash: not without leave, and then as asked.
        let mut first = stored("pencil");
        assert!(first.respond_if_kept(SERVER_FIRST.as_bytes()).is_none());
        assert_eq!(cache.hashed(), 0);
        assert_eq!(first.respond(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        first.verify(SERVER_FINAL.as_bytes()).unwrap();
        // The next finds it kept.
        let mut second = stored("pencil");
        let last = second.respond_if_kept(SERVER_FIRST.as_bytes()).expect("kept").unwrap();
        assert_eq!(last, CLIENT_FINAL.as_bytes());
        second.verify(SERVER_FINAL.as_bytes()).unwrap();
        assert_eq!(cache.hashed(), 1, "the second login hashed the password again");
        let session_role = rfc_login(pencil()).respond_if_kept(SERVER_FIRST.as_bytes());
        assert_eq!(session_role.expect("a session role's login hashes nothing").unwrap(), CLIENT_FINAL.as_bytes());
        // The server names another salt: hashed for it, and kept instead.
        let resalted = SERVER_FIRST.replace("W22ZaJ0SNY7soEsUEjb6gQ==", "AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(stored("pencil").respond_if_kept(resalted.as_bytes()).is_none());
        assert_ne!(stored("pencil").respond(resalted.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        assert_eq!(cache.hashed(), 2);
        // Another password through the same cache is its own.
        let mut other = stored("pen");
        assert_ne!(other.respond(resalted.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        assert_eq!(cache.hashed(), 3);
        // Far above the default is hashed; past a million rounds is refused
        // before any hashing.
        let count = |n: u32| SERVER_FIRST.replace("i=4096", &format!("i={n}"));
        assert!(stored("pencil").respond(count(200_000).as_bytes()).is_ok());
        assert_eq!(cache.hashed(), 4);
        let refused = stored("pencil").respond(count(4_294_967_295).as_bytes()).unwrap_err();
        assert!(matches!(refused, ScramError::Iterations(4_294_967_295, 1_000_000)), "{refused}");
        assert_eq!(cache.hashed(), 4);
        // What SASLprep could change is left to a client that normalizes it.
        assert!(Login::stored("correct horse", cache.clone()).is_some());
        assert!(Login::stored("p\u{e4}ssword", cache.clone()).is_none());
        assert!(Login::stored("tab\tpassword", cache).is_none());
    }

    #[test]
    fn a_server_that_does_not_know_the_password_is_refused() {
        let mut login = rfc_login(pencil());
        login.respond(SERVER_FIRST.as_bytes()).unwrap();
        let wrong = format!("v={}", STANDARD.encode([0u8; 32]));
        assert!(matches!(login.verify(wrong.as_bytes()), Err(ScramError::Signature)));
    }

    #[test]
    fn malformed_or_hostile_server_messages_are_refused() {
        type Expected = fn(&ScramError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("", |e| matches!(e, ScramError::Malformed(_))),
            ("r=rOprNGfwEbeRWgbNEkqO", |e| matches!(e, ScramError::Malformed(_))),
            ("m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=1", |e| matches!(e, ScramError::Malformed(_))),
            ("s=AAAA,r=rOprNGfwEbeRWgbNEkqOx,i=1", |e| matches!(e, ScramError::Malformed(_))),
            // The server must add to the client's nonce, not replace or echo it.
            ("r=somebodyElse,s=AAAA,i=4096", |e| matches!(e, ScramError::Nonce)),
            ("r=rOprNGfwEbeRWgbNEkqO,s=AAAA,i=4096", |e| matches!(e, ScramError::Nonce)),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096", |e| matches!(e, ScramError::Malformed(_))),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=-1", |e| matches!(e, ScramError::Malformed(_))),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=0", |e| matches!(e, ScramError::Iterations(0, _))),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=100001", |e| matches!(e, ScramError::Iterations(100_001, 100_000))),
        ];
        for (message, expected) in cases {
            let got = rfc_login(pencil()).respond(message.as_bytes()).unwrap_err();
            assert!(expected(&got), "{message:?}: {got:?}");
        }
        assert!(matches!(rfc_login(pencil()).respond(&[0xff, b'r']), Err(ScramError::Malformed(_))));

        let mut login = rfc_login(pencil());
        assert!(matches!(login.verify(SERVER_FINAL.as_bytes()), Err(ScramError::OutOfOrder)));
        login.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert!(matches!(login.respond(SERVER_FIRST.as_bytes()), Err(ScramError::OutOfOrder)));
        let refused = login.verify(b"e=invalid-proof").unwrap_err();
        assert_eq!(refused.to_string(), "the server reported a SCRAM error: invalid-proof");
    }
}
