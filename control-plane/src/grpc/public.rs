//! The public services: tenants, connections, policy, issuers, tokens, events.

use std::pin::Pin;

use airlock_proto::v1;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{Api, convert};
use crate::service::MintTokenInput;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl v1::tenant_service_server::TenantService for Api {
    async fn create_tenant(&self, request: Request<v1::CreateTenantRequest>) -> Reply<v1::CreateTenantResponse> {
        let p = self.principal(&request).await?;
        let created = self.cp.create_tenant(&p, &request.get_ref().name).await?;
        Ok(Response::new(v1::CreateTenantResponse {
            tenant: Some(convert::tenant(created.tenant)),
            admin_token: created.admin_token,
        }))
    }

    async fn list_tenants(&self, request: Request<v1::ListTenantsRequest>) -> Reply<v1::ListTenantsResponse> {
        let p = self.principal(&request).await?;
        Ok(Response::new(v1::ListTenantsResponse {
            tenants: self.cp.list_tenants(&p).into_iter().map(convert::tenant).collect(),
        }))
    }

    async fn get_tenant(&self, request: Request<v1::GetTenantRequest>) -> Reply<v1::Tenant> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::tenant(self.cp.get_tenant(&p, &request.get_ref().id)?)))
    }
}

#[tonic::async_trait]
impl v1::connection_service_server::ConnectionService for Api {
    async fn register_connection(&self, request: Request<v1::ConnectionInput>) -> Reply<v1::Connection> {
        let p = self.principal(&request).await?;
        let input = convert::connection_input(request.into_inner());
        Ok(Response::new(convert::connection(self.cp.register_connection(&p, input).await?)))
    }

    async fn update_connection(&self, request: Request<v1::UpdateConnectionRequest>) -> Reply<v1::Connection> {
        let p = self.principal(&request).await?;
        let v1::UpdateConnectionRequest { connection, input } = request.into_inner();
        let input = input.ok_or_else(|| Status::invalid_argument("input: required"))?;
        let view = self.cp.update_connection(&p, &connection, convert::connection_input(input)).await?;
        Ok(Response::new(convert::connection(view)))
    }

    async fn remove_connection(&self, request: Request<v1::ConnectionRef>) -> Reply<v1::RemoveConnectionResponse> {
        let p = self.principal(&request).await?;
        self.cp.remove_connection(&p, &request.get_ref().connection).await?;
        Ok(Response::new(v1::RemoveConnectionResponse {}))
    }

    async fn get_connection(&self, request: Request<v1::ConnectionRef>) -> Reply<v1::Connection> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::connection(self.cp.get_connection(&p, &request.get_ref().connection)?)))
    }

    async fn list_connections(
        &self,
        request: Request<v1::ListConnectionsRequest>,
    ) -> Reply<v1::ListConnectionsResponse> {
        let p = self.principal(&request).await?;
        Ok(Response::new(v1::ListConnectionsResponse {
            connections: self.cp.list_connections(&p).into_iter().map(convert::connection).collect(),
        }))
    }
}

#[tonic::async_trait]
impl v1::policy_service_server::PolicyService for Api {
    async fn apply_policy(&self, request: Request<v1::ApplyPolicyRequest>) -> Reply<v1::Policy> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::policy(self.cp.apply_policy(&p, &request.get_ref().source).await?)))
    }

    async fn get_policy(&self, request: Request<v1::GetPolicyRequest>) -> Reply<v1::Policy> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::policy(self.cp.get_policy(&p)?)))
    }
}

#[tonic::async_trait]
impl v1::issuer_service_server::IssuerService for Api {
    async fn trust_issuer(&self, request: Request<v1::TrustIssuerRequest>) -> Reply<v1::Issuer> {
        let p = self.principal(&request).await?;
        let input = convert::issuer_input(request.into_inner());
        Ok(Response::new(convert::issuer(self.cp.trust_issuer(&p, input).await?)))
    }

    async fn list_issuers(&self, request: Request<v1::ListIssuersRequest>) -> Reply<v1::ListIssuersResponse> {
        let p = self.principal(&request).await?;
        Ok(Response::new(v1::ListIssuersResponse {
            issuers: self.cp.list_issuers(&p).into_iter().map(convert::issuer).collect(),
        }))
    }

    async fn remove_issuer(&self, request: Request<v1::RemoveIssuerRequest>) -> Reply<v1::RemoveIssuerResponse> {
        let p = self.principal(&request).await?;
        self.cp.remove_issuer(&p, &request.get_ref().issuer).await?;
        Ok(Response::new(v1::RemoveIssuerResponse {}))
    }
}

#[tonic::async_trait]
impl v1::token_service_server::TokenService for Api {
    async fn mint_token(&self, request: Request<v1::MintTokenRequest>) -> Reply<v1::MintTokenResponse> {
        let p = self.principal(&request).await?;
        let r = request.into_inner();
        let input = MintTokenInput {
            subject: r.subject,
            groups: r.groups,
            ttl_seconds: Some(r.ttl_seconds).filter(|t| *t > 0),
        };
        let minted = self.cp.mint_token(&p, input).await?;
        Ok(Response::new(v1::MintTokenResponse { token: minted.token, expires_at_unix: minted.expires_at_unix }))
    }
}

