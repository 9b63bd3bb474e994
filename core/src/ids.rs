//! Typed identifiers. Every id is a UUID (v7, so ids sort by creation time)
//! wrapped in its own type, so a connection id can never be passed where a
//! tenant id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A tenant: every event, row, subject, object key and token carries one.
    TenantId
);
id_type!(
    /// A registered connection (a Postgres database, an SSH host, ...).
    ConnectionId
);
id_type!(
    /// A trusted token issuer of a tenant.
    IssuerId
);
id_type!(
    /// An API key.
    KeyId
);
id_type!(
    /// A just-in-time grant.
    GrantId
);
id_type!(
    /// One client connection through a gateway.
    SessionId
);
id_type!(
    /// A review: of an access request (the same UUID as the request) or of a held statement.
    ReviewId
);
id_type!(
    /// An outbound webhook endpoint.
    WebhookId
);

impl ReviewId {
    /// The review of an access request carries the request's id.
    pub fn of_request(request: &GrantId) -> Self {
        Self::from_uuid(*request.as_uuid())
    }
}

impl GrantId {
    /// The access request reviewed by `review`, if it is one.
    pub fn of_review(review: &ReviewId) -> Self {
        Self::from_uuid(*review.as_uuid())
    }
}
