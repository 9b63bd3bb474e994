//! Opening the control plane's database: the event log, its outbox and the
//! secret store live in one database, Postgres (`postgres://...`) in a
//! deployment or SQLite (`sqlite://path`, `sqlite::memory:`) embedded. Opening
//! applies the migrations, so a fresh database is ready and an old one is brought
//! up to date before anything reads it.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::Notify;

use crate::eventlog::EventLog;
use crate::eventlog::postgres::PgEventLog;
use crate::eventlog::sqlite::SqliteEventLog;
use crate::notify::store::{NotifyStore, PgNotifyStore, SqliteNotifyStore};
use crate::secrets::SecretStore;
use crate::secrets::postgres::PgSecretStore;
use crate::secrets::sealer::Sealer;
use crate::secrets::sqlite::SqliteSecretStore;
use crate::session_index::{PgSessionIndex, SessionIndex, SqliteSessionIndex};

/// Connections to Postgres per control-plane instance.
const PG_MAX_CONNECTIONS: u32 = 16;
/// Read connections to a SQLite file (writes use one more, of their own).
const SQLITE_READERS: u32 = 8;
/// How long a SQLite writer waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum Pools {
    Postgres(PgPool),
    Sqlite { read: SqlitePool, write: SqlitePool },
}

/// The opened database: hands out the event log, the secret store and the
/// notifier's delivery queue.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    log: Arc<dyn EventLog>,
    secrets: Arc<dyn SecretStore>,
    notifications: Arc<dyn NotifyStore>,
    sessions: Arc<dyn SessionIndex>,
    notify: Arc<Notify>,
}

impl Store {
    /// Opens (creating a SQLite file if missing) and migrates the database at `url`.
    /// `master_key` seals the secrets; the same key must be given every time.
    pub async fn open(url: &str, master_key: [u8; 32]) -> anyhow::Result<Store> {
        let notify = Arc::new(Notify::new());
        let sealer = Arc::new(Sealer::new(master_key));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(PG_MAX_CONNECTIONS)
                .connect(url)
                .await
                .context("connecting to Postgres")?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await.context("migrating the Postgres database")?;
            Ok(Store {
                log: Arc::new(PgEventLog::new(pool.clone(), notify.clone())),
                secrets: Arc::new(PgSecretStore::new(pool.clone(), sealer)),
                notifications: Arc::new(PgNotifyStore::new(pool.clone())),
                sessions: Arc::new(PgSessionIndex::new(pool.clone())),
                pools: Pools::Postgres(pool),
                notify,
            })
        } else if url.starts_with("sqlite:") {
            let (read, write) = open_sqlite(url).await?;
            sqlx::migrate!("../migrations/sqlite").run(&write).await.context("migrating the SQLite database")?;
            Ok(Store {
                log: Arc::new(SqliteEventLog::new(read.clone(), write.clone(), notify.clone())),
                secrets: Arc::new(SqliteSecretStore::new(read.clone(), write.clone(), sealer)),
                notifications: Arc::new(SqliteNotifyStore::new(read.clone(), write.clone())),
                sessions: Arc::new(SqliteSessionIndex::new(read.clone(), write.clone())),
                pools: Pools::Sqlite { read, write },
                notify,
            })
        } else {
            anyhow::bail!("unsupported database URL (expected postgres://... or sqlite://...)")
        }
    }

    pub fn event_log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    pub fn secrets(&self) -> Arc<dyn SecretStore> {
        self.secrets.clone()
    }

    pub fn notify_store(&self) -> Arc<dyn NotifyStore> {
        self.notifications.clone()
    }

    /// The sessions the log records, for listing.
    pub fn session_index(&self) -> Arc<dyn SessionIndex> {
        self.sessions.clone()
    }

    /// Signalled after every committed append; the outbox relay waits on it.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// How often the outbox relay looks for records no signal told it of:
    /// those another process appended and did not publish, having stopped
    /// between the two. A Postgres log is shared by every control-plane
    /// instance, so another's leftovers go out within a quarter second. A
    /// SQLite file normally has this process alone, which publishes what it
    /// left on its next start; the poll is a backstop, slow enough that an
    /// idle `airlock up` does not read its database four times a second.
    pub fn outbox_poll(&self) -> Duration {
        match &self.pools {
            Pools::Postgres(_) => crate::relay::POLL,
            Pools::Sqlite { .. } => Duration::from_secs(5),
        }
    }

    /// Closes every connection (waits for queries in flight).
    pub async fn close(&self) {
        match &self.pools {
            Pools::Postgres(pool) => pool.close().await,
            Pools::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
        }
    }
}

/// A read pool and a one-connection write pool over the same SQLite database.
/// An in-memory database exists only inside its one connection, so there both
/// are that connection, kept open for the life of the process.
async fn open_sqlite(url: &str) -> anyhow::Result<(SqlitePool, SqlitePool)> {
    let options = SqliteConnectOptions::from_str(url)
        .context("parsing the SQLite URL")?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk before the command is answered (in WAL mode,
        // NORMAL may lose the last commits on power loss), as the invariant
        // "an acknowledged command is in the log" requires.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await
        .context("opening the SQLite database")?;
    if in_memory {
        return Ok((write.clone(), write));
    }
    let read = SqlitePoolOptions::new()
        .max_connections(SQLITE_READERS)
        .connect_with(options)
        .await
        .context("opening the SQLite database for reading")?;
    Ok((read, write))
}
