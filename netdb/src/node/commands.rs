//! What the local user asks of the node: join or leave the cluster and
//! networks, write and delete entries. Each command checks its arguments
//! first and, when refused, changes nothing.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::Node;
use super::cluster::node_record;
use super::scope::ScopeState;
use crate::error::Error;
use crate::event::{EntryEventKind, Event};
use crate::names::{NETWORKS_TABLE, NODES_TABLE, Scope, attachment_key, valid_key, valid_name};

impl Node {
    /// Joins the cluster through any of `seeds`, retrying with backoff until
    /// one answers.
    pub fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        self.seeds = seeds.iter().copied().filter(|s| *s != self.addr).collect();
        self.join_delay = self.cfg.join_retry;
        self.announce(now);
    }

    /// Leaves gracefully: peers mark this node `left` and drop its entries
    /// at once. The shell should keep delivering timeouts for a gossip
    /// interval or two so the news goes out, then stop.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        let record = node_record(self.addr, true);
        let me = self.name.clone();
        self.write(now, Scope::Cluster, NODES_TABLE, &me, record.encode_to_vec().into(), false);
        let mut unpaced = usize::MAX;
        self.gossip_scope(now, Scope::Cluster, &mut unpaced);
        self.left = true;
        let r = self.swim.leave_cluster(&mut self.rt);
        self.count_swim_error(r);
        self.drain_swim(now);
    }

    /// Joins a network: this node receives its tables and may write to
    /// them. Joining a joined network does nothing.
    pub fn join_network(&mut self, now: Duration, network: &str) -> Result<(), Error> {
        self.check_network(network)?;
        if self.networks.contains_key(network) {
            return Ok(());
        }
        if self.networks.len() >= self.cfg.max_networks {
            return Err(Error::TooManyNetworks(self.cfg.max_networks));
        }
        let scope = ScopeState::new(&self.cfg, now, &mut self.rng);
        self.networks.insert(network.into(), scope);
        let key = attachment_key(network, &self.name);
        self.write(now, Scope::Cluster, NETWORKS_TABLE, &key, Bytes::new(), false);
        self.net_peers = None;
        // Peers known before the join get this network's digests.
        self.arm_tick(now);
        Ok(())
    }

    /// Leaves a network: this node's entries there become tombstones on
    /// every peer (derived from the detach, so no packet per entry is
    /// needed), and this node forgets the network's tables.
    pub fn leave_network(&mut self, now: Duration, network: &str) -> Result<(), Error> {
        self.check_network(network)?;
        let Some((name, st)) = self.networks.remove_entry(network) else {
            return Err(Error::NotJoined(network.into()));
        };
        let scope = Scope::Network(network);
        for (table, key, e) in st.data.iter() {
            if e.visible() {
                let table = st.data.shared_name(table);
                let (owner, value) = (e.owner.clone(), e.value.clone());
                let kind = EntryEventKind::Delete;
                self.events.extend(Event::entry(
                    Some(name.clone()),
                    table,
                    key,
                    owner,
                    value,
                    kind,
                ));
            }
        }
        self.syncs.retain(|_, o| o.scope.as_scope() != scope);
        let key = attachment_key(network, &self.name);
        self.write(now, Scope::Cluster, NETWORKS_TABLE, &key, Bytes::new(), true);
        self.net_peers = None;
        Ok(())
    }

    /// Creates or updates an entry this node owns.
    pub fn put(
        &mut self,
        now: Duration,
        network: &str,
        table: &str,
        key: &str,
        value: Bytes,
    ) -> Result<(), Error> {
        self.check_entry_args(network, table, key)?;
        if value.len() > self.cfg.max_value_len {
            return Err(Error::ValueTooLarge { len: value.len(), max: self.cfg.max_value_len });
        }
        let st = self.networks.get(network).ok_or_else(|| Error::NotJoined(network.into()))?;
        if let Some(e) = st.data.get(table, key)
            && e.visible()
            && *e.owner != *self.name
        {
            return Err(Error::NotOwner { key: key.into(), owner: e.owner.to_string() });
        }
        self.write(now, Scope::Network(network), table, key, value, false);
        Ok(())
    }

    /// Deletes an entry this node owns (a tombstone that lives
    /// `tombstone_ttl`).
    pub fn delete(
        &mut self,
        now: Duration,
        network: &str,
        table: &str,
        key: &str,
    ) -> Result<(), Error> {
        self.check_entry_args(network, table, key)?;
        let st = self.networks.get(network).ok_or_else(|| Error::NotJoined(network.into()))?;
        let value = match st.data.get(table, key) {
            Some(e) if e.visible() && *e.owner == *self.name => e.value.clone(),
            Some(e) if e.visible() => {
                return Err(Error::NotOwner { key: key.into(), owner: e.owner.to_string() });
            }
            _ => {
                return Err(Error::NotFound { table: table.into(), key: key.into() });
            }
        };
        self.write(now, Scope::Network(network), table, key, value, true);
        Ok(())
    }

    fn check_network(&self, network: &str) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        if !valid_name(network, self.cfg.max_name_len) {
            return Err(Error::BadName {
                what: "network",
                value: network.into(),
                max: self.cfg.max_name_len,
            });
        }
        Ok(())
    }

    fn check_entry_args(&self, network: &str, table: &str, key: &str) -> Result<(), Error> {
        self.check_network(network)?;
        if !valid_name(table, self.cfg.max_name_len) {
            return Err(Error::BadName {
                what: "table",
                value: table.into(),
                max: self.cfg.max_name_len,
            });
        }
        if !valid_key(key, self.cfg.max_key_len) {
            return Err(Error::BadKey { max: self.cfg.max_key_len });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::test_support::node;
    use crate::error::Error;

    #[test]
    fn commands_validate_their_arguments() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::ZERO;
        assert!(matches!(n.join_network(t, "bad/name"), Err(Error::BadName { .. })));
        assert!(matches!(n.join_network(t, ""), Err(Error::BadName { .. })));
        assert_eq!(n.put(t, "net", "t", "k", Bytes::new()), Err(Error::NotJoined("net".into())));
        n.join_network(t, "net").unwrap();
        assert!(matches!(n.put(t, "net", "t", "", Bytes::new()), Err(Error::BadKey { .. })));
        let big = Bytes::from(vec![0u8; n.config().max_value_len + 1]);
        assert!(matches!(n.put(t, "net", "t", "k", big), Err(Error::ValueTooLarge { .. })));
        assert!(matches!(n.delete(t, "net", "t", "nope"), Err(Error::NotFound { .. })));
        n.leave(t);
        assert_eq!(n.put(t, "net", "t", "k", Bytes::new()), Err(Error::Left));
    }
}
