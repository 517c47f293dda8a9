//! Per-network digest: a hash tree over the hash of (table, key), fan-out
//! 16, `DEPTH` levels below the root. A node's value is the sum (mod 2^64)
//! of its entries' hashes and their count, so a change is one add and one
//! subtract, in any order. Stored: the total, the root's 16 children (what
//! every push/pull opens with), and the occupied leaves (at most 65,536,
//! at most one per entry); a node between is summed from its leaves when a
//! push/pull descends to it. An empty table allocates nothing.

use std::collections::BTreeMap;

use crate::hash::Hasher;

/// Children per node.
pub(crate) const FANOUT: usize = 16;
const FANOUT_BITS: u32 = 4;
/// Levels below the root; leaves are at this level.
pub(crate) const DEPTH: u32 = 4;
/// A node with at most this many entries on both sides is exchanged whole
/// rather than descended: a branch (16 sums and counts) costs about as
/// much as two entries, and a descent costs a round trip per level.
pub(crate) const SMALL: u32 = 4;

/// Hash of a key: its place in the tree. All versions of a key share it.
pub(crate) fn key_hash(table: &str, key: &str) -> u64 {
    key_prefix(table, key).finish()
}

/// The hasher that has read a table and a key: its `finish` is the key
/// hash, and an entry's hash goes on from it.
pub(crate) fn key_prefix(table: &str, key: &str) -> Hasher {
    Hasher::default().bytes(table.as_bytes()).bytes(key.as_bytes())
}

/// The sum of a set of entry hashes and its size.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct Sum {
    pub(crate) sum: u64,
    pub(crate) count: u32,
}

impl Sum {
    fn add(&mut self, h: u64) {
        self.sum = self.sum.wrapping_add(h);
        self.count = self.count.wrapping_add(1);
    }

    fn remove(&mut self, h: u64) {
        self.sum = self.sum.wrapping_sub(h);
        self.count = self.count.wrapping_sub(1);
    }

    fn merge(&mut self, other: Sum) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.count = self.count.wrapping_add(other.count);
    }
}

/// A node of the tree: at `level` (0 is the root), the entries whose key
/// hash starts with the `level * 4` bits of `prefix`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct NodeId {
    level: u32,
    prefix: u64,
}

impl NodeId {
    pub(crate) const ROOT: NodeId = NodeId { level: 0, prefix: 0 };

    /// A node as a peer names it; None if no such node exists.
    pub(crate) fn new(level: u32, prefix: u64) -> Option<NodeId> {
        (level <= DEPTH && prefix >> (level * FANOUT_BITS) == 0).then_some(NodeId { level, prefix })
    }

    pub(crate) fn level(self) -> u32 {
        self.level
    }

    pub(crate) fn prefix(self) -> u64 {
        self.prefix
    }

    pub(crate) fn is_leaf(self) -> bool {
        self.level == DEPTH
    }

    /// The `i`th child (`i` < 16) of a node above the leaves.
    pub(crate) fn child(self, i: usize) -> NodeId {
        debug_assert!(!self.is_leaf() && i < FANOUT);
        NodeId { level: self.level + 1, prefix: self.prefix << FANOUT_BITS | i as u64 }
    }

    /// The node at `level` that holds `key_hash`.
    #[cfg(test)]
    pub(crate) fn at(level: u32, key_hash: u64) -> NodeId {
        let prefix = if level == 0 { 0 } else { key_hash >> (64 - level * FANOUT_BITS) };
        NodeId { level, prefix }
    }

    /// The leaves below this node, as a range of leaf numbers.
    pub(crate) fn leaves(self) -> std::ops::RangeInclusive<u16> {
        let shift = (DEPTH - self.level) * FANOUT_BITS;
        let first = self.prefix << shift;
        let last = first | ((1u64 << shift) - 1);
        (first as u16)..=(last as u16)
    }
}

#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Digest {
    total: Sum,
    top: [Sum; FANOUT],
    /// Occupied leaves only, by leaf number (the top 16 bits of the key
    /// hash).
    leaves: BTreeMap<u16, Sum>,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({:016x})", self.root())
    }
}

pub(crate) fn leaf_of(key_hash: u64) -> u16 {
    (key_hash >> (64 - DEPTH * FANOUT_BITS)) as u16
}

