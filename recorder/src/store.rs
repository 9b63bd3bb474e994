//! Where recordings live: an `object_store` (a local directory, or S3) and the
//! layout of keys in it.
//!
//! ```text
//! tenants/<tenant>/sessions/<session>/chunks/<index, 10 digits>
//! tenants/<tenant>/sessions/<session>/manifest.json
//! ```
//!
//! Every object is written once (`PutMode::Create`): a chunk or a manifest that
//! is already there is never replaced, so two writers of one session, or a write
//! that succeeded although its answer was lost, are noticed rather than merged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_core::{SessionId, TenantId};
use anyhow::Context;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::chunk::{self, HEADER_LEN, MAX_CHUNK_BYTES};
use crate::config::{Backend, Config, S3};
use crate::error::Error;

/// Chunk indices are written with this many digits, so keys sort by index.
const INDEX_DIGITS: usize = 10;
/// The largest chunk index a key can hold.
pub const MAX_CHUNK_INDEX: u64 = 9_999_999_999;
/// The largest manifest read back (about 300,000 chunks).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// One session's place in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRef {
    pub tenant: TenantId,
    pub session: SessionId,
}

impl SessionRef {
    pub fn new(tenant: TenantId, session: SessionId) -> Self {
        Self { tenant, session }
    }

    fn dir(&self) -> String {
        format!("tenants/{}/sessions/{}", self.tenant, self.session)
    }

    fn chunks_dir(&self) -> String {
        format!("{}/chunks", self.dir())
    }

    pub fn chunk_key(&self, index: u64) -> String {
        format!("{}/{index:0INDEX_DIGITS$}", self.chunks_dir())
    }

    pub fn manifest_key(&self) -> String {
        format!("{}/manifest.json", self.dir())
    }
}

/// A stored chunk as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub index: u64,
    pub key: String,
    pub size: u64,
}

#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    redact: Arc<Redactor>,
    /// For a local directory: what is stored is synced to disk before a put
    /// returns (`object_store` writes a file and links it into place, without
    /// syncing).
    local: Option<Arc<LocalDir>>,
}

struct LocalDir {
    fs: Arc<LocalFileSystem>,
    /// The directory, canonical, as `fs` names its files.
    root: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.objects)
    }
}

