//! The two databases the control plane runs on, opened the way production opens
//! them (`Store::open`), plus raw SQL access so tests can look at and damage
//! stored rows the way an attacker with database access could.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use airlock_control_plane::eventlog::EventLog;
use airlock_control_plane::secrets::SecretStore;
use airlock_control_plane::store::Store;
use airlock_core::{Event, TenantId};
use airlock_testkit::pg::TestDb;
use sqlx::Connection as _;

pub const KEY: [u8; 32] = [42; 32];

pub enum Db {
    Postgres(TestDb),
    Sqlite(SqliteFile),
}

/// A temporary SQLite file (and its WAL companions), removed on drop.
pub struct SqliteFile(pub PathBuf);

impl SqliteFile {
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!("airlock-test-{}.db", uuid::Uuid::new_v4().simple())))
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

pub struct Backend {
    pub store: Store,
    pub db: Db,
}

impl Backend {
    pub async fn postgres() -> Self {
        let db = TestDb::create().await.unwrap();
        let store = Store::open(db.url(), KEY).await.unwrap();
        Self { store, db: Db::Postgres(db) }
    }

    pub async fn sqlite() -> Self {
        let file = SqliteFile::new();
        let store = Store::open(&file.url(), KEY).await.unwrap();
        Self { store, db: Db::Sqlite(file) }
    }

    pub fn url(&self) -> String {
        match &self.db {
            Db::Postgres(db) => db.url().to_owned(),
            Db::Sqlite(f) => f.url(),
        }
    }

    pub fn log(&self) -> Arc<dyn EventLog> {
        self.store.event_log()
    }

    pub fn secrets(&self) -> Arc<dyn SecretStore> {
        self.store.secrets()
    }

    /// Runs `sql` on a connection of its own; `$1`, `$2` bind `blob` and `text`.
    /// (sqlx binds `$N` on SQLite too, so one statement serves both databases.)
    pub async fn exec(&self, sql: &str, blob: &[u8], text: &str) -> u64 {
        match &self.db {
            Db::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
                sqlx::query(sql).bind(blob).bind(text).execute(&mut c).await.unwrap().rows_affected()
            }
            Db::Sqlite(f) => {
                let mut c = sqlx::SqliteConnection::connect(&f.url()).await.unwrap();
                sqlx::query(sql).bind(blob).bind(text).execute(&mut c).await.unwrap().rows_affected()
            }
        }
    }

    /// Every stored column of every row of `table`, as raw bytes.
    pub async fn dump_bytes(&self, table: &str, columns: &[&str]) -> Vec<Vec<u8>> {
        use sqlx::Row as _;
        let sql = format!("SELECT {} FROM {table}", columns.join(", "));
        let mut out = Vec::new();
        match &self.db {
            Db::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
                for row in sqlx::query(&sql).fetch_all(&mut c).await.unwrap() {
                    for i in 0..columns.len() {
                        out.push(row.try_get::<Vec<u8>, _>(i).unwrap_or_else(|_| row.get::<String, _>(i).into_bytes()));
                    }
                }
            }
            Db::Sqlite(f) => {
                let mut c = sqlx::SqliteConnection::connect(&f.url()).await.unwrap();
                for row in sqlx::query(&sql).fetch_all(&mut c).await.unwrap() {
                    for i in 0..columns.len() {
                        out.push(row.try_get::<Vec<u8>, _>(i).unwrap_or_else(|_| row.get::<String, _>(i).into_bytes()));
                    }
                }
            }
        }
        out
    }
}

/// A distinct, valid event.
pub fn event(n: u64) -> Event {
    Event::PolicyApplied { version: n, source: format!("version: 1 # {n}"), digest: format!("{n:064x}") }
}

pub fn events(range: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    range.map(event).collect()
}

pub fn tenant() -> TenantId {
    TenantId::new()
}

/// Runs each listed case (an `async fn(Backend)`) once on Postgres and once on
/// SQLite, as separate tests so they run in parallel.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Backend::sqlite().await).await;
                }
            )*
        }
    };
}
