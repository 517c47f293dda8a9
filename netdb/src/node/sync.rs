//! Push/pull anti-entropy: both ends descend their hash trees (see
//! `digest`) where they differ, one level a frame, and swap the entries of
//! the small nodes and leaves they end at. The opener sends the root's
//! children; every frame answers the last one: the entries the peer lacks
//! in the subtrees it sent whole, then for each node it sent that differs
//! here, this side's entries (small node, or leaf) or children (large
//! node). Equal tables cost the root's children and an empty answer; D
//! differences cost O(D) entries and O(D) branches per level. Exchanges are
//! bounded (frames, rounds, concurrent serves) and time out.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use netdb_wire as wire;
use netdb_wire::sync_message::Body as B;
use prost::Message;

use super::Node;
use super::merge::Via;
use super::timers::Wake;
use crate::codec::{self, EntryOut, RoundKind, RoundOut, RoundRef, SyncBodyRef, SyncRef};
use crate::digest::{DEPTH, FANOUT, NodeId, Step, step};
use crate::names::{Scope, ScopeId};
use crate::stats::DropReason;
use crate::table::Version;

/// Bound on push/pull exchanges this node serves at once.
const MAX_SERVING: usize = 64;

/// Frames each side sends in one exchange at most: a descent takes one a
/// level, then the entries, their answers and the close. A peer that goes
/// on is cut off.
const MAX_ROUNDS: u32 = DEPTH + 4;

/// Room left in a sync frame for its header.
const FRAME_SLACK: usize = 256;

/// Exchanges opened back to back after cut ones, at most, before the
/// scope waits for its next push/pull: a million entries take about 23
/// exchanges of 4 MiB, and a peer that keeps saying it was cut must not
/// hold this node in exchanges for ever.
const MAX_CONTINUED: u32 = 64;

/// An exchange this node opened.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) scope: ScopeId,
    pub(super) peer: SocketAddr,
    /// When it was opened, for the duration histogram.
    pub(super) started: Duration,
    /// Answers received.
    rounds: u32,
    /// Entries sent and received, for the log.
    moved: Moved,
    /// A frame of it, either way, left out what did not fit.
    cut: bool,
    /// Exchanges opened back to back before this one, each cut.
    continued: u32,
}

/// An exchange a peer opened with this node.
#[derive(Debug)]
pub(super) struct Serving {
    scope: ScopeId,
    /// Frames received.
    rounds: u32,
    moved: Moved,
}

/// Entries an exchange moved each way: the log line of a completed
/// exchange tells a push/pull that repaired something from one that found
/// nothing to move.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    sent: usize,
    got: usize,
}

impl Moved {
    fn add(&mut self, got: &RoundRef<'_>, sent: usize) {
        self.got += got.entries.len();
        self.sent += sent;
    }
}

/// What this side's next frame of an exchange holds, beside its bytes.
struct Sent {
    entries: usize,
    done: bool,
    cut: bool,
}

/// Which frame of an exchange this side makes next.
#[derive(Clone, Copy)]
enum Reply {
    /// The server's answer to the opener's frame.
    Answer,
    /// The opener's next frame; `cut`: the exchange left something out so
    /// far.
    Ask { cut: bool },
}

/// What a round asks of this side, by node.
#[derive(Default)]
struct Plan {
    /// The peer's whole subtrees: answer with what it lacks there.
    answer: BTreeSet<NodeId>,
    /// Send this side's entries whole; the peer answers.
    whole: BTreeSet<NodeId>,
    /// Send this side's entries; the peer holds none there.
    give: BTreeSet<NodeId>,
    /// Send this side's children.
    descend: Vec<NodeId>,
}

/// A frame's arrival: when, from whom, for which exchange and scope.
#[derive(Clone, Copy)]
struct Arrival<'a> {
    now: Duration,
    from: SocketAddr,
    id: u64,
    scope: Scope<'a>,
}

/// A refusal to serve an exchange.
fn refusal(scope: Scope<'_>, sync_id: u64, why: &str) -> Vec<u8> {
    wire::SyncMessage {
        version: codec::SYNC_VERSION,
        sync_id,
        network: scope.wire_name().into(),
        body: Some(B::Refused(why.into())),
    }
    .encode_to_vec()
}

impl Node {
    /// A validated push/pull message from `from`.
    pub(super) fn sync_message(&mut self, now: Duration, from: SocketAddr, m: SyncRef<'_>) {
        let at = Arrival { now, from, id: m.sync_id, scope: Scope::from_wire(m.network) };
        match m.body {
            Some(SyncBodyRef::Open(r)) => self.serve_sync(at, &r),
            Some(SyncBodyRef::Ask(r)) => self.serve_more(at, &r),
            Some(SyncBodyRef::Answer(r)) => self.answered(at, &r),
            Some(SyncBodyRef::Refused(why)) => match self.syncs.get(&m.sync_id) {
                Some(out) if out.peer == from => {
                    if let Some(out) = self.syncs.remove(&m.sync_id) {
                        self.sync_failed(&out, &format!("refused by the peer: {why}"));
                    }
                }
                _ => self.stats.drop(DropReason::UnexpectedSync),
            },
            None => self.stats.drop(DropReason::Malformed),
        }
    }

