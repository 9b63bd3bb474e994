//! Session events (`SessionOpened`, `SessionClosed`) on their way to the
//! control plane, which appends them to the tenant's log.
//!
//! Sessions do not wait for the control plane: they queue their events here,
//! and a task sends them, up to 32 at once, each until the control plane has
//! it. A call that fails for a reason that can pass (the control plane
//! restarting, its database away, a timeout) is retried with a capped
//! backoff. A session's close is sent only once its open is delivered. The
//! control plane appends an open only to a new stream and a close only right
//! after its open, so an event sent again after a lost answer is refused as
//! already there, and counted as delivered.
//!
//! What is queued lives in memory. A stopping worker keeps sending for up to
//! 5 s after its stop began, taking the closes of the sessions it ends
//! meanwhile, until its gateway and sessions are gone; a worker that dies
//! loses what it had not sent, except that the sessions it was serving are
//! closed by its next start (their recordings say which: see `recording`'s
//! restarted sessions).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_core::{Event, SessionId, TenantId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sync::grpc::GrpcSource;

/// The most events waiting at once. Past it, new events are dropped and
/// logged: at two events a session, a control plane away long enough to fill
/// it has missed tens of thousands of sessions.
pub const MAX_QUEUED: usize = 65_536;
/// One call's limit: a control plane that hangs is retried like one that is down.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Events sent at once: sessions' events are independent but for each
/// session's close, which waits for its open.
const IN_FLIGHT: usize = 32;
/// How long a stopping worker keeps sending what is queued.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);

/// Where session events go. Cheap to clone.
#[derive(Clone)]
pub struct SessionEvents {
    tx: mpsc::UnboundedSender<(TenantId, Event)>,
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for SessionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEvents").field("queued", &self.queued()).finish()
    }
}

/// What became of one attempt.
enum Attempt {
    Delivered,
    /// The control plane refused it for good (a bad event, an unknown tenant).
    Refused(String),
    /// Worth trying again.
    Failed(String),
}

impl SessionEvents {
    /// Starts the sender on `tracker`. Once `cancel` is cancelled it goes on
    /// until every `SessionEvents` is dropped (the gateway's sessions have
    /// ended), for at most a few seconds.
    pub fn start(control_plane: GrpcSource, cancel: CancellationToken, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tracker.spawn(run(control_plane, rx, queued.clone(), cancel));
        Self { tx, queued }
    }

    /// Queues `event` for the tenant's log. Never waits.
    pub fn send(&self, tenant: TenantId, event: Event) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(
                %tenant, kind = event.type_name(),
                "dropped a session event: {MAX_QUEUED} are waiting for the control plane already"
            );
            return;
        }
        if self.tx.send((tenant, event)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(%tenant, "dropped a session event: the worker is stopping");
        }
    }

    /// Events queued and not yet delivered.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

async fn run(
    control_plane: GrpcSource,
    mut rx: mpsc::UnboundedReceiver<(TenantId, Event)>,
    queued: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut deliveries = tokio::task::JoinSet::new();
    // The opens being delivered, so their sessions' closes go after them.
    let mut opening: HashMap<SessionId, oneshot::Receiver<()>> = HashMap::new();
    // A stopping worker's sessions end after `cancel`, and their closes come
    // then: events are taken until every sender is gone (the gateway and its
    // sessions with it), for at most a few seconds after `cancel`; then what
    // is left is given up, in flight or queued.
    let give_up = CancellationToken::new();
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(DRAIN_ON_STOP).await;
    };
    tokio::pin!(deadline);
    let mut past_deadline = false;
    loop {
        let next = tokio::select! {
            biased;
            next = rx.recv() => next,
            () = &mut deadline => {
                past_deadline = true;
                None
            }
        };
        let Some((tenant, event)) = next else { break };
        let (opened, after) = match &event {
            Event::SessionOpened { session } => {
                let (tx, rx) = oneshot::channel();
                opening.insert(session.id, rx);
                (Some(tx), None)
            }
            Event::SessionClosed { session_id, .. } => (None, opening.remove(session_id)),
            _ => (None, None),
        };
        // Finished deliveries are reaped as new ones come, so the set stays as large as what is in flight.
        while deliveries.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            () = &mut deadline => {
                past_deadline = true;
                break;
            }
        };
        let Ok(permit) = permit else { break };
        let (control_plane, queued, give_up) = (control_plane.clone(), queued.clone(), give_up.clone());
        deliveries.spawn(async move {
            // A close goes only once the log has its open: sent without it, it
            // would be refused like a resend, and lost without a word.
            let open_delivered = match after {
                Some(after) => after.await.is_ok(),
                None => true,
            };
            if !open_delivered {
                tracing::error!(%tenant, "a session's close is not sent: its open did not reach the control plane");
            } else if deliver(&control_plane, tenant, &event, &give_up).await
                && let Some(opened) = opened
            {
                let _ = opened.send(());
            }
            queued.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
        opening.retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }
    rx.close();
    // What is in flight finishes, until the deadline.
    if !past_deadline {
        let finished = async { while deliveries.join_next().await.is_some() {} };
        tokio::select! {
            () = finished => {}
            () = &mut deadline => {}
        }
    }
    give_up.cancel();
    while deliveries.join_next().await.is_some() {}
    let left = queued.load(Ordering::Acquire);
    if left > 0 {
        tracing::error!(
            "stopping with {left} session events the control plane does not have; the sessions this worker \
             was serving are closed by its next start when they were recorded"
        );
    }
}

