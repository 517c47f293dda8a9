//! Writes and merges: a local write stamped with the next Lamport time, a
//! remote entry admitted by its owner's state and merged by version, the
//! store that queues news for gossip and emits events, and tombstone reaps.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::Node;
use super::cluster::is_leave_record;
use super::scope::{Queued, ScopeState, queue_key};
use super::timers::Wake;
use crate::codec::{self, EncodedEntry, EntryRef, entry_from_wire};
use crate::event::{EntryEventKind, Event};
use crate::membership::{Owner, Status};
use crate::names::Scope;
use crate::stats::DropReason;
use crate::table::{Change, Entry, Rewrite};

/// How an entry reached this node; gossip news is relayed, sync news is not
/// (the digest comparison spreads repairs without flooding the queues).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// In a gossip datagram from this peer.
    Gossip(SocketAddr),
    Sync,
}

/// What merging a received entry did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Merged {
    /// Stored (or our own entry restated): news.
    News,
    /// The very version held here: a copy (what the push tree prunes on).
    Copy,
    /// Older than what is held, or refused.
    Nothing,
}

/// Largest step ahead of the local clock an entry's time may take (about a
/// trillion writes): far beyond any real cluster, far below the top.
const MAX_LTIME_JUMP: u64 = 1 << 40;

impl Node {
    /// A local write (create, update or tombstone) of an entry this node
    /// owns, stamped with the next Lamport time.
    pub(super) fn write(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        table: &str,
        key: &str,
        value: Bytes,
        deleted: bool,
    ) {
        // The write must beat whatever this key holds (a tombstone of another
        // owner, a hidden entry), or peers would refuse it while we keep it.
        if let Some(old) = self.scope(scope).and_then(|st| st.data.get(table, key)) {
            self.clock.witness(old.ltime);
        }
        let entry = Entry {
            value,
            owner: self.owner_name(&self.name),
            incarnation: self.incarnation,
            ltime: self.clock.tick(),
            deleted,
            reap_at: deleted.then(|| now + self.cfg.tombstone_ttl),
            hidden: false,
        };
        self.store(now, scope, table, key, entry, Some(None));
    }

    /// Stores an entry that won the merge; `relay` queues it for gossip
    /// (`Some(None)` for a write here, `Some(Some(peer))` for news from a
    /// peer).
    fn store(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        table: &str,
        key: &str,
        entry: Entry,
        relay: Option<Option<SocketAddr>>,
    ) {
        if let Some(at) = entry.reap_at {
            let wake = Wake::Reap { scope: scope.to_id(), table: table.into(), key: key.into() };
            self.schedule(at, wake);
        }
        if let Some(from) = relay {
            self.enqueue(now, scope, table, key, &entry, from);
        }
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        // Only a change that is not news reads the root it moved from.
        let was = relay.is_none().then(|| st.data.digest().root());
        let before = st.data.insert(table, key, &entry);
        st.root_moved(now, was);
        // The table holds a copy; this one goes to the event whole, not
        // cloned (a clone would allocate the value a shared header).
        let cluster = (scope == Scope::Cluster).then(|| entry.clone());
        self.emit_change(scope, table, key, before.as_ref(), Some(entry));
        if let Some(after) = cluster {
            self.cluster_entry_changed(now, table, key, &after);
            // It may have given a scope its first peer (`arm_tick`).
            self.arm_tick(now);
        }
    }

    fn enqueue(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        table: &str,
        key: &str,
        e: &Entry,
        from: Option<SocketAddr>,
    ) {
        // The tree pushes an event once to each eager peer; its repairs are
        // grafts and push/pull, not repetition.
        let limit = if self.cfg.push_tree {
            self.tree_learned(scope, table, key, e.ltime);
            1
        } else {
            let n = self.peers_of(scope).len() + 1;
            self.cfg.transmit_limit(n, from.is_some())
        };
        let entry = EncodedEntry::new(table, key, e);
        let framed_len = entry.framed_len(now);
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        // Copies heard quench relays only: a node's own writes keep all
        // their transmissions (`Config::quench_after`).
        let relay = from.is_some();
        let dropped =
            st.queue.push(queue_key(table, key), Queued { entry, framed_len, from }, limit, relay);
        self.stats.queue_overflow += dropped as u64;
        self.arm_tick(now);
        self.arm_news(now, scope);
    }

