//! The cluster scope's tables and what their changes do: node records
//! (addresses, departures), network attachments (who gossips a network
//! with whom, and detaches) and shared cluster objects (each node's copy of
//! network definitions and address claims).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use netdb_wire as wire;
use prost::Message;

use super::Node;
use super::timers::Wake;
use crate::codec::EntryRef;
use crate::error::Error;
use crate::membership::{Owner, PeerSet, Status};
use crate::names::{
    ClusterTable, NETWORKS_TABLE, Scope, SharedTable, attachment_key, parse_attachment_key,
    shared_key, valid_key,
};
use crate::table::{Entry, Rewrite};

impl Node {
    /// Writes this node's copy of a shared cluster object (key `ID/NODE`).
    /// Changes of shared tables come out as [`crate::Event::Shared`].
    pub fn put_shared(
        &mut self,
        now: Duration,
        table: SharedTable,
        id: &str,
        value: Bytes,
    ) -> Result<(), Error> {
        let key = self.own_shared_key(id)?;
        if value.len() > self.cfg.max_value_len {
            return Err(Error::ValueTooLarge { len: value.len(), max: self.cfg.max_value_len });
        }
        self.write(now, Scope::Cluster, table.name(), &key, value, false);
        Ok(())
    }

    /// Deletes this node's copy of a shared object; the tombstone keeps the
    /// last value, so peers can read what was removed.
    pub fn delete_shared(
        &mut self,
        now: Duration,
        table: SharedTable,
        id: &str,
    ) -> Result<(), Error> {
        let key = self.own_shared_key(id)?;
        let value = match self.cluster.data.get(table.name(), &key) {
            Some(e) if e.visible() => e.value.clone(),
            _ => return Err(Error::NotFound { table: table.name().into(), key }),
        };
        self.write(now, Scope::Cluster, table.name(), &key, value, true);
        Ok(())
    }

    /// Every copy of a shared cluster table, tombstones and hidden ones
    /// included, in key order.
    pub fn shared_entries(&self, table: SharedTable) -> Vec<(&str, &Entry)> {
        self.cluster.data.table(table.name()).collect()
    }

    /// True once this node has completed a push/pull of the cluster scope
    /// with a peer, or knows no live peer: what it holds of the cluster
    /// objects is then as good as the cluster's.
    pub fn cluster_synced(&self) -> bool {
        self.cluster.synced
            || !self.owners.iter().any(|(n, o)| **n != *self.name && o.status == Status::Alive)
    }

    /// Names of the live nodes this node gossips `network` to.
    pub fn network_peers(&self, network: &str) -> Vec<String> {
        self.live_attachments()
            .filter(|(net, _, _)| *net == network)
            .map(|(_, node, _)| node.into())
            .collect()
    }

    /// Other nodes attached to a network that are alive or failed (a failed
    /// one may come back with its endpoints).
    pub fn network_hosts(&self, network: &str) -> Vec<String> {
        self.cluster
            .data
            .table(NETWORKS_TABLE)
            .filter_map(|(key, e)| {
                let (net, node) = parse_attachment_key(key)?;
                let o = self.owners.get(node)?;
                let here = net == network
                    && node != self.name
                    && !e.deleted
                    && o.incarnation == e.incarnation
                    && matches!(o.status, Status::Alive | Status::Failed { .. });
                here.then(|| node.to_string())
            })
            .collect()
    }

    fn own_shared_key(&self, id: &str) -> Result<String, Error> {
        let key = shared_key(id, &self.name);
        if !valid_key(&key, self.cfg.max_key_len) {
            return Err(Error::BadKey { max: self.cfg.max_key_len });
        }
        Ok(key)
    }

    /// (network, node, owner) of every other node's live attachment whose
    /// owner is alive in the incarnation that attached.
    pub(super) fn live_attachments(&self) -> impl Iterator<Item = (&str, &str, &Owner)> {
        self.cluster.data.table(NETWORKS_TABLE).filter_map(|(key, e)| {
            let (net, node) = parse_attachment_key(key)?;
            let o = self.owners.get(node)?;
            (node != self.name
                && e.visible()
                && o.status == Status::Alive
                && o.incarnation == e.incarnation)
                .then_some((net, node, o))
        })
    }

    /// Where to gossip each joined network: the addresses of its live
    /// attached peers.
    pub(super) fn compute_net_peers(&self) -> BTreeMap<String, PeerSet> {
        let mut map: BTreeMap<String, PeerSet> = BTreeMap::new();
        for (net, _, o) in self.live_attachments() {
            if let (Some(a), true) = (o.addr, self.networks.contains_key(net)) {
                map.entry(net.to_string()).or_default().insert(a);
            }
        }
        map
    }

