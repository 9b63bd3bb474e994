//! Timers for code that may run on a session thread.
//!
//! Session threads run no timer driver of their own: with one, every time the
//! thread parks (twice per relayed transaction) tokio reads the clock twice,
//! takes the timer wheel's lock twice and walks the wheel, about 0.7 % of a
//! session thread's CPU with nothing due (`docs/benchmarks.md`). Their timers
//! live on one runtime of their own instead, a thread that does nothing else:
//! created there (a `Sleep` belongs to the runtime it is created on), fired by
//! its driver, and waking the session's task across threads, which happens
//! only when a timer is due. That runtime is made on first use and never
//! dropped, so a session that outlives the gateway's main runtime (`airlock
//! up` stopping without waiting for it any longer) keeps working timers
//! until the process ends, instead of panicking on one whose driver is gone.
//!
//! Everything a session runs uses these instead of `tokio::time`'s: on a
//! session thread `tokio::time::sleep` would panic for want of a driver. Off
//! one (tests, a gateway without session threads) they are `tokio::time`'s.

use std::cell::OnceCell;
use std::future::IntoFuture;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::time::{Instant, Sleep, Timeout};

/// The runtime that runs every session thread's timers.
static DRIVER: LazyLock<std::io::Result<Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("airlock-timers").enable_time().build()
});

thread_local! {
    /// The runtime whose driver runs this thread's timers, on a session thread.
    static THIS_THREADS: OnceCell<Handle> = const { OnceCell::new() };
}

/// The runtime that runs session threads' timers, started on first use.
/// Fails only if it cannot be started (no thread could be made), and then
/// every time.
pub(crate) fn shared_driver() -> std::io::Result<Handle> {
    DRIVER.as_ref().map(|r| r.handle().clone()).map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
}

/// Makes `driver` run the timers of this thread (a session thread, whose
/// runtime is built without a timer driver).
pub(crate) fn run_on(driver: Handle) {
    THIS_THREADS.with(|d| {
        let _ = d.set(driver);
    });
}

/// `tokio::time::sleep`.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    on_driver(|| tokio::time::sleep(duration))
}

/// `tokio::time::sleep_until`.
pub(crate) fn sleep_until(deadline: Instant) -> Sleep {
    on_driver(|| tokio::time::sleep_until(deadline))
}

/// `tokio::time::timeout`.
pub(crate) fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    on_driver(|| tokio::time::timeout(duration, future))
}

fn on_driver<T>(make: impl FnOnce() -> T) -> T {
    THIS_THREADS.with(|d| match d.get() {
        Some(driver) => {
            let _entered = driver.enter();
            make()
        }
        None => make(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// On a thread whose runtime has no timer driver, the timers run on the
    /// one given, and wake the task that waits on them. (That the shared one
    /// outlives the gateway's main runtime is `tests/pg_gateway.rs`'s
    /// `a_stalled_login_is_timed_out_after_the_main_runtime_is_gone`.)
    #[test]
    fn a_session_threads_timers_run_on_another_runtime() {
        let driver = super::shared_driver().unwrap();
        std::thread::spawn(move || {
            let session_thread = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
            super::run_on(driver);
            session_thread.block_on(async {
                super::sleep(Duration::from_millis(5)).await;
                let late = super::timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
                assert!(late.is_err(), "the timeout fired");
                super::sleep_until(tokio::time::Instant::now() + Duration::from_millis(1)).await;
            });
        })
        .join()
        .expect("no panic for want of a timer driver");
    }
}