pub type RecordStream = Pin<Box<dyn Stream<Item = Result<v1::EventRecord, Status>> + Send>>;

#[tonic::async_trait]
impl v1::event_service_server::EventService for Api {
    async fn list_events(&self, request: Request<v1::ListEventsRequest>) -> Reply<v1::ListEventsResponse> {
        let p = self.principal(&request).await?;
        let r = request.get_ref();
        let (events, head_seq) = self.cp.list_events(&p, r.from_seq, Some(r.limit).filter(|l| *l > 0)).await?;
        Ok(Response::new(v1::ListEventsResponse { events, head_seq }))
    }

    type SubscribeStream = RecordStream;

    async fn subscribe(&self, request: Request<v1::SubscribeRequest>) -> Reply<Self::SubscribeStream> {
        let p = self.principal(&request).await?;
        let stream = self.cp.subscribe_events(&p, request.get_ref().from_seq)?;
        Ok(Response::new(Box::pin(stream.map(|r| r.map_err(Status::from)))))
    }
}

#[tonic::async_trait]
impl v1::grant_service_server::GrantService for Api {
    async fn create_grant(&self, request: Request<v1::CreateGrantRequest>) -> Reply<v1::Grant> {
        let p = self.principal(&request).await?;
        let r = request.into_inner();
        let input = crate::service::GrantInput {
            subject: r.subject,
            issuer: Some(r.issuer).filter(|i| !i.is_empty()),
            connection: r.connection,
            role: r.role,
            ttl_seconds: r.ttl_seconds,
            reason: r.reason,
        };
        Ok(Response::new(convert::grant(self.cp.create_grant(&p, input).await?)))
    }

    async fn list_grants(&self, request: Request<v1::ListGrantsRequest>) -> Reply<v1::ListGrantsResponse> {
        let p = self.principal(&request).await?;
        Ok(Response::new(v1::ListGrantsResponse {
            grants: self.cp.list_grants(&p).into_iter().map(convert::grant).collect(),
        }))
    }

    async fn get_grant(&self, request: Request<v1::GetGrantRequest>) -> Reply<v1::Grant> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::grant(self.cp.get_grant(&p, &request.get_ref().id)?)))
    }

    async fn revoke_grant(&self, request: Request<v1::RevokeGrantRequest>) -> Reply<v1::Grant> {
        let p = self.principal(&request).await?;
        let r = request.get_ref();
        Ok(Response::new(convert::grant(self.cp.revoke_grant(&p, &r.id, &r.reason).await?)))
    }
}

#[tonic::async_trait]
impl v1::access_service_server::AccessService for Api {
    async fn request_access(&self, request: Request<v1::RequestAccessRequest>) -> Reply<v1::AccessRequestInfo> {
        let p = self.principal(&request).await?;
        let r = request.into_inner();
        let input = crate::service::AccessRequestInput {
            connection: r.connection,
            role: r.role,
            ttl_seconds: r.ttl_seconds,
            reason: r.reason,
        };
        Ok(Response::new(convert::access_request(self.cp.request_access(&p, input).await?)))
    }

    async fn get_access_request(&self, request: Request<v1::GetAccessRequestRequest>) -> Reply<v1::AccessRequestInfo> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::access_request(self.cp.get_access_request(&p, &request.get_ref().id)?)))
    }

    async fn list_access_requests(
        &self,
        request: Request<v1::ListAccessRequestsRequest>,
    ) -> Reply<v1::ListAccessRequestsResponse> {
        let p = self.principal(&request).await?;
        let requests = self.cp.list_access_requests(&p).into_iter().map(convert::access_request).collect();
        Ok(Response::new(v1::ListAccessRequestsResponse { requests }))
    }
}

#[tonic::async_trait]
impl v1::review_service_server::ReviewService for Api {
    async fn list_reviews(&self, request: Request<v1::ListReviewsRequest>) -> Reply<v1::ListReviewsResponse> {
        let p = self.principal(&request).await?;
        let r = request.get_ref();
        let filter = crate::service::ReviewFilter {
            pending_for_me: r.pending_for_me,
            state: Some(r.state.clone()).filter(|s| !s.is_empty()),
        };
        let reviews = self.cp.list_reviews(&p, &filter).into_iter().map(convert::review).collect();
        Ok(Response::new(v1::ListReviewsResponse { reviews }))
    }

    async fn get_review(&self, request: Request<v1::GetReviewRequest>) -> Reply<v1::ReviewInfo> {
        let p = self.principal(&request).await?;
        Ok(Response::new(convert::review(self.cp.get_review(&p, &request.get_ref().id)?)))
    }

    async fn decide_review(&self, request: Request<v1::DecideReviewRequest>) -> Reply<v1::ReviewInfo> {
        let p = self.principal(&request).await?;
        let r = request.into_inner();
        let input = crate::service::DecisionInput {
            approve: r.approve,
            comment: r.comment,
            scope: Some(r.scope).filter(|s| !s.is_empty()),
        };
        Ok(Response::new(convert::review(self.cp.decide_review(&p, &r.id, input, "api").await?)))
    }
}
