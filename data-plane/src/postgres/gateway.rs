//! The Postgres gateway's listener and what its sessions share: the projection
//! to decide from, the token verifier, the control plane (for credentials and
//! session records), the recording spool, one admin connection per target (for
//! session roles), and the map that routes cancel requests to the right
//! upstream backend.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::connection::{ConnectionSpec, CredentialMode, TargetTls};
use airlock_core::{ConnectionId, TenantId};
use airlock_identity::Verifier;
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::Catalog;
use super::hook::StatementHook;
use super::roles::{RoleManager, TlsChoice};
use super::scram::SaltCache;
use super::upstream::{BackendKey, UpstreamOptions};
use crate::projection::Projection;
use crate::recording::Recorder;
use crate::session_events::SessionEvents;
use crate::sync::GrpcSource;
use crate::sync::grpc::Credential;

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Names this worker's session roles, so a restarted worker sweeps its own leftovers. Stable across restarts.
    pub worker_id: String,
    /// Accept the cleartext token from non-loopback clients without TLS (off by default).
    pub allow_cleartext_off_loopback: bool,
    /// The longest client message accepted (COPY data, Bind parameters).
    pub max_message_len: usize,
    /// Connecting and logging in to the target.
    pub connect_timeout: Duration,
    /// From accept until the client's token is checked: its startup, TLS
    /// handshake and password. A client that takes longer is told so and closed.
    pub login_timeout: Duration,
    /// Logins in progress at once from one client address (an IPv6 address
    /// by its `login_ipv6_prefix`): past it a client is told 53300 and
    /// closed once its startup message is read, so that no one source can
    /// hold every socket the gateway may open with logins that stall until
    /// `login_timeout`. At least 1.
    pub max_logins_per_address: usize,
    /// How many leading bits of an IPv6 client's address name its source for
    /// `max_logins_per_address`: 64 (the default) counts a /64, which one
    /// host may hold whole; 128 counts each address, for networks where many
    /// hosts share a /64 (a cloud subnet). 1 to 128.
    pub login_ipv6_prefix: u8,
    /// How often the TLS certificate and key files are read again, so that a
    /// renewed certificate is served without a restart.
    pub tls_reload_every: Duration,
    /// What targets' certificates must chain to (`upstream::target_roots`).
    /// `None`: `verify-ca` and `verify-full` fail.
    pub target_roots: Option<super::upstream::TargetRoots>,
    /// Session threads. Each runs a single-threaded runtime, and a session lives
    /// on one of them from accept to close, client and target sockets alike: no
    /// cross-thread wake-up on the relay path. 0: the caller's runtime serves
    /// sessions.
    pub session_threads: usize,
    /// The most admin connections held to each target (at least one is used).
    pub admin_connections: usize,
    /// How much of the target's answers a session reads while its write to
    /// the target waits, before it forwards them and writes the rest later
    /// (see `session::write_watched`).
    pub read_ahead_limit: usize,
    /// Logins in progress at once from every address together: past it a
    /// login is refused as past `max_logins_per_address`, so that many
    /// sources (a botnet, the /64s of one IPv6 site) cannot hold the
    /// gateway's sockets with logins that never finish.
    pub max_logins: usize,
    /// The longest message of the target's a masked session holds whole to
    /// mask it; a longer one ends the session (54000) before it is read
    /// whole. Sessions without masking pass long messages on as they come.
    pub masked_message_max: usize,
    /// How long sessions may go on once the worker is asked to stop, while
    /// new logins are refused (57P03) and the worker reports itself not
    /// ready ([`Gateway::drain`]); `None` ends them at once.
    pub drain: Option<Duration>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            worker_id: "worker".into(),
            allow_cleartext_off_loopback: false,
            max_message_len: super::protocol::DEFAULT_MAX_FRONTEND_MESSAGE_LEN,
            connect_timeout: Duration::from_secs(10),
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            max_logins_per_address: DEFAULT_MAX_LOGINS_PER_ADDRESS,
            login_ipv6_prefix: DEFAULT_LOGIN_IPV6_PREFIX,
            tls_reload_every: airlock_proto::certs::RELOAD_EVERY,
            target_roots: None,
            session_threads: 0,
            admin_connections: super::roles::ADMIN_CONNECTIONS,
            read_ahead_limit: DEFAULT_READ_AHEAD_LIMIT,
            max_logins: DEFAULT_MAX_LOGINS,
            masked_message_max: DEFAULT_MASKED_MESSAGE_MAX,
            drain: None,
        }
    }
}

/// `GatewayOptions::masked_message_max` by default: 64 MiB. A few sessions
/// holding a message each stay well within a worker's memory; Postgres
/// allows values up to 1 GiB, which a deployment masking such values raises
/// it to.
pub const DEFAULT_MASKED_MESSAGE_MAX: usize = 64 << 20;

/// What a session reads of the target's answers while a write to the target
/// waits, at most, before it passes them on.
pub const DEFAULT_READ_AHEAD_LIMIT: usize = 8 << 20;

/// Postgres's own `authentication_timeout`.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A login takes milliseconds: many clients of one address (a NAT's, a CI
/// runner's) starting together stay far below this.
pub const DEFAULT_MAX_LOGINS_PER_ADDRESS: usize = 128;

/// Logins in progress from everywhere together: sixteen addresses at their
/// own cap; far more than logins that take milliseconds ever reach.
pub const DEFAULT_MAX_LOGINS: usize = 2048;

/// IPv6 clients count by their /64 (`GatewayOptions::login_ipv6_prefix`).
pub const DEFAULT_LOGIN_IPV6_PREFIX: u8 = 64;

/// A target's admin connections, with the credential version they log in
/// with: opened by the first login that needs them, while the others wait for
/// that target alone.
type AdminConnection = (u64, Arc<tokio::sync::OnceCell<Arc<RoleManager>>>);

/// Where a connection points. Admin connections and catalogs are kept per
/// target: an update that points the connection elsewhere (another address,
/// database or TLS setting, with the same credential) gets new ones, rather
/// than session roles made on the old target and relations read from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    address: String,
    database: String,
    tls: TargetTls,
}

impl Target {
    fn of(spec: &ConnectionSpec) -> Self {
        Target { address: spec.address.clone(), database: spec.database.clone(), tls: spec.tls }
    }

    fn is_where(&self, spec: &ConnectionSpec) -> bool {
        self.address == spec.address && self.database == spec.database && self.tls == spec.tls
    }
}

/// A connection of a tenant, at one target.
type AtTarget = (TenantId, ConnectionId, Target);

