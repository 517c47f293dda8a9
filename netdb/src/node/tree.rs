//! The eager/lazy push tree (Plumtree: Leitão, Pereira and Rodrigues,
//! 2007), behind `Config::push_tree`.
//!
//! Epidemic fan-out makes every node that learns an event send it to 3
//! random peers `relay_mult × ceil(log10 n)` times, so each node receives
//! it a dozen or more times, and each copy costs a datagram, an unseal and
//! a lookup to turn away. The tree sends a new event once, to the few
//! peers of the scope's eager set, announces it (IHAVE) to
//! `tree_lazy_fanout` others, and shapes itself from what arrives (links
//! are symmetric, both ends change them):
//! - a gossip datagram that brought only copies prunes the link it came
//!   on (PRUNE), down to `MIN_EAGER` links a node;
//! - an announced version still missing `tree_graft_after` later is
//!   grafted: the node asks the announcer (GRAFT), which sends what it
//!   holds of those keys from its table (the current version, not a
//!   message cache), and the link becomes eager.
//!
//! docs/performance.md ("Fewer copies per event") has what it costs: far
//! fewer copies, a slower spread under loss and a slow formation by joins,
//! which is why it is off by default.
//!
//! An event's id is (table, key, ltime): a node holds it if it holds the
//! key at that Lamport time or later. Ids carry the key itself, so neither
//! end needs an index from a hash back to a key; an id costs about what the
//! key costs, against a whole entry (owner, value) for a copy.
//!
//! Anti-entropy stays as it is and is the fallback: an eager peer that
//! fails before pushing, or a graft or its answer lost, leaves digests
//! that differ, and push/pull repairs them within seconds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use netdb_wire as wire;
use prost::Message;

use super::Node;
use super::send::datagram_room;
use crate::codec::{self, EncodedEntry};
use crate::config::Config;
use crate::event::Transmit;
use crate::names::Scope;
use crate::stats::DropReason;

/// A node keeps at least this many eager links rather than prune them:
/// prunes of concurrent events from different sources each cut a link of
/// some cycle, and together they can cut the tree apart, leaving whole
/// branches to grafts (a graft interval per hop). Two links per node keep
/// the tree in one piece and cost a copy per event here and there; a node
/// that others pruned below two takes new random links.
const MIN_EAGER: usize = 2;

/// Grafts sent for one missing version before it is left to
/// anti-entropy: at 30 % loss a graft or its answer is lost half the time.
const GRAFT_TRIES: u32 = 3;

/// A version announced to this node that it lacks.
#[derive(Debug)]
struct Missing {
    /// The latest time announced for the key.
    ltime: u64,
    /// The latest announcer: a retry asks another peer than the last one
    /// when another announced it meanwhile.
    from: SocketAddr,
    /// Grafts sent for it so far.
    tries: u32,
}

/// A scope's eager set, what it will announce and what it was told of and
/// lacks.
#[derive(Debug)]
pub(super) struct PushTree {
    /// Peers new events are pushed to, in the order they joined the set.
    eager: Vec<SocketAddr>,
    /// The eager set's size: the fan-out at first, one less per prune, one
    /// more per graft answered. A peer that leaves the scope is replaced by
    /// a random one, so failures do not wear the tree down.
    target: usize,
    /// Versions stored since the last tick, announced at the next one.
    announce: Vec<wire::TreeId>,
    /// Announced versions this node lacks, by key.
    missing: BTreeMap<(String, String), Missing>,
    /// When each missing key is to be grafted, in that order (every key
    /// waits the same time, so the order of arrival is the order of dues).
    due: VecDeque<(Duration, (String, String))>,
    /// Peers whose datagrams brought only copies since the last tick.
    prune: BTreeSet<SocketAddr>,
}

impl PushTree {
    pub(super) fn new(cfg: &Config) -> PushTree {
        PushTree {
            eager: Vec::new(),
            target: cfg.gossip_fanout,
            announce: Vec::new(),
            missing: BTreeMap::new(),
            due: VecDeque::new(),
            prune: BTreeSet::new(),
        }
    }

    /// Something to send at the next tick.
    pub(super) fn has_work(&self) -> bool {
        !self.announce.is_empty() || !self.prune.is_empty()
    }