    /// Opens an exchange of a scope with `peer`.
    pub(super) fn start_sync(&mut self, now: Duration, scope: Scope<'_>, peer: SocketAddr) {
        self.open_sync(now, scope, peer, 0);
    }

    /// An exchange of the scope is under way, opened here or by a peer.
    /// One is enough: both ends repair, so a second one, with the same peer
    /// or another, carries entries the first brings. A new node's fill ran
    /// both ways at once (its pull, and the full node's push on hearing
    /// its root), and half the table crossed twice.
    pub(super) fn exchanging(&self, scope: Scope<'_>) -> bool {
        self.syncs.values().any(|o| o.scope.as_scope() == scope)
            || self.serving.values().any(|s| s.scope.as_scope() == scope)
    }

    /// Opens an exchange, the `continued`th back to back after cut ones.
    fn open_sync(&mut self, now: Duration, scope: Scope<'_>, peer: SocketAddr, continued: u32) {
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        st.last_sync_at = Some(now);
        st.mismatch_since = None;
        st.syncs.started += 1;
        let top = codec::branch_to_wire(NodeId::ROOT, &st.data.digest().children(NodeId::ROOT));
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        self.syncs.insert(
            id,
            Outgoing {
                scope: scope.to_id(),
                peer,
                started: now,
                rounds: 0,
                moved: Moved::default(),
                cut: false,
                continued,
            },
        );
        self.stats.syncs_started += 1;
        tracing::debug!(%peer, network = %scope, sync_id = id, continued, "push/pull opened");
        let open = RoundOut { branches: vec![top], ..Default::default() };
        let open = codec::encode_round(scope.wire_name(), id, RoundKind::Open, open);
        self.send_sync(peer, id, true, false, open);
        self.schedule(now + self.cfg.sync_timeout, Wake::SyncTimeout(id));
    }

    /// An exchange failed: the scope syncs again with the next chance.
    /// Logged at info, since failures are rare and each one delays repair.
    pub(super) fn sync_failed(&mut self, out: &Outgoing, why: &str) {
        let scope = out.scope.as_scope();
        tracing::info!(peer = %out.peer, network = %scope, reason = why, "push/pull failed");
        self.stats.syncs_failed += 1;
        if let Some(st) = self.scope_mut(scope) {
            st.needs_sync = true;
            st.syncs.failed += 1;
        }
    }

    fn serve_sync(&mut self, at: Arrival<'_>, r: &RoundRef<'_>) {
        let Arrival { now, from, id, scope } = at;
        if self.serving.contains_key(&(from, id)) {
            tracing::debug!(peer = %from, sync_id = id, "push/pull opened twice; dropped");
            return self.stats.drop(DropReason::UnexpectedSync);
        }
        let plain = if self.scope(scope).is_none() {
            refusal(scope, id, "network not joined")
        } else if self.serving.len() >= MAX_SERVING {
            refusal(scope, id, "busy")
        } else {
            self.schedule(now + self.cfg.sync_timeout, Wake::ServeTimeout(from, id));
            self.stats.syncs_served += 1;
            let (answer, sent) = self.next_frame(at, Reply::Answer, r);
            let mut moved = Moved::default();
            moved.add(r, sent.entries);
            self.serving.insert((from, id), Serving { scope: scope.to_id(), rounds: 1, moved });
            answer
        };
        self.send_sync(from, id, false, false, plain);
    }

    /// The opener's next frame of an exchange this node serves.
    fn serve_more(&mut self, at: Arrival<'_>, r: &RoundRef<'_>) {
        let Arrival { now, from, id, scope } = at;
        let key = (from, id);
        let joined = self.scope(scope).is_some();
        let rounds = match self.serving.get_mut(&key) {
            Some(s) if s.scope.as_scope() == scope && joined => {
                s.rounds += 1;
                s.rounds
            }
            _ => {
                tracing::debug!(peer = %from, sync_id = id, "push/pull frame of no exchange served");
                return self.stats.drop(DropReason::UnexpectedSync);
            }
        };
        if rounds > MAX_ROUNDS {
            self.serving.remove(&key);
            tracing::debug!(peer = %from, sync_id = id, "push/pull went on past the round limit");
            return self.stats.drop(DropReason::UnexpectedSync);
        }
        if r.done {
            for e in &r.entries {
                self.apply_remote(now, scope, e, Via::Sync);
            }
            if let Some(st) = self.scope_mut(scope) {
                st.synced = true;
                st.last_sync_at = Some(now);
            }
            if let Some(s) = self.serving.remove(&key) {
                let Moved { sent, got } = s.moved;
                let got = got + r.entries.len();
                tracing::debug!(peer = %from, network = %scope, sync_id = id, rounds, sent, got, "push/pull served");
                if sent + got > 0 {
                    self.digest_soon(now, scope);
                }
            }
            return;
        }
        let (answer, sent) = self.next_frame(at, Reply::Answer, r);
        if let Some(s) = self.serving.get_mut(&key) {
            s.moved.add(r, sent.entries);
        }
        self.send_sync(from, id, false, false, answer);
    }

