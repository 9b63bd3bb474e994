//! Polls a group of rarely ready futures only when one of them was woken.
//!
//! A session's relay loop waits on its two sockets and on a few events that
//! almost never happen: its grant changing, its expiry, the gateway shutting
//! down, its recording failing. A `select!` polls every pending branch each
//! time the task wakes, so without a gate each relayed message would also
//! poll those futures, and polling a pending `Notified` (behind the
//! projection's watch and the shutdown token) takes a lock shared with every
//! other session. Behind a [`WakeGate`] they cost two atomic operations per
//! wake-up until one of them is actually woken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::{ArcWake, AtomicWaker, WakerRef, waker_ref};

pub(crate) struct WakeGate {
    flag: Arc<Flag>,
}

struct Flag {
    /// Set when a gated future's waker fired since the group was last polled.
    woken: AtomicBool,
    /// The task that polls the group.
    task: AtomicWaker,
}

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl WakeGate {
    /// A gate that lets the first poll through, so every gated future gets to
    /// register its waker.
    pub(crate) fn new() -> Self {
        Self { flag: Arc::new(Flag { woken: AtomicBool::new(true), task: AtomicWaker::new() }) }
    }

    /// Registers the polling task. `Pending` while none of the gated futures
    /// was woken since the last call; otherwise the waker to poll all of
    /// them with (their wake-ups then come back through the gate).
    pub(crate) fn poll_woken(&self, cx: &Context<'_>) -> Poll<WakerRef<'_>> {
        // Register before reading the flag: a wake-up in between then either
        // is seen here or wakes the task again.
        self.flag.task.register(cx.waker());
        if self.flag.woken.swap(false, Ordering::AcqRel) { Poll::Ready(waker_ref(&self.flag)) } else { Poll::Pending }
    }

    /// Lets the next poll through: for after one gated future completed
    /// before the others were polled, or after one was replaced or reset.
    pub(crate) fn reopen(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use futures::task::noop_waker_ref;

    use super::WakeGate;

    fn poll_gated(gate: &WakeGate, rx: &mut std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> Poll<bool> {
        let cx = Context::from_waker(noop_waker_ref());
        match gate.poll_woken(&cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(waker) => Poll::Ready(rx.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()),
        }
    }

    #[test]
    fn a_gated_future_is_polled_first_and_then_only_after_its_wake_up() {
        let notify = tokio::sync::Notify::new();
        let gate = WakeGate::new();
        let mut notified = pin!(notify.notified());
        // The first poll goes through, and registers the gate's waker.
        assert_eq!(poll_gated(&gate, &mut notified), Poll::Ready(false));
        // Nothing happened since: not polled.
        assert_eq!(poll_gated(&gate, &mut notified), Poll::Pending);
        notify.notify_waiters();
        // Woken: polled, and ready.
        assert_eq!(poll_gated(&gate, &mut notified), Poll::Ready(true));
    }

    #[test]
    fn reopening_lets_the_next_poll_through() {
        let gate = WakeGate::new();
        let cx = Context::from_waker(noop_waker_ref());
        assert!(gate.poll_woken(&cx).is_ready());
        assert!(gate.poll_woken(&cx).is_pending());
        gate.reopen();
        assert!(gate.poll_woken(&cx).is_ready());
    }

    #[tokio::test]
    async fn a_wake_up_reaches_the_task_that_polls_the_gate() {
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let gate = WakeGate::new();
        let waiter = notify.clone();
        let task = tokio::spawn(async move {
            let mut notified = pin!(waiter.notified());
            std::future::poll_fn(|cx| match gate.poll_woken(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(waker) => notified.as_mut().poll(&mut Context::from_waker(&waker)),
            })
            .await;
        });
        // Let the task register, then wake it through the gate.
        tokio::task::yield_now().await;
        notify.notify_one();
        // Bounded so that a lost wake-up fails the test instead of hanging it.
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the gate passed the wake-up on to the task")
            .expect("the gated task ran");
    }
}
