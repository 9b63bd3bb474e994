//! Airlock's data-plane worker. It keeps an in-memory projection of every
//! tenant's state, built from a snapshot and kept current from the event bus,
//! and decides locally from it, with no call to the control plane on the data
//! path. (The protocol gateways plug in here.)

pub mod health;
pub mod postgres;
pub mod projection;
pub mod recording;
pub mod session_events;
pub mod sync;
pub mod worker;

pub use projection::Projection;
pub use worker::{Options, PostgresOptions, RunningWorker, start};
