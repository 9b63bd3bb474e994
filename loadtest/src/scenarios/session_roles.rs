//! The gateway's per-session roles (`airlock_<session>`) on the target, as
//! the scenarios see them from outside: each is created `IN ROLE` the
//! connection's template, and every run has a template of its own, so
//! membership in it names one run's roles and no one else's (other gateways
//! may share the server).

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};

/// How often the target is asked while waiting for the drops.
const POLL_EVERY: Duration = Duration::from_millis(20);

const COUNT: &str = "SELECT count(*) FROM pg_auth_members m \
     JOIN pg_roles r ON r.oid = m.member JOIN pg_roles t ON t.oid = m.roleid \
     WHERE t.rolname = $1 AND r.rolname LIKE 'airlock\\_%'";

/// A connection to the target as its administrator (not through the gateway
/// or pgbouncer), to watch the roles.
pub(crate) struct Watcher {
    admin: PgConnection,
    template: String,
}

/// How the drops caught up: the time until none of the run's session roles
/// was left, or how many were still there when the wait gave up.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Drained {
    /// When the count reached 0; `None` if it did not within the bound.
    pub ms: Option<f64>,
    /// Session roles at the first look.
    pub at_start: i64,
    /// Session roles at the last look (0 when drained).
    pub left: i64,
}

impl Watcher {
    pub(crate) async fn connect(template: &str) -> anyhow::Result<Watcher> {
        // A count over thousands of roles can pass sqlx's slow-statement threshold; that is not news here.
        let options = PgConnectOptions::from_str(&airlock_testkit::pg::admin_url())?.disable_statement_logging();
        let admin =
            PgConnection::connect_with(&options).await.context("connecting to Postgres to watch the session roles")?;
        Ok(Watcher { admin, template: template.to_owned() })
    }

    /// This run's session roles now on the target.
    pub(crate) async fn count(&mut self) -> anyhow::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(COUNT).bind(&self.template).fetch_one(&mut self.admin).await?;
        Ok(n)
    }

    /// Waits, up to `bound`, until no session role of this run is left.
    pub(crate) async fn wait_drained(&mut self, bound: Duration) -> anyhow::Result<Drained> {
        let started = Instant::now();
        let at_start = self.count().await?;
        let mut left = at_start;
        while left > 0 {
            if started.elapsed() >= bound {
                return Ok(Drained { ms: None, at_start, left });
            }
            tokio::time::sleep(POLL_EVERY).await;
            left = self.count().await?;
        }
        Ok(Drained { ms: Some(started.elapsed().as_secs_f64() * 1000.0), at_start, left: 0 })
    }

    /// Drops whatever session roles of this run remain (after the gateway has
    /// stopped), so a run leaves nothing behind; returns how many there were.
    pub(crate) async fn drop_leftovers(mut self) -> anyhow::Result<usize> {
        let names: Vec<(String,)> = sqlx::query_as(
            "SELECT r.rolname::text FROM pg_auth_members m \
             JOIN pg_roles r ON r.oid = m.member JOIN pg_roles t ON t.oid = m.roleid \
             WHERE t.rolname = $1 AND r.rolname LIKE 'airlock\\_%'",
        )
        .bind(&self.template)
        .fetch_all(&mut self.admin)
        .await?;
        for (name,) in &names {
            let role = format!("\"{}\"", name.replace('"', "\"\""));
            sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"))
                .execute(&mut self.admin)
                .await
                .with_context(|| format!("dropping {name}"))?;
        }
        self.admin.close().await?;
        Ok(names.len())
    }
}

/// Stops the run's gateway (its SIGTERM drops the roles of its sessions) and
/// drops whatever session roles are left; how many there were, or `None`
/// when that could not be looked at.
pub(crate) async fn stop_gateway_and_drop_leftovers(bench: &mut super::pg_throughput::Bench) -> Option<usize> {
    if let Some(p) = bench.gateway.take() {
        super::pg_throughput::stop_child(p);
    }
    let template = bench.template.clone()?;
    Watcher::connect(&template).await.ok()?.drop_leftovers().await.ok()
}