/// Sends one event until the control plane has it (true), refuses it for
/// good, or `give_up` is cancelled.
async fn deliver(control_plane: &GrpcSource, tenant: TenantId, event: &Event, give_up: &CancellationToken) -> bool {
    let mut delay = FIRST_RETRY;
    let mut failures = 0u32;
    loop {
        let attempted = tokio::select! {
            attempted = attempt(control_plane, tenant, event) => attempted,
            () = give_up.cancelled() => return false,
        };
        match attempted {
            Attempt::Delivered => return true,
            Attempt::Refused(why) => {
                tracing::error!(%tenant, kind = event.type_name(), "the control plane refused a session event: {why}");
                return false;
            }
            Attempt::Failed(why) => {
                failures += 1;
                // The first failure and then every tenth, so an outage shows without flooding the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        %tenant, kind = event.type_name(), failures,
                        "failed to record a session event, retrying: {why}"
                    );
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = give_up.cancelled() => return false,
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn attempt(control_plane: &GrpcSource, tenant: TenantId, event: &Event) -> Attempt {
    let status = match tokio::time::timeout(CALL_TIMEOUT, control_plane.record_session(tenant, event)).await {
        Err(_) => return Attempt::Failed(format!("no answer within {CALL_TIMEOUT:?}")),
        Ok(Ok(_seq)) => return Attempt::Delivered,
        Ok(Err(status)) => status,
    };
    match status.code() {
        // Sent before, and the answer lost: the log has it.
        tonic::Code::AlreadyExists => Attempt::Delivered,
        tonic::Code::InvalidArgument | tonic::Code::NotFound => Attempt::Refused(status.message().to_owned()),
        code => Attempt::Failed(format!("{code:?}: {}", status.message())),
    }
}

/// Closes in the log the sessions an earlier run of this worker left open,
/// as the recording spool hands them over: each is opened too, in case the
/// earlier run died before the control plane had its open (an open the log
/// has already is refused as such and counts as delivered).
pub async fn close_restarted(
    mut restarted: mpsc::UnboundedReceiver<crate::recording::RestartedSession>,
    events: SessionEvents,
) {
    while let Some(r) = restarted.recv().await {
        let open = &r.open;
        let started_ms = u64::try_from(open.started_at_unix_ms).unwrap_or(0);
        let now_ms = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(u64::MAX);
        match (open.grant_id.parse(), open.connection_id.parse()) {
            (Ok(grant_id), Ok(connection_id)) => {
                let role = if open.session_role.is_empty() { &open.target_role } else { &open.session_role };
                let session = airlock_core::event::SessionInfo {
                    id: r.session,
                    grant_id,
                    connection_id,
                    subject: open.principal_subject.clone(),
                    issuer: open.principal_issuer.clone(),
                    client_addr: open.client_addr.clone(),
                    worker_id: open.worker_id.clone(),
                    target_role: role.clone(),
                };
                events.send(r.tenant, Event::SessionOpened { session });
            }
            // Written by a version that did not keep the grant: only the close can be sent.
            _ => tracing::warn!(tenant = %r.tenant, session = %r.session, "a restarted session's open is incomplete"),
        }
        events.send(
            r.tenant,
            Event::SessionClosed {
                session_id: r.session,
                duration_ms: now_ms.saturating_sub(started_ms),
                bytes_from_client: r.client_bytes,
                bytes_to_client: r.server_bytes,
                reason: crate::recording::REASON_RESTARTED.to_owned(),
            },
        );
    }
}
