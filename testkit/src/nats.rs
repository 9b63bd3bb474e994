//! NATS for tests: every test publishes under its own prefix, so it gets its own
//! JetStream stream on the shared server and deletes it when done.

/// The server tests use.
pub fn nats_url() -> String {
    std::env::var("AIRLOCK_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A subject prefix no other test uses (`t_<uuid>`), for `NatsOptions::prefix`.
pub fn unique_prefix() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// Deletes a test's JetStream stream (`NatsBus::stream_name()`); a stream that
/// is already gone is not an error.
pub async fn delete_stream(stream_name: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url()).await?;
    let js = async_nats::jetstream::new(client);
    match js.delete_stream(stream_name).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(anyhow::anyhow!("deleting JetStream stream {stream_name}: {e}")),
    }
}

/// Deletes a test's stream when dropped, even when the test panics.
pub struct StreamCleanup(pub String);

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        // Drop cannot await: clean up on a thread with a runtime of its own.
        let name = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let _ = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), delete_stream(&name)).await
            });
        });
        let _ = cleanup.join();
    }
}
