//! The command handlers. REST and gRPC both call these, so the two APIs cannot
//! drift: each handler authenticates nothing itself (the caller passes the
//! verified principal), checks what the principal may do, validates the command
//! against the tenant's current state, and appends the resulting events.
//!
//! Writes to one tenant are serialized in this process (a per-tenant lock) and
//! the projection is caught up from the log before validating, so a command is
//! always checked against everything committed before it. Streams add optimistic
//! concurrency on top for writers in other processes.

mod access;
mod connections;
mod events;
mod grants;
mod integrations;
mod issuers;
mod policy;
mod sessions;
mod tenants;
mod tokens;
mod worker;

pub use worker::TenantSnapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use airlock_core::clock::Clock;
use airlock_core::principal::Principal;
use airlock_core::{Event, TenantId, TenantState, Tenants};
use airlock_identity::{Directory, Verifier};
use airlock_proto::EventRecord;
use anyhow::Context;
use tokio::sync::watch;

pub use access::{
    AccessRequestInput, AccessRequestView, DecisionInput, DecisionView, MAX_REQUEST_TTL_SECS, ReviewFilter, ReviewView,
};
pub use connections::{ConnectionInput, ConnectionView, CredentialInput};
pub use events::{EventPage, EventView};
pub use grants::{GrantInput, GrantView, RevokeInput};
pub(crate) use integrations::SLACK_BOT_TOKEN;
pub use integrations::{
    CreatedWebhook, DeliveryAttemptView, DeliveryView, SlackInput, SlackUserInput, SlackView, WebhookInput, WebhookView,
};
pub use issuers::{IssuerInput, IssuerView};
pub use policy::PolicyView;
pub(crate) use sessions::recording_error;
pub use sessions::{
    BadChunkView, RecordingState, Recordings, SessionDetail, SessionFilter, SessionPage, SessionView, TimelineView,
    VerifyView,
};
pub use tenants::{CreateTenantInput, CreatedTenant, TenantView};
pub use tokens::{MintTokenInput, MintedToken};

use crate::error::ApiError;
use crate::eventlog::{EventLog, ExpectedVersion};
use crate::secrets::SecretStore;

/// What the handlers need to know about the installation.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The URL Airlock is reached at; the `iss` of the tokens it mints.
    pub public_url: String,
    /// The shared secret data-plane workers present to the worker API.
    pub worker_token: String,
    /// What grants and reviews expire by; a test moves it.
    pub clock: Arc<dyn Clock>,
    /// Where session recordings are read for replay and verification (none: not configured).
    pub recordings: Option<Recordings>,
}

