//! Polls a group of rarely ready futures only when one of them was woken.
//!
//! A session's relay loop waits on its two sockets and on a few events that
//! almost never happen: its grant changing, its expiry, the gateway shutting
//! down, its recording failing. A `select!` polls every pending branch each
//! time the task wakes, so without a gate each relayed message would also
//! poll those futures, and polling a pending `Notified` (behind the
//! projection's watch and the shutdown token) takes a lock shared with every
//! other session. Behind a [`WakeGate`] they cost two atomic operations per
//! wake-up until one of them is actually woken: the task's waker is
//! registered again only after a wake-up took it.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, RawWakerVTable, Waker};

use futures::task::{ArcWake, WakerRef, waker_ref};

pub(crate) struct WakeGate {
    flag: Arc<Flag>,
    /// The waker last registered (its data and vtable, what `Waker::will_wake`
    /// compares): a task polls with the same one every time, so while it is
    /// still registered it is not registered again. Only the polling task
    /// touches these; they are atomics so that the gate can be shared.
    data: AtomicPtr<()>,
    vtable: AtomicPtr<RawWakerVTable>,
}

struct Flag {
    /// Set when a gated future's waker fired since the group was last polled.
    woken: AtomicBool,
    /// The task that polls the group, until a wake-up takes it.
    task: Mutex<Option<Waker>>,
    /// Whether `task` holds the task's waker: set and cleared only with
    /// `task` locked, so it is true exactly while a wake-up would find it.
    registered: AtomicBool,
}

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let task = {
            let mut task = arc_self.task.lock().unwrap_or_else(PoisonError::into_inner);
            // Both before the waker is taken, `registered` first: a poll that
            // reads the flag set also reads the waker gone (see `poll_woken`).
            arc_self.registered.store(false, Ordering::Release);
            arc_self.woken.store(true, Ordering::Release);
            task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl WakeGate {
    /// A gate that lets the first poll through, so every gated future gets to
    /// register its waker.
    pub(crate) fn new() -> Self {
        Self {
            flag: Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
                registered: AtomicBool::new(false),
            }),
            data: AtomicPtr::new(std::ptr::null_mut()),
            vtable: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Registers the polling task. `Pending` while none of the gated futures
    /// was woken since the last call; otherwise the waker to poll all of
    /// them with (their wake-ups then come back through the gate).
    ///
    /// No wake-up is lost by skipping the registration: one that took the
    /// waker cleared `registered` and set `woken` first, in the same critical
    /// section, and wakes the task, whose next poll (ordered after the
    /// wake-up by the scheduler) reads both. One that found no waker came
    /// after another that took it and before the task registered again under
    /// the lock, which then reads its `woken` set.
    pub(crate) fn poll_woken(&self, cx: &Context<'_>) -> Poll<WakerRef<'_>> {
        // Register before reading the flag: a wake-up in between then either
        // is seen here or wakes the task again.
        let waker = cx.waker();
        if !(self.flag.registered.load(Ordering::Acquire) && self.last_registered(waker)) {
            let mut task = self.flag.task.lock().unwrap_or_else(PoisonError::into_inner);
            match task.as_ref() {
                Some(registered) if registered.will_wake(waker) => {}
                _ => *task = Some(waker.clone()),
            }
            self.flag.registered.store(true, Ordering::Release);
            self.data.store(waker.data().cast_mut(), Ordering::Relaxed);
            self.vtable.store(std::ptr::from_ref(waker.vtable()).cast_mut(), Ordering::Relaxed);
        }
        if self.flag.woken.swap(false, Ordering::AcqRel) { Poll::Ready(waker_ref(&self.flag)) } else { Poll::Pending }
    }

    /// Whether `waker` is the one registered last.
    fn last_registered(&self, waker: &Waker) -> bool {
        std::ptr::eq(self.data.load(Ordering::Relaxed), waker.data())
            && std::ptr::eq(self.vtable.load(Ordering::Relaxed), waker.vtable())
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

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{ArcWake, noop_waker_ref, waker_ref};

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

    /// The task's waker is registered once, but every wake-up still reaches
    /// the task: after one used the registration, the next poll makes another.
    #[test]
    fn every_wake_up_reaches_the_task_though_its_waker_is_registered_once() {
        struct Count(AtomicUsize);
        impl ArcWake for Count {
            fn wake_by_ref(arc_self: &Arc<Self>) {
                arc_self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = futures::task::waker(count.clone());
        let cx = Context::from_waker(&task);
        let gate = WakeGate::new();
        assert!(gate.poll_woken(&cx).is_ready());
        for round in 1..=3 {
            assert!(gate.poll_woken(&cx).is_pending());
            assert!(gate.poll_woken(&cx).is_pending(), "polled again without a wake-up");
            // A gated future is woken: through the gate, the task is.
            waker_ref(&gate.flag).wake_by_ref();
            assert_eq!(count.0.load(Ordering::SeqCst), round);
            assert!(gate.poll_woken(&cx).is_ready());
        }
    }

    /// Gated futures fire from another thread while the task polls, on its
    /// own and when woken: every firing reaches it promptly, however it
    /// falls against the task registering.
    #[test]
    fn no_wake_up_is_lost_to_a_race_with_registering() {
        struct Unpark(std::thread::Thread);
        impl ArcWake for Unpark {
            fn wake_by_ref(arc_self: &Arc<Self>) {
                arc_self.0.unpark();
            }
        }
        let gate = Arc::new(WakeGate::new());
        let task = futures::task::waker(Arc::new(Unpark(std::thread::current())));
        let cx = Context::from_waker(&task);
        let (fire, fires) = std::sync::mpsc::channel::<()>();
        let firing = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                while fires.recv().is_ok() {
                    waker_ref(&gate.flag).wake_by_ref();
                }
            })
        };
        for round in 0..5_000 {
            while gate.poll_woken(&cx).is_ready() {}
            fire.send(()).unwrap();
            // Polls as a socket's wake-ups would, racing the firing.
            let seen = (0..round % 3).any(|_| gate.poll_woken(&cx).is_ready());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !seen && gate.poll_woken(&cx).is_pending() {
                std::thread::park_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
            }
            // Found only by polling once the wait was over: the wake-up never came.
            assert!(std::time::Instant::now() < deadline, "round {round}: a wake-up was lost");
        }
        drop(fire);
        firing.join().unwrap();
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
