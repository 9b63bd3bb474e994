//! The control plane's worker service, over gRPC.

use airlock_core::{TenantId, TenantState};
use airlock_proto::EventRecord;
use airlock_proto::v1::worker_service_client::WorkerServiceClient;
use airlock_proto::v1::{
    self, BackfillRequest, ConnectionCredentialRequest, HeadsRequest, RecordSessionRequest, SnapshotRequest,
};
use futures::TryStreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::Source;

#[derive(Clone)]
pub struct GrpcSource {
    client: WorkerServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl GrpcSource {
    /// Connects lazily: the first call dials, and a lost connection is redialed.
    pub fn new(
        control_plane_url: &str,
        tls: &airlock_proto::transport::ClientTls,
        worker_token: &str,
    ) -> anyhow::Result<Self> {
        // No request timeout (`Endpoint::timeout`): session threads call this
        // client, and tonic would make that timer on the calling thread, which
        // has no timer driver (`postgres/timers.rs`); callers there bound
        // their calls with `timers::timeout`.
        let channel = airlock_proto::transport::endpoint("worker.control_plane_url", control_plane_url, tls)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        let authorization = format!("Bearer {worker_token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the worker token has characters that cannot go in a header"))?;
        Ok(Self {
            client: WorkerServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        request
    }
}

/// A connection's credential as the control plane keeps it.
#[derive(Clone)]
pub struct Credential {
    pub user: String,
    pub password: String,
    pub version: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("user", &self.user).field("version", &self.version).finish_non_exhaustive()
    }
}

impl GrpcSource {
    pub async fn connection_credential(
        &self,
        tenant: TenantId,
        connection: airlock_core::ConnectionId,
    ) -> anyhow::Result<Credential> {
        let request =
            ConnectionCredentialRequest { tenant_id: tenant.to_string(), connection_id: connection.to_string() };
        let reply = self.client.clone().connection_credential(self.request(request)).await?.into_inner();
        Ok(Credential { user: reply.user, password: reply.password, version: reply.version })
    }

    /// Records a session event in the tenant's log; returns its `seq`. An
    /// event the log has already is refused with `AlreadyExists`.
    pub async fn record_session(&self, tenant: TenantId, event: &airlock_core::Event) -> Result<u64, tonic::Status> {
        let kind = match airlock_proto::convert::to_proto(event).kind {
            Some(v1::event::Kind::SessionOpened(o)) => v1::record_session_request::Kind::Opened(o),
            Some(v1::event::Kind::SessionClosed(c)) => v1::record_session_request::Kind::Closed(c),
            _ => return Err(tonic::Status::invalid_argument("only session events are recorded by workers")),
        };
        let request = RecordSessionRequest { tenant_id: tenant.to_string(), kind: Some(kind) };
        Ok(self.client.clone().record_session(self.request(request)).await?.into_inner().seq)
    }
}

/// A review opened for a held statement.
#[derive(Debug, Clone)]
pub struct HeldReview {
    pub review_id: airlock_core::ReviewId,
    pub expires_at_unix: i64,
    /// The seq of its `CommandHeld`; the outcome comes after it.
    pub seq: u64,
}

impl GrpcSource {
    pub async fn hold_command(
        &self,
        tenant: TenantId,
        session: airlock_core::SessionId,
        grant: airlock_core::GrantId,
        statement: String,
        rule: String,
    ) -> anyhow::Result<HeldReview> {
        let request = v1::HoldCommandRequest {
            tenant_id: tenant.to_string(),
            session_id: session.to_string(),
            grant_id: grant.to_string(),
            statement,
            rule,
        };
        let reply = self.client.clone().hold_command(self.request(request)).await?.into_inner();
        Ok(HeldReview { review_id: reply.review_id.parse()?, expires_at_unix: reply.expires_at_unix, seq: reply.seq })
    }

    pub async fn withdraw_review(
        &self,
        tenant: TenantId,
        review: airlock_core::ReviewId,
        session: airlock_core::SessionId,
    ) -> anyhow::Result<()> {
        let request = v1::WithdrawReviewRequest {
            tenant_id: tenant.to_string(),
            review_id: review.to_string(),
            session_id: session.to_string(),
        };
        self.client.clone().withdraw_review(self.request(request)).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for GrpcSource {
    async fn snapshot(&self) -> anyhow::Result<Vec<(TenantId, TenantState)>> {
        let reply = self.client.clone().snapshot(self.request(SnapshotRequest {})).await?.into_inner();
        let mut out = Vec::with_capacity(reply.tenants.len());
        for t in reply.tenants {
            let tenant: TenantId = t.tenant_id.parse()?;
            match airlock_core::snapshot::decode(&t.state) {
                Some(state) => out.push((tenant, state)),
                // Another format: start this tenant from seq 1 instead.
                None => tracing::warn!(%tenant, "snapshot in an unknown format; replaying the log instead"),
            }
        }
        Ok(out)
    }

    async fn backfill(&self, tenant: TenantId, from_seq: u64) -> anyhow::Result<Vec<EventRecord>> {
        let request = self.request(BackfillRequest { tenant_id: tenant.to_string(), from_seq });
        let stream = self.client.clone().backfill(request).await?.into_inner();
        Ok(stream.try_collect().await?)
    }

    async fn heads(&self) -> anyhow::Result<Vec<(TenantId, u64)>> {
        let reply = self.client.clone().heads(self.request(HeadsRequest {})).await?.into_inner();
        reply.heads.into_iter().map(|h| Ok((h.tenant_id.parse()?, h.seq))).collect()
    }
}
