//! A cluster that formed long ago, built at once for the simulator: at
//! thousands of nodes, forming one by joins costs O(n²) gossip and most of
//! a run. Each node learns the others through the inputs a join brings:
//! foca takes every member as from a feed (`apply_many`, not broadcast
//! again, as every member already knows them all), the tables take every
//! member's own cluster entries as a push/pull hands them over, and the
//! news of each node's own joins is taken as spread long ago.

use std::time::Duration;

use netdb_wire as wire;

use super::Node;
use super::merge::Via;
use crate::broadcast::BroadcastQueue;
use crate::codec::entry_to_wire;
use crate::membership::{Identity, Owner};
use crate::names::Scope;

/// What a member tells a joining node about itself: its SWIM identity and
/// the cluster entries it owns (its node record, its attachments).
#[derive(Debug, Clone)]
pub(crate) struct Introduction {
    id: Identity,
    entries: Vec<wire::Entry>,
}

impl Node {
    /// This node as the others would come to know it.
    pub(crate) fn introduction(&self, now: Duration) -> Introduction {
        let entries = self
            .cluster
            .data
            .iter()
            .filter(|(_, _, e)| *e.owner == *self.name)
            .map(|(t, k, e)| entry_to_wire(t, k, e, now))
            .collect();
        Introduction { id: self.swim.identity().clone(), entries }
    }

    /// Takes every other member's cluster entries as a push/pull would, and
    /// forgets its own queued news (spread long ago).
    pub(crate) fn learn_cluster_tables(&mut self, now: Duration, cluster: &[Introduction]) {
        let me = self.addr;
        for m in cluster.iter().filter(|m| m.id.addr != me) {
            // The owner record its first entry would make, keyed by the
            // name its identity carries, as `owner_up` keys it: one string
            // for every node that knows the member.
            let owner = Owner::new(m.id.incarnation, None);
            self.owners.entry(m.id.name.clone()).or_insert(owner);
            for e in &m.entries {
                self.apply_remote(now, Scope::Cluster, &e.into(), Via::Sync);
            }
        }
        let max = self.cfg.max_queue_len;
        for st in self.scopes_mut() {
            st.queue = BroadcastQueue::new(max);
        }
    }

    /// Tells foca every other member, as a feed would; it starts probing a
    /// probe period later.
    pub(crate) fn learn_members(&mut self, now: Duration, cluster: &[Introduction]) {
        let others = cluster.iter().filter(|m| m.id.addr != self.addr);
        let members = others.map(|m| foca::Member::alive(m.id.clone()));
        let r = self.swim.apply_many(members, false, &mut self.rt);
        self.count_swim_error(r);
        self.drain_swim(now);
    }
}
