//! Push/pull anti-entropy. The opener sends its digest; the server answers
//! with its digest and its entries in the buckets that differ; the opener
//! merges them and sends back its own entries in those buckets. Exchanges
//! are bounded (frames, concurrent serves) and time out.

use std::net::SocketAddr;
use std::time::Duration;

use netdb_wire as wire;
use netdb_wire::sync_message::Body as B;
use prost::Message;
use rand::RngExt;

use super::Node;
use super::merge::Via;
use super::timers::Wake;
use crate::codec::{self, entry_to_wire};
use crate::digest::{BUCKETS, BucketSet, DIGEST_BYTES, bucket_of};
use crate::names::{Scope, ScopeId};
use crate::stats::DropReason;

/// Bound on push/pull exchanges this node serves at once.
const MAX_SERVING: usize = 64;

/// Room left in a sync frame for its header and digest.
const DIGEST_SLACK: usize = DIGEST_BYTES + 256;

/// An exchange this node opened.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) scope: ScopeId,
    pub(super) peer: SocketAddr,
    /// When it was opened, for the duration histogram.
    pub(super) started: Duration,
}

impl Node {
    /// A validated push/pull message from `from`.
    pub(super) fn sync_message(&mut self, now: Duration, from: SocketAddr, m: wire::SyncMessage) {
        let scope = Scope::from_wire(&m.network);
        match m.body {
            Some(B::Request(d)) => self.serve_sync(now, from, m.sync_id, scope, &d),
            Some(B::Reply(r)) => {
                match self.syncs.get(&m.sync_id) {
                    Some(out) if out.peer == from && out.scope.as_scope() == scope => {}
                    _ => return self.stats.drop(DropReason::UnexpectedSync),
                }
                let started = self.syncs.remove(&m.sync_id).map_or(now, |out| out.started);
                if self.scope(scope).is_none() {
                    return self.stats.drop(DropReason::NotMember);
                }
                for e in &r.entries {
                    self.apply_remote(now, scope, e, Via::Sync);
                }
                let theirs = r.digest.as_ref().and_then(codec::parse_digest).unwrap_or_default();
                let Some(st) = self.scope_mut(scope) else { return };
                st.synced = true;
                st.syncs.completed += 1;
                let differ = st.data.digest().differing(&theirs);
                let entries = self.bucket_entries(now, scope, differ);
                let msg = wire::SyncMessage {
                    version: codec::WIRE_VERSION,
                    sync_id: m.sync_id,
                    network: m.network.clone(),
                    body: Some(B::Entries(wire::SyncEntries { entries })),
                };
                self.send_sync(from, m.sync_id, false, msg);
                self.stats.syncs_completed += 1;
                self.stats.sync_seconds.observe(now.saturating_sub(started));
            }
            Some(B::Entries(es)) => {
                match self.serving.remove(&(from, m.sync_id)) {
                    Some(s) if s.as_scope() == scope && self.scope(scope).is_some() => {}
                    _ => return self.stats.drop(DropReason::UnexpectedSync),
                }
                for e in &es.entries {
                    self.apply_remote(now, scope, e, Via::Sync);
                }
                if let Some(st) = self.scope_mut(scope) {
                    st.synced = true;
                }
            }
            Some(B::Refused(why)) => match self.syncs.get(&m.sync_id) {
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
        let Some(st) = self.scope_mut(scope) else {
            return;
        };
        st.last_sync_at = Some(now);
        st.mismatch_since = None;
        st.syncs.started += 1;
        let digest = st.data.digest().to_bytes();
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        self.syncs.insert(id, Outgoing { scope: scope.to_id(), peer, started: now });
        self.stats.syncs_started += 1;
        let msg = wire::SyncMessage {
            version: codec::WIRE_VERSION,
            sync_id: id,
            network: scope.wire_name().into(),
            body: Some(B::Request(wire::Digest { buckets: digest.into() })),
        };
        self.send_sync(peer, id, true, msg);
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

    fn serve_sync(
        &mut self,
        now: Duration,
        from: SocketAddr,
        id: u64,
        scope: Scope<'_>,
        d: &wire::Digest,
    ) {
        let body = match (self.scope(scope), codec::parse_digest(d)) {
            (Some(st), Some(theirs)) if self.serving.len() < MAX_SERVING => {
                let mine = st.data.digest().clone();
                let entries = self.bucket_entries(now, scope, mine.differing(&theirs));
                self.serving.insert((from, id), scope.to_id());
                self.schedule(now + self.cfg.sync_timeout, Wake::ServeTimeout(from, id));
                self.stats.syncs_served += 1;
                B::Reply(wire::SyncReply {
                    digest: Some(wire::Digest { buckets: mine.to_bytes().into() }),
                    entries,
                })
            }
            (Some(_), Some(_)) => B::Refused("busy".into()),
            _ => B::Refused("network not joined".into()),
        };
        let msg = wire::SyncMessage {
            version: codec::WIRE_VERSION,
            sync_id: id,
            network: scope.wire_name().into(),
            body: Some(body),
        };
        self.send_sync(from, id, false, msg);
    }

    /// This node's digest-counted entries in the given buckets, up to what
    /// fits in one frame. Whole buckets are taken from a random starting
    /// bucket, so when a difference is larger than a frame, each exchange
    /// carries other buckets and repeated exchanges cover them all.
    fn bucket_entries(
        &mut self,
        now: Duration,
        scope: Scope<'_>,
        buckets: BucketSet,
    ) -> Vec<wire::Entry> {
        let mut out = Vec::new();
        if buckets.is_empty() {
            return out;
        }
        let start = self.rng.random_range(0..=u8::MAX);
        let limit = self.cfg.max_sync_frame.saturating_sub(DIGEST_SLACK);
        let Some(st) = self.scope(scope) else {
            return out;
        };
        let mut by_bucket: Vec<Vec<wire::Entry>> = vec![Vec::new(); BUCKETS];
        for (table, key, e) in st.data.iter() {
            let b = bucket_of(table, key);
            if !e.hidden && buckets.contains(b) {
                by_bucket[usize::from(b)].push(entry_to_wire(table, key, e, now));
            }
        }
        let mut size = 0;
        for i in 0..BUCKETS {
            let bucket = std::mem::take(&mut by_bucket[(usize::from(start) + i) % BUCKETS]);
            for w in bucket {
                let len = w.encoded_len() + 8;
                if size + len > limit {
                    return out;
                }
                size += len;
                out.push(w);
            }
        }
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

    use super::super::test_support::{PEER, node};
    use crate::codec;
    use crate::digest::DIGEST_BYTES;
    use crate::event::Transmit;
    use crate::names::Scope;
    use crate::node::SyncCounts;
    use crate::stats::DropReason;

    fn frame(network: &str, sync_id: u64, body: B) -> Vec<u8> {
        let msg = wire::SyncMessage {
            version: codec::WIRE_VERSION,
            sync_id,
            network: network.into(),
            body: Some(body),
        };
        msg.encode_to_vec()
    }

    fn empty_digest() -> wire::Digest {
        wire::Digest { buckets: vec![0u8; DIGEST_BYTES].into() }
    }

    fn replies(n: &mut crate::node::Node) -> Vec<wire::SyncMessage> {
        std::iter::from_fn(|| n.poll_transmit())
            .filter_map(|t| match t {
                Transmit::Sync { payload, opens: false, .. } => {
                    wire::SyncMessage::decode(&payload[..]).ok()
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_request_is_answered_with_the_differing_entries() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let from: SocketAddr = PEER.parse().unwrap();
        n.join_network(t, "net").unwrap();
        for k in 0..20 {
            n.put(t, "net", "t", &format!("k{k}"), Bytes::from_static(b"v")).unwrap();
        }
        n.handle_sync(t, from, &frame("net", 7, B::Request(empty_digest())));
        let out = replies(&mut n);
        assert_eq!(out.len(), 1);
        let Some(B::Reply(r)) = &out[0].body else { panic!("not a reply: {:?}", out[0]) };
        assert_eq!((out[0].sync_id, out[0].network.as_str()), (7, "net"));
        assert_eq!(r.entries.len(), 20, "everything differs from an empty digest");
        assert_eq!(n.stats().syncs_served, 1);
        let st = n.scope_stats(Scope::Network("net")).unwrap();
        assert_eq!(st.tables, vec![("t".to_string(), 20)]);
        assert_eq!(st.syncs, SyncCounts::default(), "serving is not opening");
        assert_eq!(Some(st.root), n.root(Scope::Network("net")));
        // The same peer's entries then close the exchange, once.
        let entries = frame("net", 7, B::Entries(wire::SyncEntries { entries: Vec::new() }));
        n.handle_sync(t, from, &entries);
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 0);
        n.handle_sync(t, from, &entries);
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 1);
    }

    #[test]
    fn requests_for_unjoined_networks_are_refused_and_stray_replies_dropped() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let from: SocketAddr = PEER.parse().unwrap();
        n.handle_sync(t, from, &frame("other", 3, B::Request(empty_digest())));
        let out = replies(&mut n);
        assert!(matches!(&out[0].body, Some(B::Refused(why)) if why == "network not joined"));
        let reply = wire::SyncReply { digest: Some(empty_digest()), entries: Vec::new() };
        n.handle_sync(t, from, &frame("", 99, B::Reply(reply)));
        assert_eq!(n.stats().dropped(DropReason::UnexpectedSync), 1, "no such exchange");
        assert_eq!(n.stats().syncs_completed, 0);
    }

    /// The id of the exchange the node just opened.
    fn opened(n: &mut crate::node::Node) -> u64 {
        std::iter::from_fn(|| n.poll_transmit())
            .find_map(|t| match t {
                Transmit::Sync { sync_id, opens: true, .. } => Some(sync_id),
                _ => None,
            })
            .expect("a request")
    }

    #[test]
    fn opened_exchanges_are_timed_when_they_complete_and_counted_when_they_fail() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::from_secs(1);
        let from: SocketAddr = PEER.parse().unwrap();
        n.join_network(t, "net").unwrap();
        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        let reply = wire::SyncReply { digest: Some(empty_digest()), entries: Vec::new() };
        n.handle_sync(t + Duration::from_millis(30), from, &frame("net", id, B::Reply(reply)));
        let h = &n.stats().sync_seconds;
        assert_eq!((n.stats().syncs_completed, h.count()), (1, 1));
        assert_eq!(h.sum, Duration::from_millis(30));
        let bucket = crate::SYNC_SECONDS_BOUNDS.iter().position(|b| *b == 0.05).unwrap();
        assert_eq!(h.counts[bucket], 1, "30 ms is counted under 50 ms");

        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        n.handle_sync(t, from, &frame("net", id, B::Refused("busy".into())));
        n.start_sync(t, Scope::Network("net"), from);
        let id = opened(&mut n);
        n.abort_sync(id, "stream failed: connection refused");
        assert_eq!(n.stats().syncs_failed, 2);
        assert_eq!(n.stats().sync_seconds.count(), 1, "failures are not timed");
    }
}