    /// When the first missing version is to be grafted.
    pub(super) fn next_graft(&self) -> Option<Duration> {
        self.due.front().map(|(at, _)| *at)
    }

    /// The peers events are pushed to.
    pub(super) fn eager(&self) -> &[SocketAddr] {
        &self.eager
    }

    /// A peer joins the eager set for good (a graft, or news it pushed).
    fn add_eager(&mut self, peer: SocketAddr) {
        if !self.eager.contains(&peer) {
            self.eager.push(peer);
            self.target += 1;
        }
    }

    /// A peer leaves the eager set for good (a prune either way).
    fn remove_eager(&mut self, peer: SocketAddr) {
        if let Some(i) = self.eager.iter().position(|p| *p == peer) {
            self.eager.remove(i);
            self.target = self.target.saturating_sub(1);
        }
    }
}

impl Node {
    /// A version was stored and queued (a local write or gossip news): it
    /// is announced at the next tick.
    pub(super) fn tree_learned(&mut self, scope: Scope<'_>, table: &str, key: &str, ltime: u64) {
        let max = self.cfg.max_queue_len;
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        let full = st.tree.announce.len() >= max;
        if !full {
            st.tree.announce.push(wire::TreeId { table: table.into(), key: key.into(), ltime });
        }
        self.stats.queue_overflow += u64::from(full);
    }

    /// A gossip datagram from `from` was merged. Links are symmetric, as
    /// in the paper: a peer that pushed news is a neighbour in the tree and
    /// gets this node's pushes too (a directed tree would reach everyone
    /// only from the source it was shaped by); one that pushed only copies
    /// is a redundant link, pruned at both ends.
    pub(super) fn tree_received(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        from: SocketAddr,
        news: bool,
        copies: bool,
    ) {
        if !self.cfg.push_tree {
            return;
        }
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        if news {
            st.tree.add_eager(from);
        } else if copies && st.tree.eager.len() > MIN_EAGER {
            st.tree.remove_eager(from);
            st.tree.prune.insert(from);
            // The next tick sends it, not the next idle one.
            self.arm_tick(now);
        }
    }

    /// A push tree message from `from` (decoded and validated).
    pub(super) fn handle_tree(&mut self, now: Duration, from: SocketAddr, t: wire::Tree) {
        let scope = Scope::from_wire(&t.network);
        // Only a peer of the scope may steer where this node sends: a
        // graft from anywhere would make it a reflector.
        if !self.peers_of(scope).contains(&from) {
            return self.stats.drop(DropReason::NotMember);
        }
        let (max, wait) = (self.cfg.max_queue_len, self.cfg.tree_graft_after);
        let on = self.cfg.push_tree;
        let Some(st) = self.scope_mut(scope) else {
            return self.stats.drop(DropReason::NotMember);
        };
        if t.prune {
            st.tree.remove_eager(from);
        }
        let mut overflow = 0;
        // Without the switch no tick would ever graft what is recorded.
        let have = if on { t.have.as_slice() } else { &[] };
        for id in have {
            let held = st.data.get(&id.table, &id.key).map(|e| e.ltime);
            if held.is_some_and(|l| l >= id.ltime) {
                continue;
            }
            let k = (id.table.clone(), id.key.clone());
            if let Some(m) = st.tree.missing.get_mut(&k) {
                m.ltime = m.ltime.max(id.ltime);
                m.from = from;
            } else if st.tree.missing.len() < max {
                st.tree.missing.insert(k.clone(), Missing { ltime: id.ltime, from, tries: 0 });
                st.tree.due.push_back((now + wait, k));
            } else {
                overflow += 1;
            }
        }
        let mut answer = Vec::new();
        if !t.graft.is_empty() {
            st.tree.add_eager(from);
            answer = t
                .graft
                .iter()
                .filter_map(|id| {
                    let e = st.data.get(&id.table, &id.key).filter(|e| !e.hidden)?;
                    Some(EncodedEntry::new(&id.table, &id.key, e))
                })
                .collect();
        }
        let c = &mut self.stats.tree;
        c.prune_received += u64::from(t.prune);
        c.ihave_received += u64::from(!t.have.is_empty());
        c.graft_received += u64::from(!t.graft.is_empty());
        self.stats.queue_overflow += overflow;
        self.send_entries(now, scope, from, &answer);
        self.arm_tick(now);
    }

