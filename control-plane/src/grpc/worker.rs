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
}
