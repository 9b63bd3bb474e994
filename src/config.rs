//! One TOML file, then environment variables, then flags. Every setting has a
//! default here, so `airlock up` runs with no file at all. Environment
//! variables are `AIRLOCK_<SECTION>__<KEY>` (e.g. `AIRLOCK_DATABASE__URL`) or
//! `AIRLOCK_<KEY>` for top-level keys (e.g. `AIRLOCK_DATA_DIR`).
//! `deploy/airlock.example.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `airlock up` keeps its database, keys and admin token.
    pub data_dir: PathBuf,
    /// The URL clients reach the REST API at; the `iss` of tokens Airlock mints.
    /// Default: `http://{api.addr}`, `https://` with `api.tls_cert_file` set. Set
    /// it where the parts run apart: gateways need the control plane's value.
    pub public_url: String,
    /// `text` or `json`.
    pub log_format: String,
    /// How long a process asked to stop (Ctrl-C, SIGTERM) waits for what it
    /// is doing to end before it exits anyway; a second request exits at once.
    #[serde(with = "duration_text")]
    pub stop_timeout: Duration,
    pub database: Database,
    pub secrets: Secrets,
    pub api: Api,
    pub bus: BusConfig,
    pub worker: Worker,
    pub identity: Identity,
    pub recorder: airlock_recorder::Config,
    pub recordings: Recordings,
    pub console: Console,
}

/// The web console (`[console]`): the OIDC provider it signs in with, as a
/// public client (authorization code with PKCE, no client secret). With no
/// issuer set, the console signs in with a pasted token only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Console {
    /// The provider's issuer URL (its tokens' `iss`; discovery is under it).
    pub oidc_issuer: String,
    /// The console's client id at the provider; the `aud` of its ID tokens.
    pub oidc_client_id: String,
    /// Scopes asked for, space-separated; must include `openid`.
    pub oidc_scopes: String,
}

impl Default for Console {
    fn default() -> Self {
        Self { oidc_issuer: String::new(), oidc_client_id: String::new(), oidc_scopes: "openid profile email".into() }
    }
}

impl Console {
    /// The control plane's console options; fails on a client id without an
    /// issuer (or the reverse) and on what [`ConsoleOptions::validate`] refuses.
    ///
    /// [`ConsoleOptions::validate`]: airlock_control_plane::web::ConsoleOptions::validate
    pub fn options(&self) -> anyhow::Result<airlock_control_plane::web::ConsoleOptions> {
        use airlock_control_plane::web::{ConsoleOidc, ConsoleOptions};
        let (issuer, client_id) = (self.oidc_issuer.trim(), self.oidc_client_id.trim());
        let options = match (issuer.is_empty(), client_id.is_empty()) {
            (true, true) => ConsoleOptions { oidc: None },
            (false, false) => ConsoleOptions {
                oidc: Some(ConsoleOidc {
                    issuer: issuer.to_owned(),
                    client_id: client_id.to_owned(),
                    scopes: self.oidc_scopes.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
                }),
            },
            (true, false) => anyhow::bail!("console.oidc_client_id is set but console.oidc_issuer is not"),
            (false, true) => anyhow::bail!("console.oidc_issuer is set but console.oidc_client_id is not"),
        };
        options.validate().map_err(anyhow::Error::msg)?;
        Ok(options)
    }
}

