//! The namespace-cluster harness of `netdb_chaos`, running this package's
//! `netdb` binary: the agent's tests say `Cluster::up(prefix, ...)` and get
//! a cluster of their own build.

use std::ops::Deref;
use std::path::Path;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_netdb");

/// A [`netdb_chaos::cluster::Cluster`] whose agents run [`BIN`].
pub(crate) struct Cluster(netdb_chaos::cluster::Cluster);

impl Cluster {
    pub(crate) fn up(prefix: &str, underlay: &str, args: &[&str]) -> Cluster {
        Cluster(netdb_chaos::cluster::Cluster::up(Path::new(BIN), prefix, underlay, args))
    }

    /// A cluster whose agents (restarts included) also get `agent_args`.
    pub(crate) fn up_with(
        prefix: &str,
        underlay: &str,
        args: &[&str],
        agent_args: &[&str],
    ) -> Cluster {
        let bin = Path::new(BIN);
        Cluster(netdb_chaos::cluster::Cluster::up_with(bin, prefix, underlay, args, agent_args))
    }
}

impl Deref for Cluster {
    type Target = netdb_chaos::cluster::Cluster;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
