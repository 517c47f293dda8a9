//! Chaos scenarios on real `netdb agent` processes: a cluster of hosts
//! behind a [`Backend`] (network namespaces on this machine, or Docker
//! containers), a seeded schedule of faults, and the invariants checked
//! after every heal.

mod backend;
pub mod cluster;
pub mod docker;
pub mod dockerd;
pub mod history;
pub mod invariants;
pub mod netns;
pub mod report;
pub mod scenario;
pub mod schedule;

pub use backend::{Backend, Fault, FaultKind};
