//! The worker service: snapshot, heads, backfill. Authenticated by the cluster's
//! worker token, not a tenant's: workers serve every tenant.

use airlock_core::TenantId;
use airlock_proto::v1;
use futures::stream;
use tonic::{Request, Response, Status};

use super::public::RecordStream;
use super::{Api, bearer};

#[tonic::async_trait]
impl v1::worker_service_server::WorkerService for Api {
    async fn snapshot(&self, request: Request<v1::SnapshotRequest>) -> Result<Response<v1::SnapshotResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let tenants = self
            .cp
            .snapshot()?
            .into_iter()
            .map(|s| v1::TenantSnapshot { tenant_id: s.tenant.to_string(), seq: s.seq, state: s.state })
            .collect();
        Ok(Response::new(v1::SnapshotResponse { tenants }))
    }

    type BackfillStream = RecordStream;

    async fn backfill(&self, request: Request<v1::BackfillRequest>) -> Result<Response<Self::BackfillStream>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let r = request.get_ref();
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| Status::invalid_argument("tenant_id: not an id"))?;
        let (records, _) = self.cp.backfill(tenant, r.from_seq).await?;
        Ok(Response::new(Box::pin(stream::iter(records.into_iter().map(Ok)))))
    }

    async fn heads(&self, request: Request<v1::HeadsRequest>) -> Result<Response<v1::HeadsResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let heads = self
            .cp
            .heads()
            .await?
            .into_iter()
            .map(|(tenant, seq)| v1::TenantHead { tenant_id: tenant.to_string(), seq })
            .collect();
        Ok(Response::new(v1::HeadsResponse { heads }))
    }

    async fn connection_credential(
        &self,
        request: Request<v1::ConnectionCredentialRequest>,
    ) -> Result<Response<v1::ConnectionCredentialResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let r = request.get_ref();
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| Status::invalid_argument("tenant_id: not an id"))?;
        let connection = r.connection_id.parse().map_err(|_| Status::invalid_argument("connection_id: not an id"))?;
        let c = self.cp.connection_credential(tenant, connection).await?;
        Ok(Response::new(v1::ConnectionCredentialResponse { user: c.user, password: c.password, version: c.version }))
    }

    async fn record_session(
        &self,
        request: Request<v1::RecordSessionRequest>,
    ) -> Result<Response<v1::RecordSessionResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let r = request.into_inner();
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| Status::invalid_argument("tenant_id: not an id"))?;
        let kind = r.kind.ok_or_else(|| Status::invalid_argument("kind: required"))?;
        let event = match kind {
            v1::record_session_request::Kind::Opened(o) => v1::event::Kind::SessionOpened(o),
            v1::record_session_request::Kind::Closed(c) => v1::event::Kind::SessionClosed(c),
        };
        let event = airlock_proto::convert::from_proto(v1::Event { kind: Some(event) })
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let seq = self.cp.record_session(tenant, event).await?;
        Ok(Response::new(v1::RecordSessionResponse { seq }))
    }

    async fn hold_command(
        &self,
        request: Request<v1::HoldCommandRequest>,
    ) -> Result<Response<v1::HoldCommandResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let r = request.into_inner();
        let id = |name: &str, s: &str| Status::invalid_argument(format!("{name}: {s:?} is not an id"));
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| id("tenant_id", &r.tenant_id))?;
        let session = r.session_id.parse().map_err(|_| id("session_id", &r.session_id))?;
        let grant = r.grant_id.parse().map_err(|_| id("grant_id", &r.grant_id))?;
        let held = self.cp.hold_command(tenant, session, grant, r.statement, r.rule).await?;
        Ok(Response::new(v1::HoldCommandResponse {
            review_id: held.review_id.to_string(),
            expires_at_unix: held.expires_at_unix,
            seq: held.seq,
        }))
    }

    async fn withdraw_review(
        &self,
        request: Request<v1::WithdrawReviewRequest>,
    ) -> Result<Response<v1::WithdrawReviewResponse>, Status> {
        self.cp.authenticate_worker(bearer(&request))?;
        let r = request.into_inner();
        let id = |name: &str, s: &str| Status::invalid_argument(format!("{name}: {s:?} is not an id"));
        let tenant: TenantId = r.tenant_id.parse().map_err(|_| id("tenant_id", &r.tenant_id))?;
        let review = r.review_id.parse().map_err(|_| id("review_id", &r.review_id))?;
        let session = r.session_id.parse().map_err(|_| id("session_id", &r.session_id))?;
        self.cp.withdraw_review(tenant, review, session).await?;
        Ok(Response::new(v1::WithdrawReviewResponse {}))
    }
}
