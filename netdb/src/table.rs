//! Versioned entries and the per-network store that holds them.
//!
//! The merge rule: an entry's version is (ltime, owner, incarnation); the
//! larger version wins on every node whatever the arrival order, and equal
//! versions are the same write (an owner never reuses a Lamport time). That
//! total order is what NetworkDB lacks: it keeps the old value on a tie, so a
//! tombstone with the same ltime as a live entry hid it forever on some
//! nodes and not on others.

mod keyed;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry::{Occupied, Vacant};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::{Digest, NodeId, key_hash, key_prefix, leaf_of};
use crate::hash::Hasher;
use keyed::Keyed;

#[derive(Debug, Clone, PartialEq, Eq)]
/// An entry as a node stores it: the value and the version of the write
/// that made it.
pub struct Entry {
    /// The value (the last one, for a tombstone).
    pub value: Bytes,
    /// The node that wrote it; one allocation per owner on a node, shared
    /// by its entries in every scope (`Node::owner_name`).
    pub owner: Arc<str>,
    /// The owner's incarnation at the write.
    pub incarnation: u64,
    /// The write's Lamport time.
    pub ltime: u64,
    /// A tombstone: deleted, kept a while so the delete spreads.
    pub deleted: bool,
    /// When this node reaps the tombstone; `None` for live entries.
    pub reap_at: Option<Duration>,
    /// The owner is failed: kept for its return, but not visible, not
    /// gossiped and not in the digest.
    pub hidden: bool,
}

/// Orders versions; see the module comment.
pub(crate) type Version<'a> = (u64, &'a str, u64);

impl Entry {
    pub(crate) fn version(&self) -> Version<'_> {
        (self.ltime, &self.owner, self.incarnation)
    }

    /// True when `self` must replace `other`.
    pub fn supersedes(&self, other: &Entry) -> bool {
        self.version() > other.version()
    }

    /// Live and visible: what tables, DNS and the data plane show.
    pub fn visible(&self) -> bool {
        !self.deleted && !self.hidden
    }

    /// The entry's contribution to the digest. The value is left out: the
    /// version identifies the write, and the write fixes the value.
    pub fn hash(&self, table: &str, key: &str) -> u64 {
        self.hash_after(key_prefix(table, key))
    }

    /// The hash, from the hasher that has read the table and the key
    /// (`key_prefix`, whose `finish` is the key hash).
    fn hash_after(&self, prefix: Hasher) -> u64 {
        prefix
            .bytes(self.owner.as_bytes())
            .u64(self.incarnation)
            .u64(self.ltime)
            .u64(u64::from(self.deleted))
            .finish()
    }
}

/// What a bulk rewrite does with one entry.
pub(crate) enum Rewrite {
    Keep,
    Replace(Entry),
    Remove,
}

/// One entry's change, for events.
#[derive(Debug)]
pub(crate) struct Change {
    pub table: String,
    pub key: String,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

/// The positions of a table's entries in one leaf of the digest's tree.
/// A small table has one entry in most of its leaves, which needs no
/// vector; a million entries fill the 65,536 leaves about 15 each.
#[derive(Debug)]
enum Leaf {
    One(usize),
    Many(Vec<usize>),
}

impl Leaf {
    fn positions(&self) -> &[usize] {
        match self {
            Leaf::One(i) => std::slice::from_ref(i),
            Leaf::Many(v) => v,
        }
    }

    fn add(&mut self, i: usize) {
        match self {
            Leaf::One(j) => *self = Leaf::Many(vec![*j, i]),
            Leaf::Many(v) => v.push(i),
        }
    }

    /// Drops position `i`; false when nothing is left.
    fn remove(&mut self, i: usize) -> bool {
        let Leaf::Many(v) = self else {
            return false;
        };
        v.retain(|&j| j != i);
        if let [only] = v[..] {
            *self = Leaf::One(only);
        }
        true
    }

    fn moved(&mut self, from: usize, to: usize) {
        match self {
            Leaf::One(j) if *j == from => *j = to,
            Leaf::One(_) => {}
            Leaf::Many(v) => v.iter_mut().filter(|j| **j == from).for_each(|j| *j = to),
        }
    }
}

/// One table: its entries, and their positions by digest leaf, so a
/// push/pull reads a subtree's entries without a table scan. By leaf, not
/// in a set ordered by key hash: the set's 16 bytes an entry in B-tree
/// nodes filled half to two thirds cost 25-35 bytes an entry, the leaves
/// about 10 at a million entries.
#[derive(Debug, Default)]
struct Table {
    entries: Keyed,
    by_leaf: BTreeMap<u16, Leaf>,
    /// Visible entries, kept as they change: counting a million entries
    /// for every `network ls` or inspect held the agent's loop.
    visible: usize,
}

/// All tables of one network (or of the cluster scope) and their digest.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Keyed by shared names: entry events carry them.
    tables: BTreeMap<Arc<str>, Table>,
    digest: Digest,
}

