//! Dissemination: gossip ticks that come only when there is work, fan-out
//! of queued events to random peers within a byte budget per tick, digests
//! when idle, and a push/pull when a peer's digest stays different.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use netdb_wire as wire;
use prost::Message;
use rand::RngExt;

use super::Node;
use super::scope::queue_key;
use super::send::datagram_room;
use super::timers::Wake;
use crate::codec::{self, EncodedEntry};
use crate::event::Transmit;
use crate::membership::PeerSet;
use crate::names::{Scope, ScopeId};

/// Early packets a scope may send between two ticks (`Config::early_news`).
const EARLY_PACKETS: u8 = 2;

/// Which queued events a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// The tick's: fewest sent first, each send counted.
    Due,
    /// Events never sent nor sent early, ahead of a far tick, to
    /// `early_news_fanout` peers, not counted: the tick still sends them,
    /// so what copies quench is unchanged (`Config::early_news`).
    News,
}

impl Node {
    /// Where a scope's gossip goes: every live member for the cluster
    /// scope, the live attached peers for a network.
    pub(super) fn peers_of(&mut self, scope: Scope<'_>) -> &[SocketAddr] {
        self.peer_set(scope).map_or(&[], PeerSet::as_slice)
    }

    fn peer_set(&mut self, scope: Scope<'_>) -> Option<&PeerSet> {
        self.refresh_net_peers();
        self.cached_peer_set(scope)
    }

    /// Network peer lists are computed when first asked for after a
    /// membership change.
    fn refresh_net_peers(&mut self) {
        if self.net_peers.is_none() {
            self.net_peers = Some(self.compute_net_peers());
        }
    }

    /// A scope's peers as of the last `refresh_net_peers`.
    fn cached_peer_set(&self, scope: Scope<'_>) -> Option<&PeerSet> {
        match scope {
            Scope::Cluster => Some(&self.cluster_peers),
            Scope::Network(network) => self.net_peers.as_ref().and_then(|m| m.get(network)),
        }
    }

