//! SWIM membership through foca, and what this node knows of every owner.
//!
//! An owner is a node name in one incarnation: a lifetime of the host's
//! state, across restarts that kept it. A restart without state is a new
//! incarnation and replaces the old one everywhere. Within an incarnation,
//! foca's `generation` changes each time the node is wrongly declared down
//! and renews itself, and at each restart that kept the state; neither
//! touches its entries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, PostcardCodec};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub name: String,
    pub incarnation: u64,
    pub generation: u32,
    pub addr: SocketAddr,
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity { generation: self.generation.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.incarnation, self.generation) > (other.incarnation, other.generation)
    }
}

impl Identity {
    /// What we know of a seed before it answers: only its address. foca
    /// accepts an announce addressed to any identity with its address.
    pub(crate) fn placeholder(addr: SocketAddr) -> Self {
        Identity { name: String::new(), incarnation: 0, generation: 0, addr }
    }
}

pub(crate) type Swim = Foca<Identity, PostcardCodec, StdRng, NoCustomBroadcast>;

/// How this node sees an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Alive,
    /// Declared down: entries hidden but kept until `since + failed_grace`.
    Failed {
        since: Duration,
    },
    /// Failed past the grace period: entries removed.
    Gone,
    /// Left gracefully: entries removed.
    Left,
}

#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub incarnation: u64,
    pub status: Status,
    pub addr: Option<SocketAddr>,
    /// The last membership state logged and counted, with its
    /// incarnation: events repeat a state, changes are counted once. Here
    /// rather than in a map of its own, which cost every member a second
    /// copy of its name and a B-tree slot (about 90 bytes).
    pub reported: Option<(u64, MemberState)>,
}

impl Owner {
    /// An owner first heard of, nothing reported yet.
    pub(crate) fn new(incarnation: u64, addr: Option<SocketAddr>) -> Owner {
        Owner { incarnation, status: Status::Alive, addr, reported: None }
    }
}

/// Member state as users see it (`netdb members`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// Reachable.
    Alive,
    /// Suspected by SWIM; not yet declared failed.
    Suspect,
    /// Declared failed: its entries are hidden until it returns or the grace
    /// period ends.
    Failed,
    /// Left gracefully: its entries are gone.
    Left,
}

impl MemberState {
    /// The name people see.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A member as `netdb members` shows it.
pub struct MemberInfo {
    /// Its unique name.
    pub name: String,
    /// Where it is reachable, if known.
    pub addr: Option<SocketAddr>,
    /// The process lifetime it runs in.
    pub incarnation: u64,
    /// SWIM's renewal count within the incarnation (after being declared
    /// down).
    pub generation: u32,
    /// What this node thinks of it.
    pub state: MemberState,
    /// The netdb release it runs, from its node record; empty if unknown.
    pub version: String,
}

/// A set of addresses with O(1) insert, remove and uniform random choice;
/// iteration order is insertion history, so it is deterministic.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerSet {
    list: Vec<SocketAddr>,
    pos: HashMap<SocketAddr, usize>,
}

impl PeerSet {
    pub(crate) fn insert(&mut self, a: SocketAddr) {
        if !self.pos.contains_key(&a) {
            self.pos.insert(a, self.list.len());
            self.list.push(a);
        }
    }

    pub(crate) fn remove(&mut self, a: &SocketAddr) {
        if let Some(i) = self.pos.remove(a) {
            self.list.swap_remove(i);
            if let Some(moved) = self.list.get(i) {
                self.pos.insert(*moved, i);
            }
        }
    }

    pub(crate) fn as_slice(&self) -> &[SocketAddr] {
        &self.list
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity as _;

    #[test]
    fn renewed_identity_wins_and_keeps_the_address() {
        let id = Identity {
            name: "n1".into(),
            incarnation: 5,
            generation: 0,
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        let restarted = Identity { incarnation: 6, ..id.clone() };
        assert!(restarted.win_addr_conflict(&renewed), "a new incarnation beats any generation");
    }

    #[test]
    fn peer_set_keeps_positions_consistent() {
        let mut s = PeerSet::default();
        let a: Vec<SocketAddr> =
            (1..=4).map(|p| format!("127.0.0.1:{p}").parse().unwrap()).collect();
        for x in &a {
            s.insert(*x);
        }
        s.insert(a[0]);
        assert_eq!(s.len(), 4);
        s.remove(&a[0]);
        s.remove(&a[0]);
        s.remove(&a[2]);
        let mut left = s.as_slice().to_vec();
        left.sort();
        assert_eq!(left, vec![a[1], a[3]]);
        for x in &left {
            s.remove(x);
        }
        assert!(s.as_slice().is_empty());
    }
}
