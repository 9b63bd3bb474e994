//! The OpenAPI document at `/v1/openapi.json`, generated from the handlers.

use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::error::ErrorBody;
use crate::service::{
    ConnectionInput, ConnectionView, CreatedTenant, CredentialInput, EventPage, EventView, IssuerInput, IssuerView,
    MintTokenInput, MintedToken, PolicyView, TenantView,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Airlock", description = "Just-in-time access gateway: the control plane's REST API."),
    paths(
        super::tenants::create, super::tenants::list, super::tenants::get,
        super::connections::register, super::connections::list, super::connections::get,
        super::connections::update, super::connections::remove,
        super::policy::apply, super::policy::get,
        super::issuers::trust, super::issuers::list, super::issuers::remove,
        super::tokens::mint,
        super::events::list,
        super::grants::create, super::grants::list, super::grants::get, super::grants::revoke,
        super::access::create, super::access::list, super::access::get,
        super::access::list_reviews, super::access::get_review, super::access::decide,
        super::integrations::add_webhook, super::integrations::list_webhooks, super::integrations::remove_webhook,
        super::integrations::put_slack, super::integrations::get_slack, super::integrations::remove_slack,
        super::integrations::slack_interaction, super::integrations::list_deliveries,
        super::sessions::list, super::sessions::get, super::sessions::timeline, super::sessions::timeline_jsonl,
        super::sessions::verify,
    ),
    components(schemas(
        ErrorBody, TenantView, CreatedTenant, super::tenants::CreateTenantInput, ConnectionInput, CredentialInput,
        ConnectionView, PolicyView, IssuerInput, IssuerView, MintTokenInput, MintedToken, EventView, EventPage,
        crate::service::GrantInput, crate::service::GrantView, crate::service::RevokeInput,
        crate::service::AccessRequestInput, crate::service::AccessRequestView, crate::service::ReviewView,
        crate::service::DecisionView, crate::service::DecisionInput,
        crate::service::WebhookInput, crate::service::WebhookView, crate::service::CreatedWebhook,
        crate::service::SlackInput, crate::service::SlackUserInput, crate::service::SlackView,
        crate::service::DeliveryView, crate::service::DeliveryAttemptView,
        crate::service::SessionView, crate::service::SessionPage, crate::service::SessionDetail,
        crate::service::RecordingState, crate::service::TimelineView, crate::service::VerifyView,
        crate::service::BadChunkView, airlock_recorder::timeline::Entry, airlock_recorder::timeline::Kind,
        airlock_recorder::timeline::DecisionView, airlock_recorder::timeline::ErrorView,
    )),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub async fn document() -> impl IntoResponse {
    axum::Json(spec())
}