    /// The tree's share of a gossip tick for one scope: the eager set kept
    /// at its size, prunes, grafts that came due, and the announcements.
    pub(super) fn tree_tick(&mut self, now: Duration, scope: Scope<'_>, budget: &mut usize) {
        self.refresh_eager(scope);
        let wait = self.cfg.tree_graft_after;
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        let prunes = std::mem::take(&mut st.tree.prune);
        let mut grafts: BTreeMap<SocketAddr, Vec<wire::TreeId>> = BTreeMap::new();
        let mut retry = Vec::new();
        while let Some((at, _)) = st.tree.due.front() {
            if *at > now {
                break;
            }
            let Some((_, k)) = st.tree.due.pop_front() else { break };
            let Some(mut m) = st.tree.missing.remove(&k) else {
                continue;
            };
            if st.data.get(&k.0, &k.1).is_some_and(|e| e.ltime >= m.ltime) {
                continue;
            }
            let id = wire::TreeId { table: k.0.clone(), key: k.1.clone(), ltime: m.ltime };
            grafts.entry(m.from).or_default().push(id);
            m.tries += 1;
            if m.tries < GRAFT_TRIES {
                retry.push((k, m));
            }
        }
        // Retries come due after everything queued now (dues only grow).
        for (k, m) in retry {
            st.tree.due.push_back((now + wait, k.clone()));
            st.tree.missing.insert(k, m);
        }
        for &to in grafts.keys() {
            st.tree.add_eager(to);
        }
        let announce = std::mem::take(&mut st.tree.announce);
        for to in prunes {
            self.stats.tree.prune_sent += 1;
            self.send_tree(scope, &[to], Vec::new(), Vec::new(), true, budget);
        }
        for (to, ids) in grafts {
            for chunk in self.tree_chunks(scope, ids) {
                self.stats.tree.graft_sent += 1;
                self.send_tree(scope, &[to], Vec::new(), chunk, false, budget);
            }
        }
        if announce.is_empty() {
            return;
        }
        if self.peers_of(scope).is_empty() {
            // Alone (joining): announced once someone is there to hear it.
            if let Some(st) = self.scope_mut(scope) {
                st.tree.announce = announce;
            }
            return;
        }
        let eager = self.scope(scope).map(|st| st.tree.eager.clone()).unwrap_or_default();
        let fanout = self.cfg.tree_lazy_fanout;
        let mut lazy = self.choose_peers(scope, fanout + eager.len());
        lazy.retain(|p| !eager.contains(p));
        lazy.truncate(fanout);
        if lazy.is_empty() {
            return;
        }
        for chunk in self.tree_chunks(scope, announce) {
            self.stats.tree.ihave_sent += lazy.len() as u64;
            self.send_tree(scope, &lazy, chunk, Vec::new(), false, budget);
        }
    }

    /// Drops eager peers that left the scope and tops the set up to its
    /// size with random peers.
    fn refresh_eager(&mut self, scope: Scope<'_>) {
        let Some(st) = self.scope(scope) else {
            return;
        };
        let (mut eager, target) = (st.tree.eager.clone(), st.tree.target);
        let peers = self.peers_of(scope);
        eager.retain(|p| peers.contains(p));
        // Prunes by others may leave a node below the minimum: it takes new
        // random links rather than wait for grafts.
        let want = target.max(MIN_EAGER).min(peers.len());
        if eager.len() < want {
            // A draw of the whole want keeps the count of RNG calls small;
            // peers already eager are skipped.
            for p in self.choose_peers(scope, want + eager.len()) {
                if eager.len() >= want {
                    break;
                }
                if !eager.contains(&p) {
                    eager.push(p);
                }
            }
        }
        if let Some(st) = self.scope_mut(scope) {
            st.tree.eager = eager;
        }
    }