pub struct ControlPlane {
    log: Arc<dyn EventLog>,
    secrets: Arc<dyn SecretStore>,
    /// Notification deliveries and their attempts, for reading back.
    deliveries: Arc<dyn crate::notify::NotifyStore>,
    /// The sessions the log records, for listing.
    sessions: Arc<dyn crate::session_index::SessionIndex>,
    tenants: Arc<TenantsHandle>,
    verifier: Verifier,
    options: ServiceOptions,
    write_locks: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes tenant creation, which checks names across tenants.
    create_lock: tokio::sync::Mutex<()>,
    /// Bumped after every append, so subscribers wake without polling.
    appended: watch::Sender<u64>,
    /// Cancelled when the server stops: long polls answer with what they
    /// have and event streams end, instead of holding the stop.
    stopping: tokio_util::sync::CancellationToken,
    /// Private signing keys already read from the secret store, by kid.
    signing_keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

/// The projection of every tenant; the identity verifier reads it too.
#[derive(Default)]
pub struct TenantsHandle(RwLock<Tenants>);

impl TenantsHandle {
    pub fn read<T>(&self, f: impl FnOnce(&Tenants) -> T) -> T {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    fn write<T>(&self, f: impl FnOnce(&mut Tenants) -> T) -> T {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn directory(&self) -> &dyn Directory {
        &self.0
    }
}

impl ControlPlane {
    /// Loads every tenant's state from the log.
    pub async fn load(
        log: Arc<dyn EventLog>,
        secrets: Arc<dyn SecretStore>,
        deliveries: Arc<dyn crate::notify::NotifyStore>,
        sessions: Arc<dyn crate::session_index::SessionIndex>,
        verifier: Verifier,
        options: ServiceOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let (appended, _) = watch::channel(0);
        let cp = Arc::new(Self {
            log,
            secrets,
            deliveries,
            sessions,
            tenants: Arc::new(TenantsHandle::default()),
            verifier,
            options,
            write_locks: Mutex::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            appended,
            stopping: tokio_util::sync::CancellationToken::new(),
            signing_keys: Mutex::new(HashMap::new()),
        });
        for tenant in cp.log.tenants().await? {
            cp.catch_up(tenant)
                .await
                .with_context(|| format!("loading the event log of tenant {tenant} (run `airlock verify`)"))?;
        }
        Ok(cp)
    }

    pub fn tenants(&self) -> &Arc<TenantsHandle> {
        &self.tenants
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn now(&self) -> i64 {
        self.options.clock.now_unix()
    }

    pub fn public_url(&self) -> &str {
        &self.options.public_url
    }

    /// Verifies a bearer token and returns who it stands for.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, ApiError> {
        let token = bearer.ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?;
        let principal = self
            .verifier
            .verify(token, self.tenants.directory())
            .await
            .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
        if self.tenants.read(|t| t.get(&principal.tenant_id).is_none_or(|s| s.tenant_id.is_none())) {
            return Err(ApiError::unauthenticated("the token's tenant does not exist"));
        }
        Ok(principal)
    }

    /// Checks the worker token (constant time).
    pub fn authenticate_worker(&self, bearer: Option<&str>) -> Result<(), ApiError> {
        let given = bearer.ok_or_else(|| ApiError::unauthenticated("missing worker token"))?;
        let expected = self.options.worker_token.as_bytes();
        let given = given.as_bytes();
        let mut diff = u8::from(given.len() != expected.len());
        for (a, b) in given.iter().zip(expected.iter()) {
            diff |= a ^ b;
        }
        if diff != 0 || expected.is_empty() {
            return Err(ApiError::unauthenticated("invalid worker token"));
        }
        Ok(())
    }

    /// A watch that changes after every append.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Ends every wait for appends (`next_append`): the server is stopping.
    pub fn stop_waiting(&self) {
        self.stopping.cancel();
    }

    /// For a reader of the log that waits for something new: waits for the
    /// next append after `appended` was last marked, but at most until
    /// `deadline`, and at most half a second (appends by another control
    /// plane are seen only by reading again). False, without waiting, once
    /// the deadline has passed or the server is stopping: the reader
    /// answers with what it has.
    pub async fn next_append(&self, appended: &mut watch::Receiver<u64>, deadline: tokio::time::Instant) -> bool {
        let now = tokio::time::Instant::now();
        if now >= deadline || self.stopping.is_cancelled() {
            return false;
        }
        let poll = deadline.min(now + std::time::Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::timeout_at(poll, appended.changed()) => true,
            () = self.stopping.cancelled() => false,
        }
    }

    fn write_lock(&self, tenant: TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.write_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(tenant).or_default().clone()
    }

    /// Applies what other writers appended since our projection's `seq`.
    async fn catch_up(&self, tenant: TenantId) -> anyhow::Result<()> {
        loop {
            let from = self.tenants.read(|t| t.seq(&tenant)) + 1;
            let records = self.log.read(tenant, from, 1000).await?;
            if records.is_empty() {
                return Ok(());
            }
            self.apply_records(&records)?;
        }
    }

    fn apply_records(&self, records: &[EventRecord]) -> anyhow::Result<()> {
        for record in records {
            let tenant: TenantId = record.tenant_id.parse()?;
            let event = airlock_proto::convert::decode_event(&record.payload)?;
            self.tenants.write(|t| t.apply_at(tenant, record.seq, &event))?;
        }
        Ok(())
    }

    /// Runs `decide` against the tenant's current state under the tenant's write
    /// lock, and appends the events it returns.
    async fn command<T>(
        &self,
        tenant: TenantId,
        actor: &str,
        decide: impl FnOnce(&TenantState) -> Result<(Planned, T), ApiError>,
    ) -> Result<(Vec<EventRecord>, T), ApiError> {
        let lock = self.write_lock(tenant);
        let _guard = lock.lock().await;
        self.catch_up(tenant).await.map_err(|e| ApiError::internal("catch up with the event log", e))?;
        let state = self
            .tenants
            .read(|t| t.get(&tenant).cloned())
            .filter(|s| s.tenant_id.is_some())
            .ok_or_else(|| ApiError::not_found(format!("tenant {tenant}")))?;
        let (planned, out) = decide(&state)?;
        let records = self.append(tenant, actor, planned).await?;
        Ok((records, out))
    }

    /// Reads the tenant's state as the projection holds it, which includes what
    /// a command just appended: a command's reply is built from this rather
    /// than from a copy of the state with its events applied a second time.
    fn view_after<T>(
        &self,
        tenant: TenantId,
        what: &str,
        view: impl FnOnce(&TenantState) -> Option<T>,
    ) -> Result<T, ApiError> {
        self.tenants
            .read(|t| t.get(&tenant).and_then(view))
            .ok_or_else(|| ApiError::internal(what, "the appended state is not in the projection"))
    }

    async fn append(&self, tenant: TenantId, actor: &str, planned: Planned) -> Result<Vec<EventRecord>, ApiError> {
        if planned.events.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.log.append(tenant, &planned.stream, planned.expected, actor, &planned.events).await?;
        self.apply_records(&records).map_err(|e| ApiError::internal("apply appended events", e))?;
        self.appended.send_modify(|n| *n += 1);
        Ok(records)
    }
}

/// Events a command decided to append, and where.
struct Planned {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Event>,
}

impl Planned {
    fn one(stream: impl Into<String>, expected: ExpectedVersion, event: Event) -> Self {
        Self { stream: stream.into(), expected, events: vec![event] }
    }
}

fn require_tenant_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_tenant_admin() { Ok(()) } else { Err(ApiError::forbidden("this needs a tenant admin token")) }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
