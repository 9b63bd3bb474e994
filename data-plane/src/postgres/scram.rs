//! SCRAM-SHA-256 (RFC 5802 with SHA-256, RFC 7677) for the session roles the
//! gateway makes.
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
//! Only for passwords the gateway makes (printable ASCII, which SASLprep
//! leaves as they are). A stored credential logs in with postgres-protocol's
//! client, which normalizes it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The iteration count of the verifiers made here (Postgres's default).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// The most iterations a server may ask of a login: past it the login is
/// refused rather than spending the session thread's time on it.
const MAX_ITERATIONS: u32 = 100_000;
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
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salted = SaltedPassword::compute(password, &salt, ITERATIONS);
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

/// Why a login failed on the client's side of the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("the server's SCRAM message is malformed: {0}")]
    Malformed(&'static str),
    #[error("the server's SCRAM nonce does not extend the client's")]
    Nonce,
    #[error("the server asks for {0} SCRAM iterations (at most {MAX_ITERATIONS} are done)")]
    Iterations(u32),
    #[error("the server reported a SCRAM error: {0}")]
    Server(String),
    #[error("the server's SCRAM signature is wrong: it does not know this password")]
    Signature,
    #[error("SCRAM messages arrived out of order")]
    OutOfOrder,
    #[error("the server's SCRAM salt or iteration count is not the verifier's the gateway made for this role")]
    NotOurVerifier,
}

/// The client's side of one SCRAM-SHA-256 login, without channel binding:
/// [`first`](Login::first), then [`respond`](Login::respond) to the server's
/// first message, then [`verify`](Login::verify) its last, which proves the
/// server holds this password's verifier.
pub struct Login {
    salted: Option<SaltedPassword>,
    nonce: String,
    first_bare: String,
    /// What the server's final message must sign, once the proof is sent.
    expected: Option<HmacSha256>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login").field("salted", &self.salted).finish_non_exhaustive()
    }
}

impl Login {
    /// A login with the password as `salted` holds it: a server naming
    /// another salt or iteration count is refused.
    pub fn new(salted: SaltedPassword) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self::with_nonce(salted, &STANDARD.encode(nonce))
    }

    fn with_nonce(salted: SaltedPassword, nonce: &str) -> Self {
        // Postgres takes the user from the startup message and ignores this one.
        Login { salted: Some(salted), nonce: nonce.to_owned(), first_bare: format!("n=,r={nonce}"), expected: None }
    }

    /// The client-first message: no channel binding, then the bare part.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// The client-final message (with the proof), from the server-first message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if self.expected.is_some() {
            return Err(ScramError::OutOfOrder);
        }
        let text = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut attributes = text.split(',');
        let nonce = attribute(attributes.next(), 'r')?;
        let salt = attribute(attributes.next(), 's')?;
        let iterations = attribute(attributes.next(), 'i')?;
        // Further attributes are extensions, which a client may ignore; a
        // mandatory one (`m=`) would come first, and is refused above.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Nonce);
        }
        let salt = STANDARD.decode(salt).map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u32 = iterations.parse().map_err(|_| ScramError::Malformed("the iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Iterations(iterations));
        }
        let salted = match self.salted.take() {
            Some(s) if s.salt == salt && s.iterations == iterations => s,
            _ => return Err(ScramError::NotOurVerifier),
        };
        // `biws` is base64 of the header `n,,`: no channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let client_key = salted.client_key();
        let signature = hmac(&Sha256::digest(client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        let mut server = HmacSha256::new_from_slice(&salted.server_key())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        server.update(auth_message.as_bytes());
        self.expected = Some(server);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
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
        let mut login = Login::with_nonce(salted, CLIENT_NONCE);
        // The RFC's client names its user; Postgres's send an empty name.
        login.first_bare = format!("n=user,r={CLIENT_NONCE}");
        login
    }

    #[test]
    fn the_rfc_7677_exchange_is_reproduced() {
        let mut login = rfc_login(pencil());
        assert_eq!(login.respond(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
        login.verify(SERVER_FINAL.as_bytes()).unwrap();
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
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=0", |e| matches!(e, ScramError::Iterations(0))),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=100001", |e| matches!(e, ScramError::Iterations(100_001))),
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
