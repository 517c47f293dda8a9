//! Each owner's life as this node sees it: up, failed (entries hidden but
//! kept), gone after the grace period or left (entries removed), replaced
//! by a newer incarnation (the older one's entries removed for good).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Node;
use super::timers::Wake;
use crate::event::Event;
use crate::membership::{Identity, MemberState, Owner, Status};
use crate::names::{NODES_TABLE, Scope, valid_name};
use crate::stats::MemberChange;
use crate::table::{Entry, Rewrite};

impl Node {
    /// The owners' map's copy of `name`, which every entry of the owner in
    /// every scope shares: a string a member on each node (on all nodes in
    /// the simulator, whose members' names come from one place), where
    /// each scope's tables kept one of their own (about 60 bytes a member
    /// in the cluster scope). Entries are only stored of owners the map
    /// holds (`admit_owner`, this node's own name).
    pub(super) fn owner_name(&self, name: &str) -> Arc<str> {
        self.owners.get_key_value(name).map_or_else(|| name.into(), |(k, _)| k.clone())
    }

    /// Reports `name`'s new state (the owner is known: every caller has
    /// just updated it).
    fn member_event(&mut self, name: &str, state: MemberState) {
        let Some(o) = self.owners.get_mut(name) else {
            return;
        };
        let (addr, incarnation) = (o.addr, o.incarnation);
        let prior = o.reported.replace((incarnation, state));
        if let Some(change) = member_change(prior, incarnation, state) {
            self.stats.member_changes[change as usize] += 1;
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            let change = change.as_str();
            tracing::info!(member = %name, %addr, incarnation, change, "member {change}");
        }
        self.events.push_back(Event::Member { name: name.into(), addr, state });
    }

    /// foca says `id` is up: a new owner, a newer incarnation, or a failed
    /// owner back (its hidden entries become visible again, unchanged).
    pub(super) fn owner_up(&mut self, id: &Identity) {
        if *id.name == *self.name || !valid_name(&id.name, self.cfg.max_name_len) {
            return;
        }
        let known = self.owners.get(&id.name).map(|o| (o.incarnation, o.status));
        match known {
            Some((inc, _)) if id.incarnation < inc => return,
            Some((inc, _)) if id.incarnation > inc => {
                self.new_incarnation(&id.name, id.incarnation, Some(id.addr));
            }
            Some((_, Status::Failed { .. })) => {
                let inc = id.incarnation;
                self.rewrite_owner(&id.name, |_, _, e| {
                    if e.incarnation == inc && e.hidden {
                        Rewrite::Replace(Entry { hidden: false, ..e.clone() })
                    } else {
                        Rewrite::Keep
                    }
                });
                // What it changed while away arrives by push/pull, now
                // rather than at the next periodic sync.
                for st in self.scopes_mut() {
                    st.needs_sync = true;
                }
            }
            Some((_, Status::Alive)) => {}
            Some((_, Status::Gone | Status::Left)) => {
                // Its entries were removed; push/pull brings back what it
                // still holds.
                self.cluster.needs_sync = true;
            }
            None => {}
        }
        let o = self.owners.entry(id.name.clone()).or_insert(Owner::new(id.incarnation, None));
        o.status = Status::Alive;
        o.addr = Some(id.addr);
        self.net_peers = None;
        self.member_event(&id.name, MemberState::Alive);
    }

    pub(super) fn owner_down(&mut self, now: Duration, id: &Identity) {
        let Some(o) = self.owners.get_mut(&id.name) else {
            return;
        };
        if o.incarnation != id.incarnation || o.status != Status::Alive {
            return;
        }
        o.status = Status::Failed { since: now };
        let inc = id.incarnation;
        self.rewrite_owner(&id.name, |_, _, e| {
            if e.incarnation == inc && !e.hidden {
                Rewrite::Replace(Entry { hidden: true, ..e.clone() })
            } else {
                Rewrite::Keep
            }
        });
        let wake = Wake::Grace { name: id.name.to_string(), incarnation: inc };
        self.schedule(now + self.cfg.failed_grace, wake);
        self.member_event(&id.name, MemberState::Failed);
    }

    pub(super) fn grace_expired(&mut self, now: Duration, name: &str, incarnation: u64) {
        let Some(o) = self.owners.get_mut(name) else {
            return;
        };
        let expired =
            matches!(o.status, Status::Failed { since } if since + self.cfg.failed_grace <= now);
        if o.incarnation != incarnation || !expired {
            return;
        }
        o.status = Status::Gone;
        self.rewrite_owner(name, |_, _, e| {
            if e.incarnation == incarnation { Rewrite::Remove } else { Rewrite::Keep }
        });
    }

    pub(super) fn owner_left(&mut self, name: &str, incarnation: u64) {
        let Some(o) = self.owners.get_mut(name) else {
            return;
        };
        if o.incarnation != incarnation || o.status == Status::Left {
            return;
        }
        o.status = Status::Left;
        // The record that says "left" stays, visible and in the digest even
        // if it arrived while the owner looked failed, so late copies of the
        // owner's entries are refused and the news also spreads by push/pull.
        self.rewrite_owner(name, |scope, table, e| {
            if e.incarnation != incarnation {
                Rewrite::Keep
            } else if scope == Scope::Cluster && table == NODES_TABLE && !e.deleted {
                Rewrite::Replace(Entry { hidden: false, ..e.clone() })
            } else {
                Rewrite::Remove
            }
        });
        self.member_event(name, MemberState::Left);
    }

