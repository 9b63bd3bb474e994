//! The gRPC API (`airlock.v1`), over the same command handlers as REST. Each
//! method authenticates from the `authorization` metadata, converts the request
//! into the handler's input, and the handler's output into the reply.

mod convert;
mod public;
mod worker;

use std::sync::Arc;

use airlock_core::principal::Principal;
use airlock_proto::v1;

use crate::error::ApiError;
use crate::service::ControlPlane;

/// The largest message accepted (policy documents are the largest inputs).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct Api {
    cp: Arc<ControlPlane>,
}

fn bearer<T>(request: &tonic::Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl Api {
    async fn principal<T>(&self, request: &tonic::Request<T>) -> Result<Principal, ApiError> {
        self.cp.authenticate(bearer(request)).await
    }
}

/// Every `airlock.v1` service, ready to add to a tonic server.
pub fn routes(cp: Arc<ControlPlane>) -> tonic::service::Routes {
    use v1::access_service_server::AccessServiceServer;
    use v1::connection_service_server::ConnectionServiceServer;
    use v1::event_service_server::EventServiceServer;
    use v1::grant_service_server::GrantServiceServer;
    use v1::issuer_service_server::IssuerServiceServer;
    use v1::policy_service_server::PolicyServiceServer;
    use v1::review_service_server::ReviewServiceServer;
    use v1::tenant_service_server::TenantServiceServer;
    use v1::token_service_server::TokenServiceServer;
    use v1::worker_service_server::WorkerServiceServer;

    let api = Api { cp };
    macro_rules! limited {
        ($server:ident) => {
            $server::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
    }
    tonic::service::Routes::default()
        .add_service(limited!(TenantServiceServer))
        .add_service(limited!(AccessServiceServer))
        .add_service(limited!(ReviewServiceServer))
        .add_service(limited!(ConnectionServiceServer))
        .add_service(limited!(PolicyServiceServer))
        .add_service(limited!(IssuerServiceServer))
        .add_service(limited!(TokenServiceServer))
        .add_service(limited!(EventServiceServer))
        .add_service(limited!(GrantServiceServer))
        .add_service(limited!(WorkerServiceServer))
}