    /// The peer answered an exchange this node opened: the next frame, the
    /// last one when it asks nothing of the peer. An exchange that was cut
    /// and moved entries is followed at once by the next one, with the same
    /// peer: the difference left is known, and waiting for the next
    /// push/pull would leave a node far behind for minutes.
    fn answered(&mut self, at: Arrival<'_>, r: &RoundRef<'_>) {
        let Arrival { now, from, id, scope } = at;
        let rounds = match self.syncs.get_mut(&id) {
            Some(out) if out.peer == from && out.scope.as_scope() == scope => {
                out.rounds += 1;
                out.rounds
            }
            _ => {
                tracing::debug!(peer = %from, sync_id = id, "push/pull answer of no exchange opened");
                return self.stats.drop(DropReason::UnexpectedSync);
            }
        };
        let why = if rounds > MAX_ROUNDS {
            Some("the peer went on past the round limit")
        } else if self.scope(scope).is_none() {
            Some("the network was left")
        } else {
            None
        };
        if let Some(why) = why {
            if let Some(out) = self.syncs.remove(&id) {
                self.sync_failed(&out, why);
            }
            return;
        }
        let cut = self.syncs.get(&id).is_some_and(|out| out.cut) || r.cut;
        let (next, sent) = self.next_frame(at, Reply::Ask { cut }, r);
        let done = sent.done;
        if let Some(out) = self.syncs.get_mut(&id) {
            out.moved.add(r, sent.entries);
            out.cut |= r.cut || sent.cut;
        }
        self.send_sync(from, id, false, done, next);
        if !done {
            return;
        }
        let Some(out) = self.syncs.remove(&id) else {
            return;
        };
        if let Some(st) = self.scope_mut(scope) {
            st.synced = true;
            st.syncs.completed += 1;
        }
        self.stats.syncs_completed += 1;
        self.stats.sync_seconds.observe(now.saturating_sub(out.started));
        let Moved { sent, got } = out.moved;
        let cut = out.cut;
        tracing::debug!(peer = %from, network = %scope, sync_id = id, rounds, sent, got, cut, "push/pull completed");
        if sent + got > 0 && !cut {
            self.digest_soon(now, scope);
        }
        // An exchange that moved nothing would move nothing again. Two
        // bursts of a scope at once, one each way, carry the same entries:
        // the end that gave more leaves it to the one behind (on a tie, the
        // higher address yields).
        let more = cut && sent + got > 0 && out.continued < MAX_CONTINUED;
        let yields = self.exchanging(scope) && (sent, self.addr) > (got, from);
        if more && !self.left && !yields {
            self.open_sync(now, scope, from, out.continued + 1);
        }
    }

    /// Takes a round's entries and encodes this side's next frame of the
    /// exchange: an opener's is its last (`done`) when it asks nothing of
    /// the peer.
    fn next_frame(&mut self, at: Arrival<'_>, reply: Reply, r: &RoundRef<'_>) -> (Vec<u8>, Sent) {
        let Arrival { now, id, scope, .. } = at;
        for e in &r.entries {
            self.apply_remote(now, scope, e, Via::Sync);
        }
        // A burst's exchanges follow each other on new streams: between a
        // served one's end and the next's opening, a differing root heard
        // from the peer is the one the burst is repairing.
        if let Some(st) = self.scope_mut(scope) {
            st.last_sync_at = Some(now);
        }
        let mut round = self.next_round(now, scope, r);
        let kind = match reply {
            Reply::Answer => RoundKind::Answer,
            Reply::Ask { cut } => {
                // Nothing answers the last frame, and the next exchange of
                // a cut one opens on another stream: at the peer it could
                // overtake entries sent last, and be answered from the
                // state before them (a push of a million entries moved
                // 1.27 million). Entries of a cut exchange are answered
                // first, if only with an empty frame.
                let pushed = !round.entries.is_empty() && (cut || round.cut);
                round.done = round.branches.is_empty() && round.whole.is_empty() && !pushed;
                RoundKind::Ask
            }
        };
        let sent = Sent { entries: round.entries.len(), done: round.done, cut: round.cut };
        (codec::encode_round(scope.wire_name(), id, kind, round), sent)
    }