    /// Merges an entry that came from a peer.
    pub(super) fn apply_remote(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        w: &EntryRef<'_>,
        via: Via,
    ) -> Merged {
        // A corrupt or hostile time far ahead would pin every clock at the
        // top, where distinct writes share a version.
        if w.ltime > self.clock.time().saturating_add(MAX_LTIME_JUMP) {
            self.stats.drop(DropReason::BadEntry);
            return Merged::Nothing;
        }
        // Most arrivals are exact copies of what this node holds (every
        // event reaches a node many times): they are turned away before
        // the owner's state is looked up. A copy changes nothing the owner
        // checks below could: holding that very write means its owner was
        // admitted in that incarnation and none newer is known.
        let version = (w.ltime, w.owner, w.incarnation);
        // Gossip recognises a copy by its version's fingerprint, which a
        // new version shares with odds of 2^-56; push/pull compares the
        // versions themselves, so it repairs what such a match turned away.
        let copy = match via {
            Via::Sync => self.scope(scope).is_some_and(|st: &ScopeState| {
                st.data.get(w.table, w.key).is_some_and(|e| e.version() == version)
            }),
            Via::Gossip(_) => {
                let heard = self
                    .scope_mut(scope)
                    .and_then(|st| st.data.copy_heard(w.table, w.key, version));
                if let Some(heard) = heard {
                    self.stats.gossip_copies += 1;
                    self.heard_copies(scope, w.table, w.key, heard);
                }
                heard.is_some()
            }
        };
        if copy {
            return Merged::Copy;
        }
        // Push/pull frames are checked whole as they are read; gossip
        // entries here, past the copies (`codec::decode_datagram`).
        if via != Via::Sync
            && let Err(r) = codec::validate_entry(&self.cfg, scope.wire_name(), w)
        {
            self.stats.drop(r);
            return Merged::Nothing;
        }
        let hidden = match self.admit_owner(scope, w) {
            Ok(hidden) => hidden,
            Err(r) => {
                self.stats.drop(r);
                return Merged::Nothing;
            }
        };
        let Some(st) = self.scope(scope) else {
            return Merged::Nothing;
        };
        // An older version: turned away before anything else is looked up
        // or allocated for it.
        let held = st.data.get(w.table, w.key);
        if let Some(old) = held
            && (w.ltime, w.owner, w.incarnation) < old.version()
        {
            return Merged::Nothing;
        }
        // Only an earlier life of this process (a restart that kept its
        // incarnation) can have written our name with a later time than
        // ours: what we hold now is our word, and it must win everywhere.
        // What we do not hold, that life wrote and no one has undone: it is
        // ours again (the store below).
        let ours = held
            .filter(|e| w.owner == self.name && *e.owner == *self.name)
            .map(|e| (e.value.clone(), e.deleted));
        if let Scope::Network(net) = scope
            && self.detached_before(net, w.owner, w.incarnation, w.ltime)
        {
            self.stats.drop(DropReason::DetachedOwner);
            return Merged::Nothing;
        }
        self.clock.witness(w.ltime);
        if let Some((value, deleted)) = ours {
            self.stats.own_entries_restated += 1;
            self.write(now, scope, w.table, w.key, value, deleted);
            return Merged::News;
        }
        let ttl = self.cfg.tombstone_ttl;
        if self.scope(scope).is_none() {
            return Merged::Nothing;
        }
        let owner = self.owner_name(w.owner);
        let mut entry = entry_from_wire(w, owner, now, ttl);
        entry.hidden = hidden;
        let relay = match via {
            Via::Gossip(from) => {
                self.stats.entries_from_gossip += 1;
                (!hidden).then_some(Some(from))
            }
            Via::Sync => {
                self.stats.entries_from_sync += 1;
                None
            }
        };
        self.store(now, scope, w.table, w.key, entry, relay);
        Merged::News
    }

