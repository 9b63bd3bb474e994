//! The worker's projection: every tenant's state, plus what the worker reports
//! about its own progress.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use airlock_core::state::Applied;
use airlock_core::{ApplyError, Event, TenantId, TenantState, Tenants};
use tokio::sync::watch;

pub struct Projection {
    tenants: RwLock<Tenants>,
    ready: AtomicBool,
    pub(crate) counters: Counters,
    /// Bumped whenever the state changes, so callers can await a change.
    changed: watch::Sender<u64>,
    /// Asks the synchronizer to compare with the log's heads now (`want_reconcile`).
    reconcile: tokio::sync::Notify,
}

impl Default for Projection {
    fn default() -> Self {
        Self {
            tenants: RwLock::default(),
            ready: AtomicBool::default(),
            counters: Counters::default(),
            changed: watch::channel(0).0,
            reconcile: tokio::sync::Notify::new(),
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub gaps: AtomicU64,
    pub backfilled: AtomicU64,
}

impl Projection {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn read<T>(&self, f: impl FnOnce(&Tenants) -> T) -> T {
        let guard = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    pub fn apply(&self, tenant: TenantId, seq: u64, event: &Event) -> Result<Applied, ApplyError> {
        let result = {
            let mut guard = self.tenants.write().unwrap_or_else(|e| e.into_inner());
            guard.apply_at(tenant, seq, event)
        };
        if matches!(result, Ok(Applied::Applied)) {
            self.changed.send_modify(|n| *n += 1);
        }
        let counter = match &result {
            Ok(Applied::Applied) => &self.counters.applied,
            Ok(Applied::Duplicate) => &self.counters.duplicates,
            Err(ApplyError::Gap { .. }) => &self.counters.gaps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    pub fn install(&self, tenant: TenantId, state: TenantState) {
        let mut guard = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        guard.install(tenant, state);
        drop(guard);
        self.changed.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever the projection does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks the synchronizer to compare with the log's heads now rather than
    /// at its next interval: someone found the log ahead of this worker (a
    /// login refused on a grant the bus may have lost). Asks made while one
    /// is pending count once.
    pub fn want_reconcile(&self) {
        self.reconcile.notify_one();
    }

    /// Until someone calls `want_reconcile`.
    pub(crate) async fn reconcile_wanted(&self) {
        self.reconcile.notified().await;
    }

    /// Waits until `tenant` has applied at least `seq`.
    pub async fn wait_for(&self, tenant: &TenantId, seq: u64) {
        let mut changes = self.changes();
        while self.seq(tenant) < seq {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The `seq` applied for each tenant.
    pub fn applied(&self) -> BTreeMap<TenantId, u64> {
        self.read(|t| t.iter().map(|(id, s)| (*id, s.seq)).collect())
    }

    pub fn seq(&self, tenant: &TenantId) -> u64 {
        self.read(|t| t.seq(tenant))
    }

    /// True once the first snapshot is installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// For the identity verifier: token checks read the same state.
    pub fn directory(&self) -> &dyn airlock_identity::Directory {
        &self.tenants
    }
}