    /// A newer incarnation of `name` exists: everything the older ones wrote
    /// is gone for good.
    pub(super) fn new_incarnation(
        &mut self,
        name: &str,
        incarnation: u64,
        addr: Option<SocketAddr>,
    ) {
        let o = self.owners.entry(name.into()).or_insert(Owner::new(incarnation, addr));
        o.incarnation = incarnation;
        o.status = Status::Alive;
        if addr.is_some() {
            o.addr = addr;
        }
        self.rewrite_owner(name, |_, _, e| {
            if e.incarnation < incarnation { Rewrite::Remove } else { Rewrite::Keep }
        });
    }
}

/// What a member's new state means given the last one reported (its
/// incarnation and state); `None` when nothing changed.
fn member_change(
    prior: Option<(u64, MemberState)>,
    incarnation: u64,
    state: MemberState,
) -> Option<MemberChange> {
    match (prior, state) {
        (Some((inc, was)), now) if inc == incarnation && was == now => None,
        (_, MemberState::Failed) => Some(MemberChange::Failed),
        (_, MemberState::Left) => Some(MemberChange::Left),
        (None, _) => Some(MemberChange::Up),
        (Some((inc, _)), _) if inc < incarnation => Some(MemberChange::Rejoined),
        (Some((_, MemberState::Alive | MemberState::Suspect)), _) => None,
        (Some(_), _) => Some(MemberChange::Returned),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::test_support::{gossip, node_in_net, peer_entry};
    use super::member_change;
    use crate::membership::MemberState::{Alive, Failed, Left};
    use crate::stats::{DropReason, MemberChange};

    #[test]
    fn each_membership_change_is_named_once() {
        assert_eq!(member_change(None, 1, Alive), Some(MemberChange::Up));
        assert_eq!(member_change(Some((1, Alive)), 1, Alive), None, "a repeated state");
        assert_eq!(member_change(Some((1, Alive)), 1, Failed), Some(MemberChange::Failed));
        assert_eq!(member_change(Some((1, Failed)), 1, Failed), None);
        assert_eq!(member_change(Some((1, Failed)), 1, Alive), Some(MemberChange::Returned));
        assert_eq!(member_change(Some((1, Failed)), 2, Alive), Some(MemberChange::Rejoined));
        assert_eq!(member_change(Some((1, Alive)), 2, Alive), Some(MemberChange::Rejoined));
        assert_eq!(member_change(Some((1, Alive)), 1, Left), Some(MemberChange::Left));
        assert_eq!(member_change(Some((1, Left)), 1, Alive), Some(MemberChange::Returned));
    }

    #[test]
    fn a_newer_incarnation_removes_what_the_older_wrote() {
        let (mut n, t, from) = node_in_net();
        let first = peer_entry("t", "a", Bytes::from_static(b"1"), 2, false);
        n.handle_datagram(t, from, &gossip("net", vec![first.clone()]));
        assert!(n.get("net", "t", "a").is_some());
        let reborn = wire_entry_of_incarnation(2, "b");
        n.handle_datagram(t, from, &gossip("net", vec![reborn]));
        assert!(n.get("net", "t", "a").is_none(), "the older life's entry is gone");
        assert!(n.get("net", "t", "b").is_some());
        // A late copy from the older life is refused.
        n.handle_datagram(t, from, &gossip("net", vec![first]));
        assert_eq!(n.stats().dropped(DropReason::StaleIncarnation), 1);
        assert!(n.get("net", "t", "a").is_none());
        let members = n.members();
        let peer = members.iter().find(|m| m.name == "peer").expect("known");
        assert_eq!(peer.incarnation, 2);
    }

    #[test]
    fn an_owners_entries_share_the_owners_map_string() {
        let (mut n, t, from) = node_in_net();
        let two = ["a", "b"].map(|k| peer_entry("t", k, Bytes::from_static(b"1"), 2, false));
        n.handle_datagram(t, from, &gossip("net", two.to_vec()));
        n.put(t, "net", "t", "mine", Bytes::from_static(b"2")).unwrap();
        let shared = |name: &str| n.owners.get_key_value(name).map(|(k, _)| k.clone()).unwrap();
        let (peer, me) = (shared("peer"), shared("solo"));
        let net = &n.networks["net"].data;
        for k in ["a", "b"] {
            assert!(std::sync::Arc::ptr_eq(&net.get("t", k).unwrap().owner, &peer), "{k}");
        }
        let own = [net.get("t", "mine"), n.cluster.data.get(crate::names::NODES_TABLE, "solo")];
        for e in own {
            assert!(std::sync::Arc::ptr_eq(&e.unwrap().owner, &me), "own entries too");
        }
    }

    fn wire_entry_of_incarnation(incarnation: u64, key: &str) -> netdb_wire::Entry {
        netdb_wire::Entry {
            incarnation,
            ..peer_entry("t", key, Bytes::from_static(b"2"), 3, false)
        }
    }
}
