//! Timers for code that may run on a session thread.
//!
//! Session threads run no timer driver of their own: with one, every time the
//! thread parks (twice per relayed transaction) tokio reads the clock twice,
//! takes the timer wheel's lock twice and walks the wheel, about 0.7 % of a
//! session thread's CPU with nothing due (`docs/benchmarks.md`). Their timers
//! live on the gateway's main runtime instead: created there (a `Sleep`
//! belongs to the runtime it is created on), fired by its driver, and waking
//! the session's task across threads, which happens only when a timer is due.
//!
//! Everything a session runs uses these instead of `tokio::time`'s: on a
//! session thread `tokio::time::sleep` would panic for want of a driver. Off
//! one (tests, a gateway without session threads) they are `tokio::time`'s.

use std::cell::OnceCell;
use std::future::IntoFuture;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep, Timeout};

thread_local! {
    /// The runtime whose driver runs this thread's timers, on a session thread.
    static DRIVER: OnceCell<Handle> = const { OnceCell::new() };
}

/// Makes `driver` run the timers of this thread (a session thread, whose
/// runtime is built without a timer driver).
pub(crate) fn run_on(driver: Handle) {
    DRIVER.with(|d| {
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
    DRIVER.with(|d| match d.get() {
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
    /// one given, and wake the task that waits on them.
    #[test]
    fn a_session_threads_timers_run_on_another_runtime() {
        let driver = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
        let handle = driver.handle().clone();
        std::thread::spawn(move || {
            let session_thread = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
            super::run_on(handle);
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
