//! What the embedded DNS answers from, published whenever endpoints or
//! their hosts change: each local container's networks, and the names of
//! those networks. The DNS listeners read it without asking the core
//! loop, so a flood of queries never queues behind gossip, nor gossip
//! behind queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Names;

/// One version of the names; replaced whole, never changed in place.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Each local container's namespace, with its networks in the order
    /// they were attached (the first that knows a bare name answers).
    containers: BTreeMap<PathBuf, Vec<String>>,
    names: BTreeMap<String, Arc<Names>>,
}

impl View {
    pub(crate) fn new(
        containers: BTreeMap<PathBuf, Vec<String>>,
        names: BTreeMap<String, Arc<Names>>,
    ) -> View {
        View { containers, names }
    }

    /// The containers' namespaces.
    pub(crate) fn containers(&self) -> impl Iterator<Item = &Path> {
        self.containers.keys().map(PathBuf::as_path)
    }

    /// The networks, with their names, that a container reached through
    /// any of `paths` (one namespace may be known by several) is attached
    /// to, in attach order.
    pub(crate) fn networks_of(&self, paths: &[PathBuf]) -> Vec<(&str, &Names)> {
        let mut out: Vec<(&str, &Names)> = Vec::new();
        for net in paths.iter().filter_map(|p| self.containers.get(p)).flatten() {
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
