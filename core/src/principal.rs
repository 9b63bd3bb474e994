//! Who is asking: the identity a verified token stands for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Human,
    Workload,
}

impl PrincipalKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PrincipalKind::Human => "human",
            PrincipalKind::Workload => "workload",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "human" => PrincipalKind::Human,
            "workload" => PrincipalKind::Workload,
            _ => return None,
        })
    }
}

/// What a principal may do to Airlock itself (not to targets: that is policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminScope {
    /// An ordinary user or workload.
    None,
    /// Manages one tenant: connections, policy, issuers, tokens.
    Tenant,
    /// Manages tenants, plus everything a tenant admin may do in its own tenant.
    Platform,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant_id: TenantId,
    /// The issuer that vouched for this principal.
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// The token's other claims with a string, number or boolean value, as
    /// text, for policy rules that match on claims. Empty for Airlock's own
    /// tokens and API keys.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub kind: PrincipalKind,
    pub admin: AdminScope,
}

impl Principal {
    pub fn is_tenant_admin(&self) -> bool {
        self.admin >= AdminScope::Tenant
    }

    pub fn is_platform_admin(&self) -> bool {
        self.admin == AdminScope::Platform
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