impl Tables {
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Entries held, tombstones and hidden ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tables.values().map(|t| t.entries.len()).sum()
    }

    pub(crate) fn get(&self, table: &str, key: &str) -> Option<&Entry> {
        self.tables.get(table)?.entries.get(key)
    }

    /// The table's name as held here, shared; a new one for a table no
    /// longer held (a change that empties a table removes it, its name
    /// with it).
    pub(crate) fn shared_name(&self, table: &str) -> Arc<str> {
        self.tables.get_key_value(table).map_or_else(|| table.into(), |(name, _)| name.clone())
    }

    /// Whether `key` holds that very version, and if so how many copies
    /// of it were heard, this one included: the copy check every gossiped
    /// arrival goes through ([`Keyed::copy_heard`]).
    pub(crate) fn copy_heard(
        &mut self,
        table: &str,
        key: &str,
        version: Version<'_>,
    ) -> Option<u8> {
        self.tables.get_mut(table)?.entries.copy_heard(key, version)
    }

    #[cfg(test)]
    pub(crate) fn forge_print(&mut self, table: &str, key: &str, version: Version<'_>) {
        if let Some(t) = self.tables.get_mut(table) {
            t.entries.forge_print(key, version);
        }
    }

    /// One table's entries in key order.
    pub(crate) fn table(&self, table: &str) -> impl Iterator<Item = (&str, &Entry)> {
        self.tables.get(table).into_iter().flat_map(|t| sorted(&t.entries))
    }

    /// Every entry in (table, key) order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, &Entry)> {
        self.tables.iter().flat_map(|(t, es)| sorted(&es.entries).map(move |(k, e)| (&**t, k, e)))
    }

    /// Each table's visible entries and entries held, in table order.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.tables.iter().map(|(name, t)| (&**name, t.visible, t.entries.len()))
    }

    /// Every entry, in table order but keys in no order: for scans that
    /// need no sort (a million-entry table sorts in a second).
    pub(crate) fn unordered(&self) -> impl Iterator<Item = (&str, &str, &Entry)> {
        self.tables.iter().flat_map(|(t, es)| es.entries.iter().map(move |(k, e)| (&**t, k, e)))
    }

    /// The entries of one node of the digest's tree, hidden ones included,
    /// in (leaf, table) order, a table's entries in a leaf as they came.
    /// Any fixed order serves a push/pull (a cut answer's rest is found by
    /// the digest next time); this one needs no hashing, sorting or
    /// allocation per leaf, which were a tenth of serving a fill.
    pub(crate) fn under(&self, node: NodeId) -> impl Iterator<Item = (&str, &str, &Entry)> {
        let mut each: Vec<_> = self
            .tables
            .iter()
            .map(|(name, t)| {
                t.by_leaf
                    .range(node.leaves())
                    .flat_map(move |(&leaf, held)| {
                        held.positions().iter().filter_map(move |&i| {
                            let (k, e) = t.entries.get_index(i)?;
                            Some((leaf, &**name, k, e))
                        })
                    })
                    .peekable()
            })
            .collect();
        std::iter::from_fn(move || {
            // Tables come in name order, so the first lowest leaf is the
            // (leaf, table) order's next.
            let mut next: Option<(u16, usize)> = None;
            for (j, it) in each.iter_mut().enumerate() {
                if let Some(&(leaf, ..)) = it.peek()
                    && next.is_none_or(|(best, _)| leaf < best)
                {
                    next = Some((leaf, j));
                }
            }
            let (_, t, k, e) = each[next?.1].next()?;
            Some((t, k, e))
        })
    }

    fn count(&mut self, prefix: Hasher, e: &Entry, add: bool) {
        if e.hidden {
            return;
        }
        let (k, h) = (prefix.finish(), e.hash_after(prefix));
        if add { self.digest.add(k, h) } else { self.digest.remove(k, h) }
    }

    /// Inserts or replaces a copy of `entry`, keeping the digest; returns
    /// the replaced entry. The value is copied: a `Bytes` made from a
    /// vector gets a shared header (a 32-byte chunk) at its first clone and
    /// keeps it for life, so the table keeps a copy of its own that is
    /// never cloned (a queued relay is written from it, `codec::EntryOut`), and the caller's
    /// goes to the change's event.
    pub(crate) fn insert(&mut self, table: &str, key: &str, entry: &Entry) -> Option<Entry> {
        let entry = Entry {
            value: Bytes::copy_from_slice(&entry.value),
            // Shared: the node gives each owner's entries one string.
            owner: entry.owner.clone(),
            ..*entry
        };
        let prefix = key_prefix(table, key);
        self.count(prefix, &entry, true);
        let t = match self.tables.get_mut(table) {
            Some(t) => t,
            None => self.tables.entry(table.into()).or_default(),
        };
        t.visible += usize::from(entry.visible());
        let (i, old) = t.entries.insert(key, entry);
        if old.is_none() {
            match t.by_leaf.entry(leaf_of(prefix.finish())) {
                Vacant(v) => _ = v.insert(Leaf::One(i)),
                Occupied(o) => o.into_mut().add(i),
            }
        }
        if let Some(o) = &old {
            t.visible -= usize::from(o.visible());
            self.count(prefix, o, false);
        }
        old
    }

    pub(crate) fn remove(&mut self, table: &str, key: &str) -> Option<Entry> {
        let t = self.tables.get_mut(table)?;
        // The order of a table's vector is no order callers see; the last
        // entry takes the removed one's place, and its index entry follows.
        let (i, old) = t.entries.swap_remove(key)?;
        t.visible -= usize::from(old.visible());
        let prefix = key_prefix(table, key);
        let leaf = leaf_of(prefix.finish());
        if t.by_leaf.get_mut(&leaf).is_some_and(|l| !l.remove(i)) {
            t.by_leaf.remove(&leaf);
        }
        let moved = t.entries.len();
        if let Some((k, _)) = t.entries.get_index(i)
            && let Some(l) = t.by_leaf.get_mut(&leaf_of(key_hash(table, k)))
        {
            l.moved(moved, i);
        }
        if t.entries.is_empty() {
            self.tables.remove(table);
        }
        self.count(prefix, &old, false);
        Some(old)
    }

    /// Applies `f` to every entry, keeping the digest, and returns what
    /// changed. Used for the rare bulk transitions (an owner fails, returns,
    /// leaves a network, is replaced by a new incarnation).
    pub(crate) fn rewrite(
        &mut self,
        mut f: impl FnMut(&str, &str, &Entry) -> Rewrite,
    ) -> Vec<Change> {
        let mut todo = Vec::new();
        for (t, k, e) in self.unordered() {
            match f(t, k, e) {
                Rewrite::Keep => {}
                r => todo.push((t.to_string(), k.to_string(), r)),
            }
        }
        // Changes come out in key order, whatever the map's.
        todo.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut changes = Vec::with_capacity(todo.len());
        for (table, key, r) in todo {
            let (before, after) = match r {
                Rewrite::Replace(e) => (self.insert(&table, &key, &e), Some(e)),
                Rewrite::Remove => (self.remove(&table, &key), None),
                Rewrite::Keep => continue,
            };
            changes.push(Change { table, key, before, after });
        }
        changes
    }
}