/// Where a cancel request for a gateway-issued key goes.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    /// The session's tenant, whose share of the forwarding it takes.
    pub tenant: TenantId,
    pub upstream: UpstreamOptions,
    pub key: BackendKey,
    /// Wakes the session when it is waiting on a held statement: a cancel then
    /// ends the wait, as it would end a running statement.
    pub held: Arc<tokio::sync::Notify>,
}

/// What the gateway keeps per connection of a tenant.
type ByConnection<T> = HashMap<(TenantId, ConnectionId), T>;

/// A session role whose drop failed, kept for another try (`retry_drops`).
pub(crate) struct Undropped {
    pub tenant: TenantId,
    /// The connection as it was when the role was made: the role lives on its target.
    pub connection: ConnectionSpec,
    pub name: String,
    /// The admin connections it was made with, which hold the credential of
    /// that time: a removed connection's is not handed out again, and one
    /// moved since may need another credential at its new target.
    pub manager: Arc<RoleManager>,
}

/// A static credential's salt cache, with the credential's version.
type VersionedSaltCache = (u64, Arc<SaltCache>);

pub struct Gateway {
    /// This run of the worker: random at each start, written in the comment of
    /// each session role made, so that a sweep (`open_admin`) leaves them.
    pub(crate) run: String,
    pub(crate) projection: Arc<Projection>,
    pub(crate) verifier: Verifier,
    pub(crate) control_plane: GrpcSource,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) options: GatewayOptions,
    pub(crate) hook: Arc<dyn StatementHook>,
    /// Where every session is recorded (`None`: nothing is, see `PostgresOptions::recording`).
    pub(crate) recorder: Option<Recorder>,
    /// Gateway-issued (pid, key) → the upstream backend's. Entries live as long as their session.
    pub(crate) cancels: Mutex<HashMap<(i32, [u8; 4]), CancelTarget>>,
    /// Cancels passed on by other workers being forwarded now (`pass_cancels`).
    forwarding: Arc<Forwarding>,
    /// Each connection's stored credential, fetched once per version. Each
    /// has a lock of its own: a fetch that waits on the control plane holds
    /// up the logins to that connection only.
    credentials: Mutex<ByConnection<Arc<tokio::sync::Mutex<Option<Credential>>>>>,
    /// Static credentials' salted passwords, by the credential's version.
    salt_caches: Mutex<ByConnection<VersionedSaltCache>>,
    /// The admin connections of each target, with the credential version they log in with.
    admins: tokio::sync::Mutex<HashMap<AtTarget, AdminConnection>>,
    /// The runtime the gateway was made on, which opens and drives admin
    /// connections (session threads' runtimes stop one by one at shutdown,
    /// while other sessions still drop their roles).
    pub(crate) runtime: tokio::runtime::Handle,
    /// What `serve` was given to track its sessions in, which the worker
    /// waits for at its stop: background work sessions leave behind them
    /// (a review to withdraw) is tracked there too (`spawn_behind`).
    behind: std::sync::OnceLock<TaskTracker>,
    /// What each target's catalog says of the relations results come from.
    catalogs: Mutex<HashMap<AtTarget, Arc<Catalog>>>,
    /// Sessions' opening and closing, on their way to the control plane's log.
    pub(crate) session_events: SessionEvents,
    /// Where cancel requests for sessions other workers hold are passed on
    /// (`pass_cancels`).
    bus: Arc<dyn airlock_proto::bus::Bus>,
    /// Session roles whose drop failed (the target away), with the target's
    /// tenant and connection as they were, and when each is tried next:
    /// retried by `retry_drops`.
    undropped: Mutex<Vec<(Undropped, NextTry)>>,
    /// `retry_drops` has made its last round: a drop that fails now is left
    /// to the next start's sweep.
    drops_stopped: AtomicBool,
    /// Logins in progress, by where they come from (`LoginSource`), and in all.
    logins: Mutex<(HashMap<LoginSource, usize>, usize)>,
    /// Refusals past `max_logins_per_address` taken as far as the startup message (`start_refusal`).
    refusals: AtomicUsize,
    /// Logins refused past the cap since the last warning of them, and when that was.
    refused: Mutex<(u64, Option<std::time::Instant>)>,
    /// What `metrics` reports besides what it reads from the maps above.
    counts: Counts,
}

/// The gateway's counters, for the worker's `/metrics`.
#[derive(Default)]
struct Counts {
    /// Sessions relaying now (admitted, their target logged in to).
    sessions_live: AtomicUsize,
    /// Clients being served, from their connection (login included) to
    /// their session's end: what `Gateway::drain` waits for.
    under_way: AtomicUsize,
    /// Woken when the last client being served is done.
    all_done: tokio::sync::Notify,
    /// The gateway refuses new logins: it is draining before its stop.
    draining: std::sync::atomic::AtomicBool,
    sessions_started: AtomicU64,
    logins_refused_past_the_cap: AtomicU64,
    /// Session roles a round of `retry_drops` took out of `undropped` and
    /// has not tried yet: still awaiting their drop.
    drops_in_round: AtomicUsize,
}

/// A session counted live until dropped (`Gateway::session_started`).
pub(crate) struct LiveSession<'a>(&'a AtomicUsize);

impl Drop for LiveSession<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client counted as being served until dropped (`Gateway::under_way`).
pub(crate) struct UnderWay<'a>(&'a Counts);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if self.0.under_way.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.all_done.notify_waiters();
        }
    }
}

/// Refusals past the login cap that go through TLS and the startup message
/// at once, so that the client can read why; past these the refusal is sent
/// at once (which a TLS client cannot read, but which holds nothing).
const REFUSALS_AT_ONCE: usize = 64;

/// How long a login waits for its connection's credential from the control
/// plane (which answers in milliseconds when it is up).
const CREDENTIAL_WAIT: Duration = Duration::from_secs(10);

/// How often logins refused past the cap are warned of.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// A refusal in progress (`Gateway::start_refusal`), counted until dropped.
pub(crate) struct RefusalSlot<'a>(&'a AtomicUsize);

impl Drop for RefusalSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where logins come from, as `max_logins_per_address` counts them: an IPv4
/// address (also when mapped into IPv6), or an IPv6 prefix of
/// `login_ipv6_prefix` bits (its length kept with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LoginSource {
    V4(std::net::Ipv4Addr),
    V6Prefix(Ipv6Addr, u8),
}

impl LoginSource {
    pub(crate) fn of(peer: IpAddr, v6_prefix: u8) -> Self {
        match peer {
            IpAddr::V4(v4) => LoginSource::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => LoginSource::V4(v4),
                None => {
                    let bits = v6_prefix.min(128);
                    let mask = u128::MAX.checked_shl(u32::from(128 - bits)).unwrap_or(0);
                    LoginSource::V6Prefix(Ipv6Addr::from(u128::from(v6) & mask), bits)
                }
            },
        }
    }
}