/// Where the control plane reads session recordings for replay and
/// verification (`[recordings]`): the recorder's store, read directly. Unset
/// keys follow `[recorder]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recordings {
    /// `local` or `s3`. Default: `recorder.backend`.
    pub backend: Option<airlock_recorder::Backend>,
    /// Default: `recorder.local_dir` (`{data_dir}/recorder/recordings`).
    pub local_dir: Option<PathBuf>,
    /// Default: `[recorder.s3]`.
    pub s3: Option<airlock_recorder::S3>,
    /// The recorder's public key (PEM, as `airlock recorder` logs its id) that
    /// verifies recordings. Default: the public half of the recorder's signing
    /// key when this machine holds it (`airlock up`).
    pub public_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// `postgres://...` or `sqlite://path`. Default in `airlock up`: `sqlite://{data_dir}/airlock.db`.
    pub url: String,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Secrets {
    /// 32 bytes, base64: encrypts connection credentials and signing keys at rest.
    pub master_key: String,
    /// A file holding the key. Default in `airlock up`: `{data_dir}/master.key`, created on first start.
    pub master_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("master_key_file", &self.master_key_file).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// REST API and web UI.
    pub addr: SocketAddr,
    /// The REST API's certificate chain and key (PEM). Unset: cleartext HTTP,
    /// which only a loopback `addr` allows unless `cleartext_off_loopback`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Serve the REST API in cleartext on a non-loopback address: only where
    /// the network encrypts on its own, or a proxy beside the control plane
    /// terminates TLS.
    pub cleartext_off_loopback: bool,
    /// gRPC API.
    pub grpc_addr: SocketAddr,
    /// The gRPC API's certificate chain and key (PEM). Unset: cleartext, which
    /// only a loopback `grpc_addr` allows unless `grpc_cleartext_off_loopback`.
    pub grpc_tls_cert_file: Option<PathBuf>,
    pub grpc_tls_key_file: Option<PathBuf>,
    /// Serve gRPC in cleartext on a non-loopback address: only where the network
    /// encrypts on its own (a service mesh).
    pub grpc_cleartext_off_loopback: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// NATS with JetStream. Empty: the in-process bus (only `airlock up`). A
    /// user and password, or a token, go in the URL (`nats://user:pass@host:4222`).
    pub nats_url: String,
    /// Subject prefix and stream name stem on NATS.
    pub prefix: String,
    /// CA certificates (PEM) NATS's certificate must chain to, instead of the
    /// system's roots. Set: the connection must be TLS (as a `tls://` URL says too).
    pub nats_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for a NATS server that verifies its
    /// clients, read at each connection: a renewed pair is presented from the
    /// next reconnect on.
    pub nats_tls_cert_file: Option<PathBuf>,
    pub nats_tls_key_file: Option<PathBuf>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Worker {
    /// The shared secret workers present to the control plane. Default in `airlock up`: generated.
    pub token: String,
    pub token_file: Option<PathBuf>,
    /// The control plane's gRPC URL. `https://` for TLS; `http://` only to this
    /// machine unless `grpc_cleartext_off_loopback`.
    pub control_plane_url: String,
    /// CA certificates (PEM) the control plane's and the recorder's gRPC
    /// certificates must chain to. Unset: the system's roots.
    pub grpc_ca_file: Option<PathBuf>,
    /// `http://` URLs for the control plane and the recorder on other hosts:
    /// only where the network encrypts on its own (a service mesh).
    pub grpc_cleartext_off_loopback: bool,
    /// Health, readiness and metrics of the worker.
    pub admin_addr: SocketAddr,
    /// The Postgres gateway.
    pub pg_addr: SocketAddr,
    /// Names this worker's session roles on targets, so a restarted worker removes
    /// what it left behind. Must be stable across restarts and unique per worker.
    /// Default: `{hostname}-{pg port}`.
    pub id: String,
    /// The gateway's TLS certificate and key (PEM). Unset: a self-signed pair in `data_dir`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Accept tokens over unencrypted connections from other hosts (never do this in production).
    pub allow_cleartext_off_loopback: bool,
    /// CA certificates (PEM) that targets' certificates must chain to under
    /// `verify-ca` and `verify-full`. Unset: the system's roots.
    pub target_ca_file: Option<PathBuf>,
    /// Threads that relay Postgres sessions, each a single-threaded runtime
    /// (default: half the cores, at least 1; 0: sessions share the main runtime).
    pub session_threads: Option<usize>,
    /// Admin connections the gateway may hold to each target, to create and
    /// drop session roles (default 4, at least 1): each counts in the target's
    /// `max_connections` and the admin role's connection limit.
    pub admin_connections: usize,
    /// How long a client may take from connecting until its token is checked
    /// (its startup message, TLS handshake and password) before it is closed.
    #[serde(with = "duration_text")]
    pub login_timeout: Duration,
    /// Logins in progress at once from one client address (an IPv6 address
    /// by its `login_ipv6_prefix`): more are told 53300 and closed (default
    /// 128, at least 1).
    pub max_logins_per_address: usize,
    /// Logins in progress at once from every address together: more are
    /// told 53300 and closed (default 2048, at least 1).
    pub max_logins: usize,
    /// How many leading bits of an IPv6 client's address count as one
    /// address for `max_logins_per_address`: 64 by default (one host may hold
    /// a /64 whole), 128 where many hosts share a /64. 1 to 128.
    /// (Wider than a prefix needs, so that 300 is told the range, not a type.)
    pub login_ipv6_prefix: u32,
    /// The longest message of a target's a masked session holds whole to mask
    /// it: a longer one ends the session (54000) before it is read whole
    /// (default 64 MiB; 64 KiB to 1 GiB, the most Postgres sends).
    pub masked_message_max_bytes: usize,
    /// How often a worker compares its state with the log's heads.
    #[serde(with = "duration_text")]
    pub reconcile_every: Duration,
    /// How long a stopping gateway lets its sessions go on, refusing new
    /// logins (57P03) and reporting itself not ready, before it ends them.
    /// Unset (the default) or "off": they end at once.
    #[serde(with = "optional_duration_text")]
    pub drain_timeout: Option<Duration>,
    /// Session recording (`[worker.recording]`): every session is recorded.
    /// The recorder's URL is ignored by `airlock up`, which records to its own.
    pub recording: airlock_data_plane::recording::Options,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("control_plane_url", &self.control_plane_url)
            .field("admin_addr", &self.admin_addr)
            .field("recording", &self.recording)
            .finish_non_exhaustive()
    }
}

