//! The recorder's options: the `[recorder]` section of the configuration file,
//! with a default for everything (a local directory and a key generated on
//! first start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chunk::MAX_CHUNK_TARGET_BYTES;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC (`airlock.v1.RecorderService`) and `/healthz`, on one port.
    pub addr: SocketAddr,
    /// The certificate chain and key (PEM) the recorder serves TLS with.
    /// Without them it listens only on loopback, unless `cleartext_off_loopback`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Cleartext on a non-loopback address: for a network that encrypts on
    /// its own (a service mesh).
    pub cleartext_off_loopback: bool,
    /// Where the recorder keeps its signing key and, with the local backend, the
    /// recordings. Default: `recorder/` in Airlock's data directory.
    pub data_dir: Option<PathBuf>,
    /// An Ed25519 private key (PKCS#8 PEM) that signs manifests. Default:
    /// `{data_dir}/signing-key.pem`, generated on first start.
    pub signing_key_file: Option<PathBuf>,
    /// Where recordings go.
    pub backend: Backend,
    /// With the local backend, the directory of recordings. Default: `{data_dir}/recordings`.
    pub local_dir: Option<PathBuf>,
    pub s3: S3,
    /// A session's frames are stored as one chunk once this many bytes
    /// (uncompressed) are buffered, at most 16 MiB.
    pub chunk_bytes: usize,
    /// ... or once the oldest buffered frame is this old.
    pub chunk_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A directory on this machine (`local_dir`).
    Local,
    /// An S3 bucket, or any store that speaks the S3 API (`[recorder.s3]`).
    S3,
}

/// An S3 bucket. Empty settings are taken from the standard `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT`, ...), then from the instance's role.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3 {
    pub bucket: String,
    pub region: String,
    /// Another S3-compatible service (`http://` is allowed when written out).
    pub endpoint: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Put every key under this prefix in the bucket.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            tls_cert_file: None,
            tls_key_file: None,
            cleartext_off_loopback: false,
            data_dir: None,
            signing_key_file: None,
            backend: Backend::Local,
            local_dir: None,
            s3: S3::default(),
            chunk_bytes: 1 << 20,
            chunk_interval_ms: 2000,
        }
    }
}

impl Config {
    /// The data directory, `airlock-data/recorder` when none is set (the
    /// binary sets it from its own data directory).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("airlock-data").join("recorder"))
    }

    pub fn signing_key_file(&self) -> PathBuf {
        self.signing_key_file.clone().unwrap_or_else(|| self.data_dir().join("signing-key.pem"))
    }

    pub fn local_dir(&self) -> PathBuf {
        self.local_dir.clone().unwrap_or_else(|| self.data_dir().join("recordings"))
    }

    pub fn chunk_interval(&self) -> Duration {
        Duration::from_millis(self.chunk_interval_ms)
    }

    /// Refuses settings the recorder cannot run with, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_bytes == 0 || self.chunk_bytes > MAX_CHUNK_TARGET_BYTES {
            return Err(format!("recorder.chunk_bytes must be between 1 and {MAX_CHUNK_TARGET_BYTES}"));
        }
        if self.chunk_interval_ms == 0 {
            return Err("recorder.chunk_interval_ms must be greater than zero".into());
        }
        if self.backend == Backend::S3 && self.s3.bucket.is_empty() {
            return Err("recorder.s3.bucket must be set when recorder.backend is \"s3\"".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_fill_what_is_not_written() {
        let config: Config = serde_json::from_str(
            r#"{"backend": "s3", "chunk_bytes": 65536,
                "s3": {"bucket": "recordings", "path_style": true, "secret_access_key": "s3cr3t-value"}}"#,
        )
        .unwrap();
        assert_eq!(config.backend, Backend::S3);
        assert_eq!(config.s3.bucket, "recordings");
        assert_eq!(config.chunk_bytes, 65536);
        assert_eq!(config.chunk_interval(), Duration::from_secs(2));
        assert_eq!(config.addr, SocketAddr::from(([127, 0, 0, 1], 8082)));
        assert_eq!(config.signing_key_file(), PathBuf::from("airlock-data/recorder/signing-key.pem"));
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"), "Debug must not show the secret");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        assert!(serde_json::from_str::<Config>(r#"{"chunk_size": 1}"#).is_err());
        let too_big = Config { chunk_bytes: MAX_CHUNK_TARGET_BYTES + 1, ..Config::default() };
        assert!(too_big.validate().unwrap_err().contains("recorder.chunk_bytes"));
        let no_bucket = Config { backend: Backend::S3, ..Config::default() };
        assert!(no_bucket.validate().unwrap_err().contains("recorder.s3.bucket"));
    }
}