    /// Decides whether entries of this owner are accepted, and whether they
    /// arrive hidden (owner failed). Learning of a newer incarnation removes
    /// the older one's entries.
    fn admit_owner(&mut self, scope: Scope<'_>, w: &EntryRef<'_>) -> Result<bool, DropReason> {
        if w.owner == self.name {
            return if w.incarnation < self.incarnation {
                Err(DropReason::StaleIncarnation)
            } else if w.incarnation > self.incarnation {
                // Another process claims our name with a later start.
                tracing::warn!(name = %self.name, "entry from a newer incarnation of this node's own name");
                Err(DropReason::ForgedOwner)
            } else {
                Ok(false)
            };
        }
        match self.owners.get(w.owner) {
            None => {
                self.owners.insert(w.owner.into(), Owner::new(w.incarnation, None));
                Ok(false)
            }
            Some(o) if w.incarnation < o.incarnation => Err(DropReason::StaleIncarnation),
            Some(o) if w.incarnation > o.incarnation => {
                self.new_incarnation(w.owner, w.incarnation, None);
                Ok(false)
            }
            Some(o) => match o.status {
                Status::Alive => Ok(false),
                Status::Failed { .. } => Ok(true),
                // A node that saw the owner fail for good must still learn
                // that it left, or its cluster digest differs forever from
                // those of nodes that saw the leave.
                Status::Gone if is_leave_record(scope, w) => Ok(false),
                Status::Gone | Status::Left => Err(DropReason::OwnerGone),
            },
        }
    }

    /// Removes a tombstone whose lifetime is over.
    pub(super) fn reap(&mut self, now: Duration, scope: Scope<'_>, table: &str, key: &str) {
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        let due = matches!(st.data.get(table, key), Some(e) if e.deleted && e.reap_at.is_some_and(|at| at <= now));
        if due {
            st.data.remove(table, key);
            st.queue.invalidate(queue_key(table, key));
            if scope == Scope::Cluster {
                self.cluster_entry_removed(table);
            }
        }
    }

    fn emit_change(
        &mut self,
        scope: Scope<'_>,
        table: &str,
        key: &str,
        before: Option<&Entry>,
        after: Option<Entry>,
    ) {
        let was = before.is_some_and(Entry::visible);
        let kind = match (was, after.as_ref().is_some_and(Entry::visible)) {
            (false, true) => EntryEventKind::Create,
            (true, true) => EntryEventKind::Update,
            (true, false) => EntryEventKind::Delete,
            (false, false) => return,
        };
        // A delete shows the tombstone's value, or the removed entry's.
        let (owner, value) = match (after, before) {
            (Some(a), _) => (a.owner, a.value),
            (None, Some(b)) => (b.owner.clone(), b.value.clone()),
            (None, None) => return,
        };
        let network = match scope {
            Scope::Cluster => None,
            Scope::Network(n) => {
                Some(self.networks.get_key_value(n).map_or_else(|| n.into(), |(k, _)| k.clone()))
            }
        };
        let table = self.scope(scope).map_or_else(|| table.into(), |st| st.data.shared_name(table));
        self.events.extend(Event::entry(network, table, key, owner, value, kind));
    }

    pub(super) fn emit_changes(&mut self, scope: Scope<'_>, changes: Vec<Change>) {
        for c in changes {
            self.emit_change(scope, &c.table, &c.key, c.before.as_ref(), c.after);
        }
    }