/// How bearer tokens are checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// After fetching an issuer's keys, how long an unknown `kid` is refused without fetching again.
    #[serde(with = "duration_text")]
    pub jwks_refetch_cooldown: Duration,
    /// How long fetched keys are used before they are fetched again.
    #[serde(with = "duration_text")]
    pub jwks_max_age: Duration,
    /// Timeout of each request to an issuer.
    #[serde(with = "duration_text")]
    pub http_timeout: Duration,
}

impl Default for Identity {
    fn default() -> Self {
        let d = airlock_identity::VerifierOptions::default();
        Self {
            leeway_secs: d.leeway_secs,
            jwks_refetch_cooldown: d.jwks_refetch_cooldown,
            jwks_max_age: d.jwks_max_age,
            http_timeout: d.http_timeout,
        }
    }
}

impl Identity {
    pub fn verifier_options(&self, own_issuer: String) -> airlock_identity::VerifierOptions {
        airlock_identity::VerifierOptions {
            own_issuer,
            leeway_secs: self.leeway_secs,
            jwks_refetch_cooldown: self.jwks_refetch_cooldown,
            jwks_max_age: self.jwks_max_age,
            http_timeout: self.http_timeout,
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("airlock-data"),
            public_url: String::new(),
            log_format: "text".into(),
            stop_timeout: Duration::from_secs(30),
            database: Database::default(),
            secrets: Secrets::default(),
            api: Api::default(),
            bus: BusConfig::default(),
            worker: Worker::default(),
            identity: Identity::default(),
            recorder: airlock_recorder::Config::default(),
            recordings: Recordings::default(),
            console: Console::default(),
        }
    }
}

