//! Retries an async operation: `retry_fn(make).retries(n).custom_backoff(delay).await`
//! runs `make()` until its future succeeds or `n` retries have failed, waiting
//! `delay(attempt, &error)` before retry number `attempt` (1 for the first).
//!
//! Only what async-nats calls; see `Cargo.toml` for why this crate exists.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// Starts building a retried operation from a function that makes one attempt.
pub fn retry_fn<F>(make: F) -> RetryFn<F> {
    RetryFn { make }
}

pub struct RetryFn<F> {
    make: F,
}

impl<F> RetryFn<F> {
    /// At most `max_retries` attempts after the first.
    pub fn retries(self, max_retries: u32) -> Retries<F> {
        Retries { make: self.make, max_retries }
    }
}

pub struct Retries<F> {
    make: F,
    max_retries: u32,
}

impl<F> Retries<F> {
    /// Waits `backoff(attempt, &error)` before each retry.
    pub fn custom_backoff<Fut, T, E, B>(self, backoff: B) -> RetryFuture<F, Fut, B>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        B: FnMut(u32, &E) -> Duration,
    {
        RetryFuture { make: self.make, backoff, retries_left: self.max_retries, attempt: 0, state: State::Start }
    }
}

/// The retried operation: its output is the first success, or the last error.
pub struct RetryFuture<F, Fut, B> {
    make: F,
    backoff: B,
    retries_left: u32,
    /// Retries made so far.
    attempt: u32,
    state: State<Fut>,
}

enum State<Fut> {
    Start,
    Running(Pin<Box<Fut>>),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

// Nothing is pinned in place: the attempt and the timer are boxed.
impl<F, Fut, B> Unpin for RetryFuture<F, Fut, B> {}

impl<F, Fut, T, E, B> Future for RetryFuture<F, Fut, B>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    B: FnMut(u32, &E) -> Duration,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Start => this.state = State::Running(Box::pin((this.make)())),
                State::Running(attempt) => match ready!(attempt.as_mut().poll(cx)) {
                    Ok(value) => return Poll::Ready(Ok(value)),
                    Err(error) => {
                        if this.retries_left == 0 {
                            return Poll::Ready(Err(error));
                        }
                        this.retries_left -= 1;
                        this.attempt += 1;
                        let delay = (this.backoff)(this.attempt, &error);
                        this.state = State::Waiting(Box::pin(tokio::time::sleep(delay)));
                    }
                },
                State::Waiting(timer) => {
                    ready!(timer.as_mut().poll(cx));
                    this.state = State::Start;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::retry_fn;

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_waiting_what_the_backoff_says() {
        let calls = Cell::new(0u32);
        let waits = std::cell::RefCell::new(Vec::new());
        let started = tokio::time::Instant::now();
        let result: Result<u32, String> = retry_fn(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(format!("attempt {n} failed")) } else { Ok(n) } }
        })
        .retries(5)
        .custom_backoff(|attempt, error: &String| {
            waits.borrow_mut().push((attempt, error.clone()));
            Duration::from_millis(100 * u64::from(attempt))
        })
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(*waits.borrow(), vec![(1, "attempt 1 failed".to_owned()), (2, "attempt 2 failed".to_owned())]);
        // 100 ms before the first retry, 200 before the second (paused clock).
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_the_last_error_once_the_retries_are_spent() {
        let calls = Cell::new(0u32);
        let result: Result<(), u32> = retry_fn(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Err(n) }
        })
        .retries(2)
        .custom_backoff(|_, _: &u32| Duration::from_secs(1))
        .await;
        // The first attempt and two retries.
        assert_eq!(result, Err(3));
        assert_eq!(calls.get(), 3);
    }
}
