//! What the agent needs from a kernel, so that the overlay logic can run
//! against the real one ([`crate::Linux`]) or an in-memory model
//! ([`crate::memory::Memory`]) in tests that need no privilege.

use std::future::Future;
use std::time::Duration;

use crate::{Desired, Endpoint, Error, Network};

/// The kernel as the agent drives it: endpoints wired and unwired one at a
/// time, everything else (devices, FDB and neighbor entries, repairs)
/// brought in line with the desired state by [`Kernel::reconcile`].
///
/// The methods return `Send` futures because the agent runs attach, detach
/// and reconcile in tasks of their own.
pub trait Kernel: Send + Sync + 'static {
    /// Wires a container's namespace to a network (creating the network's
    /// bridge and VXLAN device if missing); for a Docker endpoint, makes
    /// the veth pair and leaves its peer for Docker. On failure nothing of
    /// the endpoint is left behind.
    fn attach(
        &self,
        net: &Network,
        ep: &Endpoint,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes an endpoint's veth pairs, and a Docker endpoint's peer never
    /// taken by Docker; `Ok(false)` if they were already gone.
    fn detach(&self, host_ifname: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Makes the kernel hold `desired` and none of our other devices or
    /// entries. Failed operations are counted in the report; the rest goes
    /// on.
    fn reconcile(
        &self,
        desired: &Desired,
    ) -> impl Future<Output = Result<ReconcileReport, Error>> + Send;
}

/// What one reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Networks whose devices were created.
    pub created: usize,
    /// Networks whose devices were removed.
    pub removed: usize,
    /// FDB entries added or replaced.
    pub fdb_added: usize,
    /// FDB entries removed.
    pub fdb_removed: usize,
    /// Neighbor entries added or replaced.
    pub neigh_added: usize,
    /// Neighbor entries removed.
    pub neigh_removed: usize,
    /// Local endpoints wired again or put back on their bridge.
    pub endpoints_repaired: usize,
    /// Addresses added to or removed from networks' bridges (their
    /// gateway address).
    pub addresses_changed: usize,
    /// Operations that failed (logged; the next reconcile tries again).
    pub failed: usize,
    /// How long the reconcile took.
    pub elapsed: Duration,
    /// Changes to the gateway bridge: made or addressed, removed, or IPv4
    /// forwarding turned on.
    pub gateway_changed: usize,
    /// Times netdb's nftables table was loaded or removed.
    pub nft_changed: usize,
    /// Local endpoints whose namespace is gone, left as they were: the
    /// agent detaches them (a kernel cannot wire them again).
    pub netns_gone: Vec<Endpoint>,
}

impl ReconcileReport {
    /// Every change made, failures not included.
    pub fn changes(&self) -> usize {
        self.created
            + self.removed
            + self.fdb_added
            + self.fdb_removed
            + self.neigh_added
            + self.neigh_removed
            + self.endpoints_repaired
            + self.addresses_changed
            + self.gateway_changed
            + self.nft_changed
    }
}