    /// True if `owner` (in `incarnation`) had left `network` after writing
    /// at `ltime`: the entry is already superseded by the detach.
    pub(super) fn detached_before(
        &self,
        network: &str,
        owner: &str,
        incarnation: u64,
        ltime: u64,
    ) -> bool {
        let key = attachment_key(network, owner);
        match self.cluster.data.get(NETWORKS_TABLE, &key) {
            Some(a) => a.deleted && a.incarnation == incarnation && a.ltime > ltime,
            None => false,
        }
    }

    /// Side effects of a stored cluster-scope entry: attachments change who
    /// gossips what (and a detach tombstones the owner's entries), node
    /// records carry addresses and departures.
    pub(super) fn cluster_entry_changed(
        &mut self,
        now: Duration,
        table: &str,
        key: &str,
        e: &Entry,
    ) {
        match ClusterTable::from_name(table) {
            Some(ClusterTable::Networks) => {
                self.net_peers = None;
                let Some((net, _)) = parse_attachment_key(key) else { return };
                if e.deleted && *e.owner != *self.name {
                    self.detach(now, net, &e.owner.clone(), e.incarnation, e.ltime);
                } else if !e.deleted && *e.owner == *self.name && !self.networks.contains_key(net) {
                    // Joined by an earlier life of this process (a restart
                    // that kept its state): joined again, so the entries it
                    // wrote there come back by push/pull.
                    let net = net.to_string();
                    if let Err(err) = self.join_network(now, &net) {
                        tracing::warn!(network = %net, error = %err, "cannot join again a network joined before the restart");
                    }
                }
            }
            Some(ClusterTable::Nodes) if *e.owner != *self.name && !e.deleted => {
                let Ok(rec) = wire::NodeRecord::decode(&e.value[..]) else {
                    return;
                };
                let addr = rec.addr.parse().ok();
                if let Some(o) = self.owners.get_mut(&*e.owner)
                    && o.incarnation == e.incarnation
                    && addr.is_some()
                    && o.addr != addr
                {
                    o.addr = addr;
                    // Network peers are listed by address.
                    self.net_peers = None;
                }
                if rec.left {
                    self.owner_left(&e.owner.clone(), e.incarnation);
                }
            }
            _ => {}
        }
    }

    /// A cluster-scope entry left the store (a reaped tombstone).
    pub(super) fn cluster_entry_removed(&mut self, table: &str) {
        if table == NETWORKS_TABLE {
            self.net_peers = None;
        }
    }

    /// Turns an owner's entries in a network it left into tombstones of the
    /// detach's version, the same way on every node.
    fn detach(&mut self, now: Duration, network: &str, owner: &str, incarnation: u64, ltime: u64) {
        let ttl = self.cfg.tombstone_ttl;
        let Some(st) = self.networks.get_mut(network) else {
            return;
        };
        let changes = st.data.rewrite(|_, _, e| {
            if &*e.owner == owner && e.incarnation == incarnation && e.ltime < ltime && !e.deleted {
                Rewrite::Replace(Entry {
                    ltime,
                    deleted: true,
                    reap_at: Some(now + ttl),
                    ..e.clone()
                })
            } else {
                Rewrite::Keep
            }
        });
        let scope = Scope::Network(network);
        for c in &changes {
            let wake =
                Wake::Reap { scope: scope.to_id(), table: c.table.clone(), key: c.key.clone() };
            self.schedule(now + ttl, wake);
        }
        self.emit_changes(scope, changes);
    }
}

/// This node's record in the cluster scope.
pub(super) fn node_record(addr: SocketAddr, left: bool) -> wire::NodeRecord {
    wire::NodeRecord { addr: addr.to_string(), left, version: crate::VERSION.into() }
}