    /// Applies `f(scope, table, entry)` to the entries of `owner` in every
    /// scope; entries that leave the gossip (removed or hidden) leave the
    /// broadcast queues too.
    pub(super) fn rewrite_owner(
        &mut self,
        owner: &str,
        f: impl Fn(Scope<'_>, &str, &Entry) -> Rewrite,
    ) {
        for id in self.scope_ids() {
            let scope = id.as_scope();
            let Some(st) = self.scope_mut(scope) else {
                continue;
            };
            let changes = st
                .data
                .rewrite(|t, _, e| if &*e.owner == owner { f(scope, t, e) } else { Rewrite::Keep });
            if changes.is_empty() {
                continue;
            }
            for c in &changes {
                if c.after.as_ref().is_none_or(|e| e.hidden) {
                    st.queue.invalidate(queue_key(&c.table, &c.key));
                }
            }
            self.emit_changes(scope, changes);
        }
        self.net_peers = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::test_support::{PEER, gossip, node, peer_entry};
    use crate::event::{EntryEventKind, Event};
    use crate::stats::DropReason;

    #[test]
    fn local_tombstone_is_reaped_after_its_lifetime() {
        let ttl = Duration::from_secs(60);
        let mut n = node(ttl);
        let t0 = Duration::from_secs(1);
        n.join_network(t0, "net").unwrap();
        n.put(t0, "net", "t", "k", Bytes::from_static(b"v")).unwrap();
        n.delete(t0, "net", "t", "k").unwrap();
        assert!(n.get("net", "t", "k").is_none());
        assert_eq!(n.raw_entries("net").len(), 1, "tombstone kept");
        n.handle_timeout(t0 + ttl - Duration::from_millis(1));
        assert_eq!(n.raw_entries("net").len(), 1, "not before its time");
        n.handle_timeout(t0 + ttl);
        assert!(n.raw_entries("net").is_empty(), "reaped");
        let kinds: Vec<_> = std::iter::from_fn(|| n.poll_event())
            .filter_map(|e| match e {
                Event::Entry { kind, .. } => Some(kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, vec![EntryEventKind::Create, EntryEventKind::Delete]);
    }

    #[test]
    fn a_write_beats_what_the_key_holds_even_from_a_later_clock() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        n.join_network(t, "net").unwrap();
        // A peer's tombstone far ahead of our clock arrives for the key.
        let tomb = peer_entry("t", "k", Bytes::new(), 1_000, true);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("net", vec![tomb]));
        assert_eq!(n.raw_entries("net").len(), 1);
        n.put(t, "net", "t", "k", Bytes::from_static(b"mine")).unwrap();
        let e = n.get("net", "t", "k").expect("visible");
        assert!(e.ltime > 1_000);
    }

    #[test]
    fn a_bad_gossip_entry_is_skipped_and_counted_and_its_neighbours_merged() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        n.join_network(t, "net").unwrap();
        let good = peer_entry("t", "k", Bytes::from_static(b"v"), 5, false);
        let bad_key = peer_entry("t", "k\n", Bytes::new(), 5, false);
        let no_time = peer_entry("t", "k2", Bytes::new(), 0, false);
        let datagram = gossip("net", vec![bad_key, good.clone(), no_time]);
        n.handle_datagram(t, PEER.parse().unwrap(), &datagram);
        assert_eq!(n.stats().dropped(DropReason::BadName), 1);
        assert_eq!(n.stats().dropped(DropReason::BadEntry), 1);
        let held: Vec<_> = n.raw_entries("net").into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(held, vec!["k".to_string()]);
        // Its copy is turned away as one, not checked again.
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("net", vec![good]));
        assert_eq!(n.stats().gossip_copies, 1);
    }

    #[test]
    fn a_time_far_ahead_of_the_clock_is_refused() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        n.join_network(t, "net").unwrap();
        let before = n.clock.time();
        let wild = peer_entry("t", "k", Bytes::new(), u64::MAX, false);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("net", vec![wild]));
        assert_eq!(n.stats().dropped(DropReason::BadEntry), 1);
        assert_eq!(n.clock.time(), before, "the clock did not jump");
        assert!(n.raw_entries("net").is_empty());
    }
}