/// A table's entries in key order.
fn sorted(t: &Keyed) -> std::vec::IntoIter<(&str, &Entry)> {
    let mut v: Vec<(&str, &Entry)> = t.iter().collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v.into_iter()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    pub(super) fn e(owner: &str, ltime: u64, deleted: bool) -> Entry {
        Entry {
            value: Bytes::from(format!("{owner}@{ltime}")),
            owner: owner.into(),
            incarnation: 1,
            ltime,
            deleted,
            reap_at: None,
            hidden: false,
        }
    }

    #[test]
    fn merge_rule_is_a_total_order_with_owner_tie_break() {
        assert!(e("a", 2, false).supersedes(&e("b", 1, false)));
        assert!(!e("a", 1, false).supersedes(&e("a", 2, true)));
        // Equal ltime: the owner breaks the tie, the same way everywhere,
        // whether the contender is live or a tombstone.
        assert!(e("b", 5, false).supersedes(&e("a", 5, true)));
        assert!(!e("a", 5, true).supersedes(&e("b", 5, false)));
        assert!(!e("a", 5, false).supersedes(&e("a", 5, false)), "same write is not newer");
        let mut newer_inc = e("a", 5, false);
        newer_inc.incarnation = 2;
        assert!(newer_inc.supersedes(&e("a", 5, false)));
    }

    #[test]
    fn digest_tracks_inserts_replacements_removals_and_hidden_entries() {
        let (mut s1, mut s2) = (Tables::default(), Tables::default());
        s1.insert("t", "k1", &e("a", 1, false));
        s1.insert("t", "k1", &e("a", 2, false));
        s1.insert("t", "k2", &e("b", 3, true));
        s2.insert("t", "k2", &e("b", 3, true));
        s2.insert("t", "k1", &e("a", 2, false));
        assert_eq!(s1.digest(), s2.digest());
        assert_eq!(s1.len(), 2);
        let mut hidden = e("c", 4, false);
        hidden.hidden = true;
        s1.insert("u", "k", &hidden);
        assert_eq!(s1.digest(), s2.digest(), "hidden entries are not in the digest");
        assert_eq!(s1.remove("u", "k").map(|e| e.owner), Some("c".into()));
        s1.remove("t", "k1");
        assert_ne!(s1.digest(), s2.digest());
        s2.remove("t", "k1");
        assert_eq!(s1.digest(), s2.digest());
        let listed: Vec<_> = s1.under(NodeId::ROOT).map(|(t, k, _)| (t, k)).collect();
        assert_eq!(listed, vec![("t", "k2")], "the index follows removals");
        let leaf = NodeId::at(crate::digest::DEPTH, key_hash("t", "k2"));
        assert_eq!(s1.under(leaf).count(), 1);
        let other = NodeId::at(crate::digest::DEPTH, !key_hash("t", "k2"));
        assert_eq!(s1.under(other).count(), 0);
        assert_eq!(s1.digest().root(), {
            let mut s3 = Tables::default();
            s3.insert("t", "k2", &e("b", 3, true));
            s3.digest().root()
        });
    }

    #[test]
    fn the_hash_index_follows_entries_moved_by_removals() {
        // Enough entries that most of the 65,536 leaves of each table hold
        // several, and removals move positions within and across leaves.
        let n = 300_000;
        let mut s = Tables::default();
        let mut held = BTreeSet::new();
        for i in 0..n {
            let (t, k) = (["t", "u"][i % 2], format!("k{i}"));
            s.insert(t, &k, &e("a", i as u64, false));
            held.insert((key_hash(t, &k), t, k));
        }
        for i in (0..n).step_by(3) {
            let (t, k) = (["t", "u"][i % 2], format!("k{i}"));
            s.remove(t, &k);
            held.remove(&(key_hash(t, &k), t, k));
        }
        let listed: Vec<_> =
            s.under(NodeId::ROOT).map(|(t, k, _)| (key_hash(t, k), t, k)).collect();
        let order: Vec<_> = listed.iter().map(|&(h, t, _)| (leaf_of(h), t)).collect();
        assert!(order.is_sorted(), "in (leaf, table) order");
        assert_eq!(listed.len(), held.len(), "every entry once");
        let listed: BTreeSet<_> = listed.into_iter().collect();
        let expect: BTreeSet<_> = held.iter().map(|(h, t, k)| (*h, *t, k.as_str())).collect();
        assert_eq!(listed, expect);
        for (h, t, k) in &held {
            let leaf = NodeId::at(crate::digest::DEPTH, *h);
            assert!(s.under(leaf).any(|(lt, lk, _)| (lt, lk) == (*t, k.as_str())), "{t}/{k}");
        }
    }

    #[test]
    fn counts_follow_writes_tombstones_hidden_entries_and_removals() {
        let mut s = Tables::default();
        s.insert("t", "a", &e("x", 1, false));
        s.insert("t", "b", &e("x", 2, false));
        s.insert("u", "c", &e("x", 3, true));
        let mut hidden = e("y", 4, false);
        hidden.hidden = true;
        s.insert("u", "d", &hidden);
        assert_eq!(s.counts().collect::<Vec<_>>(), vec![("t", 2, 2), ("u", 0, 2)]);
        s.insert("t", "a", &e("x", 5, true));
        s.insert("u", "c", &e("x", 6, false));
        s.remove("u", "d");
        s.insert("t", "z", &e("x", 7, false));
        s.remove("t", "z");
        assert_eq!(s.counts().collect::<Vec<_>>(), vec![("t", 1, 2), ("u", 1, 1)]);
        s.rewrite(|_, _, _| Rewrite::Remove);
        assert_eq!(s.counts().count(), 0);
    }

    #[test]
    fn keys_short_and_long_are_found_listed_and_removed() {
        let keys: Vec<String> = (0..40).map(|n| "é".repeat(n / 2) + &"k".repeat(n % 2)).collect();
        let mut s = Tables::default();
        for (i, k) in keys.iter().enumerate() {
            s.insert("t", k, &e("x", i as u64 + 1, false));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.get("t", k).map(|e| e.ltime), Some(i as u64 + 1), "{k:?}");
        }
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        let listed: Vec<&str> = s.table("t").map(|(k, _)| k).collect();
        assert_eq!(listed, sorted_keys);
        for k in &keys {
            assert!(s.remove("t", k).is_some(), "{k:?}");
        }
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn rewrite_reports_changes_and_keeps_digest() {
        let mut s = Tables::default();
        s.insert("t", "a", &e("x", 1, false));
        s.insert("t", "b", &e("y", 2, false));
        let changes =
            s.rewrite(|_, _, en| if &*en.owner == "x" { Rewrite::Remove } else { Rewrite::Keep });
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].key, "a");
        let mut only_b = Tables::default();
        only_b.insert("t", "b", &e("y", 2, false));
        assert_eq!(s.digest(), only_b.digest());
        assert_eq!(s.len(), 1);
    }
}
