//! One module per scenario. Each runs against real components started
//! in-process, prints a table and writes `<scenario>.json`.

pub mod event_append;
pub mod pg_throughput;
pub mod propagation;

/// The policy document of DESIGN.md, as users write it.
pub const DESIGN_POLICY: &str = include_str!("../../../core/testdata/design-policy.yaml");
