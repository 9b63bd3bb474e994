//! Trusted token issuers: which IdPs and CI providers a tenant accepts tokens
//! from, and how their claims become a principal.

use airlock_core::connection::validate_name;
use airlock_core::event::{TrustedIssuer, stream};
use airlock_core::principal::{Principal, PrincipalKind};
use airlock_core::{Event, IssuerId};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Planned, require_tenant_admin};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerInput {
    pub name: String,
    /// The `iss` claim exactly, e.g. `https://token.actions.example.com`.
    pub issuer_url: String,
    /// The `aud` tokens must carry for this tenant.
    pub audience: String,
    /// The claim that names the subject (default `sub`; e.g. `repository` for CI jobs).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// The claim that lists groups (default `groups`).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// `human` (default) or `workload`.
    #[serde(default)]
    pub principal_kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuerView {
    pub id: String,
    pub name: String,
    pub issuer_url: String,
    pub audience: String,
    pub subject_claim: String,
    pub groups_claim: String,
    pub principal_kind: String,
}

impl From<&TrustedIssuer> for IssuerView {
    fn from(i: &TrustedIssuer) -> Self {
        Self {
            id: i.id.to_string(),
            name: i.name.clone(),
            issuer_url: i.issuer_url.clone(),
            audience: i.audience.clone(),
            subject_claim: i.subject_claim.clone(),
            groups_claim: i.groups_claim.clone(),
            principal_kind: i.principal_kind.as_str().to_owned(),
        }
    }
}

fn validate_issuer_url(url: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::invalid("issuer_url", why.to_owned());
    if url.len() > 512 {
        return Err(bad("at most 512 characters"));
    }
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        if !matches!(host_of(rest), "127.0.0.1" | "localhost" | "[::1]") {
            return Err(bad("must be https (plain http is accepted only on loopback)"));
        }
        rest
    } else {
        return Err(bad("must be an https URL"));
    };
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(bad("must be an https URL with a host"));
    }
    Ok(())
}

/// The host part of `host[:port][/path]`, with brackets kept for IPv6.
fn host_of(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    }
}

fn claim_name(field: &str, v: Option<String>, default: &str) -> Result<String, ApiError> {
    let v = v.unwrap_or_else(|| default.to_owned());
    if v.len() > 128 || v.contains(char::is_whitespace) {
        return Err(ApiError::invalid(field, "a claim name without spaces, at most 128 characters"));
    }
    Ok(v)
}

impl ControlPlane {
    pub async fn trust_issuer(&self, principal: &Principal, input: IssuerInput) -> Result<IssuerView, ApiError> {
        require_tenant_admin(principal)?;
        validate_name("name", &input.name).map_err(|r| ApiError::invalid("name", r.trim_start_matches("name: ")))?;
        validate_issuer_url(&input.issuer_url)?;
        if input.audience.is_empty() || input.audience.len() > 256 {
            return Err(ApiError::invalid("audience", "1 to 256 characters"));
        }
        let subject_claim = claim_name("subject_claim", input.subject_claim, "sub")?;
        if subject_claim.is_empty() {
            return Err(ApiError::invalid("subject_claim", "must name a claim"));
        }
        let groups_claim = claim_name("groups_claim", input.groups_claim, "groups")?;
        let kind = input.principal_kind.as_deref().unwrap_or("human");
        let principal_kind = PrincipalKind::parse(kind)
            .ok_or_else(|| ApiError::invalid("principal_kind", format!("{kind:?} is not human or workload")))?;
        // A token must resolve to exactly one tenant.
        let clash = self
            .tenants
            .read(|t| t.issuers_for(&input.issuer_url).into_iter().any(|(_, i)| i.audience == input.audience));
        if clash {
            return Err(ApiError::conflict(
                "this issuer is already trusted for this audience (by this or another tenant); use another audience",
            ));
        }
        let issuer = TrustedIssuer {
            id: IssuerId::new(),
            name: input.name,
            issuer_url: input.issuer_url,
            audience: input.audience,
            subject_claim,
            groups_claim,
            principal_kind,
        };
        let (_, view) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                if state.find_issuer(&issuer.name).is_some() {
                    return Err(ApiError::conflict(format!("an issuer named {:?} already exists", issuer.name)));
                }
                let view = IssuerView::from(&issuer);
                Ok((
                    Planned::one(
                        stream::issuer(&issuer.id),
                        ExpectedVersion::NoStream,
                        Event::IssuerTrusted { issuer },
                    ),
                    view,
                ))
            })
            .await?;
        Ok(view)
    }

    pub fn list_issuers(&self, principal: &Principal) -> Vec<IssuerView> {
        self.tenants.read(|t| {
            t.get(&principal.tenant_id).map(|s| s.issuers.values().map(IssuerView::from).collect()).unwrap_or_default()
        })
    }

    pub async fn remove_issuer(&self, principal: &Principal, id_or_name: &str) -> Result<(), ApiError> {
        require_tenant_admin(principal)?;
        self.command(principal.tenant_id, &principal.subject, |state| {
            let issuer =
                state.find_issuer(id_or_name).ok_or_else(|| ApiError::not_found(format!("issuer {id_or_name}")))?;
            Ok((
                Planned::one(
                    stream::issuer(&issuer.id),
                    ExpectedVersion::Any,
                    Event::IssuerRemoved { issuer_id: issuer.id },
                ),
                (),
            ))
        })
        .await?;
        Ok(())
    }
}
