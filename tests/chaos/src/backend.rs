//! What a runner needs from a cluster of hosts, whatever they run in: the
//! CLI of each host's agent, and faults it can inject and heal.

use std::process::Output;

use crate::cluster::Cluster;
use std::time::Duration;

/// Kinds of fault. Not every backend offers every kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The agent is SIGKILLed; the heal starts it again with its data dir.
    Kill,
    /// The agent is SIGSTOPped (a frozen process or container); the heal
    /// SIGCONTs it.
    Pause,
    /// `hosts` lose all traffic with every other host.
    Partition,
    /// The hosts are split into `groups` that cannot reach each other.
    Split,
    /// `hosts` lose `percent` % of their packets, both ways.
    Loss,
    /// `hosts`' packets are delayed by `delay` ± `jitter`.
    Delay,
    /// `hosts`' egress is limited to `kbit` kbit/s.
    Bandwidth,
    /// Both cores of the machine are busy.
    Busy,
}

impl FaultKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Split,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Bandwidth,
        FaultKind::Busy,
    ];

    /// Its name in reports: `kill`, `pause`, ...
    pub fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// One fault to inject, and later heal. Fields a kind does not use are
/// left empty or zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// The hosts it happens to (Kill, Pause, Partition, Loss, Delay,
    /// Bandwidth).
    pub hosts: Vec<usize>,
    /// The sides of a Split; every host is in one.
    pub groups: Vec<Vec<usize>>,
    /// Loss in percent.
    pub percent: u32,
    /// Delay added to each packet.
    pub delay: Duration,
    /// Random spread of the delay (±).
    pub jitter: Duration,
    /// Bandwidth limit.
    pub kbit: u32,
}

/// A cluster of hosts numbered `1..=hosts()`, each running one agent.
pub trait Backend {
    /// How many hosts there are.
    fn hosts(&self) -> usize;

    /// Runs the `netdb` CLI with `args` against host `h`'s agent API.
    fn cli(&self, h: usize, args: &[&str]) -> anyhow::Result<Output>;

    /// The kinds of fault this backend can inject.
    fn kinds(&self) -> &'static [FaultKind];

    /// Injects `fault`; returns once it is in force.
    fn inject(&mut self, fault: &Fault) -> anyhow::Result<()>;

    /// Undoes `fault` (which `inject` put in force); returns once it is.
    fn heal(&mut self, fault: &Fault) -> anyhow::Result<()>;

    /// Whether hosts have a data plane (FDB, containers, DNS) to check.
    fn dataplane(&self) -> bool;

    /// The namespace cluster behind this backend, whose kernels,
    /// containers and resolvers the data-plane invariants read; none for
    /// a backend that is not one.
    fn namespaces(&self) -> Option<&Cluster> {
        None
    }
}