impl std::fmt::Display for LoginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginSource::V4(v4) => write!(f, "{v4}"),
            LoginSource::V6Prefix(address, 128) => write!(f, "{address}"),
            LoginSource::V6Prefix(prefix, bits) => write!(f, "{prefix}/{bits}"),
        }
    }
}

/// Why a login was refused before it began: too many in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginCap {
    /// From its source (`max_logins_per_address`).
    Source(LoginSource),
    /// From everywhere (`max_logins`).
    Everywhere,
}

/// The most cancels passed on by other workers that are forwarded at once
/// for the sessions of one tenant: a tenant whose targets are slow to take
/// them (each holds a connection up to the connect timeout) holds up its
/// own, not another tenant's.
const FORWARDS_AT_ONCE: usize = 64;

/// The most forwarded at once for every tenant together.
const FORWARDS_AT_ONCE_IN_ALL: usize = 1024;

/// Cancels passed on by other workers and being forwarded, by session key:
/// a cancel for a session whose last one is still on its way, or past
/// `FORWARDS_AT_ONCE` of its tenant or `FORWARDS_AT_ONCE_IN_ALL`, is dropped
/// (a client repeats a cancel that did not take; one that floods a worker
/// with its key's cancels gets one at a time).
#[derive(Default)]
struct Forwarding(Mutex<InForwarding>);

#[derive(Default)]
struct InForwarding {
    keys: std::collections::HashSet<(i32, [u8; 4])>,
    by_tenant: HashMap<TenantId, usize>,
}

/// A cancel being forwarded, until dropped.
struct Forward {
    all: Arc<Forwarding>,
    tenant: TenantId,
    key: (i32, [u8; 4]),
}

impl Forwarding {
    fn begin(all: &Arc<Forwarding>, tenant: TenantId, key: (i32, [u8; 4])) -> Option<Forward> {
        let mut now = all.0.lock().unwrap_or_else(|e| e.into_inner());
        let InForwarding { keys, by_tenant } = &mut *now;
        let of_tenant = by_tenant.entry(tenant).or_default();
        if keys.len() >= FORWARDS_AT_ONCE_IN_ALL || *of_tenant >= FORWARDS_AT_ONCE || !keys.insert(key) {
            if *of_tenant == 0 {
                by_tenant.remove(&tenant);
            }
            return None;
        }
        *of_tenant += 1;
        Some(Forward { all: all.clone(), tenant, key })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let mut now = self.all.0.lock().unwrap_or_else(|e| e.into_inner());
        now.keys.remove(&self.key);
        count_down(&mut now.by_tenant, self.tenant);
    }
}

/// A login in progress, counted against its source until dropped.
pub(crate) struct LoginSlot<'a> {
    gateway: &'a Gateway,
    source: LoginSource,
}

impl Drop for LoginSlot<'_> {
    fn drop(&mut self) {
        let mut guard = self.gateway.logins.lock().unwrap_or_else(|e| e.into_inner());
        let (logins, total) = &mut *guard;
        *total = total.saturating_sub(1);
        count_down(logins, self.source);
    }
}

/// One fewer of `key` in `counts`; a key counted down to none is forgotten.
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Entry::Occupied(mut count) = counts.entry(key) {
        *count.get_mut() = count.get().saturating_sub(1);
        if *count.get() == 0 {
            count.remove();
        }
    }
}

/// The most session roles waiting for another try at their drop; past it,
/// the next start's sweep drops them (or their `VALID UNTIL` ends them).
const MAX_UNDROPPED: usize = 10_000;
/// How often failed drops are tried again while their target is away.
const RETRY_DROPS_EVERY: Duration = Duration::from_secs(5);
/// The longest wait before trying again a drop that the target refused.
const MAX_DROP_BACKOFF: Duration = Duration::from_secs(600);

/// When a session role waiting for its drop is tried next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NextTry {
    /// How many times the target refused the drop.
    refusals: u32,
    at: tokio::time::Instant,
}

impl NextTry {
    /// At the next round.
    fn now() -> Self {
        NextTry { refusals: 0, at: tokio::time::Instant::now() }
    }

    /// After the target refused the drop once more: `RETRY_DROPS_EVERY`,
    /// doubled with each refusal so far, up to `MAX_DROP_BACKOFF`. A drop
    /// that cannot succeed (the role owns objects in another database) is
    /// not tried every few seconds for ever; a target that is only away is
    /// (`retry_target`), so its roles go soon after it is back.
    fn refused(self) -> Self {
        let refusals = self.refusals.saturating_add(1);
        let wait = RETRY_DROPS_EVERY.saturating_mul(1u32.checked_shl(refusals).unwrap_or(u32::MAX));
        NextTry { refusals, at: tokio::time::Instant::now() + wait.min(MAX_DROP_BACKOFF) }
    }
}

/// Whether a failed drop reached the target: the target refused it (the role
/// still owns objects elsewhere, a lock it waited for), rather than being
/// away (or its admin connection lost) or out of connections for now.
fn target_refused(e: &super::roles::RoleError) -> bool {
    use super::roles::RoleError;
    !matches!(
        e,
        RoleError::Connect(_) | RoleError::ConnectionLimit(_) | RoleError::Lost { .. } | RoleError::AdminUnavailable
    )
}

/// Session roles grouped by the target they were made on (the admin
/// connections that made them, by address: see `target_of`), each group in
/// the order the roles came.
fn by_target(roles: Vec<(Undropped, NextTry)>) -> Vec<(usize, Vec<(Undropped, NextTry)>)> {
    let mut groups: Vec<(usize, Vec<(Undropped, NextTry)>)> = Vec::new();
    for role in roles {
        let target = target_of(&role.0);
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, group)) => group.push(role),
            None => groups.push((target, vec![role])),
        }
    }
    groups
}