    /// Splits ids into messages that fit a packet.
    fn tree_chunks(&self, scope: Scope<'_>, ids: Vec<wire::TreeId>) -> Vec<Vec<wire::TreeId>> {
        let header = wire::Tree { network: scope.wire_name().into(), ..Default::default() };
        let avail = datagram_room(self.cfg.packet_budget, header.encoded_len() + 2);
        let mut out: Vec<Vec<wire::TreeId>> = Vec::new();
        let mut left = 0;
        for id in ids {
            let n = codec::framed_len(&id);
            let last = out.last().map_or(0, Vec::len);
            if out.is_empty() || n > left || last >= codec::MAX_TREE_IDS {
                out.push(Vec::new());
                left = avail;
            }
            left = left.saturating_sub(n);
            if let Some(c) = out.last_mut() {
                c.push(id);
            }
        }
        out
    }

    fn send_tree(
        &mut self,
        scope: Scope<'_>,
        to: &[SocketAddr],
        have: Vec<wire::TreeId>,
        graft: Vec<wire::TreeId>,
        prune: bool,
        budget: &mut usize,
    ) {
        let msg = wire::Tree { network: scope.wire_name().into(), have, graft, prune };
        let payload: Bytes =
            self.seal(codec::encode_datagram(wire::datagram::Body::Tree(msg))).into();
        for &to in to {
            *budget = budget.saturating_sub(payload.len());
            self.stats.gossip_out.add(payload.len());
            self.outbox.push_back(Transmit::Datagram { to, payload: payload.clone() });
        }
    }

    /// Sends entries to one peer in gossip datagrams within the packet
    /// budget (the answer to a graft).
    fn send_entries(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        to: SocketAddr,
        entries: &[EncodedEntry],
    ) {
        let Some(root) = self.root(scope) else {
            return;
        };
        let network = scope.wire_name();
        let avail = self.gossip_room(network);
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut left = avail;
            while let Some(n) = entries.get(end).map(|e| e.framed_len(now)).filter(|&n| n <= left) {
                left -= n;
                end += 1;
            }
            if end == start {
                // Larger than a packet: push/pull carries it.
                self.stats.queue_oversized += 1;
                start += 1;
                continue;
            }
            let plain = codec::encode_gossip(network, root, entries[start..end].iter(), now);
            let payload: Bytes = self.seal(plain).into();
            self.stats.gossip_out.add(payload.len());
            self.outbox.push_back(Transmit::Datagram { to, payload });
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use netdb_wire as wire;
    use prost::Message;

    use super::super::test_support::{PEER, gossip, peer_entry};
    use crate::codec::{self, MAX_TREE_IDS};
    use crate::config::Config;
    use crate::event::Transmit;
    use crate::names::{NETWORKS_TABLE, NODES_TABLE};
    use crate::node::Node;
    use crate::stats::DropReason;

    /// A node with the tree on, joined to "net", with PEER ("peer") and
    /// three more peers attached to it.
    fn tree_node() -> Node {
        let mut n = lone_tree_node();
        attach_peers(&mut n, Duration::ZERO);
        n
    }

    /// A node with the tree on, joined to "net", alone.
    fn lone_tree_node() -> Node {
        let cfg = Config { push_tree: true, ..Config::default() };
        let mut n = Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO)
            .unwrap();
        n.join_network(Duration::ZERO, "net").unwrap();
        n
    }

    fn attach_peers(n: &mut Node, t: Duration) {
        for (name, addr) in [("peer", PEER), ("p3", "127.0.0.3:7946"), ("p4", "127.0.0.4:7946")]
            .into_iter()
            .chain([("p5", "127.0.0.5:7946")])
        {
            let mut attach =
                peer_entry(NETWORKS_TABLE, &format!("net/{name}"), Bytes::new(), 1, false);
            let record = wire::NodeRecord { addr: addr.into(), ..Default::default() };
            let mut rec = peer_entry(NODES_TABLE, name, record.encode_to_vec().into(), 2, false);
            attach.owner = name.into();
            rec.owner = name.into();
            n.handle_datagram(t, addr.parse().unwrap(), &gossip("", vec![attach, rec]));
        }
        assert_eq!(n.network_peers("net").len(), 4);
    }

    fn tree(network: &str, have: Vec<wire::TreeId>, graft: Vec<wire::TreeId>) -> Vec<u8> {
        let t = wire::Tree { network: network.into(), have, graft, prune: false };
        codec::encode_datagram(wire::datagram::Body::Tree(t))
    }