/// A node record that says its owner left.
pub(super) fn is_leave_record(scope: Scope<'_>, w: &EntryRef<'_>) -> bool {
    scope == Scope::Cluster
        && ClusterTable::from_name(w.table) == Some(ClusterTable::Nodes)
        && !w.deleted
        && wire::NodeRecord::decode(w.value).is_ok_and(|r| r.left)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use netdb_wire as wire;
    use prost::Message;

    use super::super::test_support::{PEER, gossip, node, node_in_net, peer_entry};
    use crate::error::Error;
    use crate::event::{EntryEventKind, Event};
    use crate::names::{NETWORKS_TABLE, NODES_TABLE, SharedTable};
    use crate::stats::DropReason;

    /// A node in "net" (joined at 1 s, the time) that heard "peer" attach
    /// to it, and the peer's address.
    fn peer_attached() -> (super::Node, Duration, std::net::SocketAddr) {
        let (mut n, t, from) = node_in_net();
        let attach = peer_entry(NETWORKS_TABLE, "net/peer", Bytes::new(), 1, false);
        n.handle_datagram(t, from, &gossip("", vec![attach]));
        (n, t, from)
    }

    /// An attachment heard before its owner's address (here from the
    /// owner's node record) makes it a peer once the address comes.
    #[test]
    fn a_peer_attached_before_its_address_was_known_is_gossiped_to_once_it_is() {
        let (mut n, t, from) = peer_attached();
        let net = crate::names::Scope::Network("net");
        assert!(n.peers_of(net).is_empty(), "no address yet");
        let record = wire::NodeRecord { addr: PEER.into(), ..Default::default() };
        let rec = peer_entry(NODES_TABLE, "peer", record.encode_to_vec().into(), 2, false);
        n.handle_datagram(t, from, &gossip("", vec![rec]));
        assert_eq!(n.peers_of(net), [from]);
    }

    #[test]
    fn a_detach_tombstones_the_owners_older_entries_and_refuses_their_copies() {
        let (mut n, t, from) = peer_attached();
        let old = peer_entry("t", "a", Bytes::from_static(b"1"), 2, false);
        n.handle_datagram(t, from, &gossip("net", vec![old.clone()]));
        assert!(n.get("net", "t", "a").is_some());
        assert_eq!(n.network_hosts("net"), vec!["peer".to_string()]);
        let detach = peer_entry(NETWORKS_TABLE, "net/peer", Bytes::new(), 5, true);
        n.handle_datagram(t, from, &gossip("", vec![detach]));
        assert!(n.get("net", "t", "a").is_none(), "tombstoned by the detach");
        let raw = n.raw_entries("net");
        assert_eq!(raw.len(), 1);
        assert!(raw[0].2.deleted && raw[0].2.ltime == 5, "the detach's version");
        assert!(n.network_hosts("net").is_empty());
        // A late copy written before the detach is refused.
        let late = peer_entry("t", "b", Bytes::from_static(b"2"), 3, false);
        n.handle_datagram(t, from, &gossip("net", vec![late]));
        assert_eq!(n.stats().dropped(DropReason::DetachedOwner), 1);
        assert!(n.get("net", "t", "b").is_none());
    }

    #[test]
    fn shared_objects_are_typed_owned_and_reported() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let def = Bytes::from_static(b"def");
        n.put_shared(t, SharedTable::NetDefs, "web", def.clone()).unwrap();
        let copies = n.shared_entries(SharedTable::NetDefs);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].0, "web/solo", "each node writes its own copy");
        assert!(n.shared_entries(SharedTable::Ipam).is_empty());
        let shared: Vec<_> = std::iter::from_fn(|| n.poll_event())
            .filter_map(|e| match e {
                Event::Shared { table, key, kind, .. } => Some((table, key, kind)),
                _ => None,
            })
            .collect();
        let web = "web/solo".to_string();
        assert_eq!(shared, vec![(SharedTable::NetDefs, web.clone(), EntryEventKind::Create)]);
        n.delete_shared(t, SharedTable::NetDefs, "web").unwrap();
        let e = n.shared_entries(SharedTable::NetDefs)[0].1.clone();
        assert!(e.deleted && e.value == def, "the tombstone keeps the value");
        let again = n.delete_shared(t, SharedTable::NetDefs, "web");
        assert!(matches!(again, Err(Error::NotFound { .. })));
        let long = "x".repeat(n.config().max_key_len);
        let refused = n.put_shared(t, SharedTable::Ipam, &long, Bytes::new());
        assert!(matches!(refused, Err(Error::BadKey { .. })));
    }

    #[test]
    fn a_peer_cannot_write_another_nodes_shared_copy() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let forged = peer_entry("netdefs", "web/solo", Bytes::from_static(b"x"), 9, false);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("", vec![forged]));
        assert_eq!(n.stats().dropped(DropReason::ForgedOwner), 1);
        let unknown = peer_entry("other", "k/peer", Bytes::new(), 9, false);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("", vec![unknown]));
        assert_eq!(n.stats().dropped(DropReason::BadName), 1, "no other cluster table");
        assert!(n.shared_entries(SharedTable::NetDefs).is_empty());
    }
}
