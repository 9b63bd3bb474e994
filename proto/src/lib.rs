//! The `airlock.v1` protobuf contract: generated messages and services, the
//! conversion between stored events and the core domain, and the event bus that
//! carries committed events from the control plane to the workers.

pub mod bus;
pub mod certs;
pub mod convert;
pub mod tls_listener;
pub mod transport;

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub mod v1 {
    tonic::include_proto!("airlock.v1");
}

pub use v1::EventRecord;
