//! Harness builders shared by Airlock's tests and benchmarks: a fresh Postgres
//! database per test, a private JetStream stream per test, a local OIDC issuer,
//! a stand-in for Slack's Web API, and `eventually` for waiting on an outcome
//! instead of sleeping.

pub mod nats;
pub mod oidc;
pub mod pg;
pub mod proxy;
pub mod slack;

/// Polls `check` until it returns true, panicking with `what` once `timeout`
/// has passed: tests wait for an outcome instead of sleeping a guessed time.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
