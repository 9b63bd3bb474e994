//! Airlock's domain, with no I/O: identifiers, the events of the log, the pure
//! fold that turns a tenant's events into its state, the hash chain over those
//! events, and the policy model. Every other crate calls into this one.

pub mod chain;
pub mod clock;
pub mod connection;
pub mod duration;
pub mod event;
pub mod grant;
pub mod ids;
pub mod integration;
pub mod mask;
pub mod policy;
pub mod principal;
pub mod redact;
pub mod review;
pub mod session;
pub mod snapshot;
pub mod sql;
pub mod state;
pub mod tenants;

pub use event::Event;
pub use ids::{ConnectionId, GrantId, IssuerId, KeyId, ReviewId, SessionId, TenantId, WebhookId};
pub use state::{ApplyError, TenantState};
pub use tenants::Tenants;
