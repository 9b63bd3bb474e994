//! The Postgres gateway: clients (psql, pgbench, drivers) connect here with an
//! access token as their password; the gateway checks it and the grant, makes a
//! role for the session on the target, and relays the session through the
//! statement hook.

pub mod catalog;
pub mod copy_watch;
pub mod gateway;
pub mod hook;
mod in_flight;
pub mod keywords;
pub mod masking;
pub mod policy_hook;
pub mod protocol;
pub mod roles;
pub mod scram;
mod session;
pub mod startup_settings;
mod statements;
mod timers;
pub mod tls;
pub mod upstream;
mod wake_gate;
