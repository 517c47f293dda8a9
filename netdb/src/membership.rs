//! SWIM membership through foca, and what this node knows of every owner.
//!
//! An owner is a node name in one incarnation: a lifetime of the host's
//! state, across restarts that kept it. A restart without state is a new
//! incarnation and replaces the old one everywhere. Within an incarnation,
//! foca's `generation` changes each time the node is wrongly declared down
//! and renews itself, and at each restart that kept the state; neither
//! touches its entries.

use std::hash::{BuildHasher, BuildHasherDefault};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, PostcardCodec};
use hashbrown::HashTable;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::hash::MapHasher;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// Shared by every copy foca and the owners' map keep (`rc` encodes it
    /// as a plain string): a member's identity is cloned into each update
    /// about it, and a simulated cluster's nodes all hold the one string
    /// each member's introduction carried.
    pub name: Arc<str>,
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
        Identity { name: "".into(), incarnation: 0, generation: 0, addr }
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
/// iteration order is insertion history, so it is deterministic. The
/// addresses lie in a vector, and a hash table holds their positions (4
/// bytes a slot): a map from address to position beside the vector cost
/// about 84 bytes a member, on every node for every member.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerSet {
    list: Vec<SocketAddr>,
    pos: HashTable<u32>,
}

fn addr_hash(a: &SocketAddr) -> u64 {
    BuildHasherDefault::<MapHasher>::default().hash_one(a)
}

impl PeerSet {
    fn find(&self, a: &SocketAddr) -> Option<usize> {
        let list = &self.list;
        self.pos.find(addr_hash(a), |&i| list.get(i as usize) == Some(a)).map(|&i| i as usize)
    }

    pub(crate) fn insert(&mut self, a: SocketAddr) {
        if self.find(&a).is_some() {
            return;
        }
        // A cluster of 2^32 members is out of reach: every one of them is
        // in this vector.
        let Ok(i) = u32::try_from(self.list.len()) else {
            return;
        };
        let list = &self.list;
        self.pos.insert_unique(addr_hash(&a), i, |&j| addr_hash(&list[j as usize]));
        self.list.push(a);
    }

    /// The last address takes the removed one's place.
    pub(crate) fn remove(&mut self, a: &SocketAddr) {
        let list = &self.list;
        let Ok(found) = self.pos.find_entry(addr_hash(a), |&i| list.get(i as usize) == Some(a))
        else {
            return;
        };
        let (i, _) = found.remove();
        self.list.swap_remove(i as usize);
        if let Some(moved) = self.list.get(i as usize) {
            let last = self.list.len() as u32;
            if let Some(p) = self.pos.find_mut(addr_hash(moved), |&j| j == last) {
                *p = i;
            }
        }
    }

    pub(crate) fn contains(&self, a: &SocketAddr) -> bool {
        self.find(a).is_some()
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

    #[test]
    fn peer_set_index_follows_swap_removals() {
        let mut s = PeerSet::default();
        let mut model = std::collections::BTreeSet::new();
        let mut rng = crate::hash::Rng(7);
        for _ in 0..5000 {
            let r = rng.next();
            let a: SocketAddr = format!("10.0.{}.1:7946", r % 200).parse().unwrap();
            if r & (1 << 40) == 0 {
                s.insert(a);
                model.insert(a);
            } else {
                s.remove(&a);
                model.remove(&a);
            }
            assert_eq!(s.len(), model.len());
        }
        for (i, a) in s.as_slice().iter().enumerate() {
            assert_eq!(s.find(a), Some(i), "{a} found where it lies");
        }
        let listed: std::collections::BTreeSet<_> = s.as_slice().iter().copied().collect();
        assert_eq!(listed, model);
    }
}