fn top_of(key_hash: u64) -> usize {
    (key_hash >> (64 - FANOUT_BITS)) as usize
}

impl Digest {
    pub(crate) fn add(&mut self, key_hash: u64, hash: u64) {
        self.total.add(hash);
        self.top[top_of(key_hash)].add(hash);
        self.leaves.entry(leaf_of(key_hash)).or_default().add(hash);
    }

    pub(crate) fn remove(&mut self, key_hash: u64, hash: u64) {
        self.total.remove(hash);
        self.top[top_of(key_hash)].remove(hash);
        let leaf = leaf_of(key_hash);
        if let Some(s) = self.leaves.get_mut(&leaf) {
            s.remove(hash);
            // Adds and removes pair up, so an empty leaf's sum is back at 0.
            if s.count == 0 {
                self.leaves.remove(&leaf);
            }
        }
    }

    /// What gossip carries: equal roots, equal tables (up to 64-bit sums
    /// colliding).
    pub(crate) fn root(&self) -> u64 {
        Hasher::default().u64(self.total.sum).u64(u64::from(self.total.count)).finish()
    }

    /// The value of one node.
    #[cfg(test)]
    fn node(&self, id: NodeId) -> Sum {
        if id.level == 0 {
            return self.total;
        }
        let mut s = Sum::default();
        for (_, leaf) in self.leaves.range(id.leaves()) {
            s.merge(*leaf);
        }
        s
    }

    /// The values of a node's 16 children (the node is above the leaves).
    pub(crate) fn children(&self, id: NodeId) -> [Sum; FANOUT] {
        if id.level == 0 {
            return self.top;
        }
        let mut out = [Sum::default(); FANOUT];
        let shift = (DEPTH - id.level - 1) * FANOUT_BITS;
        for (leaf, s) in self.leaves.range(id.leaves()) {
            out[usize::from(leaf >> shift) & (FANOUT - 1)].merge(*s);
        }
        out
    }
}

/// What one side of an exchange does with a node the other side sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Step {
    /// Same value: nothing below differs.
    Same,
    /// Send this side's children of the node, for the other to compare.
    Descend,
    /// Send this side's entries of the node whole; the other answers with
    /// what this side lacks there.
    Whole,
    /// The other side holds nothing there: send this side's entries; no
    /// answer is needed.
    Give,
}

