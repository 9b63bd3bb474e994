//! A fresh Postgres database per test, so tests run in parallel against the one
//! server without seeing each other's rows.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// Where the admin connection goes; any database on the server will do.
pub fn admin_url() -> String {
    std::env::var("AIRLOCK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A uniquely named database, dropped (`WITH (FORCE)`, closing any connection a
/// test left open) when this value is dropped or by `drop_db`.
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
    dropped: bool,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<TestDb> {
        let admin_url = admin_url();
        let name = format!("airlock_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await?;
        admin.close().await?;
        let url = with_database(&admin_url, &name)?;
        Ok(TestDb { name, url, admin_url, dropped: false })
    }

    /// `postgres://.../airlock_test_<uuid>`, for `Store::open` or a raw connection.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now and reports failures (Drop can only try).
    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: run the
        // cleanup on a thread with a runtime of its own and wait for it, bounded.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let _ = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), drop_database(&admin_url, &name)).await
            });
        });
        let _ = cleanup.join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await?;
    admin.close().await?;
    Ok(())
}

/// `url` with its database path replaced by `database`, keeping any query string.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").ok_or_else(|| anyhow::anyhow!("not a URL: {url}"))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x").unwrap(), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x").unwrap(), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/p?sslmode=disable", "x").unwrap(), "postgres://u@h/x?sslmode=disable");
    }
}
