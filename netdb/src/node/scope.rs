//! What a node keeps per scope besides the tables: the broadcast queue and
//! the bookkeeping that decides when to send a digest or start a push/pull.

use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

use crate::broadcast::BroadcastQueue;
use crate::codec::EncodedEntry;
use crate::config::Config;
use crate::digest::Digest;
use crate::hash::MapHasher;
use crate::table::Tables;

use super::tree::PushTree;

/// An entry waiting in a broadcast queue.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) entry: EncodedEntry,
    /// Bytes it adds to a packet (field tag and length included); an upper
    /// bound, since the residual reap time only shrinks.
    pub(super) framed_len: usize,
    /// The peer it came from (None: written here): the push tree does not
    /// push it back there.
    pub(super) from: Option<SocketAddr>,
}

/// A queued event's key: a 64-bit fingerprint of its (table, key), a newer
/// event of the same entry replacing the queued one. Every gossiped copy
/// looks its key up here (the quench), and comparing two heap strings,
/// each a cache miss away, was 8 % of a 100-agent burst's CPU; the strings
/// also cost two allocations an event. Two keys of one scope's queue (at
/// most `max_queue_len`) sharing 64 bits would share a slot, the later
/// event replacing the other's relay: the digest is exact, and push/pull
/// repairs what gossip then misses.
pub(super) fn queue_key(table: &str, key: &str) -> u64 {
    let mut h = MapHasher::default();
    h.text(table);
    h.text(key);
    h.finish()
}

#[derive(Debug)]
pub(super) struct ScopeState {
    pub(super) data: Tables,
    pub(super) queue: BroadcastQueue<Queued>,
    /// The push tree's links and pending control (`Config::push_tree`).
    pub(super) tree: PushTree,
    /// The root as last seen, and since when: a root that has not moved
    /// for `mismatch_sync_after` has no news in flight (`compare_root`).
    pub(super) last_root: u64,
    pub(super) root_changed_at: Duration,
    pub(super) mismatch_since: Option<Duration>,
    pub(super) last_sync_at: Option<Duration>,
    pub(super) next_periodic_sync: Duration,
    pub(super) next_digest: Duration,
    /// A push/pull moved entries and the root is to go alone soon
    /// (`digest_soon`): gossip packets do not put it off.
    pub(super) repair_digest: bool,
    /// Early packets since the last tick (`Config::early_news`).
    pub(super) early_packets: u8,
    /// Sync with the next peer that appears (joined, rejoined, or a sync
    /// failed).
    pub(super) needs_sync: bool,
    /// A push/pull with some peer completed at least once.
    pub(super) synced: bool,
    /// Push/pull exchanges of this scope this node opened, completed and
    /// saw fail (the node-wide sums are in `Stats`).
    pub(super) syncs: SyncCounts,
}

/// Push/pull exchanges of one scope.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncCounts {
    /// Exchanges this node opened.
    pub started: u64,
    /// Opened exchanges that completed.
    pub completed: u64,
    /// Opened exchanges that failed (refused, broken, timed out).
    pub failed: u64,
}

/// What one scope holds and how its anti-entropy goes, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeStats {
    /// Visible entries by table, in table order.
    pub tables: Vec<(String, usize)>,
    /// Tombstones and hidden entries (kept, not shown).
    pub kept: usize,
    /// Events waiting in the broadcast queue.
    pub queue_len: usize,
    /// The digest root: equal roots mean equal tables.
    pub root: u64,
    /// A push/pull with some peer completed at least once.
    pub synced: bool,
    /// Push/pull exchanges this node opened for the scope.
    pub syncs: SyncCounts,
}

impl ScopeState {
    /// The scope's figures as [`ScopeStats`].
    pub(super) fn stats(&self) -> ScopeStats {
        let mut tables: Vec<(String, usize)> = Vec::new();
        let mut kept = 0;
        for (table, visible, held) in self.data.counts() {
            kept += held - visible;
            if visible > 0 {
                tables.push((table.to_string(), visible));
            }
        }
        ScopeStats {
            tables,
            kept,
            queue_len: self.queue.len(),
            root: self.data.digest().root(),
            synced: self.synced,
            syncs: self.syncs,
        }
    }
}

impl ScopeState {
    /// An entry was stored. News (queued for gossip; `was` is `None`) is in
    /// flight: the root counts as changed now. A push/pull's entry (the root
    /// moved from `was`) is a repair, not news in flight: it leaves the time
    /// alone, or a node just repaired would wait a settle time before the
    /// next repair, and a second one after a burst's push/pull came a second
    /// late. Other changes (a member's entries hidden, tombstones reaped)
    /// are seen at the next comparison, as changed then.
    pub(super) fn root_moved(&mut self, now: Duration, was: Option<u64>) {
        let root = self.data.digest().root();
        match was {
            None => {
                self.last_root = root;
                self.root_changed_at = now;
            }
            Some(was) if self.last_root == was => self.last_root = root,
            Some(_) => {}
        }
    }

    /// A scope joined at `now`: it syncs with the first peer it finds, and
    /// its periodic syncs are jittered so scopes and nodes do not align.
    pub(super) fn new(cfg: &Config, now: Duration, rng: &mut StdRng) -> ScopeState {
        ScopeState {
            data: Tables::default(),
            queue: BroadcastQueue::new(cfg.max_queue_len),
            tree: PushTree::new(cfg),
            last_root: Digest::default().root(),
            root_changed_at: now,
            mismatch_since: None,
            last_sync_at: None,
            synced: false,
            next_periodic_sync: now + cfg.sync_interval + jitter(rng, cfg.sync_interval / 4),
            next_digest: now,
            repair_digest: false,
            early_packets: 0,
            needs_sync: true,
            syncs: SyncCounts::default(),
        }
    }
}

/// A uniform random delay in `0..=max`, at millisecond grain.
pub(super) fn jitter(rng: &mut StdRng, max: Duration) -> Duration {
    let ms = max.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rng.random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::queue_key;

    #[test]
    fn queue_keys_tell_tables_and_keys_apart() {
        assert_eq!(queue_key("t", "k"), queue_key("t", "k"));
        assert_ne!(queue_key("ab", "c"), queue_key("a", "bc"), "the split between table and key");
        assert_ne!(queue_key("t", "k"), queue_key("t", "k\0"), "a trailing zero byte");
        let keys: std::collections::HashSet<u64> =
            (0..10_000).map(|i| queue_key("endpoints", &format!("n{i}-{:03}", i % 1000))).collect();
        assert_eq!(keys.len(), 10_000);
    }
}