impl Store {
    /// The store the configuration names.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        match config.backend {
            Backend::Local => Self::local(&config.local_dir()),
            Backend::S3 => Self::s3(&config.s3),
        }
    }

    /// Recordings in a directory on this machine (made when missing).
    pub fn local(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = std::fs::canonicalize(dir).with_context(|| format!("opening {}", dir.display()))?;
        let fs =
            Arc::new(LocalFileSystem::new_with_prefix(&root).with_context(|| format!("opening {}", dir.display()))?);
        let local = Some(Arc::new(LocalDir { fs: fs.clone(), root }));
        Ok(Self { objects: fs, redact: Arc::new(Redactor::default()), local })
    }

    /// Recordings in an S3 bucket. Settings left empty come from the `AWS_*`
    /// environment variables.
    pub fn s3(s3: &S3) -> anyhow::Result<Self> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&s3.bucket);
        if !s3.region.is_empty() {
            builder = builder.with_region(&s3.region);
        }
        if !s3.endpoint.is_empty() {
            builder = builder.with_endpoint(&s3.endpoint);
            if s3.endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        builder = builder.with_virtual_hosted_style_request(!s3.path_style);
        if !s3.access_key_id.is_empty() {
            builder = builder.with_access_key_id(&s3.access_key_id);
        }
        if !s3.secret_access_key.is_empty() {
            builder = builder.with_secret_access_key(&s3.secret_access_key);
        }
        if !s3.session_token.is_empty() {
            builder = builder.with_token(&s3.session_token);
        }
        let redact = Redactor::new(
            [s3.access_key_id.clone(), s3.secret_access_key.clone(), s3.session_token.clone()].into_iter().chain(
                ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
                    .into_iter()
                    .filter_map(|name| std::env::var(name).ok()),
            ),
        );
        let bucket = builder
            .build()
            .map_err(|e| anyhow::anyhow!("configuring S3 bucket {:?}: {}", s3.bucket, redact.text(&e)))?;
        let objects: Arc<dyn ObjectStore> = if s3.prefix.is_empty() {
            Arc::new(bucket)
        } else {
            Arc::new(PrefixStore::new(bucket, s3.prefix.as_str()))
        };
        Ok(Self { objects, redact: Arc::new(redact), local: None })
    }

    /// Any object store (tests use an in-memory one).
    pub fn from_object_store(objects: Arc<dyn ObjectStore>) -> Self {
        Self { objects, redact: Arc::new(Redactor::default()), local: None }
    }

    /// One listing, to find a store that cannot be reached or read at start rather than at the first session.
    pub async fn probe(&self) -> Result<(), Error> {
        self.objects.list_with_delimiter(Some(&Key::from("tenants"))).await.map(|_| ()).map_err(|e| self.storage(&e))
    }

    fn storage(&self, e: &object_store::Error) -> Error {
        Error::Storage(self.redact.text(e))
    }

    /// The session's chunks, by index. Objects whose names are not chunk indices are skipped.
    pub async fn list_chunks(&self, s: &SessionRef) -> Result<Vec<Listed>, Error> {
        let dir = Key::from(s.chunks_dir());
        let metas: Vec<_> = self.objects.list(Some(&dir)).try_collect().await.map_err(|e| self.storage(&e))?;
        let mut chunks: Vec<Listed> = metas
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let index = parse_index(name);
                if index.is_none() {
                    tracing::warn!(key = %meta.location, "skipping an object that is not a chunk");
                }
                Some(Listed { index: index?, key: meta.location.to_string(), size: meta.size })
            })
            .collect();
        chunks.sort_by_key(|c| c.index);
        Ok(chunks)
    }

    /// A whole chunk, refused unread when it is larger than a chunk can be.
    pub async fn get_chunk(&self, s: &SessionRef, index: u64) -> Result<Bytes, Error> {
        let key = s.chunk_key(index);
        match self.get_bounded(&key, MAX_CHUNK_BYTES as u64).await? {
            Fetched::Found(bytes) => Ok(bytes),
            Fetched::Missing => Err(Error::Chunk { index, key, reason: "missing".into() }),
            Fetched::TooLarge(size) => Err(Error::Chunk {
                index,
                key,
                reason: format!("{size} bytes, over the {MAX_CHUNK_BYTES}-byte limit of a chunk"),
            }),
        }
    }

    /// Only a chunk's header, with a ranged read.
    pub async fn get_header(&self, s: &SessionRef, index: u64) -> Result<chunk::Header, Error> {
        let key = s.chunk_key(index);
        let bytes = match self.objects.get_range(&Key::from(key.as_str()), 0..HEADER_LEN as u64).await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Chunk { index, key, reason: "missing".into() });
            }
            Err(e) => return Err(self.storage(&e)),
        };
        chunk::Header::parse(&bytes).map_err(|e| Error::Chunk { index, key, reason: e.to_string() })
    }

    pub async fn put_chunk(&self, s: &SessionRef, index: u64, bytes: Bytes) -> Result<(), Error> {
        self.put_new(s.chunk_key(index), bytes).await
    }

    pub async fn get_manifest(&self, s: &SessionRef) -> Result<Option<Bytes>, Error> {
        let key = s.manifest_key();
        match self.get_bounded(&key, MAX_MANIFEST_BYTES).await? {
            Fetched::Found(bytes) => Ok(Some(bytes)),
            Fetched::Missing => Ok(None),
            Fetched::TooLarge(size) => {
                Err(Error::Manifest { key, reason: format!("{size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit") })
            }
        }
    }

    pub async fn put_manifest(&self, s: &SessionRef, bytes: Bytes) -> Result<(), Error> {
        self.put_new(s.manifest_key(), bytes).await
    }

    async fn put_new(&self, key: String, bytes: Bytes) -> Result<(), Error> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let location = Key::from(key.as_str());
        match self.objects.put_opts(&location, PutPayload::from_bytes(bytes), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Err(Error::Exists { key }),
            Err(e) => return Err(self.storage(&e)),
        }
        // A chunk is acknowledged as durable once this returns: it must outlive
        // a power loss, not only the process.
        let synced = self.make_durable(&key).await;
        if synced.is_err()
            && let Some(local) = &self.local
            && let Ok(file) = local.fs.path_to_filesystem(&location)
        {
            // Syncing again after a failed sync may claim success for data the
            // kernel already dropped: the object goes, and is written anew
            // from the worker's spool.
            let _ = std::fs::remove_file(file);
        }
        synced
    }

    /// Syncs a stored object, and the directories above it, to disk (in a
    /// local directory; an object store's put is durable when it returns).
    /// For an object found stored, which a process that stopped between
    /// storing and syncing it left behind, before acknowledging it.
    pub(crate) async fn make_durable(&self, key: &str) -> Result<(), Error> {
        let Some(local) = self.local.clone() else { return Ok(()) };
        let file = local.fs.path_to_filesystem(&Key::from(key)).map_err(|e| self.storage(&e))?;
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || sync_to_root(&local.root, &file))
            .await
            .map_err(|e| Error::Storage(format!("syncing {key}: {e}")))?
            .map_err(|e| Error::Storage(format!("syncing {key} to disk: {e}")))
    }

    /// An object, unread when it is larger than `limit`.
    async fn get_bounded(&self, key: &str, limit: u64) -> Result<Fetched, Error> {
        let found = match self.objects.get(&Key::from(key)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(Fetched::Missing),
            Err(e) => return Err(self.storage(&e)),
        };
        if found.meta.size > limit {
            return Ok(Fetched::TooLarge(found.meta.size));
        }
        let bytes = found.bytes().await.map_err(|e| self.storage(&e))?;
        // The object may have been replaced between the answer's head and its body.
        if bytes.len() as u64 > limit {
            return Ok(Fetched::TooLarge(bytes.len() as u64));
        }
        Ok(Fetched::Found(bytes))
    }
}

