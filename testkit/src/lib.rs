//! Harness builders shared by Airlock's tests and benchmarks: a fresh Postgres
//! database per test, a private JetStream stream per test, a local OIDC issuer,
//! a stand-in for Slack's Web API, `eventually` for waiting on an outcome
//! instead of sleeping, and `free_addr` for processes a test starts.

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

/// A loopback address nothing listens on, for a process a test starts to
/// bind. Picked at random below the kernel's range of ephemeral ports: a
/// port the kernel handed out (bind to port 0) could be taken as the local
/// port of some outgoing connection before the process binds it, which
/// with tests connecting in parallel happens.
pub fn free_addr() -> std::net::SocketAddr {
    use rand::Rng as _;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = 10_000..ephemeral_low;
    if below.len() >= 1_000 {
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            let port = rng.gen_range(below.clone());
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr().expect("a bound listener has an address");
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a loopback port")
}
