//! Airlock's control plane: the only writer of the event log. It validates
//! commands against the current projection, appends events, relays them to the
//! bus, and serves the REST and gRPC APIs over the same command handlers.

pub mod error;
pub mod eventlog;
pub mod grpc;
mod https;
pub mod notify;
pub mod relay;
pub mod rest;
pub mod secrets;
pub mod server;
pub mod service;
pub mod session_index;
pub mod store;
pub mod web;