    fn id(key: &str, ltime: u64) -> wire::TreeId {
        wire::TreeId { table: "t".into(), key: key.into(), ltime }
    }

    /// Runs the node's timers to `until`, returning what it sent.
    fn run(n: &mut Node, from: Duration, until: Duration) -> Vec<wire::datagram::Body> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= until {
            n.handle_timeout(now);
            while let Some(tx) = n.poll_transmit() {
                if let Transmit::Datagram { payload, .. } = tx
                    && let Ok(d) = wire::Datagram::decode(&payload[..])
                {
                    out.extend(d.body);
                }
            }
            now += Duration::from_millis(10);
        }
        out
    }

    #[test]
    fn an_announced_version_still_missing_is_grafted_until_it_comes() {
        let mut n = tree_node();
        let peer = PEER.parse().unwrap();
        let t = Duration::from_secs(1);
        n.handle_datagram(t, peer, &tree("net", vec![id("a", 5), id("b", 5)], Vec::new()));
        assert_eq!(n.stats().tree.ihave_received, 1);
        // "b" arrives by gossip before the graft is due.
        n.handle_datagram(
            t,
            peer,
            &gossip("net", vec![peer_entry("t", "b", Bytes::new(), 5, false)]),
        );
        let sent = run(&mut n, t, t + Duration::from_secs(5));
        let grafts: Vec<_> = sent
            .iter()
            .filter_map(|b| match b {
                wire::datagram::Body::Tree(t) if !t.graft.is_empty() => Some(t.graft.clone()),
                _ => None,
            })
            .collect();
        let want = vec![id("a", 5)];
        assert_eq!(grafts, vec![want; 3], "only the version still missing, three times at most");
        assert_eq!(n.stats().tree.graft_sent, 3);
        // Once it arrives, no more grafts.
        let later = t + Duration::from_secs(6);
        let half = later + Duration::from_millis(500);
        n.handle_datagram(later, peer, &tree("net", vec![id("c", 7)], Vec::new()));
        run(&mut n, later, half);
        let c = peer_entry("t", "c", Bytes::new(), 7, false);
        n.handle_datagram(half, peer, &gossip("net", vec![c]));
        run(&mut n, half, later + Duration::from_secs(5));
        assert_eq!(n.stats().tree.graft_sent, 4, "one graft for c, sent before it came");
    }

    #[test]
    fn a_graft_is_answered_from_the_table_and_makes_the_peer_eager() {
        let mut n = tree_node();
        let peer = PEER.parse().unwrap();
        let t = Duration::from_secs(1);
        n.put(t, "net", "t", "k", Bytes::from_static(b"v")).unwrap();
        // The unknown key is skipped, the held one is sent.
        n.handle_datagram(t, peer, &tree("net", Vec::new(), vec![id("k", 1), id("nope", 1)]));
        assert_eq!(n.stats().tree.graft_received, 1);
        let answer: Vec<_> = std::iter::from_fn(|| n.poll_transmit())
            .filter_map(|tx| match tx {
                Transmit::Datagram { payload, to } if to == peer => {
                    wire::Datagram::decode(&payload[..]).ok()?.body
                }
                _ => None,
            })
            .filter_map(|b| match b {
                wire::datagram::Body::Gossip(g) => Some(g.entries),
                _ => None,
            })
            .flatten()
            .map(|e| e.key)
            .collect();
        assert_eq!(answer, vec!["k".to_string()]);
        let st = n.networks.get("net").unwrap();
        assert_eq!(st.tree.eager(), &[peer]);
    }

    #[test]
    fn without_the_switch_announcements_are_ignored_and_grafts_answered() {
        let mut n = tree_node();
        n.cfg.push_tree = false;
        let peer = PEER.parse().unwrap();
        let t = Duration::from_secs(1);
        n.put(t, "net", "t", "k", Bytes::from_static(b"v")).unwrap();
        while n.poll_transmit().is_some() {}
        n.handle_datagram(t, peer, &tree("net", vec![id("a", 5)], vec![id("k", 1)]));
        let answered = std::iter::from_fn(|| n.poll_transmit()).count();
        assert!(answered > 0, "the graft is answered");
        let sent = run(&mut n, t, t + Duration::from_secs(3));
        assert!(!sent.iter().any(|b| matches!(b, wire::datagram::Body::Tree(_))), "no graft");
        assert!(n.networks.get("net").unwrap().tree.next_graft().is_none(), "nothing recorded");
    }

    #[test]
    fn a_write_made_alone_is_pushed_and_announced_once_peers_come() {
        let mut n = lone_tree_node();
        let t = Duration::from_secs(1);
        n.put(t, "net", "t", "early", Bytes::from_static(b"v")).unwrap();
        assert!(run(&mut n, t, t + Duration::from_secs(2)).is_empty(), "no one to send to");
        let later = t + Duration::from_secs(2);
        attach_peers(&mut n, later);
        let sent = run(&mut n, later, later + Duration::from_secs(1));
        let pushed = sent.iter().any(|b| {
            matches!(b, wire::datagram::Body::Gossip(g) if g.entries.iter().any(|e| e.key == "early"))
        });
        let announced = sent.iter().any(|b| {
            matches!(b, wire::datagram::Body::Tree(t) if t.have.iter().any(|i| i.key == "early"))
        });
        assert!(pushed && announced, "pushed {pushed}, announced {announced}");
    }

    #[test]
    fn a_datagram_of_copies_prunes_its_sender() {
        let mut n = tree_node();
        let peer = PEER.parse().unwrap();
        let t = Duration::from_secs(1);
        let e = peer_entry("t", "k", Bytes::new(), 5, false);
        n.handle_datagram(t, peer, &gossip("net", vec![e.clone()]));
        let first = run(&mut n, t, t + Duration::from_millis(500));
        assert!(!first.iter().any(|b| matches!(b, wire::datagram::Body::Tree(t) if t.prune)));
        n.handle_datagram(t, peer, &gossip("net", vec![e.clone()]));
        n.handle_datagram(t, peer, &gossip("net", vec![e]));
        let then = run(&mut n, t + Duration::from_millis(500), t + Duration::from_secs(1));
        let prunes =
            then.iter().filter(|b| matches!(b, wire::datagram::Body::Tree(t) if t.prune)).count();
        assert_eq!(prunes, 1, "one prune per peer per tick");
        assert_eq!(n.stats().tree.prune_sent, 1);
    }

    #[test]
    fn hostile_tree_messages_are_counted_drops() {
        let mut n = tree_node();
        let peer = PEER.parse().unwrap();
        let t = Duration::from_secs(1);
        let many = (0..=MAX_TREE_IDS as u64).map(|i| id("k", i + 1)).collect();
        n.handle_datagram(t, peer, &tree("net", many, Vec::new()));
        assert_eq!(n.stats().dropped(DropReason::TooLarge), 1, "more ids than allowed");
        n.handle_datagram(t, peer, &tree("other", vec![id("k", 1)], Vec::new()));
        assert_eq!(n.stats().dropped(DropReason::NotMember), 1, "a network not joined");
        let stranger = "10.9.9.9:7946".parse().unwrap();
        n.handle_datagram(t, stranger, &tree("net", Vec::new(), vec![id("k", 1)]));
        assert_eq!(n.stats().dropped(DropReason::NotMember), 2, "a graft from no peer");
        n.handle_datagram(t, peer, &tree("net", vec![id("bad\nkey", 1)], Vec::new()));
        assert_eq!(n.stats().dropped(DropReason::BadName), 1);
        n.handle_datagram(t, peer, &tree("net", vec![id("k", 0)], Vec::new()));
        assert_eq!(n.stats().dropped(DropReason::BadEntry), 1, "time 0 is no version");
        let mut junk = codec::encode_datagram(wire::datagram::Body::Tree(wire::Tree::default()));
        junk.extend_from_slice(&[0x32, 0xff, 0xff, 0x03]);
        n.handle_datagram(t, peer, &junk);
        assert_eq!(n.stats().dropped(DropReason::Malformed), 1);
        assert_eq!(n.stats().tree.ihave_received + n.stats().tree.graft_received, 0);
        assert!(std::iter::from_fn(|| n.poll_transmit()).next().is_none(), "nothing answered");
    }
}
