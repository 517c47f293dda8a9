//! What the embedded DNS answers from, published whenever endpoints or
//! their hosts change: each local container's networks, the gateway
//! addresses Docker's containers ask at, and the names of those networks. The DNS listeners read it without asking the core
//! loop, so a flood of queries never queues behind gossip, nor gossip
//! behind queries.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Names;

/// One version of the names; replaced whole, never changed in place.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Each local container's namespace, with its networks in the order
    /// they were attached (the first that knows a bare name answers).
    containers: BTreeMap<PathBuf, Vec<String>>,
    /// The gateway address of each network with Docker's containers here
    /// (this host's bridge holds it), with the network: Docker's resolver
    /// forwards what it does not know to a `--dns` server, and this is it.
    gateways: BTreeMap<Ipv4Addr, String>,
    /// Docker's containers here, by address: the networks each is on.
    docker: BTreeMap<Ipv4Addr, Vec<String>>,
    names: BTreeMap<String, Arc<Names>>,
}

impl View {
    pub(crate) fn new(
        containers: BTreeMap<PathBuf, Vec<String>>,
        names: BTreeMap<String, Arc<Names>>,
    ) -> View {
        View { containers, names, ..View::default() }
    }

    /// Adds the gateways Docker's containers ask at, and those containers'
    /// networks by address.
    pub(crate) fn with_docker(
        mut self,
        gateways: BTreeMap<Ipv4Addr, String>,
        docker: BTreeMap<Ipv4Addr, Vec<String>>,
    ) -> View {
        (self.gateways, self.docker) = (gateways, docker);
        self
    }

    /// The gateway addresses to answer at.
    pub(crate) fn gateways(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.gateways.keys().copied()
    }

    /// The networks a query to `gateway` from `from` is answered from: the
    /// gateway's network first, then the asking container's others (one
    /// endpoint per network, so known by its address on each); `None` when
    /// `from` is none of this host's Docker containers on that network.
    pub(crate) fn networks_at(
        &self,
        gateway: Ipv4Addr,
        from: Ipv4Addr,
    ) -> Option<Vec<(&str, &Names)>> {
        let network = self.gateways.get(&gateway)?;
        let theirs = self.docker.get(&from).filter(|nets| nets.contains(network))?;
        Some(self.named(std::iter::once(network).chain(theirs)))
    }

    /// The containers' namespaces.
    pub(crate) fn containers(&self) -> impl Iterator<Item = &Path> {
        self.containers.keys().map(PathBuf::as_path)
    }

    /// The networks, with their names, that a container reached through
    /// any of `paths` (one namespace may be known by several) is attached
    /// to, in attach order.
    pub(crate) fn networks_of(&self, paths: &[PathBuf]) -> Vec<(&str, &Names)> {
        self.named(paths.iter().filter_map(|p| self.containers.get(p)).flatten())
    }

    /// `networks` with their names, each once, in the order given.
    fn named<'a>(
        &'a self,
        networks: impl Iterator<Item = &'a String>,
    ) -> Vec<(&'a str, &'a Names)> {
        let mut out: Vec<(&str, &Names)> = Vec::new();
        for net in networks {
            if out.iter().any(|(n, _)| n == net) {
                continue;
            }
            if let Some(names) = self.names.get(net) {
                out.push((net, names));
            }
        }
        out
    }
}