impl Default for Api {
    fn default() -> Self {
        Self {
            addr: addr("127.0.0.1:8080"),
            tls_cert_file: None,
            tls_key_file: None,
            cleartext_off_loopback: false,
            grpc_addr: addr("127.0.0.1:8081"),
            grpc_tls_cert_file: None,
            grpc_tls_key_file: None,
            grpc_cleartext_off_loopback: false,
        }
    }
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password or a token.
        f.debug_struct("BusConfig")
            .field("nats_url", &airlock_core::redact::redact_url(&self.nats_url))
            .field("prefix", &self.prefix)
            .field("nats_ca_file", &self.nats_ca_file)
            .finish_non_exhaustive()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            prefix: "airlock".into(),
            nats_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
        }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            token: String::new(),
            token_file: None,
            control_plane_url: "http://127.0.0.1:8081".into(),
            grpc_ca_file: None,
            grpc_cleartext_off_loopback: false,
            admin_addr: addr("127.0.0.1:9090"),
            pg_addr: addr("127.0.0.1:15432"),
            id: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            allow_cleartext_off_loopback: false,
            target_ca_file: None,
            session_threads: None,
            admin_connections: airlock_data_plane::postgres::roles::ADMIN_CONNECTIONS,
            login_timeout: airlock_data_plane::postgres::gateway::DEFAULT_LOGIN_TIMEOUT,
            max_logins_per_address: airlock_data_plane::postgres::gateway::DEFAULT_MAX_LOGINS_PER_ADDRESS,
            max_logins: airlock_data_plane::postgres::gateway::DEFAULT_MAX_LOGINS,
            login_ipv6_prefix: airlock_data_plane::postgres::gateway::DEFAULT_LOGIN_IPV6_PREFIX.into(),
            masked_message_max_bytes: airlock_data_plane::postgres::gateway::DEFAULT_MASKED_MESSAGE_MAX,
            reconcile_every: Duration::from_secs(2),
            drain_timeout: None,
            recording: airlock_data_plane::recording::Options::default(),
        }
    }
}

const SECTIONS: [&str; 9] =
    ["database", "secrets", "api", "bus", "worker", "identity", "recorder", "recordings", "console"];