/// The step for node `id`, valued `mine` here and `theirs` at the peer.
pub(crate) fn step(id: NodeId, mine: Sum, theirs: Sum) -> Step {
    if mine == theirs {
        Step::Same
    } else if theirs.count == 0 && mine.count > 0 {
        Step::Give
    } else if id.is_leaf() || mine.count == 0 || mine.count.max(theirs.count) <= SMALL {
        Step::Whole
    } else {
        Step::Descend
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::hash::Rng;

    fn build(entries: &BTreeMap<u64, u64>) -> Digest {
        let mut d = Digest::default();
        for (k, h) in entries {
            d.add(*k, *h);
        }
        d
    }

    #[test]
    fn incremental_upkeep_equals_recomputation() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut d = Digest::default();
        // Few distinct keys, so updates and removals of held keys are common;
        // the keys spread over the whole hash space and share leaves.
        let keys: Vec<u64> = (0..500).map(|_| rng.next()).collect();
        for step in 0..20_000 {
            let k = keys[(rng.next() % keys.len() as u64) as usize];
            match (rng.next() % 3, model.get(&k).copied()) {
                (0, Some(old)) => {
                    d.remove(k, old);
                    model.remove(&k);
                }
                (_, old) => {
                    let h = rng.next();
                    d.add(k, h);
                    if let Some(old) = old {
                        d.remove(k, old);
                    }
                    model.insert(k, h);
                }
            }
            if step % 1000 == 0 {
                assert_eq!(d, build(&model), "after {step} changes");
            }
        }
        assert_eq!(d, build(&model));
        assert_eq!(d.root(), build(&model).root());
        for (k, h) in std::mem::take(&mut model) {
            d.remove(k, h);
        }
        assert_eq!(d, Digest::default(), "emptied, it holds nothing");
        assert!(d.leaves.is_empty());
    }

    #[test]
    fn inner_nodes_sum_their_children() {
        let mut rng = Rng(7);
        let d = build(&(0..3000).map(|_| (rng.next(), rng.next())).collect());
        for (i, kept) in d.children(NodeId::ROOT).iter().enumerate() {
            let mut from_leaves = Sum::default();
            for (_, s) in d.leaves.range(NodeId::ROOT.child(i).leaves()) {
                from_leaves.merge(*s);
            }
            assert_eq!(*kept, from_leaves, "the kept top level is its leaves' sum");
        }
        let mut id = NodeId::ROOT;
        while !id.is_leaf() {
            let children = d.children(id);
            let mut s = Sum::default();
            for (i, c) in children.iter().enumerate() {
                assert_eq!(*c, d.node(id.child(i)));
                s.merge(*c);
            }
            assert_eq!(s, d.node(id));
            id = id.child(3);
        }
        assert_eq!(d.node(NodeId::ROOT).count, 3000);
    }

    /// Descends two digests as an exchange does, without the shortcut for
    /// small nodes; returns the leaves it ends at.
    fn descend(a: &Digest, b: &Digest) -> BTreeSet<NodeId> {
        let mut found = BTreeSet::new();
        let mut todo = vec![NodeId::ROOT];
        while let Some(id) = todo.pop() {
            if a.node(id) == b.node(id) {
                continue;
            }
            if id.is_leaf() {
                found.insert(id);
                continue;
            }
            let (ca, cb) = (a.children(id), b.children(id));
            todo.extend((0..FANOUT).filter(|i| ca[*i] != cb[*i]).map(|i| id.child(i)));
        }
        found
    }

    #[test]
    fn descent_finds_exactly_the_differing_leaves() {
        let mut rng = Rng(42);
        let base: BTreeMap<u64, u64> = (0..20_000).map(|_| (rng.next(), rng.next())).collect();
        let mut other = base.clone();
        let mut expect = BTreeSet::new();
        let keys: Vec<u64> = base.keys().copied().collect();
        for i in 0..50 {
            let k = match i % 3 {
                0 => rng.next(),
                _ => keys[(rng.next() % keys.len() as u64) as usize],
            };
            match i % 3 {
                0 | 1 => other.insert(k, rng.next()),
                _ => other.remove(&k),
            };
            expect.insert(NodeId::at(DEPTH, k));
        }
        let (a, b) = (build(&base), build(&other));
        assert_eq!(descend(&a, &b), expect);
        assert_eq!(descend(&b, &a), expect);
        assert!(descend(&a, &a).is_empty());
    }

    #[test]
    fn steps_descend_large_nodes_and_exchange_small_ones() {
        let leaf = NodeId::at(DEPTH, 0);
        let big = Sum { sum: 1, count: 100 };
        let other = Sum { sum: 2, count: 100 };
        let few = Sum { sum: 3, count: SMALL };
        assert_eq!(step(NodeId::ROOT, big, big), Step::Same);
        assert_eq!(step(NodeId::ROOT, big, other), Step::Descend);
        assert_eq!(step(leaf, big, other), Step::Whole, "a leaf is not descended");
        assert_eq!(step(NodeId::ROOT, few, Sum { sum: 4, count: 1 }), Step::Whole);
        assert_eq!(step(NodeId::ROOT, big, Sum::default()), Step::Give);
        assert_eq!(step(NodeId::ROOT, Sum::default(), big), Step::Whole, "asks for all");
    }

    #[test]
    fn node_ids_are_checked_and_nest() {
        assert_eq!(NodeId::new(0, 0), Some(NodeId::ROOT));
        assert!(NodeId::new(0, 1).is_none());
        assert!(NodeId::new(1, 15).is_some());
        assert!(NodeId::new(1, 16).is_none());
        assert!(NodeId::new(DEPTH, 0xffff).is_some());
        assert!(NodeId::new(DEPTH + 1, 0).is_none());
        let k = 0xabcd_ef01_2345_6789;
        assert_eq!(NodeId::at(1, k), NodeId::new(1, 0xa).unwrap());
        assert_eq!(NodeId::at(1, k).child(0xb), NodeId::at(2, k));
        assert_eq!(NodeId::at(DEPTH, k).leaves(), 0xabcd..=0xabcd);
        assert_eq!(NodeId::ROOT.leaves(), 0..=0xffff);
        assert_eq!(NodeId::at(2, k).leaves(), 0xab00..=0xabff);
    }
}
