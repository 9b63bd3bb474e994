//! `airlock.v1.RecorderService` over tonic. Workers authenticate with the
//! cluster's worker token when the recorder is given one.

use std::collections::VecDeque;
use std::sync::Arc;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::ingest::{AckStream, Ingest};
use crate::read::{MAX_PAGE_FRAMES, Recordings};

pub struct RecorderApi {
    ingest: Arc<Ingest>,
    recordings: Recordings,
    /// SHA-256 of the worker token; `None` takes every caller.
    token_hash: Option<[u8; 32]>,
}

impl RecorderApi {
    pub fn new(ingest: Arc<Ingest>, recordings: Recordings, worker_token: Option<&str>) -> Self {
        let token_hash = worker_token.map(|t| Sha256::digest(t.as_bytes()).into());
        Self { ingest, recordings, token_hash }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.token_hash else { return Ok(()) };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing worker token"))?;
        // Comparing digests takes the same time wherever the token differs.
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if given != *expected {
            return Err(Status::unauthenticated("invalid worker token"));
        }
        Ok(())
    }
}

/// What a reader is told; the store's own words are logged, not returned.
fn read_status(e: Error) -> Status {
    match e {
        Error::NotFound { .. } => Status::not_found(e.to_string()),
        Error::Chunk { .. } | Error::Manifest { .. } => Status::data_loss(e.to_string()),
        Error::Storage(_) | Error::Exists { .. } => {
            tracing::error!("failed to read a recording: {e}");
            Status::unavailable("the recording could not be read")
        }
    }
}

struct Reading {
    recordings: Recordings,
    tenant: TenantId,
    session: SessionId,
    next_seq: u64,
    /// Frames still wanted; `None`: up to the last stored.
    remaining: Option<u64>,
    page: VecDeque<v1::Frame>,
    more: bool,
}

impl Reading {
    fn page_size(&self) -> usize {
        let want = self.remaining.unwrap_or(u64::MAX).min(MAX_PAGE_FRAMES as u64);
        usize::try_from(want).unwrap_or(MAX_PAGE_FRAMES)
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let page = self.recordings.read_frames(self.tenant, self.session, self.next_seq, self.page_size()).await?;
        self.next_seq = page.next_seq;
        self.more = page.more && !page.frames.is_empty();
        self.page = page.frames.into();
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<v1::Frame, Status>, Self)> {
        if self.remaining == Some(0) {
            return None;
        }
        if self.page.is_empty() {
            if !self.more {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.more = false;
                return Some((Err(read_status(e)), self));
            }
        }
        let frame = self.page.pop_front()?;
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        Some((Ok(frame), self))
    }
}

#[tonic::async_trait]
impl v1::recorder_service_server::RecorderService for RecorderApi {
    type IngestStream = AckStream;

    async fn ingest(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        self.authenticate(&request)?;
        Ok(Response::new(self.ingest.serve(request.into_inner())))
    }

    type ReadSessionStream = BoxStream<'static, Result<v1::Frame, Status>>;

    async fn read_session(
        &self,
        request: Request<v1::ReadSessionRequest>,
    ) -> Result<Response<Self::ReadSessionStream>, Status> {
        self.authenticate(&request)?;
        let r = request.into_inner();
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| Status::invalid_argument("tenant_id: not an id"))?;
        let session: SessionId = r.session_id.parse().map_err(|_| Status::invalid_argument("session_id: not an id"))?;
        let mut reading = Reading {
            recordings: self.recordings.clone(),
            tenant,
            session,
            next_seq: r.from_seq.max(1),
            remaining: (r.limit > 0).then_some(r.limit),
            page: VecDeque::new(),
            more: true,
        };
        // The first page answers for the whole call: a session that is not
        // there is NOT_FOUND, not an empty stream.
        reading.fill().await.map_err(read_status)?;
        Ok(Response::new(futures::stream::unfold(reading, Reading::next).boxed()))
    }
}