    /// Answers a round (its entries taken), within one frame: first the
    /// entries the peer lacks in the subtrees it sent whole, then this
    /// side's entries of the small nodes that differ (a subtree whole or
    /// not at all, so the peer's answer is right), then the children of the
    /// large ones. What does not fit waits for the next exchange, and the
    /// round says it was cut. Entries stop at the first that does not fit:
    /// filling an empty peer gives the whole table, and sizing each of a
    /// million entries to find a few more that fit cost more than the
    /// exchange. The entries stay borrowed from the table until the frame
    /// is encoded.
    fn next_round(&self, now: Duration, scope: Scope<'_>, r: &RoundRef<'_>) -> RoundOut<'_> {
        let mut out = RoundOut::default();
        let Some(st) = self.scope(scope) else {
            return out;
        };
        let digest = st.data.digest();
        let mut plan = Plan {
            answer: r.whole.iter().filter_map(codec::parse_node).collect(),
            ..Plan::default()
        };
        let mut seen = BTreeSet::new();
        for (parent, theirs) in r.branches.iter().filter_map(codec::parse_branch) {
            // A node's children are summed from its leaves: once a node.
            if !seen.insert(parent) {
                continue;
            }
            let mine = digest.children(parent);
            for i in 0..FANOUT {
                let id = parent.child(i);
                match step(id, mine[i], theirs[i]) {
                    Step::Same => {}
                    Step::Descend => plan.descend.push(id),
                    Step::Whole => _ = plan.whole.insert(id),
                    Step::Give => _ = plan.give.insert(id),
                }
            }
        }
        // Only answered subtrees are checked against what they sent: a cut
        // answer of a fill brings tens of thousands of entries and none.
        let answered = !plan.answer.is_empty();
        let theirs: HashMap<(&str, &str), Version<'_>> = r
            .entries
            .iter()
            .filter(|_| answered)
            .map(|e| ((e.table, e.key), (e.ltime, e.owner, e.incarnation)))
            .collect();
        let mut room = self.cfg.max_sync_frame.saturating_sub(FRAME_SLACK);
        let mut cut = false;
        let mut take = |len: usize| {
            let fits = len <= room;
            if fits {
                room -= len;
            } else {
                cut = true;
            }
            fits
        };
        let counted = |id: &NodeId| st.data.under(*id).filter(|(_, _, e)| !e.hidden);
        let lacked =
            plan.answer.iter().flat_map(counted).filter(|(table, key, e)| {
                theirs.get(&(*table, *key)).is_none_or(|v| e.version() > *v)
            });
        for (table, key, e) in lacked.chain(plan.give.iter().flat_map(counted)) {
            let w = EntryOut::new(table, key, e, now);
            if !take(w.framed_len()) {
                break;
            }
            out.entries.push(w);
        }
        for id in &plan.whole {
            let es: Vec<EntryOut<'_>> =
                counted(id).map(|(table, key, e)| EntryOut::new(table, key, e, now)).collect();
            let node = codec::node_to_wire(*id);
            if !take(codec::framed_len(&node) + es.iter().map(EntryOut::framed_len).sum::<usize>())
            {
                break;
            }
            out.whole.push(node);
            out.entries.extend(es);
        }
        for id in plan.descend {
            let b = codec::branch_to_wire(id, &digest.children(id));
            if !take(codec::framed_len(&b)) {
                break;
            }
            out.branches.push(b);
        }
        out.cut = cut;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use netdb_wire as wire;
    use netdb_wire::sync_message::Body as B;
    use prost::Message;

    use super::super::test_support::{PEER, gossip, next_opened, node, peer_entry, sync_bytes};
    use super::MAX_ROUNDS;
    use crate::codec;
    use crate::config::Config;
    use crate::digest::{FANOUT, NodeId, Sum};
    use crate::event::Transmit;
    use crate::names::Scope;
    use crate::node::{Node, SyncCounts};
    use crate::stats::DropReason;

    /// An opening frame that holds nothing: every node the server holds
    /// differs.
    fn empty_open() -> B {
        let top = codec::branch_to_wire(NodeId::ROOT, &[Sum::default(); FANOUT]);
        B::Open(wire::SyncRound { branches: vec![top], ..Default::default() })
    }

    fn replies(n: &mut Node) -> Vec<wire::SyncMessage> {
        std::iter::from_fn(|| n.poll_transmit())
            .filter_map(|t| match t {
                Transmit::Sync { payload, opens: false, .. } => {
                    wire::SyncMessage::decode(&payload[..]).ok()
                }
                _ => None,
            })
            .collect()
    }