    /// `k` distinct peers of a scope, uniformly at random. Positions are
    /// drawn without copying the peer list: a packet costs O(k²) with k
    /// the fan-out, not O(n) in the cluster size.
    pub(super) fn choose_peers(&mut self, scope: Scope<'_>, k: usize) -> Vec<SocketAddr> {
        let n = self.peers_of(scope).len();
        let k = k.min(n);
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        if 2 * k <= n {
            while picked.len() < k {
                let j = self.rng.random_range(0..n);
                if !picked.contains(&j) {
                    picked.push(j);
                }
            }
        } else {
            // Partial Fisher-Yates: the first k are a uniform sample.
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.rng.random_range(i..n);
                all.swap(i, j);
            }
            all.truncate(k);
            picked = all;
        }
        let peers = self.peers_of(scope);
        picked.into_iter().map(|j| peers[j]).collect()
    }

    /// Makes sure a gossip tick comes when there is something to do: within
    /// a gossip interval of the last tick while events, SWIM updates or
    /// pending exchanges wait (at once if the node was idle), else for the
    /// next periodic sync or a digest no probe round took (`ride` after it
    /// was due). An idle node thus wakes for its probe rounds alone.
    pub(super) fn arm_tick(&mut self, now: Duration) {
        let soonest = now.max(self.last_tick.map_or(now, |t| t + self.cfg.gossip_interval));
        if self.timers.tick().is_some_and(|t| t <= soonest) {
            return; // nothing could make it earlier
        }
        let pending: Vec<ScopeId> = self
            .scopes()
            .filter(|(_, st)| !st.queue.is_empty() || st.needs_sync || st.tree.has_work())
            .map(|(s, _)| s.to_id())
            .collect();
        // Work without a peer to do it with waits for the idle ticks.
        let busy = self.swim.updates_backlog() > 0
            || pending.iter().any(|s| !self.peers_of(s.as_scope()).is_empty());
        let at = if busy {
            soonest
        } else {
            // A digest may ride a probe round up to `ride` after it is due
            // (`digests_along`); the tick is for the one no round took. A
            // scope without a peer has no one to send a digest to: it
            // wakes the node only for its periodic sync, a fallback, as a
            // peer's arrival arms the tick again (`store` after a cluster
            // entry's side effects, `drain_swim`, `join_network`) with the
            // scope's digest overdue by then.
            let ride = self.ride();
            self.refresh_net_peers();
            let idle = self
                .scopes()
                .map(|(scope, st)| {
                    let peered =
                        self.cached_peer_set(scope).is_some_and(|p| !p.as_slice().is_empty());
                    let digest = if peered { st.next_digest + ride } else { Duration::MAX };
                    let graft = st.tree.next_graft().unwrap_or(Duration::MAX);
                    digest.min(st.next_periodic_sync).min(graft)
                })
                .min();
            idle.unwrap_or(now + self.cfg.digest_interval).max(soonest)
        };
        if self.timers.tick().is_none_or(|t| at < t) {
            self.timers.set_tick(Some(at));
        }
    }

    pub(super) fn gossip_tick(&mut self, now: Duration) {
        self.last_tick = Some(now);
        if self.swim.updates_backlog() > 0 && !self.left {
            // foca's own periodic gossip is off (it woke the node five times
            // a second for nothing); its updates ride our ticks instead.
            let r = self.swim.gossip(&mut self.rt);
            self.count_swim_error(r);
            self.drain_swim(now);
        }
        let ids = self.scope_ids();
        for id in &ids {
            if let Some(st) = self.scope_mut(id.as_scope()) {
                st.early_packets = 0;
            }
            self.scope_maintenance(now, id.as_scope());
        }
        // Round-robin one packet per scope until the tick's byte budget or
        // every queue is spent, so no network starves another.
        let mut budget = self.cfg.tick_byte_budget;
        if self.cfg.push_tree && !self.left {
            for id in &ids {
                self.tree_tick(now, id.as_scope(), &mut budget);
            }
        }
        let mut sent_any = vec![false; ids.len()];
        loop {
            let mut progressed = false;
            for (i, id) in ids.iter().enumerate() {
                if budget == 0 {
                    break;
                }
                if self.send_packet(now, id.as_scope(), &mut budget) {
                    progressed = true;
                    sent_any[i] = true;
                }
            }
            if !progressed || budget == 0 {
                break;
            }
        }
        for (id, sent) in ids.iter().zip(sent_any) {
            if sent {
                self.packet_went(now, id.as_scope());
            } else {
                self.send_digest(now, id.as_scope());
            }
        }
        self.arm_tick(now);
    }

    /// Whether the next tick is far enough off for news to go before it
    /// (`Config::early_news`).
    fn tick_far(&self, now: Duration) -> bool {
        self.timers.tick().is_some_and(|t| t > now + self.cfg.gossip_interval / 4)
    }

    /// `scope` queued an event: if its news fits in one packet (more is a
    /// burst, whose ticks are busy already) and the next tick is far, the
    /// news goes once this input is handled, with whatever news the rest of
    /// it brings (`Wake::News` at `now`). The cheap checks come first: in a
    /// burst every push lands here.
    pub(super) fn arm_news(&mut self, now: Duration, scope: Scope<'_>) {
        if !self.cfg.early_news || self.cfg.push_tree || self.news_due || !self.tick_far(now) {
            return;
        }
        if self.news_ready(scope) {
            self.news_due = true;
            self.schedule(now, Wake::News);
        }
    }

    /// Whether `scope` may send a packet early now: it sent fewer than
    /// `EARLY_PACKETS` since the last tick and all its news fits in one.
    fn news_ready(&self, scope: Scope<'_>) -> bool {
        let room = self.gossip_room(scope.wire_name());
        self.scope(scope).is_some_and(|st| {
            st.early_packets < EARLY_PACKETS && st.queue.news_fits(room, |q| q.framed_len)
        })
    }

    /// One packet of news per scope that has some and sent fewer than
    /// `EARLY_PACKETS` early since the last tick. Paced by the tick: a
    /// burst's news mostly waits for it, and adds two packets per interval
    /// at most.
    pub(super) fn send_news(&mut self, now: Duration) {
        if !self.tick_far(now) {
            return; // the tick comes soon and takes it
        }
        // One packet a scope: the tick's byte budget is not this one's.
        let mut unmetered = usize::MAX;
        for id in self.scope_ids() {
            let scope = id.as_scope();
            if !self.news_ready(scope) {
                continue;
            }
            if self.send_queued(now, scope, &mut unmetered, Pick::News) {
                self.packet_went(now, scope);
                if let Some(st) = self.scope_mut(scope) {
                    st.early_packets += 1;
                }
            }
        }
    }

    /// Sends everything queued for a scope, ignoring the tick's pacing (used
    /// when leaving).
    pub(super) fn gossip_scope(&mut self, now: Duration, scope: Scope<'_>, budget: &mut usize) {
        while self.send_packet(now, scope, budget) {}
    }

    /// Periodic and pending push/pull for one scope.
    fn scope_maintenance(&mut self, now: Duration, scope: Scope<'_>) {
        let busy = self.exchanging(scope);
        let sync_interval = self.cfg.sync_interval;
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        let due = now >= st.next_periodic_sync;
        if due {
            st.next_periodic_sync = now + sync_interval;
        }
        let wanted = due || st.needs_sync;
        if self.left || busy || !wanted || self.peers_of(scope).is_empty() {
            return;
        }
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        st.needs_sync = false;
        if let Some(peer) = self.choose_peers(scope, 1).pop() {
            self.start_sync(now, scope, peer);
        }
    }

    /// Builds and sends one packet of queued events; false if nothing left
    /// to send or no peer to send to.
    fn send_packet(&mut self, now: Duration, scope: Scope<'_>, budget: &mut usize) -> bool {
        self.send_queued(now, scope, budget, Pick::Due)
    }

    /// Builds and sends one packet of `pick`'s events.
    fn send_queued(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        budget: &mut usize,
        pick: Pick,
    ) -> bool {
        if self.scope(scope).is_none_or(|st| st.queue.is_empty()) {
            return false;
        }
        let tree = self.cfg.push_tree;
        let fanout = match pick {
            Pick::Due => self.cfg.gossip_fanout,
            Pick::News => self.cfg.early_news_fanout,
        };
        let peers = match self.scope(scope) {
            Some(st) if tree => st.tree.eager().to_vec(),
            _ => self.choose_peers(scope, fanout),
        };
        // The tree's eager set is empty only when the scope has no peer
        // (a tick tops it up first): either way the events wait for one.
        if peers.is_empty() {
            return false;
        }
        let network = scope.wire_name();
        let avail = self.gossip_room(network);
        let Some(st) = self.scope_mut(scope) else {
            return false;
        };
        let root = st.data.digest().root();
        let ids = match pick {
            Pick::Due => {
                let (ids, took) = st.queue.take(avail, |q| q.framed_len);
                self.stats.queue_oversized += took.oversized as u64;
                ids
            }
            Pick::News => st.queue.take_news(avail, |q| q.framed_len),
        };
        let Some(st) = self.scope_mut(scope) else {
            return false;
        };
        // Sized at once: collected from a filter, it grew by doubling, a
        // few reallocations a packet.
        let mut queued: Vec<(EncodedEntry, Option<SocketAddr>)> = Vec::with_capacity(ids.len());
        queued.extend(
            ids.iter().filter_map(|&id| st.queue.get(id)).map(|q| (q.entry.clone(), q.from)),
        );
        if pick == Pick::Due {
            st.queue.sent(&ids);
        }
        if queued.is_empty() {
            return false;
        }
        // One encoding for every peer, except that the tree does not push
        // an event back to the peer it came from (that peer would take the
        // copy for a redundant link and prune it).
        let mut shared: Option<Bytes> = None;
        for to in peers {
            let back = tree && queued.iter().any(|(_, from)| *from == Some(to));
            let payload = match &shared {
                Some(p) if !back => p.clone(),
                _ => {
                    let mut entries = queued
                        .iter()
                        .filter(|(_, from)| !back || *from != Some(to))
                        .map(|(e, _)| e)
                        .peekable();
                    if entries.peek().is_none() {
                        continue;
                    }
                    let plain = codec::encode_gossip(network, root, entries, now);
                    let p: Bytes = self.seal(plain).into();
                    if !back {
                        shared = Some(p.clone());
                    }
                    p
                }
            };
            debug_assert!(payload.len() <= self.cfg.packet_budget, "{} > budget", payload.len());
            *budget = budget.saturating_sub(payload.len());
            self.stats.gossip_out.add(payload.len());
            self.outbox.push_back(Transmit::Datagram { to, payload });
        }
        true
    }

    /// Peers sent `heard` copies of the version held here: enough of them
    /// end the queued relay's transmissions (`Config::quench_after`; the
    /// count stops at 255, so a larger setting never does). Not with the
    /// push tree, whose one push per eager link is the tree itself.
    pub(super) fn heard_copies(&mut self, scope: Scope<'_>, table: &str, key: &str, heard: u8) {
        if self.cfg.quench_after != u32::from(heard) || self.cfg.push_tree {
            return;
        }
        if let Some(st) = self.scope_mut(scope) {
            st.queue.quench(queue_key(table, key));
        }
    }

    /// Room for entries in a gossip datagram of `network`, after its
    /// header, framing and seal.
    pub(super) fn gossip_room(&self, network: &str) -> usize {
        let budget = self.cfg.packet_budget;
        // Any nonzero root: a zero one would be left out of the encoding.
        let header =
            wire::Gossip { network: network.into(), root: 1, entries: Vec::new() }.encoded_len();
        datagram_room(budget, header)
    }

    /// A lone digest went: the next one is a whole `digest_interval` off.
    fn digest_went(&mut self, now: Duration, scope: Scope<'_>) {
        let next = now + self.cfg.digest_interval;
        if let Some(st) = self.scope_mut(scope) {
            st.next_digest = next;
            st.repair_digest = false;
        }
    }

    /// Every gossip packet carries the scope's root, so one that went puts
    /// off the next lone digest a whole `digest_interval`; not a repair's
    /// (`digest_soon`): a root that comes with entries may differ by news
    /// in flight, so a peer acts on it only once the difference has lasted
    /// (`compare_root`), and after a burst no second packet comes to show
    /// that it did. A node that a repair left one entry short sent its
    /// root with the burst's last relays and then nothing for a second
    /// (the simulator's 30-node burst, seed 9: all entries at 2.22 s
    /// instead of 1.02).
    fn packet_went(&mut self, now: Duration, scope: Scope<'_>) {
        if self.scope(scope).is_some_and(|st| !st.repair_digest) {
            self.digest_went(now, scope);
        }
    }

    /// A push/pull moved entries: there were holes, the burst's misses
    /// spread over the nodes, and both ends may still share some (what
    /// neither held). The root goes to another peer (the member a probe
    /// round goes to, or a random one; most likely not the one just
    /// exchanged with) once the repairs around it are done, instead of at
    /// the next lone digest; a peer that holds what both lacked then opens
    /// the push/pull (a lone digest against a settled root). Before, such
    /// a node waited for digests, which come once a second (30 agents: in
    /// about one burst of seven, one node a second after the rest).
    pub(super) fn digest_soon(&mut self, now: Duration, scope: Scope<'_>) {
        // A probe round takes a digest up to `ride` before it is due (a
        // busy tick half an interval): not before the peers' own repairs
        // of the same moment are that far behind (a push/pull just ended
        // puts off the next, `compare_root`).
        let at = now + self.cfg.mismatch_sync_after + self.ride();
        if let Some(st) = self.scope_mut(scope) {
            st.next_digest = st.next_digest.min(at);
            st.repair_digest = true;
        }
        self.arm_tick(now);
    }

    /// With nothing queued, a scope still tells one random peer its digest
    /// every `digest_interval`, so divergence is noticed within seconds.
    fn send_digest(&mut self, now: Duration, scope: Scope<'_>) {
        let Some(st) = self.scope(scope) else {
            return;
        };
        // Digests due before the next tick go now, so scopes share wake-ups.
        if now + self.cfg.gossip_interval / 2 < st.next_digest {
            return;
        }
        self.digest_went(now, scope);
        if let Some(to) = self.choose_peers(scope, 1).pop() {
            self.digest_to(scope, to);
        }
    }

    /// A probe round's ping just went to `target`: each scope's digest due
    /// by `ride` from now (or overdue) goes with it, to the same member if
    /// it is a peer of the scope. The member most likely reads both in one
    /// wake-up (the agent drains its socket), and this node wakes for
    /// neither; alone, a digest cost a wake-up at each end (at rest, a
    /// second's 3.3 probe rounds cost about as many). With ring probes
    /// every other round goes to the ring successor, so about half the
    /// digests do too: anti-entropy over a ring and random pairs.
    pub(super) fn digests_along(&mut self, now: Duration, target: SocketAddr) {
        let horizon = now + self.ride();
        let due: Vec<ScopeId> = self
            .scopes()
            .filter(|(_, st)| {
                st.queue.is_empty() && !st.tree.has_work() && st.next_digest <= horizon
            })
            .map(|(s, _)| s.to_id())
            .collect();
        let mut went = false;
        for id in due {
            let scope = id.as_scope();
            if self.peer_set(scope).is_some_and(|p| p.contains(&target)) {
                self.digest_went(now, scope);
                self.digest_to(scope, target);
                went = true;
            }
        }
        if went {
            // The tick held for those digests is off.
            self.timers.set_tick(None);
            self.arm_tick(now);
        }
    }

    /// How far from its time a digest may go with a probe round: probe
    /// rounds come a probe period apart, so one falls in the window. Capped
    /// at a gossip interval: with slow probes (NetworkDB's are 1 s) a digest
    /// no round took is not held back long.
    fn ride(&self) -> Duration {
        (self.cfg.probe_period / 2).min(self.cfg.gossip_interval)
    }

    fn digest_to(&mut self, scope: Scope<'_>, to: SocketAddr) {
        let Some(st) = self.scope(scope) else {
            return;
        };
        let root = st.data.digest().root();
        let payload =
            self.seal(codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
                network: scope.wire_name().into(),
                root,
                entries: Vec::new(),
            })));
        self.stats.gossip_out.add(payload.len());
        self.outbox.push_back(Transmit::Datagram { to, payload: payload.into() });
    }

    /// A peer's digest differs from ours: once the difference has outlived
    /// the updates in flight, push/pull with that peer. A digest alone
    /// (`idle`: the peer had nothing queued to send) against a root of
    /// ours that has not moved for `mismatch_sync_after` is such a
    /// difference already: nothing is in flight either way. Waiting for a
    /// second mismatch there left a node that every copy of an event
    /// missed without it for seconds, digests coming once a second.
    pub(super) fn compare_root(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        theirs: u64,
        from: SocketAddr,
        idle: bool,
    ) {
        let delay = self.cfg.mismatch_sync_after;
        let busy = self.exchanging(scope);
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        let mine = st.data.digest().root();
        if mine != st.last_root {
            st.last_root = mine;
            st.root_changed_at = now;
        }
        if mine == theirs {
            st.mismatch_since = None;
            return;
        }
        let since = *st.mismatch_since.get_or_insert(now);
        let settled = now.saturating_sub(st.root_changed_at) >= delay;
        let long = now.saturating_sub(since) >= delay * 5;
        let recent = st.last_sync_at.is_some_and(|t| now.saturating_sub(t) < delay);
        let lasted = now.saturating_sub(since) >= delay || (idle && settled);
        if busy || recent || !lasted || !(settled || long) {
            return;
        }
        self.start_sync(now, scope, from);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use netdb_wire as wire;
    use prost::Message;

    use super::super::test_support::{PEER, gossip, next_opened, node, peer_entry, sync_bytes};
    use crate::event::Transmit;
    use crate::names::{NETWORKS_TABLE, NODES_TABLE, Scope};

    /// A node attached to "net" with "peer", holding the peer's entry
    /// "net"/"t"/"k" as news (queued for relay) from one datagram.
    fn relaying(quench_after: u32) -> (crate::Node, Vec<u8>) {
        // Ten transmissions, one packet a tick: a tick sends it once.
        let cfg = crate::Config {
            quench_after,
            relay_mult: 10,
            tick_byte_budget: 1,
            ..crate::Config::default()
        };
        let mut n =
            crate::Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO)
                .unwrap();
        join_with_peer(&mut n, Duration::ZERO);
        let news = gossip("net", vec![peer_entry("t", "k", Bytes::from_static(b"v"), 3, false)]);
        n.handle_datagram(Duration::ZERO, PEER.parse().unwrap(), &news);
        (n, news)
    }

    /// Joins "net" and hears that the peer is attached to it, so there is
    /// someone to send to.
    fn join_with_peer(n: &mut crate::Node, t: Duration) {
        n.join_network(t, "net").unwrap();
        let attach = peer_entry(NETWORKS_TABLE, "net/peer", Bytes::new(), 1, false);
        let record = wire::NodeRecord { addr: PEER.into(), ..Default::default() };
        let rec = peer_entry(NODES_TABLE, "peer", record.encode_to_vec().into(), 2, false);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip("", vec![attach, rec]));
    }

    fn queued(n: &crate::Node) -> usize {
        n.queue_lengths().iter().find(|(s, _)| *s == Scope::Network("net")).map_or(0, |(_, l)| *l)
    }

    /// Queued events after the node's next gossip tick.
    fn queued_after_a_tick(n: &mut crate::Node) -> usize {
        n.handle_timeout(n.config().gossip_interval);
        while n.poll_transmit().is_some() {}
        queued(n)
    }

    #[test]
    fn a_relayed_event_is_sent_once_more_after_copies_of_it_come_back() {
        let (mut n, news) = relaying(3);
        for _ in 0..3 {
            n.handle_datagram(Duration::ZERO, PEER.parse().unwrap(), &news);
        }
        assert_eq!(queued(&n), 1, "never sent yet: it still goes out once");
        assert_eq!(queued_after_a_tick(&mut n), 0, "sent, and three copies heard");
        let (mut n, news) = relaying(3);
        for _ in 0..2 {
            n.handle_datagram(Duration::ZERO, PEER.parse().unwrap(), &news);
        }
        assert_eq!(queued_after_a_tick(&mut n), 1, "two copies are not enough");
        n.handle_datagram(Duration::ZERO, PEER.parse().unwrap(), &news);
        assert_eq!(queued(&n), 0, "sent before: the third copy ends it at once");
        // Without the quench the copies change nothing.
        let (mut n, news) = relaying(0);
        for _ in 0..5 {
            n.handle_datagram(Duration::ZERO, PEER.parse().unwrap(), &news);
        }
        assert_eq!(queued_after_a_tick(&mut n), 1);
    }

    /// The keys of "net" entries in the datagrams the node sends at `t`
    /// (plaintext: no cluster key), one list per datagram.
    fn sent_at(n: &mut crate::Node, t: Duration) -> Vec<Vec<String>> {
        n.handle_timeout(t);
        let mut out = Vec::new();
        while let Some(tx) = n.poll_transmit() {
            let Transmit::Datagram { payload, .. } = tx else { continue };
            let Ok(d) = wire::Datagram::decode(&payload[..]) else { continue };
            if let Some(wire::datagram::Body::Gossip(g)) = d.body
                && g.network == "net"
                && !g.entries.is_empty()
            {
                out.push(g.entries.into_iter().map(|e| e.key).collect());
            }
        }
        out
    }

    /// A node attached to "net" with "peer" whose queue there is spent;
    /// the time of its last tick.
    fn at_rest(cfg: crate::Config) -> (crate::Node, Duration) {
        let mut n =
            crate::Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO)
                .unwrap();
        join_with_peer(&mut n, Duration::ZERO);
        let t = settle(&mut n, Duration::ZERO);
        (n, t)
    }

    /// Ticks from `t` until the queue of "net" is spent; the last tick.
    fn settle(n: &mut crate::Node, mut t: Duration) -> Duration {
        for _ in 0..100 {
            t += n.config().gossip_interval;
            sent_at(n, t);
            if queued(n) == 0 {
                return t;
            }
        }
        panic!("the queue of \"net\" never emptied");
    }

    /// Where the "net" gossip carrying entries went at `t`.
    fn destinations(n: &mut crate::Node, t: Duration) -> Vec<SocketAddr> {
        n.handle_timeout(t);
        let mut to = Vec::new();
        while let Some(tx) = n.poll_transmit() {
            let Transmit::Datagram { to: addr, payload } = tx else { continue };
            if let Ok(wire::Datagram { body: Some(wire::datagram::Body::Gossip(g)), .. }) =
                wire::Datagram::decode(&payload[..])
                && g.network == "net"
                && !g.entries.is_empty()
            {
                to.push(addr);
            }
        }
        to
    }

    /// A peer's answer to an exchange, holding `entries`: the last frame
    /// when the node asks nothing more.
    fn answer(scope: Scope<'_>, sync_id: u64, entries: Vec<wire::Entry>) -> Vec<u8> {
        let round = wire::SyncRound { entries, ..Default::default() };
        sync_bytes(scope.wire_name(), sync_id, wire::sync_message::Body::Answer(round))
    }

    /// Runs the node's timers up to `until`, each exchange it opens
    /// answered at once as if the peer held the same; the times it sent a
    /// "net" digest (gossip without entries).
    fn digests_until(n: &mut crate::Node, until: Duration) -> Vec<Duration> {
        let mut sent = Vec::new();
        for _ in 0..10_000 {
            let Some(t) = n.poll_timeout().filter(|t| *t <= until) else {
                return sent;
            };
            n.handle_timeout(t);
            while let Some(tx) = n.poll_transmit() {
                let payload = match tx {
                    Transmit::Sync { to, sync_id, opens: true, payload, .. } => {
                        let Ok(m) = wire::SyncMessage::decode(&payload[..]) else { continue };
                        n.handle_sync(
                            t,
                            to,
                            &answer(Scope::from_wire(&m.network), sync_id, vec![]),
                        );
                        continue;
                    }
                    Transmit::Datagram { payload, .. } => payload,
                    Transmit::Sync { .. } => continue,
                };
                let Ok(d) = wire::Datagram::decode(&payload[..]) else { continue };
                if let Some(wire::datagram::Body::Gossip(g)) = d.body
                    && g.network == "net"
                    && g.entries.is_empty()
                {
                    sent.push(t);
                }
            }
        }
        panic!("timers up to {until:?} never ran out");
    }

    /// A node that a push/pull at rest (after its last digest) brought an
    /// entry, and when.
    fn repaired() -> (crate::Node, Duration) {
        let mut n = crate::Node::new(
            crate::Config::default(),
            "solo",
            1,
            "127.0.0.1:7946".parse().unwrap(),
            1,
            Duration::ZERO,
        )
        .unwrap();
        join_with_peer(&mut n, Duration::ZERO);
        let peer = PEER.parse().unwrap();
        let net = Scope::Network("net");
        let last = digests_until(&mut n, Duration::from_millis(5000));
        let t = *last.last().expect("digests at rest") + Duration::from_millis(10);
        let started = n.stats().syncs_started;
        n.start_sync(t, net, peer);
        let id = next_opened(&mut n).expect("an opening frame");
        let entry = peer_entry("t", "repaired", Bytes::from_static(b"v"), 7, false);
        n.handle_sync(t, peer, &answer(net, id, vec![entry]));
        assert!(n.get("net", "t", "repaired").is_some());
        assert_eq!(n.stats().syncs_started, started + 1);
        assert_eq!(n.stats().syncs_completed, n.stats().syncs_started, "every exchange done");
        (n, t)
    }

    /// A push/pull that brought entries was a repair, not news in flight:
    /// the node's root goes to a peer within a few hundred ms (not at its
    /// next lone digest, a second on), and a differing lone digest right
    /// after starts the next repair at once.
    #[test]
    fn a_node_repaired_by_push_pull_asks_again_soon_and_takes_the_next_repair_at_once() {
        let (mut n, t) = repaired();
        let cfg = n.config().clone();
        let soon = t + cfg.mismatch_sync_after + cfg.probe_period;
        let sent = digests_until(&mut n, soon);
        assert!(!sent.is_empty(), "no digest within {:?} of the repair", soon - t);

        let net = Scope::Network("net");
        let started = n.stats().syncs_started;
        let root = n.root(net).unwrap();
        let digest = crate::codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: "net".into(),
            root: root ^ 1,
            entries: Vec::new(),
        }));
        n.handle_datagram(soon + Duration::from_millis(1), PEER.parse().unwrap(), &digest);
        assert_eq!(n.stats().syncs_started, started + 1, "the repair left the root settled");
    }

    /// The repair's root goes alone even when the node sent gossip packets
    /// meanwhile (the burst's last relays): a root that comes with entries
    /// is not acted on at once, so those packets do not stand for it.
    #[test]
    fn a_repairs_digest_goes_alone_even_after_packets_of_relays() {
        let (mut n, t) = repaired();
        let cfg = n.config().clone();
        let ms = Duration::from_millis;
        n.handle_datagram(t + ms(20), PEER.parse().unwrap(), &news("relayed", 20));
        // Its transmissions, a tick apart, then the digest with a probe
        // round or the next tick.
        let limit = cfg.transmit_limit(2, true);
        let by = t + cfg.gossip_interval * (limit + 1) + cfg.mismatch_sync_after + cfg.probe_period;
        let sent = digests_until(&mut n, by);
        assert!(!sent.is_empty(), "no lone digest within {:?} of the repair", by - t);
        assert!(by - t < cfg.digest_interval + cfg.gossip_interval, "a bound that can fail");
    }

    fn news(key: &str, ltime: u64) -> Vec<u8> {
        gossip("net", vec![peer_entry("t", key, Bytes::from_static(b"v"), ltime, false)])
    }

    #[test]
    fn news_goes_out_at_once_when_the_tick_is_far_and_the_tick_still_sends_it() {
        let (mut n, last) = at_rest(crate::Config::default());
        let interval = n.config().gossip_interval;
        let peer = PEER.parse().unwrap();
        let ms = Duration::from_millis;
        n.handle_datagram(last + ms(10), peer, &news("a", 10));
        assert_eq!(sent_at(&mut n, last + ms(10)), vec![vec!["a".to_string()]]);
        assert_eq!(queued(&n), 1, "the early copy is not one of its transmissions");
        // The second packet carries only what the first did not.
        n.handle_datagram(last + ms(20), peer, &news("b", 11));
        assert_eq!(sent_at(&mut n, last + ms(20)), vec![vec!["b".to_string()]]);
        n.handle_datagram(last + ms(30), peer, &news("c", 12));
        assert!(sent_at(&mut n, last + ms(30)).is_empty(), "two early packets an interval");
        let tick = sent_at(&mut n, last + interval);
        let all = ["a", "b", "c"].map(String::from);
        assert!(
            tick.iter().all(|keys| all.iter().all(|k| keys.contains(k))),
            "the tick sends all three: {tick:?}"
        );
        // A tick that comes soon takes the news itself.
        let next = last + interval * 2;
        n.handle_datagram(next - ms(30), peer, &news("d", 13));
        assert!(sent_at(&mut n, next - ms(30)).is_empty());
        assert!(!sent_at(&mut n, next).is_empty());
    }

    #[test]
    fn the_early_packet_goes_to_more_peers_than_the_ticks() {
        let (mut n, last) = at_rest(crate::Config::default());
        let peers: Vec<SocketAddr> =
            (0..10).map(|i| format!("127.0.1.{i}:7946").parse().unwrap()).collect();
        let mut entries = Vec::new();
        for (i, addr) in peers.iter().enumerate() {
            let name = format!("p{i}");
            let record = wire::NodeRecord { addr: addr.to_string(), ..Default::default() };
            let attach = format!("net/{name}");
            // Each peer announces itself, as a joining node does.
            for mut e in [
                peer_entry(NETWORKS_TABLE, &attach, Bytes::new(), 1, false),
                peer_entry(NODES_TABLE, &name, record.encode_to_vec().into(), 2, false),
            ] {
                e.owner = name.clone();
                entries.push(e);
            }
        }
        let peer = PEER.parse().unwrap();
        n.handle_datagram(last, peer, &gossip("", entries));
        let last = settle(&mut n, last);
        assert_eq!(n.network_peers("net").len(), 11);
        // News waits for a tick that comes soon, and an idle node ticks at
        // once: it goes early just after a tick, with the next one far.
        let interval = n.config().gossip_interval;
        let mut at = last;
        for _ in 0..500 {
            at += Duration::from_millis(10);
            sent_at(&mut n, at);
            let after_tick = n.last_tick.is_some_and(|l| at < l + interval / 4);
            if after_tick && n.timers.tick().is_none_or(|t| t > at + interval / 2) {
                break;
            }
        }
        n.handle_datagram(at, peer, &news("a", 10));
        let mut early = destinations(&mut n, at);
        early.sort();
        early.dedup();
        assert_eq!(early.len(), n.config().early_news_fanout, "distinct peers: {early:?}");
        let fanout = n.config().gossip_fanout;
        let tick = n.timers.tick().expect("the news arms a tick");
        let sent = destinations(&mut n, tick);
        assert_eq!(sent.len() % fanout, 0, "packets of {fanout}: {sent:?}");
    }

    #[test]
    fn news_waits_for_the_tick_when_unsent_events_wait_or_early_news_is_off() {
        let ms = Duration::from_millis;
        let peer = PEER.parse().unwrap();
        let off = crate::Config { early_news: false, ..crate::Config::default() };
        let (mut n, last) = at_rest(off);
        n.handle_datagram(last + ms(10), peer, &news("a", 10));
        assert!(sent_at(&mut n, last + ms(10)).is_empty(), "off: the tick sends it");
        // A burst: one packet a tick leaves events unsent between ticks, and
        // news more than a packet holds goes with the ticks.
        let one_packet = crate::Config { tick_byte_budget: 1, ..crate::Config::default() };
        let (mut n, last) = at_rest(one_packet);
        let burst: Vec<_> = (0..200)
            .map(|i| {
                peer_entry("t", &format!("k{i:03}"), Bytes::from(vec![b'v'; 40]), 10 + i, false)
            })
            .collect();
        n.handle_datagram(last + ms(10), peer, &gossip("net", burst));
        assert!(sent_at(&mut n, last + ms(10)).is_empty(), "more than a packet: a burst");
        let tick = last + n.config().gossip_interval;
        assert_eq!(sent_at(&mut n, tick).len(), 1, "a tick's packet");
        let later = tick + ms(10);
        n.handle_datagram(later, peer, &news("late", 500));
        assert!(sent_at(&mut n, later).is_empty(), "unsent events wait: the ticks are busy");
    }

    #[test]
    fn gossip_packets_never_exceed_the_budget() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::ZERO;
        join_with_peer(&mut n, t);
        assert_eq!(n.network_peers("net"), vec!["peer".to_string()]);
        // Values of every size up to the limit, some larger than a packet.
        for i in 0..300usize {
            let len = (i * 37) % 2000;
            n.put(t, "net", "t", &format!("key-{i}"), Bytes::from(vec![b'x'; len])).unwrap();
        }
        let mut sizes = Vec::new();
        let mut now = t;
        for _ in 0..100 {
            now += n.config().gossip_interval;
            n.handle_timeout(now);
            while let Some(tx) = n.poll_transmit() {
                if let Transmit::Datagram { payload, .. } = tx {
                    sizes.push(payload.len());
                }
            }
        }
        assert!(sizes.len() > 50);
        let max = sizes.iter().copied().max().unwrap();
        assert!(max <= 1400, "largest datagram {max} B");
        assert!(max > 1300, "packets are filled: largest {max} B");
        assert!(
            n.stats().queue_oversized > 0,
            "entries larger than a packet are left to push/pull"
        );
    }
}