const TOP_LEVEL: [&str; 4] = ["data_dir", "public_url", "log_format", "stop_timeout"];

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file(path));
        }
        // Only keys that name a setting: AIRLOCK_URL, AIRLOCK_TOKEN and friends
        // belong to the client verbs, not to the configuration.
        let env = Env::prefixed("AIRLOCK_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            TOP_LEVEL.contains(&key.as_str())
                || SECTIONS.iter().any(|s| key.strip_prefix(s).is_some_and(|r| r.starts_with('.')))
        });
        figment.merge(env).extract().context("reading the configuration")
    }

    /// The worker's id: configured, or `{hostname}-{pg port}`.
    pub fn worker_id(&self) -> String {
        if !self.worker.id.is_empty() {
            return self.worker.id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "worker".to_owned());
        let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect();
        format!("{host}-{}", self.worker.pg_addr.port())
    }

    /// The worker's recording options: the spool defaults to `{data_dir}/spool`.
    pub fn recording(&self) -> airlock_data_plane::recording::Options {
        let mut recording = self.worker.recording.clone();
        if recording.spool_dir.as_os_str().is_empty() {
            recording.spool_dir = self.data_dir.join("spool");
        }
        recording
    }

    /// The recorder's settings with its data directory filled in.
    pub fn recorder(&self) -> airlock_recorder::Config {
        let mut recorder = self.recorder.clone();
        recorder.data_dir.get_or_insert_with(|| self.data_dir.join("recorder"));
        recorder
    }

    /// Where the control plane reads recordings: `[recordings]` over `[recorder]`.
    pub fn recordings_store(&self) -> airlock_recorder::Config {
        let mut store = self.recorder();
        if let Some(backend) = self.recordings.backend {
            store.backend = backend;
        }
        if let Some(dir) = &self.recordings.local_dir {
            store.local_dir = Some(dir.clone());
        }
        if let Some(s3) = &self.recordings.s3 {
            store.s3 = s3.clone();
        }
        store
    }

    /// The public URL, defaulting to the REST address.
    pub fn public_url(&self) -> String {
        if self.public_url.is_empty() {
            let scheme = if self.api.tls_cert_file.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", self.api.addr)
        } else {
            self.public_url.trim_end_matches('/').to_owned()
        }
    }
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&airlock_core::duration::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        airlock_core::duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A duration or "off" (`None`), as text.
mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&airlock_core::duration::format(*d)),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        airlock_core::duration::parse(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e} (a duration such as \"30s\", or \"off\")")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("airlock-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("airlock.toml");
        std::fs::write(&file, "data_dir = \"/srv/airlock\"\n[api]\naddr = \"0.0.0.0:9000\"\n").unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/airlock"));
        assert_eq!(config.api.addr, addr("0.0.0.0:9000"));
        assert_eq!(config.api.grpc_addr, addr("127.0.0.1:8081"));
        assert_eq!(config.worker.reconcile_every, Duration::from_secs(2));

        std::fs::write(&file, "[api]\nadress = \"0.0.0.0:9000\"\n").unwrap();
        let e = format!("{:#}", Config::load(Some(&file)).unwrap_err());
        assert!(e.contains("adress"), "{e}");
    }

    /// The Kubernetes ConfigMap's `airlock.toml` is read without error, and
    /// every server it puts on all interfaces serves TLS (or the part would
    /// refuse to start), as every client it names speaks it.
    #[test]
    fn the_kubernetes_configuration_starts_every_part_with_tls() {
        let manifest =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/02-configmap.yaml"))
                .unwrap();
        let toml: String = manifest
            .lines()
            .skip_while(|l| l.trim() != "airlock.toml: |")
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
            .collect();
        assert!(toml.contains("[api]"), "{toml}");
        let dir = std::env::temp_dir().join(format!("airlock-k8s-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("airlock.toml");
        std::fs::write(&file, &toml).unwrap();
        let config = Config::load(Some(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(!config.api.addr.ip().is_loopback() && config.api.tls_cert_file.is_some());
        assert!(!config.api.cleartext_off_loopback);
        assert!(!config.api.grpc_addr.ip().is_loopback() && config.api.grpc_tls_cert_file.is_some());
        assert!(!config.api.grpc_cleartext_off_loopback);
        assert!(!config.recorder.addr.ip().is_loopback() && config.recorder.tls_cert_file.is_some());
        assert!(!config.recorder.cleartext_off_loopback);
        assert!(config.worker.control_plane_url.starts_with("https://") && config.worker.grpc_ca_file.is_some());
        assert!(config.recording().recorder_url.starts_with("https://"));
        assert!(!config.worker.grpc_cleartext_off_loopback && !config.worker.allow_cleartext_off_loopback);
        assert!(config.public_url().starts_with("https://"));
    }

    #[test]
    fn the_example_file_is_read_as_written() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/airlock.example.toml");
        let config = Config::load(Some(&example)).unwrap();
        assert_eq!(config.recorder.addr, addr("127.0.0.1:8082"));
        assert_eq!(config.recorder.backend, airlock_recorder::Backend::Local);
        assert_eq!(config.recorder.chunk_bytes, 1 << 20);
        config.recorder.validate().unwrap();
        let recording = config.recording();
        assert_eq!(recording.recorder_url, "http://127.0.0.1:8082");
        assert_eq!(recording.spool_dir, PathBuf::from("airlock-data/spool"));
        assert_eq!(recording.spool_max_bytes, 1 << 30);
        assert!(!recording.strict);
        assert!(recording.enabled);
        recording.validate().unwrap();
        // Off by default, every one of them.
        assert!(!config.api.grpc_cleartext_off_loopback && config.api.grpc_tls_cert_file.is_none());
        assert!(!config.api.cleartext_off_loopback && config.api.tls_cert_file.is_none());
        assert!(!config.recorder.cleartext_off_loopback && config.recorder.tls_cert_file.is_none());
        assert!(!config.worker.grpc_cleartext_off_loopback && config.worker.grpc_ca_file.is_none());
        assert_eq!((config.worker.max_logins_per_address, config.worker.login_ipv6_prefix), (128, 64));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_sections_and_top_level_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AIRLOCK_DATABASE__URL", "postgres://db/airlock");
            jail.set_env("AIRLOCK_WORKER__ADMIN_ADDR", "127.0.0.1:9999");
            jail.set_env("AIRLOCK_DATA_DIR", "/var/lib/airlock");
            jail.set_env("AIRLOCK_WORKER__RECORDING__STRICT", "true");
            jail.set_env("AIRLOCK_WORKER__RECORDING__ENABLED", "false");
            jail.set_env("AIRLOCK_RECORDINGS__PUBLIC_KEY_FILE", "/etc/airlock/recorder.pub");
            jail.set_env("AIRLOCK_API__GRPC_CLEARTEXT_OFF_LOOPBACK", "true");
            jail.set_env("AIRLOCK_API__CLEARTEXT_OFF_LOOPBACK", "true");
            jail.set_env("AIRLOCK_API__TLS_CERT_FILE", "/etc/airlock/api.crt");
            jail.set_env("AIRLOCK_RECORDER__CLEARTEXT_OFF_LOOPBACK", "true");
            jail.set_env("AIRLOCK_WORKER__GRPC_CLEARTEXT_OFF_LOOPBACK", "true");
            jail.set_env("AIRLOCK_WORKER__GRPC_CA_FILE", "/etc/airlock/grpc-ca.crt");
            jail.set_env("AIRLOCK_BUS__NATS_CA_FILE", "/etc/airlock/nats-ca.crt");
            jail.set_env("AIRLOCK_WORKER__TARGET_CA_FILE", "/etc/airlock/target-ca.crt");
            // The client verbs' variables are not settings.
            jail.set_env("AIRLOCK_URL", "http://elsewhere");
            jail.set_env("AIRLOCK_TOKEN", "t");
            let config = Config::load(None).unwrap();
            assert_eq!(config.database.url, "postgres://db/airlock");
            assert_eq!(config.worker.admin_addr, addr("127.0.0.1:9999"));
            assert_eq!(config.data_dir, PathBuf::from("/var/lib/airlock"));
            assert!(config.worker.recording.strict);
            assert!(!config.worker.recording.enabled);
            assert_eq!(config.recording().spool_dir, PathBuf::from("/var/lib/airlock/spool"));
            assert_eq!(config.recordings.public_key_file, Some(PathBuf::from("/etc/airlock/recorder.pub")));
            assert!(config.api.grpc_cleartext_off_loopback);
            assert!(config.api.cleartext_off_loopback);
            assert_eq!(config.api.tls_cert_file, Some(PathBuf::from("/etc/airlock/api.crt")));
            assert!(config.public_url().starts_with("https://"), "{}", config.public_url());
            assert!(config.recorder.cleartext_off_loopback);
            assert!(config.worker.grpc_cleartext_off_loopback);
            assert_eq!(config.worker.grpc_ca_file, Some(PathBuf::from("/etc/airlock/grpc-ca.crt")));
            assert_eq!(config.bus.nats_ca_file, Some(PathBuf::from("/etc/airlock/nats-ca.crt")));
            assert_eq!(config.worker.target_ca_file, Some(PathBuf::from("/etc/airlock/target-ca.crt")));
            // The control plane reads recordings where the recorder writes them.
            assert_eq!(config.recordings_store().local_dir(), PathBuf::from("/var/lib/airlock/recorder/recordings"));
            Ok(())
        });
    }
    #[test]
    #[allow(clippy::result_large_err)]
    fn the_console_signs_in_with_a_pasted_token_unless_an_oidc_provider_is_set() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Config::load(None).unwrap().console.options().unwrap().oidc, None);
            jail.set_env("AIRLOCK_CONSOLE__OIDC_ISSUER", "https://login.example.com/");
            // Half a provider is a mistake, not token paste.
            assert!(Config::load(None).unwrap().console.options().is_err());
            jail.set_env("AIRLOCK_CONSOLE__OIDC_CLIENT_ID", "airlock-console");
            let oidc = Config::load(None).unwrap().console.options().unwrap().oidc.unwrap();
            assert_eq!(oidc.issuer, "https://login.example.com/");
            assert_eq!(oidc.client_id, "airlock-console");
            assert_eq!(oidc.scopes, "openid profile email");
            jail.set_env("AIRLOCK_CONSOLE__OIDC_SCOPES", "profile email");
            assert!(Config::load(None).unwrap().console.options().is_err(), "scopes without openid");
            Ok(())
        });
    }
}