/// Syncs a file just written, then each directory from its own up to `root`:
/// a session's first chunk also made the directories that name it.
fn sync_to_root(root: &Path, file: &Path) -> std::io::Result<()> {
    if !file.starts_with(root) {
        return Err(std::io::Error::other(format!("{} is not under {}", file.display(), root.display())));
    }
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        if !d.starts_with(root) {
            break;
        }
        std::fs::File::open(d)?.sync_all()?;
        dir = d.parent();
    }
    Ok(())
}

enum Fetched {
    Found(Bytes),
    Missing,
    TooLarge(u64),
}

/// `0000000042` → 42; anything else is not a chunk.
fn parse_index(name: &str) -> Option<u64> {
    if name.len() != INDEX_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Removes configured credentials from error text before it is logged or returned.
#[derive(Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        // Short values would blank out unrelated text; real credentials are longer.
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 8).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    fn text(&self, e: &dyn std::fmt::Display) -> String {
        let mut text = e.to_string();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_sort_by_index() {
        let s = SessionRef::new(TenantId::new(), SessionId::new());
        assert!(s.chunk_key(9) < s.chunk_key(10));
        assert!(s.chunk_key(MAX_CHUNK_INDEX).ends_with("/chunks/9999999999"));
        assert_eq!(parse_index("0000000042"), Some(42));
        for name in ["42", "000000004x", "00000000042", "+000000042", ""] {
            assert_eq!(parse_index(name), None, "{name}");
        }
        assert!(s.manifest_key().starts_with(&format!("tenants/{}/sessions/{}/", s.tenant, s.session)));
    }

    #[test]
    fn credentials_are_removed_from_error_text() {
        let r = Redactor::new(["AKIAEXAMPLEKEYID00".to_string(), "s3cr3t-value-123456".to_string(), "x".to_string()]);
        let text = r.text(&"denied for AKIAEXAMPLEKEYID00 signing with s3cr3t-value-123456 at x");
        assert_eq!(text, "denied for [redacted] signing with [redacted] at x");
    }
}