/// The address of the admin connections a role waiting for its drop holds:
/// it names them as long as the role holds them.
fn target_of(role: &Undropped) -> usize {
    Arc::as_ptr(&role.manager).addr()
}
/// How long a stopping gateway tries them a last time.
const FINAL_DROPS_WITHIN: Duration = Duration::from_secs(5);

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        projection: Arc<Projection>,
        verifier: Verifier,
        control_plane: GrpcSource,
        tls: Option<TlsAcceptor>,
        options: GatewayOptions,
        hook: Arc<dyn StatementHook>,
        recorder: Option<Recorder>,
        session_events: SessionEvents,
        bus: Arc<dyn airlock_proto::bus::Bus>,
    ) -> Arc<Self> {
        Arc::new(Self {
            run: format!("{:032x}", rand::random::<u128>()),
            projection,
            verifier,
            control_plane,
            tls,
            options,
            hook,
            recorder,
            cancels: Mutex::new(HashMap::new()),
            forwarding: Arc::default(),
            credentials: Mutex::new(HashMap::new()),
            salt_caches: Mutex::default(),
            admins: tokio::sync::Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            behind: std::sync::OnceLock::new(),
            catalogs: Mutex::new(HashMap::new()),
            session_events,
            bus,
            undropped: Mutex::new(Vec::new()),
            drops_stopped: AtomicBool::new(false),
            logins: Mutex::new((HashMap::new(), 0)),
            refusals: AtomicUsize::new(0),
            refused: Mutex::new((0, None)),
            counts: Counts::default(),
        })
    }

    /// Forwards a client's cancel request to the target of the session it
    /// names, when this worker holds it; otherwise passes it on to the
    /// other workers (`pass_cancels`). An unknown key gets no answer either
    /// way, as from Postgres itself.
    pub(crate) async fn cancel(&self, pid: i32, key: [u8; 4]) {
        if self.cancel_here(pid, key).await {
            return;
        }
        if let Err(e) = self.bus.publish_cancel(airlock_proto::bus::CancelRequest { pid, key }).await {
            tracing::warn!("failed to pass a cancel request on to the other workers: {e:#}");
        }
    }

    /// Forwards a cancel request for a session this worker holds; false when
    /// it holds none with that key.
    async fn cancel_here(&self, pid: i32, key: [u8; 4]) -> bool {
        let Some(target) = self.held_session(pid, key) else { return false };
        Self::forward_cancel(target).await;
        true
    }

    fn held_session(&self, pid: i32, key: [u8; 4]) -> Option<CancelTarget> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner()).get(&(pid, key)).cloned()
    }

    async fn forward_cancel(target: CancelTarget) {
        // Only a session waiting right now is woken: a cancel with nothing running
        // must not cancel the next statement.
        target.held.notify_waiters();
        Self::cancel_upstream(&target).await;
    }

    async fn cancel_upstream(target: &CancelTarget) {
        if let Err(e) = super::upstream::cancel(&target.upstream, &target.key).await {
            tracing::warn!("failed to forward a cancel request: {e}");
        }
    }

    /// Takes the cancel requests other workers pass on, until `cancel`, and
    /// forwards those for sessions this worker holds. A subscription that
    /// fails or ends is made again, after a pause that grows to 30 s.
    pub async fn pass_cancels(self: Arc<Self>, cancel: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        loop {
            match self.bus.subscribe_cancels().await {
                Ok(mut requests) => loop {
                    let request = tokio::select! {
                        request = requests.next() => request,
                        () = cancel.cancelled() => return,
                    };
                    let Some(request) = request else {
                        tracing::warn!("the bus stopped passing cancel requests on; subscribing again");
                        break;
                    };
                    pause = Duration::from_millis(500);
                    // Looked up here; forwarded on a task of its own, so that one
                    // target slow to take a cancel holds up no other. Each opens a
                    // connection to the target: at most one per session at a
                    // time, and a bounded number in all, however many come.
                    if let Some(target) = self.held_session(request.pid, request.key) {
                        // A statement held here for review is cancelled here,
                        // whatever the bound: it costs no connection.
                        target.held.notify_waiters();
                        match Forwarding::begin(&self.forwarding, target.tenant, (request.pid, request.key)) {
                            Some(forwarding) => {
                                tokio::spawn(async move {
                                    Self::cancel_upstream(&target).await;
                                    drop(forwarding);
                                });
                            }
                            None => tracing::debug!("a cancel passed on by another worker is already being forwarded"),
                        }
                    }
                },
                Err(e) => tracing::error!("cancel requests other workers take cannot reach this one: {e:#}"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    /// Counts a session as relaying until the guard is dropped.
    pub(crate) fn session_started(&self) -> LiveSession<'_> {
        self.counts.sessions_started.fetch_add(1, Ordering::Relaxed);
        self.counts.sessions_live.fetch_add(1, Ordering::AcqRel);
        LiveSession(&self.counts.sessions_live)
    }

    /// Counts a client as being served, from its connection to its
    /// session's end, and tells whether the gateway is draining, in which
    /// case the client is to be refused. Counted before the flag is read,
    /// and the drain sets the flag before it reads the count (both
    /// sequentially consistent): a client the drain does not wait for is
    /// one that sees it draining.
    pub(crate) fn under_way(&self) -> (UnderWay<'_>, bool) {
        self.counts.under_way.fetch_add(1, Ordering::SeqCst);
        (UnderWay(&self.counts), self.counts.draining.load(Ordering::SeqCst))
    }

    /// Whether the gateway is draining: new logins are refused, and the
    /// worker is not ready.
    pub fn draining(&self) -> bool {
        self.counts.draining.load(Ordering::SeqCst)
    }

    /// The first part of the worker's stop, when `GatewayOptions::drain` is
    /// set: refuses new logins from now on and waits, at most that long, for
    /// the clients being served (`under_way`) to be done, their sessions
    /// ended of their own accord; the stop then ends the rest. Cancel
    /// requests are still passed on, and revocation and expiry still end
    /// sessions meanwhile. A login under way when the drain begins goes on,
    /// and its session is waited for.
    pub async fn drain(&self) {
        let Some(within) = self.options.drain else { return };
        self.counts.draining.store(true, Ordering::SeqCst);
        let under_way = || self.counts.under_way.load(Ordering::SeqCst);
        if under_way() == 0 {
            return;
        }
        tracing::info!(
            clients = under_way(),
            "draining: refusing new logins, letting sessions end for up to {within:?}"
        );
        let all_done = async {
            loop {
                let done = self.counts.all_done.notified();
                tokio::pin!(done);
                // Registered before the count is read: an end in between wakes it.
                done.as_mut().enable();
                if under_way() == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(within, all_done).await.is_err() {
            tracing::info!(clients = under_way(), "draining over: ending the sessions still open");
        }
    }

    /// The gateway's figures in Prometheus's text format, for the worker's
    /// `/metrics`.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let waiting = self.undropped.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.counts.drops_in_round.load(Ordering::Acquire);
        let figures: [(&str, &str, &str, u64); 4] = [
            (
                "airlock_gateway_sessions",
                "gauge",
                "Postgres sessions relaying now.",
                self.counts.sessions_live.load(Ordering::Acquire) as u64,
            ),
            (
                "airlock_gateway_sessions_started_total",
                "counter",
                "Postgres sessions admitted and logged in to their target.",
                self.counts.sessions_started.load(Ordering::Relaxed),
            ),
            (
                "airlock_gateway_logins_refused_past_the_cap_total",
                "counter",
                "Logins refused because their address had worker.max_logins_per_address in progress, or the gateway worker.max_logins.",
                self.counts.logins_refused_past_the_cap.load(Ordering::Relaxed),
            ),
            (
                "airlock_gateway_session_roles_awaiting_drop",
                "gauge",
                "Session roles whose drop failed (their target away or refusing it), waiting for another try.",
                waiting as u64,
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }

    /// A refusal past the login cap that may take the client through TLS
    /// and its startup message, unless `REFUSALS_AT_ONCE` already do.
    pub(crate) fn start_refusal(&self) -> Option<RefusalSlot<'_>> {
        self.refusals
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < REFUSALS_AT_ONCE).then_some(n + 1))
            .ok()
            .map(|_| RefusalSlot(&self.refusals))
    }

    /// Counts a login refused past the cap; warns at most every
    /// `REFUSAL_WARNING_EVERY`, with how many there were.
    fn refused_past_the_cap(&self, source: LoginSource, cap: LoginCap) {
        self.counts.logins_refused_past_the_cap.fetch_add(1, Ordering::Relaxed);
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.0 += 1;
        let now = std::time::Instant::now();
        if refused.1.is_none_or(|at| now.duration_since(at) >= REFUSAL_WARNING_EVERY) {
            let (setting, most, whence) = match cap {
                LoginCap::Source(_) => {
                    ("worker.max_logins_per_address", self.options.max_logins_per_address, "from one address")
                }
                LoginCap::Everywhere => ("worker.max_logins", self.options.max_logins, "from every address together"),
            };
            tracing::warn!(
                latest = %source,
                refused = refused.0,
                "refused logins past {setting} ({most}): too many in progress {whence}"
            );
            *refused = (0, Some(now));
        }
    }

    /// Counts a login from `peer` until the slot is dropped; `Err` when its
    /// source has `max_logins_per_address` in progress, or every source
    /// together `max_logins`.
    pub(crate) fn start_login(&self, peer: IpAddr) -> Result<LoginSlot<'_>, LoginCap> {
        let source = LoginSource::of(peer, self.options.login_ipv6_prefix);
        let mut guard = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        let (logins, total) = &mut *guard;
        let cap = if *total >= self.options.max_logins {
            Some(LoginCap::Everywhere)
        } else if logins.get(&source).is_some_and(|n| *n >= self.options.max_logins_per_address) {
            Some(LoginCap::Source(source))
        } else {
            None
        };
        if let Some(cap) = cap {
            drop(guard);
            self.refused_past_the_cap(source, cap);
            return Err(cap);
        }
        *logins.entry(source).or_insert(0) += 1;
        *total += 1;
        Ok(LoginSlot { gateway: self, source })
    }

    /// Keeps a session role whose drop failed for another try at the next
    /// round of `retry_drops`.
    pub(crate) fn drop_later(&self, waiting: Undropped) {
        self.retry_at(waiting, NextTry::now());
    }

    fn retry_at(&self, waiting: Undropped, next: NextTry) {
        if self.drops_stopped.load(Ordering::Acquire) {
            tracing::warn!(role = %waiting.name, "stopping: a session role is left for the next start's sweep");
            return;
        }
        let mut undropped = self.undropped.lock().unwrap_or_else(|e| e.into_inner());
        if undropped.len() >= MAX_UNDROPPED {
            tracing::error!(role = %waiting.name, "{MAX_UNDROPPED} session roles wait for their drop already; the next start drops this one");
            return;
        }
        undropped.push((waiting, next));
    }

    /// Tries the failed drops again until `cancel`, and once more then (for at
    /// most a few seconds): a target that was away (restarting, unreachable)
    /// gets its session roles dropped once it is back. Every few seconds the
    /// roles that are due (`NextTry`) are tried, each target's in turn
    /// (`retry_target`) and the targets side by side: a target that does not
    /// answer holds up neither the other targets' drops nor, while it keeps
    /// one try waiting, another try of its own. Each try goes where the role
    /// was made, through the admin connections that made it, or new ones when
    /// the connection's credential changed since (the target's admin password
    /// may have).
    ///
    /// It also forgets what the gateway kept for targets no connection points
    /// at any more (`forget_removed`): when the projection changes, and after
    /// each target's tries.
    pub async fn retry_drops(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes = self.projection.changes();
        let mut retries = tokio::time::interval_at(tokio::time::Instant::now() + RETRY_DROPS_EVERY, RETRY_DROPS_EVERY);
        retries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching = true;
        // Targets being tried, by the address of their admin connections,
        // which `busy` holds so that it names no other meanwhile.
        let mut trying = futures::stream::FuturesUnordered::new();
        let mut busy: HashMap<usize, Arc<RoleManager>> = HashMap::new();
        loop {
            let stopping = tokio::select! {
                _ = retries.tick() => false,
                Some(target) = trying.next(), if !trying.is_empty() => {
                    busy.remove(&target);
                    // What the tries let go of (a role dropped at last, through the
                    // admin connections of a target no connection points at) goes now.
                    self.forget_removed();
                    continue;
                }
                changed = changes.changed(), if watching => {
                    match changed {
                        Ok(()) => self.forget_removed(),
                        Err(_) => watching = false,
                    }
                    continue;
                }
                () = cancel.cancelled() => true,
            };
            let targets = {
                let mut undropped = self.undropped.lock().unwrap_or_else(|e| e.into_inner());
                let now = tokio::time::Instant::now();
                // The last round tries every role, due or not, also beside a
                // try of its target under way.
                let (due, later) =
                    std::mem::take(&mut *undropped).into_iter().partition::<Vec<_>, _>(|(role, next)| {
                        stopping || (next.at <= now && !busy.contains_key(&target_of(role)))
                    });
                *undropped = later;
                self.counts.drops_in_round.fetch_add(due.len(), Ordering::AcqRel);
                by_target(due)
            };
            for (target, roles) in targets {
                if let Some((role, _)) = roles.first() {
                    busy.insert(target, role.manager.clone());
                }
                let gateway = &*self;
                trying.push(async move {
                    gateway.retry_target(roles).await;
                    target
                });
            }
            if stopping {
                let finishing = async { while trying.next().await.is_some() {} };
                let _ = tokio::time::timeout(FINAL_DROPS_WITHIN, finishing).await;
                self.drops_stopped.store(true, Ordering::Release);
                let left = self.undropped.lock().unwrap_or_else(|e| e.into_inner()).len()
                    + self.counts.drops_in_round.load(Ordering::Acquire);
                if left > 0 {
                    tracing::warn!("stopping with {left} session roles not dropped; the next start drops them");
                }
                return;
            }
        }
    }

    /// Tries to drop one target's session roles, one after the other. When
    /// the target cannot be reached, the roles not tried yet wait for the next
    /// round: one try a round tells whether it is back.
    async fn retry_target(&self, roles: Vec<(Undropped, NextTry)>) {
        let mut roles = roles.into_iter();
        while let Some((mut waiting, next)) = roles.next() {
            let (tenant, id) = (waiting.tenant, waiting.connection.id);
            let changed = self
                .projection
                .read(|t| t.get(&tenant).and_then(|s| s.connections.get(&id)).map(|c| c.secret_version))
                .filter(|version| *version > waiting.connection.secret_version);
            if let Some(version) = changed {
                let mut connection = waiting.connection.clone();
                connection.secret_version = version;
                match self.role_manager(tenant, &connection).await {
                    Ok(manager) => (waiting.connection, waiting.manager) = (connection, manager),
                    Err(e) => {
                        tracing::debug!(role = %waiting.name, "no admin connection with the new credential: {e:#}")
                    }
                }
            }
            match waiting.manager.drop_session_role(&waiting.name).await {
                Ok(()) => tracing::info!(role = %waiting.name, "dropped a session role on a later try"),
                Err(e) if target_refused(&e) => {
                    let next = next.refused();
                    let wait = next.at.saturating_duration_since(tokio::time::Instant::now());
                    tracing::warn!(role = %waiting.name, retry_in_s = wait.as_secs(), "the target refused a session role's drop: {e}");
                    self.retry_at(waiting, next);
                }
                Err(e) => {
                    tracing::debug!(role = %waiting.name, "a session role still cannot be dropped: {e}");
                    self.retry_at(waiting, next);
                    // Back in `undropped` first: the count never dips.
                    let untried: Vec<_> = roles.by_ref().collect();
                    let count = untried.len();
                    for (waiting, next) in untried {
                        self.retry_at(waiting, next);
                    }
                    self.counts.drops_in_round.fetch_sub(count, Ordering::AcqRel);
                }
            }
            // Back in `undropped` first, if it failed: the count never dips.
            self.counts.drops_in_round.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets what the gateway keeps for targets no connection points at any
    /// more (removed, or updated to point elsewhere): their admin connections,
    /// which close once no session holds them (so that the target can drop
    /// the admin role or the database), and catalogs; and a removed
    /// connection's credential (which stays in memory no longer) and salt
    /// cache. Admin connections stay while a session, or a session role
    /// waiting for its drop (`Undropped`), holds them.
    ///
    /// A pass is skipped while a login holds the admin connections (it may be
    /// connecting): the next change or round of tries comes back to it.
    fn forget_removed(&self) {
        if !self.projection.is_ready() {
            return;
        }
        let Ok(mut admins) = self.admins.try_lock() else {
            return;
        };
        let mut credentials = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        let mut salt_caches = self.salt_caches.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        let closed = self.projection.read(|t| {
            let spec = |tenant: &TenantId, id: &ConnectionId| t.get(tenant).and_then(|s| s.connections.get(id));
            let current = |(tenant, id, target): &AtTarget| spec(tenant, id).is_some_and(|c| target.is_where(c));
            let before = admins.len();
            // Kept while a login opens it (holding the cell) or a session holds it.
            admins.retain(|key, (_, cell)| {
                current(key) || Arc::strong_count(cell) > 1 || cell.get().is_some_and(|m| Arc::strong_count(m) > 1)
            });
            catalogs.retain(|key, catalog| current(key) || Arc::strong_count(catalog) > 1);
            let in_use = |(tenant, id): &(TenantId, ConnectionId)| {
                spec(tenant, id).is_some() || admins.keys().any(|(t, c, _)| t == tenant && c == id)
            };
            credentials.retain(|key, _| in_use(key));
            salt_caches.retain(|key, _| in_use(key));
            before - admins.len()
        });
        if closed > 0 {
            tracing::info!(targets = closed, "closing the admin connections of targets no connection points at");
        }
    }

    /// Runs `task` on the main runtime, apart from any session, where the
    /// worker's stop waits for it (when the gateway serves).
    pub(crate) fn spawn_behind(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match self.behind.get() {
            Some(tracker) => drop(tracker.spawn_on(task, &self.runtime)),
            None => drop(self.runtime.spawn(task)),
        }
    }

    /// Accepts clients until cancelled. Sessions run on the session threads
    /// (round robin), or in `tracker` when there are none; either way `tracker`
    /// is done only when every session has ended and dropped its role.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, cancel: CancellationToken, tracker: TaskTracker) {
        let _ = self.behind.set(tracker.clone());
        let lanes = self.session_lanes(&cancel, &tracker);
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // A client host that vanished (an agent's VM gone, a
                    // partition) is found out after the host's keepalive time,
                    // instead of holding its session and role until the grant ends.
                    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
                    if lanes.is_empty() {
                        tracker.spawn(super::session::run(self.clone(), stream, peer, cancel.clone()));
                        continue;
                    }
                    next = next.wrapping_add(1);
                    let Some(lane) = lanes.get(next % lanes.len()) else { continue };
                    // Moving a socket to another runtime: deregister it here first.
                    match stream.into_std() {
                        Ok(std_stream) => {
                            if lane.send((std_stream, peer)).await.is_err() {
                                tracing::error!("a session thread is gone; refusing {peer}");
                            }
                        }
                        Err(e) => tracing::warn!("failed to hand over a Postgres client: {e}"),
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("failed to accept a Postgres client: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Starts the session threads; returns where to send them clients.
    fn session_lanes(
        self: &Arc<Self>,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Vec<tokio::sync::mpsc::Sender<(std::net::TcpStream, SocketAddr)>> {
        let mut lanes = Vec::new();
        if self.options.session_threads == 0 {
            return lanes;
        }
        // Sessions' timers run on a runtime of their own (see `timers`).
        // Without it, sessions run on the caller's runtime, as with no session threads.
        let timers = match super::timers::shared_driver() {
            Ok(driver) => driver,
            Err(e) => {
                tracing::error!("failed to start the session threads' timers, serving sessions without them: {e}");
                return lanes;
            }
        };
        for i in 0..self.options.session_threads {
            // Bound: 1024 accepted clients waiting for their thread; accept waits beyond it.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(std::net::TcpStream, SocketAddr)>(1024);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let gateway = self.clone();
            let cancel = cancel.clone();
            let timers = timers.clone();
            let spawned = std::thread::Builder::new().name(format!("airlock-pg-{i}")).spawn(move || {
                // Sockets only: sessions' timers run on the timers' runtime.
                // (tokio's signal driver comes with its I/O driver all the
                // same, since the binary handles signals, and looks for one
                // on every park: one atomic load.)
                super::timers::run_on(timers);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("failed to start a session thread: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let sessions = TaskTracker::new();
                    while let Some((std_stream, peer)) = rx.recv().await {
                        match tokio::net::TcpStream::from_std(std_stream) {
                            Ok(stream) => {
                                sessions.spawn(super::session::run(gateway.clone(), stream, peer, cancel.clone()));
                            }
                            Err(e) => tracing::warn!("failed to take over a Postgres client: {e}"),
                        }
                    }
                    sessions.close();
                    sessions.wait().await;
                });
                let _ = done_tx.send(());
            });
            match spawned {
                Ok(_) => {
                    tracker.spawn(async move {
                        let _ = done_rx.await;
                    });
                    lanes.push(tx);
                }
                Err(e) => tracing::error!("failed to start a session thread: {e}"),
            }
        }
        lanes
    }

    /// Waits (briefly) until this worker has applied everything the log holds
    /// for `tenant`. Returns whether the projection moved, so a decision made
    /// before is worth making again. Only refusals of a verified token call
    /// this (one request to the control plane for the log's heads), so only a
    /// principal the tenant trusts can cause such requests, one per refused
    /// connection.
    pub(crate) async fn catch_up(&self, tenant: TenantId) -> bool {
        use crate::sync::Source;
        let before = self.projection.seq(&tenant);
        let head = match self.control_plane.heads().await {
            Ok(heads) => heads.into_iter().find(|(t, _)| *t == tenant).map_or(0, |(_, seq)| seq),
            Err(e) => {
                tracing::warn!("failed to read the log's heads: {e:#}");
                return false;
            }
        };
        if head <= before {
            return false;
        }
        // Behind the log: fetch what is missing now, in case the bus lost it,
        // instead of waiting for the next comparison of heads.
        self.projection.want_reconcile();
        let waited = super::timers::timeout(Duration::from_secs(2), self.projection.wait_for(&tenant, head)).await;
        waited.is_ok()
    }

    /// The connection's stored credential, read from the control plane once
    /// per version. Waits at most [`CREDENTIAL_WAIT`], its turn behind another
    /// login's fetch included: a control plane that stops answering fails
    /// the logins that need a credential it has not sent, and only those.
    pub(crate) async fn credential(&self, tenant: TenantId, spec: &ConnectionSpec) -> anyhow::Result<Credential> {
        let slot = {
            let mut slots = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry((tenant, spec.id)).or_default().clone()
        };
        let fetch = async {
            let mut slot = slot.lock().await;
            if let Some(c) = slot.as_ref().filter(|c| c.version >= spec.secret_version) {
                return Ok(c.clone());
            }
            let fresh = self.control_plane.connection_credential(tenant, spec.id).await?;
            *slot = Some(fresh.clone());
            anyhow::Ok(fresh)
        };
        super::timers::timeout(CREDENTIAL_WAIT, fetch).await.map_err(|_| {
            anyhow::anyhow!("the control plane did not send the credential of {} within {CREDENTIAL_WAIT:?}", spec.name)
        })?
    }

    /// Where the static credential of version `version` keeps its salted
    /// password between logins (a new cache for a new version).
    pub(crate) fn salt_cache(&self, tenant: TenantId, connection: ConnectionId, version: u64) -> Arc<SaltCache> {
        let mut caches = self.salt_caches.lock().unwrap_or_else(|e| e.into_inner());
        let entry = caches.entry((tenant, connection)).or_insert_with(|| (version, Arc::default()));
        if entry.0 != version {
            *entry = (version, Arc::default());
        }
        entry.1.clone()
    }

    /// The catalog of a target, as masking reads it.
    /// (Another server's OIDs name other relations: a catalog per target.)
    pub(crate) fn catalog(&self, tenant: TenantId, spec: &ConnectionSpec) -> Arc<Catalog> {
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        catalogs.entry((tenant, spec.id, Target::of(spec))).or_default().clone()
    }

    /// The admin connections that make session roles on this target.
    pub(crate) async fn role_manager(
        &self,
        tenant: TenantId,
        spec: &ConnectionSpec,
    ) -> anyhow::Result<Arc<RoleManager>> {
        let credential = self.credential(tenant, spec).await?;
        let key = (tenant, spec.id, Target::of(spec));
        // Held only to find the target's cell: opening its connections (up to
        // `connect_timeout` for a target that does not answer) holds up logins
        // to that target, not every tenant's.
        let cell = {
            let mut admins = self.admins.lock().await;
            match admins.get(&key) {
                // (One of a newer credential than a login read serves it too.)
                Some((version, cell)) if *version >= credential.version => cell.clone(),
                // One of an older credential closes once no session holds it.
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    admins.insert(key, (credential.version, cell.clone()));
                    cell
                }
            }
        };
        let manager = cell.get_or_try_init(|| self.open_admin(spec, &credential)).await?;
        Ok(manager.clone())
    }

    /// Opens the admin connections of `spec`'s target with `credential`, and
    /// sweeps the target before any session of this run makes a role there:
    /// the session roles of this worker's earlier runs (a crash, a kill -9),
    /// and any worker's whose grant has ended (a worker that never came back
    /// under the same id). A sweep that fails is logged; sessions go on.
    async fn open_admin(&self, spec: &ConnectionSpec, credential: &Credential) -> anyhow::Result<Arc<RoleManager>> {
        let manager = self.connect_admin(spec, credential).await?;
        let swept = async {
            let mut dropped = manager.sweep(&self.options.worker_id, &self.run).await?;
            dropped.extend(manager.sweep_expired().await?);
            anyhow::Ok(dropped)
        }
        .await;
        match swept {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(connection = %spec.name, dropped = dropped.len(), "removed session roles left by an earlier run");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(connection = %spec.name, "failed to sweep leftover session roles: {e:#}"),
        }
        Ok(manager)
    }

    async fn connect_admin(&self, spec: &ConnectionSpec, credential: &Credential) -> anyhow::Result<Arc<RoleManager>> {
        let (host, port) = split_address(&spec.address)?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user(&credential.user)
            .password(&credential.password)
            .dbname(&spec.database)
            .application_name("airlock")
            .connect_timeout(self.options.connect_timeout);
        let roots = self.options.target_roots.as_ref().and_then(|r| r.for_mode(spec.tls));
        let tls = admin_tls(spec, roots, &mut config)?;
        let manager =
            self.runtime.spawn(RoleManager::with_connections(config, tls, self.options.admin_connections)).await??;
        Ok(Arc::new(manager))
    }

    /// Sweeps every target a connection makes session roles on, all at once
    /// (see `open_admin`): started with the gateway, which serves meanwhile; a
    /// session waits only for the sweep of its own target.
    pub async fn sweep(&self) {
        let targets: Vec<(TenantId, ConnectionSpec)> = self.projection.read(|t| {
            t.created()
                .flat_map(|(tenant, s)| s.connections.values().map(|c| (*tenant, c.clone())))
                .filter(|(_, c)| c.credential_mode == CredentialMode::SessionRole)
                .collect()
        });
        let sweeps = targets.iter().map(|(tenant, spec)| async move {
            if let Err(e) = self.role_manager(*tenant, spec).await {
                tracing::warn!(connection = %spec.name, "failed to reach the target to sweep its session roles: {e:#}");
            }
        });
        futures::future::join_all(sweeps).await;
    }
}

/// TLS for the admin connection, following the connection's `tls` setting.
fn admin_tls(
    spec: &ConnectionSpec,
    roots: Option<Arc<rustls::RootCertStore>>,
    config: &mut tokio_postgres::Config,
) -> anyhow::Result<TlsChoice> {
    use tokio_postgres::config::SslMode;
    let (mode, choice) = match spec.tls {
        TargetTls::Disable => (SslMode::Disable, TlsChoice::Disable),
        mode => {
            let config = super::upstream::client_config(mode, roots)?;
            let ssl_mode = if mode == TargetTls::Prefer { SslMode::Prefer } else { SslMode::Require };
            (ssl_mode, TlsChoice::Rustls { config, names_checked: mode.verifies_name() })
        }
    };
    config.ssl_mode(mode);
    Ok(choice)
}

pub(crate) fn split_address(address: &str) -> anyhow::Result<(&str, u16)> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("address {address:?} has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host, port.parse()?))
}

/// A bound listener's address, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("postgres://<connection>.<role>@{addr}/<database>")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{FORWARDS_AT_ONCE, FORWARDS_AT_ONCE_IN_ALL, Forwarding, LoginSource, NextTry};
    use airlock_core::TenantId;

    #[test]
    fn cancels_from_other_workers_go_one_per_session_and_a_bounded_number_per_tenant() {
        let all = std::sync::Arc::new(Forwarding::default());
        let (tenant, neighbour) = (TenantId::new(), TenantId::new());
        let first = Forwarding::begin(&all, tenant, (7, [1, 2, 3, 4])).unwrap();
        assert!(Forwarding::begin(&all, tenant, (7, [1, 2, 3, 4])).is_none(), "one at a time per session");
        let other = Forwarding::begin(&all, tenant, (8, [1, 2, 3, 4])).unwrap();
        drop(first);
        let again = Forwarding::begin(&all, tenant, (7, [1, 2, 3, 4])).expect("free once the first is done");
        let more: Vec<_> = (100..)
            .take(FORWARDS_AT_ONCE - 2)
            .map(|pid| Forwarding::begin(&all, tenant, (pid, [0; 4])).unwrap())
            .collect();
        assert!(Forwarding::begin(&all, tenant, (9, [9; 4])).is_none(), "no more than {FORWARDS_AT_ONCE} at once");
        let beside = Forwarding::begin(&all, neighbour, (9, [9; 4])).expect("another tenant's are not held up");
        drop((other, again, more, beside));
        assert!(Forwarding::begin(&all, tenant, (9, [9; 4])).is_some());
        assert!(all.0.lock().unwrap().by_tenant.is_empty(), "a tenant with none on its way is forgotten");

        // Every tenant together is bounded too.
        let many: Vec<_> = (0..)
            .map_while(|pid| Forwarding::begin(&all, TenantId::new(), (pid + 1000, [1; 4])))
            .take(FORWARDS_AT_ONCE_IN_ALL + 1)
            .collect();
        assert_eq!(many.len(), FORWARDS_AT_ONCE_IN_ALL);
    }

    /// IPv4 clients count by address, also when they reach an IPv6 socket;
    /// IPv6 clients by their /64, any of whose addresses one host may use,
    /// or by the prefix configured.
    #[test]
    fn logins_count_by_address_and_ipv6_by_its_prefix() {
        let of = |ip: &str| LoginSource::of(ip.parse().unwrap(), 64);
        assert_eq!(of("10.0.0.7").to_string(), "10.0.0.7");
        assert_eq!(of("::ffff:10.0.0.7"), of("10.0.0.7"));
        assert_ne!(of("10.0.0.7"), of("10.0.0.8"));
        assert_eq!(of("2001:db8:1:2:aaaa::1"), of("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(of("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_ne!(of("2001:db8:1:2::1"), of("2001:db8:1:3::1"));
        assert_eq!(of("::1").to_string(), "::/64");

        // A cloud subnet's hosts share a /64: each address counts alone.
        let alone = |ip: &str| LoginSource::of(ip.parse().unwrap(), 128);
        assert_ne!(alone("2001:db8:1:2::1"), alone("2001:db8:1:2::2"));
        assert_eq!(alone("2001:db8:1:2::1").to_string(), "2001:db8:1:2::1");
        assert_eq!(alone("::ffff:10.0.0.7"), of("10.0.0.7"));
        // A site's /56, and the widest prefix there is.
        let site = |ip: &str| LoginSource::of(ip.parse().unwrap(), 56);
        assert_eq!(site("2001:db8:1:2ff::1"), site("2001:db8:1:200::9"));
        assert_ne!(site("2001:db8:1:2ff::1"), site("2001:db8:1:300::1"));
        assert_eq!(site("2001:db8:1:2ff::1").to_string(), "2001:db8:1:200::/56");
        assert_eq!(LoginSource::of("ffff::1".parse().unwrap(), 1).to_string(), "8000::/1");
    }

    /// A drop the target refuses is tried again after 10 s, then twice as
    /// long each time, never more than 10 minutes apart.
    #[test]
    fn a_refused_drop_waits_twice_as_long_each_time_up_to_ten_minutes() {
        let before = tokio::time::Instant::now();
        let mut next = NextTry::now();
        let mut waits = Vec::new();
        for _ in 0..9 {
            next = next.refused();
            waits.push((next.at - before).as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
        let long = NextTry { refusals: u32::MAX, at: before }.refused();
        assert_eq!((long.at - before).as_secs(), 600);
    }
}