    /// A node at 1 s that joined "net", and the peer of its exchanges.
    fn joined() -> (Node, Duration, SocketAddr) {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        n.join_network(t, "net").unwrap();
        (n, t, PEER.parse().unwrap())
    }
    #[test]
    fn an_opening_frame_is_answered_with_the_differing_entries() {
        let (mut n, t, from) = joined();
        for k in 0..20 {
            n.put(t, "net", "t", &format!("k{k}"), Bytes::from_static(b"v")).unwrap();
        }
        n.handle_sync(t, from, &sync_bytes("net", 7, empty_open()));
        let out = replies(&mut n);
        assert_eq!(out.len(), 1);
        let Some(B::Answer(r)) = &out[0].body else { panic!("not an answer: {:?}", out[0]) };
        assert_eq!((out[0].sync_id, out[0].network.as_str()), (7, "net"));
        assert_eq!(r.entries.len(), 20, "the peer holds nothing: everything is given");
        assert!(r.whole.is_empty() && r.branches.is_empty(), "and nothing asked back");
        assert_eq!(n.stats().syncs_served, 1);
        let st = n.scope_stats(Scope::Network("net")).unwrap();
        assert_eq!(st.tables, vec![("t".to_string(), 20)]);
        assert_eq!(st.syncs, SyncCounts::default(), "serving is not opening");
        assert_eq!(Some(st.root), n.root(Scope::Network("net")));
        // The same peer's last frame then closes the exchange, once.
        let done =
            sync_bytes("net", 7, B::Ask(wire::SyncRound { done: true, ..Default::default() }));
        n.handle_sync(t, from, &done);
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 0);
        assert!(replies(&mut n).is_empty(), "nothing answers the last frame");
        n.handle_sync(t, from, &done);
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 1);
    }

    #[test]
    fn requests_for_unjoined_networks_are_refused_and_stray_answers_dropped() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let from: SocketAddr = PEER.parse().unwrap();
        n.handle_sync(t, from, &sync_bytes("other", 3, empty_open()));
        let out = replies(&mut n);
        assert!(matches!(&out[0].body, Some(B::Refused(why)) if why == "network not joined"));
        n.handle_sync(t, from, &sync_bytes("", 99, B::Answer(wire::SyncRound::default())));
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 1, "no such exchange");
        n.handle_sync(t, from, &sync_bytes("", 99, B::Ask(wire::SyncRound::default())));
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 2, "none served either");
        assert_eq!(n.stats().syncs_completed, 0);
    }

    #[test]
    fn malformed_and_oversized_frames_are_counted_drops() {
        let cfg = Config { max_sync_frame: 4096, ..Config::default() };
        let mut n = Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO)
            .unwrap();
        let t = Duration::from_secs(1);
        let from: SocketAddr = PEER.parse().unwrap();
        n.join_network(t, "net").unwrap();
        let mut bad = codec::branch_to_wire(NodeId::ROOT, &[Sum::default(); FANOUT]);
        bad.counts.push(1);
        let open = B::Open(wire::SyncRound { branches: vec![bad], ..Default::default() });
        n.handle_sync(t, from, &sync_bytes("net", 1, open));
        assert_eq!(n.stats().dropped(DropReason::Malformed), 1);
        let many = wire::SyncRound {
            whole: vec![wire::Subtree { level: 1, prefix: 15 }; 1000],
            ..Default::default()
        };
        n.handle_sync(t, from, &sync_bytes("net", 2, B::Open(many)));
        assert_eq!(n.stats().dropped(DropReason::TooLarge), 1);
        assert!(replies(&mut n).is_empty());
        assert_eq!(n.stats().syncs_served, 0);
    }

    #[test]
    fn a_peer_that_goes_on_past_the_round_limit_is_cut_off() {
        let (mut n, t, from) = joined();
        n.put(t, "net", "t", "k", Bytes::from_static(b"v")).unwrap();
        n.handle_sync(t, from, &sync_bytes("net", 5, empty_open()));
        let top = codec::branch_to_wire(NodeId::ROOT, &[Sum::default(); FANOUT]);
        let again = sync_bytes(
            "net",
            5,
            B::Ask(wire::SyncRound { branches: vec![top], ..Default::default() }),
        );
        for _ in 1..MAX_ROUNDS {
            n.handle_sync(t, from, &again);
        }
        assert_eq!(replies(&mut n).len() as u32, MAX_ROUNDS);
        n.handle_sync(t, from, &again);
        n.handle_sync(t, from, &again);
        assert!(replies(&mut n).is_empty());
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 2);
    }

    /// The id of the exchange the node just opened.
    fn opened(n: &mut Node) -> u64 {
        next_opened(n).expect("a request")
    }

    #[test]
    fn opened_exchanges_are_timed_when_they_complete_and_counted_when_they_fail() {
        let (mut n, t, from) = joined();
        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        let answer = B::Answer(wire::SyncRound::default());
        n.handle_sync(t + Duration::from_millis(30), from, &sync_bytes("net", id, answer));
        let h = &n.stats().sync_seconds;
        assert_eq!((n.stats().syncs_completed, h.count()), (1, 1));
        assert_eq!(h.sum, Duration::from_millis(30));
        let bucket = crate::SYNC_SECONDS_BOUNDS.iter().position(|b| *b == 0.05).unwrap();
        assert_eq!(h.counts[bucket], 1, "30 ms is counted under 50 ms");

        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        n.handle_sync(t, from, &sync_bytes("net", id, B::Refused("busy".into())));
        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        n.abort_sync(id, "stream failed: connection refused");
        assert_eq!(n.stats().syncs_failed, 2);
        assert_eq!(n.stats().sync_seconds.count(), 1, "failures are not timed");
    }

    /// Frames of one exchange, as (from the opener, payload).
    type Carried = Vec<(bool, wire::SyncMessage)>;

    /// Carries frames between the opener `a` and server `b` until neither
    /// sends one.
    fn carry(a: &mut Node, b: &mut Node, t: Duration) -> Carried {
        let mut log = Vec::new();
        loop {
            let mut moved = false;
            for opener in [true, false] {
                let (from, to) = if opener { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                let addr = from.addr();
                while let Some(tx) = from.poll_transmit() {
                    let Transmit::Sync { payload, closes, .. } = tx else { continue };
                    moved = true;
                    let m = wire::SyncMessage::decode(&payload[..]).unwrap();
                    if let Some(B::Ask(r)) = &m.body {
                        assert_eq!(closes, r.done, "the shell ends the stream after the last");
                    }
                    log.push((opener, m));
                    to.handle_sync(t, addr, &payload);
                }
            }
            if !moved {
                return log;
            }
        }
    }

    /// Two nodes in network "net", `a` holding `n` entries and `b` none,
    /// their gossip of them dropped.
    fn full_and_empty(cfg: Config, n: usize) -> (Node, Node) {
        let t = Duration::from_secs(1);
        let node = |name, addr: &str, seed| {
            Node::new(cfg.clone(), name, 1, addr.parse().unwrap(), seed, Duration::ZERO).unwrap()
        };
        let (mut a, mut b) = (node("a", "127.0.0.1:7946", 1), node("b", PEER, 2));
        for n in [&mut a, &mut b] {
            n.join_network(t, "net").unwrap();
        }
        for k in 0..n {
            a.put(t, "net", "t", &format!("k{k}"), Bytes::from_static(b"v0")).unwrap();
        }
        for n in [&mut a, &mut b] {
            while n.poll_transmit().is_some() {}
        }
        (a, b)
    }

    /// `full_and_empty` with 16 KiB frames (about 700 of these entries), so
    /// a fill of `n` takes a burst of exchanges; at 1 s, in "net".
    fn far_behind(n: usize) -> (Node, Node, Duration, Scope<'static>) {
        let cfg = Config { max_sync_frame: 16 * 1024, ..Config::default() };
        let (a, b) = full_and_empty(cfg, n);
        (a, b, Duration::from_secs(1), Scope::Network("net"))
    }

    /// Two nodes that hold the same `n` entries (b learned them from a's
    /// exchange, which also tests filling an empty node in one exchange).
    fn filled_pair(n: usize) -> (Node, Node) {
        let (mut a, mut b) = full_and_empty(Config::default(), n);
        let net = Scope::Network("net");
        a.start_sync(Duration::from_secs(1), net, b.addr());
        carry(&mut a, &mut b, Duration::from_secs(1));
        assert_eq!(a.root(net), b.root(net), "filled from empty in one exchange");
        (a, b)
    }

    #[test]
    fn a_node_far_behind_is_filled_by_exchanges_back_to_back() {
        // Frames of 16 KiB hold about 700 of these entries: 5,000 take
        // seven exchanges, and no timer runs between them.
        let cfg = Config { max_sync_frame: 16 * 1024, ..Config::default() };
        let (mut a, mut b) = full_and_empty(cfg, 5000);
        let net = Scope::Network("net");
        b.start_sync(Duration::from_secs(1), net, a.addr());
        let log = carry(&mut b, &mut a, Duration::from_secs(1));
        assert_eq!(a.root(net), b.root(net), "filled in one burst");
        assert_eq!(b.entries("net", "t").len(), 5000);
        let opened = log.iter().filter(|(_, m)| matches!(m.body, Some(B::Open(_)))).count();
        assert!(opened >= 5, "the frames were cut: {opened} exchanges");
        assert_eq!(b.stats().syncs_started, opened as u64);
        assert_eq!(b.stats().syncs_completed, opened as u64);
        let cut = log.iter().filter(|(_, m)| matches!(&m.body, Some(B::Answer(r)) if r.cut));
        assert_eq!(cut.count(), opened - 1, "every answer but the last says it was cut");
        assert_eq!(a.stats().dropped(DropReason::UnexpectedSync), 0);
    }

    #[test]
    fn push_pull_takes_a_version_gossip_mistook_for_a_copy() {
        let (mut n, t, from) = joined();
        let net = Scope::Network("net");
        let value = |n: &Node| n.get("net", "t", "k").map(|e| e.value.clone());
        let old = peer_entry("t", "k", Bytes::from_static(b"old"), 5, false);
        n.handle_datagram(t, from, &gossip("net", vec![old]));
        // The match a 56-bit fingerprint allows once in 2^56: the slot
        // claims the next version.
        n.scope_mut(net).unwrap().data.forge_print("t", "k", (6, "peer", 1));
        let new = peer_entry("t", "k", Bytes::from_static(b"new"), 6, false);
        n.handle_datagram(t, from, &gossip("net", vec![new.clone()]));
        assert_eq!(n.stats().gossip_copies, 1, "gossip took it for a copy");
        assert_eq!(value(&n), Some(Bytes::from_static(b"old")));
        n.start_sync(t, net, from);
        let id = opened(&mut n);
        let answer = wire::SyncRound { entries: vec![new], ..Default::default() };
        n.handle_sync(t, from, &sync_bytes("net", id, B::Answer(answer)));
        assert_eq!(value(&n), Some(Bytes::from_static(b"new")), "push/pull compared the versions");
    }

    #[test]
    fn a_cut_exchange_that_moved_nothing_is_not_followed() {
        let cfg = Config { max_sync_frame: 16 * 1024, ..Config::default() };
        let (mut a, b) = full_and_empty(cfg, 10);
        let t = Duration::from_secs(1);
        a.start_sync(t, Scope::Network("net"), b.addr());
        let id = opened(&mut a);
        let cut = B::Answer(wire::SyncRound { cut: true, ..Default::default() });
        a.handle_sync(t, b.addr(), &sync_bytes("net", id, cut));
        // The answer asked nothing, so the exchange ends, and with nothing
        // moved another would be the same.
        assert_eq!(a.stats().syncs_completed, 1);
        assert_eq!(next_opened(&mut a), None);
    }

    #[test]
    fn a_peer_that_always_says_cut_holds_the_node_for_a_bounded_burst() {
        let (mut n, t, from) = joined();
        n.start_sync(t, Scope::Network("net"), from);
        let mut opened_in_a_row = 0;
        while let Some(id) = next_opened(&mut n) {
            opened_in_a_row += 1;
            assert!(opened_in_a_row <= 100, "no end to the burst");
            let e = peer_entry("t", &format!("k{id}"), Bytes::from_static(b"v"), id + 1, false);
            let answer = wire::SyncRound { entries: vec![e], cut: true, ..Default::default() };
            n.handle_sync(t, from, &sync_bytes("net", id, B::Answer(answer)));
        }
        assert_eq!(opened_in_a_row, super::MAX_CONTINUED + 1, "the first and its followers");
    }

    #[test]
    fn a_fill_opened_from_both_ends_at_once_crosses_once() {
        let (mut a, mut b, t, net) = far_behind(5000);
        // b pulls as it joins; a pushes, having heard b's root.
        b.start_sync(t, net, a.addr());
        a.start_sync(t, net, b.addr());
        let mut log = carry(&mut b, &mut a, t);
        log.extend(carry(&mut a, &mut b, t));
        assert_eq!(a.root(net), b.root(net));
        // The first exchange each way carries the same ~700 entries; then
        // one burst goes on alone (both: about 9,600).
        let moved: usize = log.iter().map(|(_, m)| entries(m)).sum();
        assert!(moved < 6000, "one burst, not two: {moved} entries moved for 5,000");
    }

    #[test]
    fn entries_pushed_in_a_cut_exchange_are_answered_before_the_next_opens() {
        let (mut a, mut b, t, net) = far_behind(5000);
        a.start_sync(t, net, b.addr());
        let log = carry(&mut a, &mut b, t);
        assert_eq!(a.root(net), b.root(net), "pushed in one burst");
        let mut pushed = 0;
        for (i, (_, m)) in log.iter().enumerate() {
            let Some(B::Ask(r)) = &m.body else { continue };
            if r.entries.is_empty() {
                continue;
            }
            pushed += 1;
            match log.get(i + 1) {
                Some((opener, next)) => assert!(
                    !opener && matches!(next.body, Some(B::Answer(_))),
                    "pushed entries are answered before anything else: {next:?}"
                ),
                None => assert!(r.done, "only the last exchange, not cut, ends with entries"),
            }
        }
        assert!(pushed >= 5, "the frames were cut: {pushed} pushes");
        let moved: usize = log.iter().map(|(_, m)| entries(m)).sum();
        assert!(moved < 5100, "each entry crosses once: {moved} moved for 5,000");
    }

    #[test]
    fn a_node_serving_an_exchange_of_a_scope_opens_none_for_a_differing_root() {
        let (mut n, t, from) = joined();
        n.put(t, "net", "t", "k", Bytes::from_static(b"v")).unwrap();
        while n.poll_transmit().is_some() {}
        n.handle_sync(t, from, &sync_bytes("net", 7, empty_open()));
        // The peer's root (that of an empty table) differs, long enough.
        for ms in [0, 300, 600, 2000] {
            n.handle_datagram(t + Duration::from_millis(ms), from, &gossip("net", vec![]));
        }
        assert_eq!(next_opened(&mut n), None, "the exchange served repairs the difference");
        let done = wire::SyncRound { done: true, ..Default::default() };
        let end = t + Duration::from_secs(2);
        n.handle_sync(end, from, &sync_bytes("net", 7, B::Ask(done)));
        // The next exchange of a burst would be on its way.
        n.handle_datagram(end + Duration::from_millis(100), from, &gossip("net", vec![]));
        assert_eq!(next_opened(&mut n), None, "the gap between a burst's exchanges");
        n.handle_datagram(end + Duration::from_secs(1), from, &gossip("net", vec![]));
        assert!(next_opened(&mut n).is_some(), "once it is over, a difference is pulled");
    }

    fn entries(r: &wire::SyncMessage) -> usize {
        match &r.body {
            Some(B::Open(r) | B::Ask(r) | B::Answer(r)) => r.entries.len(),
            _ => 0,
        }
    }

    #[test]
    fn divergent_tables_converge_in_one_exchange_both_ways() {
        let (mut a, mut b) = filled_pair(3000);
        let t = Duration::from_secs(1);
        let net = Scope::Network("net");
        // Writes on both sides: updates, new keys, a delete.
        for k in 0..20 {
            a.put(t, "net", "t", &format!("k{}", k * 97), Bytes::from_static(b"v1")).unwrap();
            b.put(t, "net", "u", &format!("b{k}"), Bytes::from_static(b"new")).unwrap();
        }
        a.delete(t, "net", "t", "k5").unwrap();
        for n in [&mut a, &mut b] {
            while n.poll_transmit().is_some() {}
        }
        assert_ne!(a.root(net), b.root(net));
        b.start_sync(t, net, a.addr());
        let log = carry(&mut b, &mut a, t);
        assert_eq!(a.root(net), b.root(net), "one exchange repairs both sides");
        assert_eq!(b.get("net", "t", "k97").map(|e| &e.value[..]), Some(&b"v1"[..]));
        assert!(b.get("net", "t", "k5").is_none(), "the delete too");
        assert_eq!(a.entries("net", "u").len(), 20);
        let moved: usize = log.iter().map(|(_, m)| entries(m)).sum();
        assert!(moved <= 200, "entries of the differing nodes only, not {moved}");
        assert!(matches!(&log.last().unwrap().1.body, Some(B::Ask(r)) if r.done));
        assert_eq!((b.stats().syncs_completed, a.stats().syncs_served), (1, 1));
        assert_eq!(b.stats().dropped(DropReason::UnexpectedSync), 0);
        assert_eq!(a.stats().dropped(DropReason::UnexpectedSync), 0);
        assert!(b.scope_stats(net).unwrap().synced && a.scope_stats(net).unwrap().synced);
    }

    #[test]
    fn equal_tables_exchange_only_the_top_level() {
        let (mut a, mut b) = filled_pair(500);
        let t = Duration::from_secs(1);
        let net = Scope::Network("net");
        b.start_sync(t, net, a.addr());
        let log = carry(&mut b, &mut a, t);
        let bodies: Vec<_> =
            log.iter().map(|(opener, m)| (*opener, m.body.clone().unwrap())).collect();
        let top = b.scope(net).unwrap().data.digest().children(NodeId::ROOT);
        let top = codec::branch_to_wire(NodeId::ROOT, &top);
        let expect = vec![
            (true, B::Open(wire::SyncRound { branches: vec![top], ..Default::default() })),
            (false, B::Answer(wire::SyncRound::default())),
            (true, B::Ask(wire::SyncRound { done: true, ..Default::default() })),
        ];
        assert_eq!(bodies, expect);
        assert_eq!(b.stats().syncs_completed, 1);
    }
}
