//! One module per scenario. Each runs against real components started
//! in-process, prints a table and writes `<scenario>.json`.

pub mod admin_roles;
pub mod event_append;
pub mod faults;
pub mod idle_sessions;
pub mod pg_connect;
pub mod pg_policy;
pub mod pg_throughput;
pub(crate) mod pgbouncer;
pub mod propagation;
pub mod recorder_ingest;
pub(crate) mod session_roles;

/// The example policy document of the README, as users write it.
pub const EXAMPLE_POLICY: &str = include_str!("../../../core/testdata/example-policy.yaml");
