//! The node: one deterministic state machine per agent.
//!
//! Inputs come with the current time (`now`, a `Duration` since any fixed
//! origin): datagrams, push/pull frames, timeouts, and local commands.
//! Outputs are drained after every input: `poll_transmit`, `poll_event`,
//! `poll_timeout`. Nothing here reads a clock, opens a socket or uses a
//! global RNG, so the simulator can run a thousand nodes reproducibly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, OwnedNotification, Timer};
use netdb_wire as wire;
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::broadcast::BroadcastQueue;
use crate::clock::LamportClock;
use crate::codec::{
    self, Body, CLUSTER, NETWORKS_TABLE, NODES_TABLE, attachment_key, entry_from_wire,
    entry_to_wire, parse_attachment_key, valid_key, valid_name,
};
use crate::config::Config;
use crate::digest::{BucketSet, Digest, bucket_of};
use crate::keyops::{self, KeyOp, KeyOps, KeyReport, Query, Seen};
use crate::keyring::{Keyring, SEAL_OVERHEAD};
use crate::membership::{Identity, MemberInfo, MemberState, Owner, PeerSet, Status, Swim};
use crate::stats::{DropReason, Stats};
use crate::table::{Change, Entry, Rewrite, Scope};

/// A packet or frame for the shell to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A UDP datagram.
    Datagram { to: SocketAddr, payload: Vec<u8> },
    /// A push/pull frame. `opens` frames start an exchange (the shell opens
    /// a stream to `to`); the others answer on the stream that carried the
    /// same `sync_id` from `to`.
    Sync { to: SocketAddr, sync_id: u64, opens: bool, payload: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryEventKind {
    Create,
    Update,
    Delete,
}

impl EntryEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryEventKind::Create => "create",
            EntryEventKind::Update => "update",
            EntryEventKind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A visible entry of a joined network appeared, changed or went away
    /// (deleted, or its owner failed, left or was replaced).
    Entry {
        network: String,
        table: String,
        key: String,
        kind: EntryEventKind,
        owner: String,
        value: Bytes,
    },
    Member {
        name: String,
        addr: Option<SocketAddr>,
        state: MemberState,
    },
    /// This node's keyring changed (a keyring command, local or from a
    /// peer): the shell should write it back to its file.
    KeyringChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}: use 1-{max} of letters, digits and -_.:@")]
    BadName { what: &'static str, value: String, max: usize },
    #[error("invalid key: use 1-{max} bytes without control characters")]
    BadKey { max: usize },
    #[error("value of {len} bytes is larger than the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("network {0:?} is not joined on this node; join it first")]
    NotJoined(String),
    #[error("this node already joined the limit of {0} networks")]
    TooManyNetworks(usize),
    #[error("entry {key:?} belongs to node {owner:?}; only its owner may change it")]
    NotOwner { key: String, owner: String },
    #[error("no entry {key:?} in table {table:?}")]
    NotFound { table: String, key: String },
    #[error("this node has left the cluster")]
    Left,
    #[error("gossip is not encrypted on this node; start every agent with keys (--key-file)")]
    NoKeyring,
    #[error(
        "keys are derived from the cluster secret and rotate on schedule here; keyring commands do not apply"
    )]
    ScheduledKeys,
}

#[derive(Debug)]
struct Queued {
    entry: wire::Entry,
    reap_at: Option<Duration>,
    /// Bytes it adds to a packet (field tag and length included); an upper
    /// bound, since the residual reap time only shrinks.
    framed_len: usize,
}

type QueueKey = (String, String);

#[derive(Debug)]
struct ScopeState {
    data: Scope,
    queue: BroadcastQueue<QueueKey, Queued>,
    last_root: u64,
    root_changed_at: Duration,
    mismatch_since: Option<Duration>,
    last_sync_at: Option<Duration>,
    next_periodic_sync: Duration,
    next_digest: Duration,
    /// Sync with the next peer that appears (joined, rejoined, or a sync
    /// failed).
    needs_sync: bool,
    /// A push/pull with some peer completed at least once.
    synced: bool,
}

#[derive(Debug)]
struct Outgoing {
    scope: String,
    peer: SocketAddr,
}

#[derive(Debug)]
enum Wake {
    Swim(Timer<Identity>),
    Gossip,
    Reap { scope: String, table: String, key: String },
    Grace { name: String, incarnation: u64 },
    SyncTimeout(u64),
    ServeTimeout(SocketAddr, u64),
    JoinRetry(u64),
    KeyRetry(u64),
}

#[derive(Debug)]
struct Scheduled {
    at: Duration,
    seq: u64,
    wake: Wake,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// How an entry reached this node; gossip news is relayed, sync news is not
/// (the digest comparison spreads repairs without flooding the queues).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Gossip,
    Sync,
}

/// Known nodes (besides the seeds) an announce round knocks on.
const KNOCK_KNOWN: usize = 3;

/// Bound on push/pull exchanges this node serves at once.
const MAX_SERVING: usize = 64;

pub struct Node {
    cfg: Config,
    name: String,
    incarnation: u64,
    addr: SocketAddr,
    clock: LamportClock,
    rng: StdRng,
    swim: Swim,
    rt: AccumulatingRuntime<Identity>,
    wakeups: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    scopes: BTreeMap<String, ScopeState>,
    owners: BTreeMap<String, Owner>,
    cluster_peers: PeerSet,
    net_peers: Option<BTreeMap<String, Vec<SocketAddr>>>,
    /// foca's cluster-size dependent settings in force.
    swim_params: (u8, Duration),
    syncs: BTreeMap<u64, Outgoing>,
    next_sync_id: u64,
    serving: BTreeMap<(SocketAddr, u64), String>,
    seeds: Vec<SocketAddr>,
    join_delay: Duration,
    /// Invalidates older announce retries when the loop restarts.
    join_token: u64,
    /// The gossip tick in the scheduler (older ones are ignored), and when
    /// the last one ran (ticks are at least a gossip interval apart).
    tick_at: Option<Duration>,
    last_tick: Option<Duration>,
    active: bool,
    left: bool,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    keyring: Option<Keyring>,
    keyops: KeyOps,
    /// Keys come from a cluster secret by epoch: keyring commands refused.
    scheduled_keys: bool,
    /// Wall-clock Unix ms at this node's time zero (0 in the simulator,
    /// where every node shares one virtual clock).
    wall_origin_ms: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

impl Node {
    /// A node named `name` (unique in the cluster), in `incarnation` (larger
    /// than any earlier life of this name that lost its state, e.g. the
    /// start time in ms), reachable at `addr`, with its RNG seeded by `seed`.
    pub fn new(
        cfg: Config,
        name: &str,
        incarnation: u64,
        addr: SocketAddr,
        seed: u64,
        now: Duration,
    ) -> Result<Node, Error> {
        if !valid_name(name, cfg.max_name_len) {
            return Err(Error::BadName {
                what: "node name",
                value: name.into(),
                max: cfg.max_name_len,
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = Identity { name: name.into(), incarnation, generation: 0, addr };
        let swim_rng = StdRng::seed_from_u64(rng.random());
        let swim = Swim::new(identity, swim_config(&cfg, 1), swim_rng, foca::PostcardCodec);
        let mut node = Node {
            name: name.into(),
            incarnation,
            addr,
            clock: LamportClock::default(),
            rng,
            swim,
            rt: AccumulatingRuntime::new(),
            wakeups: BinaryHeap::new(),
            seq: 0,
            scopes: BTreeMap::new(),
            owners: BTreeMap::new(),
            cluster_peers: PeerSet::default(),
            net_peers: None,
            swim_params: swim_params(&cfg, 1),
            syncs: BTreeMap::new(),
            next_sync_id: 1,
            serving: BTreeMap::new(),
            seeds: Vec::new(),
            join_delay: cfg.join_retry,
            join_token: 0,
            tick_at: None,
            last_tick: None,
            active: false,
            left: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            keyring: None,
            keyops: KeyOps::default(),
            scheduled_keys: false,
            wall_origin_ms: 0,
            cfg,
        };
        node.owners.insert(
            node.name.clone(),
            Owner { incarnation, status: Status::Alive, addr: Some(addr) },
        );
        let cluster = node.new_scope(now);
        node.scopes.insert(CLUSTER.into(), cluster);
        let record = wire::NodeRecord { addr: addr.to_string(), left: false };
        node.write(
            now,
            CLUSTER,
            NODES_TABLE,
            &node.name.clone(),
            record.encode_to_vec().into(),
            false,
        );
        node.drain_swim(now);
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Lamport time of this node's latest write or observation.
    pub fn ltime(&self) -> u64 {
        self.clock.time()
    }

    /// Moves the clock forward to at least `t`: a restarted node resumes
    /// from the time it saved, so its new writes never look older than
    /// those of its previous life.
    pub fn witness_clock(&mut self, t: u64) {
        self.clock.witness(t);
    }

    /// True once this node has completed a push/pull of the cluster scope
    /// with a peer, or knows no live peer: what it holds of the cluster
    /// objects is then as good as the cluster's.
    pub fn cluster_synced(&self) -> bool {
        self.scopes.get(CLUSTER).is_some_and(|st| st.synced)
            || !self.owners.iter().any(|(n, o)| *n != self.name && o.status == Status::Alive)
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sets (or clears) the keys that seal every datagram and push/pull
    /// frame. With keys, plaintext and foreign messages are dropped.
    pub fn set_keyring(&mut self, keyring: Option<Keyring>) {
        self.keyring = keyring;
    }

    /// The wall clock (Unix ms) at this node's time zero; keyring commands
    /// carry their wall-clock send time, so a receiver can refuse stale
    /// ones.
    pub fn set_wall_clock(&mut self, unix_ms_at_zero: u64) {
        self.wall_origin_ms = unix_ms_at_zero;
    }

    fn wall_ms(&self, now: Duration) -> u64 {
        self.wall_origin_ms + now.as_millis() as u64
    }

    /// Marks the keyring as derived from a cluster secret (the shell
    /// replaces it every epoch); keyring commands are then refused.
    pub fn set_scheduled_keys(&mut self, on: bool) {
        self.scheduled_keys = on;
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Counts a drop the shell saw before the core could (a stream frame
    /// over the size limit, a connection that sent garbage framing).
    pub fn record_drop(&mut self, reason: DropReason) {
        self.stats.drop(reason);
    }

    /// Events waiting in each scope's broadcast queue (the cluster scope is
    /// the empty name).
    pub fn queue_lengths(&self) -> Vec<(&str, usize)> {
        self.scopes.iter().map(|(n, st)| (n.as_str(), st.queue.len())).collect()
    }

    /// The shell could not carry push/pull exchange `sync_id` (connect
    /// failed, stream broke): fail it now instead of at its timeout.
    pub fn abort_sync(&mut self, sync_id: u64) {
        if let Some(out) = self.syncs.remove(&sync_id) {
            self.sync_failed(&out.scope);
        }
    }

    /// True once some member of the cluster has heard of this node.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn has_left(&self) -> bool {
        self.left
    }

    // ----- outputs -----------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.wakeups.peek().map(|Reverse(s)| s.at)
    }

    // ----- commands ------------------------------------------------------

    /// Joins the cluster through any of `seeds`, retrying with backoff until
    /// one answers.
    pub fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        self.seeds = seeds.iter().copied().filter(|s| *s != self.addr).collect();
        self.join_delay = self.cfg.join_retry;
        self.announce(now);
    }

    /// Leaves gracefully: peers mark this node `left` and drop its entries
    /// at once. The shell should keep delivering timeouts for a gossip
    /// interval or two so the news goes out, then stop.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        let record = wire::NodeRecord { addr: self.addr.to_string(), left: true };
        self.write(
            now,
            CLUSTER,
            NODES_TABLE,
            &self.name.clone(),
            record.encode_to_vec().into(),
            false,
        );
        let mut unpaced = usize::MAX;
        self.gossip_scope(now, CLUSTER, &mut unpaced);
        self.left = true;
        let _ = self.swim.leave_cluster(&mut self.rt);
        self.drain_swim(now);
    }

    pub fn join_network(&mut self, now: Duration, network: &str) -> Result<(), Error> {
        self.check_network(network)?;
        if self.scopes.contains_key(network) {
            return Ok(());
        }
        if self.scopes.len() > self.cfg.max_networks {
            return Err(Error::TooManyNetworks(self.cfg.max_networks));
        }
        let scope = self.new_scope(now);
        self.scopes.insert(network.into(), scope);
        self.write(
            now,
            CLUSTER,
            NETWORKS_TABLE,
            &attachment_key(network, &self.name),
            Bytes::new(),
            false,
        );
        self.net_peers = None;
        Ok(())
    }

    /// Leaves a network: this node's entries there become tombstones on
    /// every peer (derived from the detach, so no packet per entry is
    /// needed), and this node forgets the network's tables.
    pub fn leave_network(&mut self, now: Duration, network: &str) -> Result<(), Error> {
        self.check_network(network)?;
        let Some(st) = self.scopes.remove(network) else {
            return Err(Error::NotJoined(network.into()));
        };
        for (table, key, e) in st.data.iter() {
            if e.visible() {
                self.events.push_back(entry_event(network, table, key, e, EntryEventKind::Delete));
            }
        }
        self.syncs.retain(|_, o| o.scope != network);
        self.write(
            now,
            CLUSTER,
            NETWORKS_TABLE,
            &attachment_key(network, &self.name),
            Bytes::new(),
            true,
        );
        self.net_peers = None;
        Ok(())
    }

    /// Creates or updates an entry this node owns.
    pub fn put(
        &mut self,
        now: Duration,
        network: &str,
        table: &str,
        key: &str,
        value: Bytes,
    ) -> Result<(), Error> {
        self.check_entry_args(network, table, key)?;
        if value.len() > self.cfg.max_value_len {
            return Err(Error::ValueTooLarge { len: value.len(), max: self.cfg.max_value_len });
        }
        let st = self.scopes.get(network).ok_or_else(|| Error::NotJoined(network.into()))?;
        if let Some(e) = st.data.get(table, key)
            && e.visible()
            && e.owner != self.name
        {
            return Err(Error::NotOwner { key: key.into(), owner: e.owner.clone() });
        }
        self.write(now, network, table, key, value, false);
        Ok(())
    }

    /// Deletes an entry this node owns (a tombstone that lives
    /// `tombstone_ttl`).
    pub fn delete(
        &mut self,
        now: Duration,
        network: &str,
        table: &str,
        key: &str,
    ) -> Result<(), Error> {
        self.check_entry_args(network, table, key)?;
        let st = self.scopes.get(network).ok_or_else(|| Error::NotJoined(network.into()))?;
        let value = match st.data.get(table, key) {
            Some(e) if e.visible() && e.owner == self.name => e.value.clone(),
            Some(e) if e.visible() => {
                return Err(Error::NotOwner { key: key.into(), owner: e.owner.clone() });
            }
            _ => {
                return Err(Error::NotFound { table: table.into(), key: key.into() });
            }
        };
        self.write(now, network, table, key, value, true);
        Ok(())
    }

    /// Sends a keyring command to every live member (and applies it here);
    /// returns its id for [`Node::key_report`].
    pub fn key_command(&mut self, now: Duration, op: KeyOp) -> Result<u64, Error> {
        if self.left {
            return Err(Error::Left);
        }
        if self.scheduled_keys {
            return Err(Error::ScheduledKeys);
        }
        let ring = self.keyring.as_mut().ok_or(Error::NoKeyring)?;
        let (mine, changed) = keyops::apply(ring, &op);
        if changed {
            self.events.push_back(Event::KeyringChanged);
        }
        self.keyops.next_seq += 1;
        let seq = self.keyops.next_seq;
        let (kind, key, key_id) = keyops::to_wire(&op);
        let msg = wire::KeyQuery {
            origin: self.name.clone(),
            incarnation: self.incarnation,
            seq,
            op: kind,
            key: key.into(),
            key_id: key_id.into(),
            sent_ms: self.wall_ms(now),
        };
        let unreachable: Vec<String> = self
            .owners
            .iter()
            .filter(|(n, o)| **n != self.name && matches!(o.status, Status::Failed { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        let waiting: BTreeMap<String, SocketAddr> = self
            .owners
            .iter()
            .filter(|(n, o)| **n != self.name && o.status == Status::Alive)
            .filter_map(|(n, o)| Some((n.clone(), o.addr?)))
            .collect();
        tracing::info!(op = ?op, members = waiting.len(), "keyring command");
        let mut query = Query {
            msg,
            waiting,
            unreachable,
            replies: BTreeMap::new(),
            deadline: now + self.cfg.key_query_timeout,
            done: false,
        };
        query.replies.insert(self.name.clone(), mine);
        query.done = query.waiting.is_empty();
        self.keyops.queries.insert(seq, query);
        while self.keyops.queries.len() > keyops::MAX_KEPT {
            self.keyops.queries.pop_first();
        }
        self.send_key_query(seq);
        self.schedule(now + self.cfg.key_query_retry, Wake::KeyRetry(seq));
        Ok(seq)
    }

    /// Where a keyring command stands; `None` once forgotten.
    pub fn key_report(&self, seq: u64) -> Option<KeyReport> {
        self.keyops.queries.get(&seq).map(Query::report)
    }

    fn send_key_query(&mut self, seq: u64) {
        let Some(q) = self.keyops.queries.get(&seq) else { return };
        let targets: Vec<SocketAddr> = q.waiting.values().copied().collect();
        let msg = q.msg.clone();
        for to in targets {
            self.send_control(to, wire::datagram::Body::KeyQuery(msg.clone()));
        }
    }

    fn key_retry(&mut self, now: Duration, seq: u64) {
        let Some(q) = self.keyops.queries.get_mut(&seq) else { return };
        if q.done {
            return;
        }
        if now >= q.deadline {
            q.done = true;
            tracing::warn!(missing = ?q.waiting.keys().collect::<Vec<_>>(), "keyring command: members did not answer");
            return;
        }
        self.send_key_query(seq);
        self.schedule(now + self.cfg.key_query_retry, Wake::KeyRetry(seq));
    }

    fn handle_key_query(&mut self, now: Duration, from: SocketAddr, q: wire::KeyQuery) {
        let skew = self.wall_ms(now).abs_diff(q.sent_ms);
        if skew > self.cfg.key_query_max_age.as_millis() as u64 {
            return self.stats.drop(DropReason::Replayed);
        }
        // A plaintext command is never obeyed: only key holders may send one.
        let Some(ring) = self.keyring.as_mut() else {
            return self.stats.drop(DropReason::Plaintext);
        };
        if q.origin == self.name {
            return self.stats.drop(DropReason::FromSelf);
        }
        // Only a member alive in exactly this incarnation may command.
        match self.owners.get(&q.origin) {
            Some(o) if o.incarnation == q.incarnation && o.status == Status::Alive => {}
            _ => return self.stats.drop(DropReason::StaleIncarnation),
        }
        let ack = match self.keyops.seen.get(&q.origin) {
            Some(s) if s.incarnation == q.incarnation && s.seq == q.seq => s.ack.clone(),
            Some(s) if (s.incarnation, s.seq) > (q.incarnation, q.seq) => {
                return self.stats.drop(DropReason::Replayed);
            }
            _ => {
                let Some(op) = keyops::from_wire(&q) else {
                    return self.stats.drop(DropReason::Malformed);
                };
                let (reply, changed) = if self.scheduled_keys {
                    let refused = keyops::KeyReply {
                        result: Err(Error::ScheduledKeys.to_string()),
                        fingerprints: ring.fingerprints(),
                    };
                    (refused, false)
                } else {
                    keyops::apply(ring, &op)
                };
                if changed {
                    tracing::info!(op = ?op, origin = %q.origin, "keyring changed by a cluster command");
                    self.events.push_back(Event::KeyringChanged);
                }
                let ack = wire::KeyAck {
                    origin: q.origin.clone(),
                    incarnation: q.incarnation,
                    seq: q.seq,
                    node: self.name.clone(),
                    ok: reply.result.is_ok(),
                    error: reply.result.err().unwrap_or_default(),
                    fingerprints: reply.fingerprints,
                };
                self.keyops.seen.insert(
                    q.origin.clone(),
                    Seen { incarnation: q.incarnation, seq: q.seq, ack: ack.clone() },
                );
                ack
            }
        };
        // Sealed with the primary after the command: after `use`, every
        // member holds it already (that is what `install` made sure of).
        self.send_control(from, wire::datagram::Body::KeyAck(ack));
    }

    fn handle_key_ack(&mut self, from: SocketAddr, a: wire::KeyAck) {
        if a.origin != self.name || a.incarnation != self.incarnation {
            return self.stats.drop(DropReason::Malformed);
        }
        let Some(q) = self.keyops.queries.get_mut(&a.seq) else {
            return self.stats.drop(DropReason::Replayed);
        };
        if q.waiting.get(&a.node) != Some(&from) {
            return self.stats.drop(DropReason::Replayed);
        }
        q.waiting.remove(&a.node);
        q.replies.insert(a.node.clone(), keyops::reply_from_ack(&a));
        if q.waiting.is_empty() {
            q.done = true;
        }
    }

    /// Writes this node's copy of a shared cluster object (key `id/NAME`
    /// in the cluster table `netdefs` or `ipam`).
    /// Changes of such tables come out as events of network `""`.
    pub fn put_shared(
        &mut self,
        now: Duration,
        table: &str,
        id: &str,
        value: Bytes,
    ) -> Result<(), Error> {
        let key = self.shared_key(table, id)?;
        if value.len() > self.cfg.max_value_len {
            return Err(Error::ValueTooLarge { len: value.len(), max: self.cfg.max_value_len });
        }
        self.write(now, CLUSTER, table, &key, value, false);
        Ok(())
    }

    /// Deletes this node's copy of a shared object; the tombstone keeps the
    /// last value, so peers can read what was removed.
    pub fn delete_shared(&mut self, now: Duration, table: &str, id: &str) -> Result<(), Error> {
        let key = self.shared_key(table, id)?;
        let value = match self.scopes.get(CLUSTER).and_then(|st| st.data.get(table, &key)) {
            Some(e) if e.visible() => e.value.clone(),
            _ => return Err(Error::NotFound { table: table.into(), key }),
        };
        self.write(now, CLUSTER, table, &key, value, true);
        Ok(())
    }

    /// Every copy of a shared cluster table, tombstones and hidden ones
    /// included, in key order.
    pub fn shared_entries(&self, table: &str) -> Vec<(&str, &Entry)> {
        match self.scopes.get(CLUSTER) {
            Some(st) if table != NODES_TABLE && table != NETWORKS_TABLE => {
                st.data.table(table).collect()
            }
            _ => Vec::new(),
        }
    }

    fn shared_key(&self, table: &str, id: &str) -> Result<String, Error> {
        if table != crate::netdefs::NETDEFS_TABLE && table != crate::ipam::IPAM_TABLE {
            return Err(Error::BadName {
                what: "shared table",
                value: table.into(),
                max: self.cfg.max_name_len,
            });
        }
        let key = format!("{id}/{}", self.name);
        if !valid_key(&key, self.cfg.max_key_len) {
            return Err(Error::BadKey { max: self.cfg.max_key_len });
        }
        Ok(key)
    }

    // ----- queries -------------------------------------------------------

    /// A visible entry.
    pub fn get(&self, network: &str, table: &str, key: &str) -> Option<&Entry> {
        self.user_scope(network)?.data.get(table, key).filter(|e| e.visible())
    }

    /// `Ok` if this node joined `network`, else the error to show.
    pub fn check_joined(&self, network: &str) -> Result<(), Error> {
        self.user_scope(network).map(|_| ()).ok_or_else(|| Error::NotJoined(network.into()))
    }

    /// Visible entries of a table, in key order.
    pub fn entries(&self, network: &str, table: &str) -> Vec<(&str, &Entry)> {
        match self.user_scope(network) {
            Some(st) => st.data.table(table).filter(|(_, e)| e.visible()).collect(),
            None => Vec::new(),
        }
    }

    /// Every entry held for a network, tombstones and hidden ones included.
    pub fn raw_entries(&self, network: &str) -> Vec<(&str, &str, &Entry)> {
        self.scopes.get(network).map(|st| st.data.iter().collect()).unwrap_or_default()
    }

    /// Joined networks, in name order.
    pub fn networks(&self) -> Vec<&str> {
        self.scopes.keys().filter(|n| n.as_str() != CLUSTER).map(String::as_str).collect()
    }

    /// Names of the live nodes this node gossips `network` to.
    pub fn network_peers(&self, network: &str) -> Vec<String> {
        self.live_attachments()
            .filter(|(net, _, _)| *net == network)
            .map(|(_, node, _)| node.into())
            .collect()
    }

    /// Other nodes attached to a network that are alive or failed (a failed
    /// one may come back with its endpoints).
    pub fn network_hosts(&self, network: &str) -> Vec<String> {
        let Some(c) = self.scopes.get(CLUSTER) else { return Vec::new() };
        c.data
            .table(NETWORKS_TABLE)
            .filter_map(|(key, e)| {
                let (net, node) = parse_attachment_key(key)?;
                let o = self.owners.get(node)?;
                let here = net == network
                    && node != self.name
                    && !e.deleted
                    && o.incarnation == e.incarnation
                    && matches!(o.status, Status::Alive | Status::Failed { .. });
                here.then(|| node.to_string())
            })
            .collect()
    }

    /// Digest root of a network as this node holds it (entries of live
    /// owners, tombstones included): equal roots mean equal tables.
    pub fn root(&self, network: &str) -> Option<u64> {
        self.scopes.get(network).map(|st| st.data.digest().root())
    }

    /// Every member this node knows, itself included.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out: BTreeMap<String, MemberInfo> = BTreeMap::new();
        for (name, o) in &self.owners {
            let state = match o.status {
                Status::Alive => MemberState::Alive,
                Status::Failed { .. } | Status::Gone => MemberState::Failed,
                Status::Left => MemberState::Left,
            };
            out.insert(
                name.clone(),
                MemberInfo {
                    name: name.clone(),
                    addr: o.addr,
                    incarnation: o.incarnation,
                    generation: 0,
                    state,
                },
            );
        }
        for m in self.swim.iter_membership_state() {
            let id = m.id();
            if let Some(info) = out.get_mut(&id.name)
                && info.incarnation == id.incarnation
            {
                info.generation = id.generation;
                if m.state() == foca::State::Suspect && info.state == MemberState::Alive {
                    info.state = MemberState::Suspect;
                }
            }
        }
        if let Some(me) = out.get_mut(&self.name) {
            me.generation = self.swim.identity().generation;
        }
        out.into_values().collect()
    }

    // ----- inputs --------------------------------------------------------

    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        if bytes.len() > codec::MAX_DATAGRAM {
            return self.stats.drop(DropReason::TooLarge);
        }
        let Some(plain) = self.unseal(bytes) else { return };
        let bytes = &plain[..];
        match codec::decode_datagram(&self.cfg, bytes) {
            Err(r) => self.stats.drop(r),
            Ok(Body::Swim(data)) => {
                self.stats.swim_in.add(bytes.len());
                match self.swim.handle_data(&data, &mut self.rt) {
                    Ok(()) => {}
                    Err(foca::Error::DataFromOurselves) => self.stats.drop(DropReason::FromSelf),
                    Err(_) => self.stats.drop(DropReason::Swim),
                }
                self.drain_swim(now);
            }
            Ok(Body::Gossip(g)) => {
                self.stats.gossip_in.add(bytes.len());
                if !self.scopes.contains_key(&g.network) {
                    self.stats.drop(DropReason::NotMember);
                    return;
                }
                for e in &g.entries {
                    self.apply_remote(now, &g.network, e, Via::Gossip);
                }
                self.compare_root(now, &g.network, g.root, from);
            }
            Ok(Body::KeyQuery(q)) => self.handle_key_query(now, from, q),
            Ok(Body::KeyAck(a)) => self.handle_key_ack(from, a),
        }
    }

    pub fn handle_sync(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        if bytes.len() > self.cfg.max_sync_frame {
            return self.stats.drop(DropReason::TooLarge);
        }
        let Some(plain) = self.unseal(bytes) else { return };
        let m = match codec::decode_sync(&self.cfg, &plain) {
            Ok(m) => m,
            Err(r) => return self.stats.drop(r),
        };
        self.stats.sync_in.add(bytes.len());
        use wire::sync_message::Body as B;
        match m.body {
            Some(B::Request(d)) => self.serve_sync(now, from, m.sync_id, m.network, &d),
            Some(B::Reply(r)) => {
                match self.syncs.get(&m.sync_id) {
                    Some(out) if out.peer == from && out.scope == m.network => {}
                    _ => return self.stats.drop(DropReason::UnexpectedSync),
                }
                self.syncs.remove(&m.sync_id);
                if !self.scopes.contains_key(&m.network) {
                    return self.stats.drop(DropReason::NotMember);
                }
                for e in &r.entries {
                    self.apply_remote(now, &m.network, e, Via::Sync);
                }
                if let Some(st) = self.scopes.get_mut(&m.network) {
                    st.synced = true;
                }
                let theirs = r.digest.as_ref().and_then(codec::parse_digest).unwrap_or_default();
                let differ = self.scopes[&m.network].data.digest().differing(&theirs);
                let entries = self.bucket_entries(now, &m.network, differ);
                let msg = wire::SyncMessage {
                    version: codec::WIRE_VERSION,
                    sync_id: m.sync_id,
                    network: m.network.clone(),
                    body: Some(B::Entries(wire::SyncEntries { entries })),
                };
                self.send_sync(from, m.sync_id, false, msg);
                self.stats.syncs_completed += 1;
            }
            Some(B::Entries(es)) => {
                match self.serving.remove(&(from, m.sync_id)) {
                    Some(scope) if scope == m.network && self.scopes.contains_key(&scope) => {}
                    _ => return self.stats.drop(DropReason::UnexpectedSync),
                }
                for e in &es.entries {
                    self.apply_remote(now, &m.network, e, Via::Sync);
                }
                if let Some(st) = self.scopes.get_mut(&m.network) {
                    st.synced = true;
                }
            }
            Some(B::Refused(_)) => match self.syncs.get(&m.sync_id) {
                Some(out) if out.peer == from => {
                    let scope = out.scope.clone();
                    self.syncs.remove(&m.sync_id);
                    self.sync_failed(&scope);
                }
                _ => self.stats.drop(DropReason::UnexpectedSync),
            },
            None => self.stats.drop(DropReason::Malformed),
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some(Reverse(top)) = self.wakeups.peek() {
            if top.at > now {
                break;
            }
            let Some(Reverse(s)) = self.wakeups.pop() else {
                break;
            };
            match s.wake {
                Wake::Swim(t) => {
                    if !self.left {
                        let _ = self.swim.handle_timer(t, &mut self.rt);
                        self.drain_swim(now);
                    }
                }
                Wake::Gossip => {
                    if self.tick_at == Some(s.at) {
                        self.tick_at = None;
                        self.gossip_tick(now);
                    }
                }
                Wake::Reap { scope, table, key } => self.reap(now, &scope, &table, &key),
                Wake::Grace { name, incarnation } => self.grace_expired(now, &name, incarnation),
                Wake::KeyRetry(seq) => self.key_retry(now, seq),
                Wake::SyncTimeout(id) => {
                    if let Some(out) = self.syncs.remove(&id) {
                        tracing::debug!(peer = %out.peer, network = %out.scope, "push/pull timed out");
                        self.sync_failed(&out.scope);
                    }
                }
                Wake::ServeTimeout(peer, id) => {
                    self.serving.remove(&(peer, id));
                }
                Wake::JoinRetry(token) => {
                    if token == self.join_token && !self.active && !self.left {
                        self.announce(now);
                    }
                }
            }
        }
    }

    // ----- internals: writes and merges ----------------------------------

    fn new_scope(&mut self, now: Duration) -> ScopeState {
        ScopeState {
            data: Scope::default(),
            queue: BroadcastQueue::new(self.cfg.max_queue_len),
            last_root: Digest::default().root(),
            root_changed_at: now,
            mismatch_since: None,
            last_sync_at: None,
            synced: false,
            next_periodic_sync: now
                + self.cfg.sync_interval
                + self.jitter(self.cfg.sync_interval / 4),
            next_digest: now,
            needs_sync: true,
        }
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(self.rng.random_range(0..=ms))
    }

    fn schedule(&mut self, at: Duration, wake: Wake) {
        self.seq += 1;
        self.wakeups.push(Reverse(Scheduled { at, seq: self.seq, wake }));
    }

    fn check_network(&self, network: &str) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        if !valid_name(network, self.cfg.max_name_len) {
            return Err(Error::BadName {
                what: "network",
                value: network.into(),
                max: self.cfg.max_name_len,
            });
        }
        Ok(())
    }

    fn check_entry_args(&self, network: &str, table: &str, key: &str) -> Result<(), Error> {
        self.check_network(network)?;
        if !valid_name(table, self.cfg.max_name_len) {
            return Err(Error::BadName {
                what: "table",
                value: table.into(),
                max: self.cfg.max_name_len,
            });
        }
        if !valid_key(key, self.cfg.max_key_len) {
            return Err(Error::BadKey { max: self.cfg.max_key_len });
        }
        Ok(())
    }

    fn user_scope(&self, network: &str) -> Option<&ScopeState> {
        if network == CLUSTER { None } else { self.scopes.get(network) }
    }

    /// A local write (create, update or tombstone) of an entry this node
    /// owns, stamped with the next Lamport time.
    fn write(
        &mut self,
        now: Duration,
        scope: &str,
        table: &str,
        key: &str,
        value: Bytes,
        deleted: bool,
    ) {
        // The write must beat whatever this key holds (a tombstone of another
        // owner, a hidden entry), or peers would refuse it while we keep it.
        if let Some(old) = self.scopes.get(scope).and_then(|st| st.data.get(table, key)) {
            self.clock.witness(old.ltime);
        }
        let entry = Entry {
            value,
            owner: self.name.clone(),
            incarnation: self.incarnation,
            ltime: self.clock.tick(),
            deleted,
            reap_at: deleted.then(|| now + self.cfg.tombstone_ttl),
            hidden: false,
        };
        self.store(now, scope, table, key, entry, Some(false));
    }

    /// Stores an entry that won the merge; `relay` queues it for gossip
    /// (`Some(relayed)`).
    fn store(
        &mut self,
        now: Duration,
        scope: &str,
        table: &str,
        key: &str,
        entry: Entry,
        relay: Option<bool>,
    ) {
        if let Some(at) = entry.reap_at {
            self.schedule(
                at,
                Wake::Reap { scope: scope.into(), table: table.into(), key: key.into() },
            );
        }
        if let Some(relayed) = relay {
            self.enqueue(now, scope, table, key, &entry, relayed);
        }
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        let after = entry.clone();
        let before = st.data.insert(table, key, entry);
        self.emit_change(scope, table, key, before.as_ref(), Some(&after));
        if scope == CLUSTER {
            self.cluster_entry_changed(now, table, key, &after);
        }
    }

    fn enqueue(
        &mut self,
        now: Duration,
        scope: &str,
        table: &str,
        key: &str,
        e: &Entry,
        relayed: bool,
    ) {
        let n = self.peers_of(scope).len() + 1;
        let limit = self.cfg.transmit_limit(n, relayed);
        let entry = entry_to_wire(table, key, e, now);
        let len = entry.encoded_len();
        let framed_len = 1 + codec::varint_len(len as u64) + len;
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        let dropped = st.queue.push(
            (table.into(), key.into()),
            Queued { entry, reap_at: e.reap_at, framed_len },
            limit,
        );
        self.stats.queue_overflow += dropped as u64;
        self.arm_tick(now);
    }

    /// Merges an entry that came from a peer; returns whether it was news.
    fn apply_remote(&mut self, now: Duration, scope: &str, w: &wire::Entry, via: Via) -> bool {
        // A corrupt or hostile time far ahead would pin every clock at the
        // top, where distinct writes share a version.
        if w.ltime > self.clock.time().saturating_add(MAX_LTIME_JUMP) {
            self.stats.drop(DropReason::BadEntry);
            return false;
        }
        let hidden = match self.admit_owner(scope, w) {
            Ok(hidden) => hidden,
            Err(r) => {
                self.stats.drop(r);
                return false;
            }
        };
        if scope != CLUSTER && self.detached_before(scope, &w.owner, w.incarnation, w.ltime) {
            self.stats.drop(DropReason::DetachedOwner);
            return false;
        }
        self.clock.witness(w.ltime);
        let Some(st) = self.scopes.get(scope) else {
            return false;
        };
        let mut entry = entry_from_wire(w, now, self.cfg.tombstone_ttl);
        entry.hidden = hidden;
        if let Some(old) = st.data.get(&w.table, &w.key)
            && !entry.supersedes(old)
        {
            return false;
        }
        match via {
            Via::Gossip => self.stats.entries_from_gossip += 1,
            Via::Sync => self.stats.entries_from_sync += 1,
        }
        let relay = (via == Via::Gossip && !hidden).then_some(true);
        self.store(now, scope, &w.table, &w.key, entry, relay);
        true
    }

    /// Decides whether entries of this owner are accepted, and whether they
    /// arrive hidden (owner failed). Learning of a newer incarnation removes
    /// the older one's entries.
    fn admit_owner(&mut self, scope: &str, w: &wire::Entry) -> Result<bool, DropReason> {
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
        match self.owners.get(&w.owner) {
            None => {
                self.owners.insert(
                    w.owner.clone(),
                    Owner { incarnation: w.incarnation, status: Status::Alive, addr: None },
                );
                Ok(false)
            }
            Some(o) if w.incarnation < o.incarnation => Err(DropReason::StaleIncarnation),
            Some(o) if w.incarnation > o.incarnation => {
                self.new_incarnation(&w.owner.clone(), w.incarnation, None);
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

    /// True if `owner` (in `incarnation`) had left `network` after writing
    /// at `ltime`: the entry is already superseded by the detach.
    fn detached_before(&self, network: &str, owner: &str, incarnation: u64, ltime: u64) -> bool {
        let Some(cluster) = self.scopes.get(CLUSTER) else {
            return false;
        };
        match cluster.data.get(NETWORKS_TABLE, &attachment_key(network, owner)) {
            Some(a) => a.deleted && a.incarnation == incarnation && a.ltime > ltime,
            None => false,
        }
    }

    /// Side effects of cluster-scope changes: attachments and node records.
    fn cluster_entry_changed(&mut self, now: Duration, table: &str, key: &str, e: &Entry) {
        match table {
            NETWORKS_TABLE => {
                self.net_peers = None;
                if e.deleted
                    && e.owner != self.name
                    && let Some((net, _)) = parse_attachment_key(key)
                {
                    self.detach(now, net, &e.owner.clone(), e.incarnation, e.ltime);
                }
            }
            NODES_TABLE if e.owner != self.name && !e.deleted => {
                let Ok(rec) = wire::NodeRecord::decode(&e.value[..]) else {
                    return;
                };
                let addr = rec.addr.parse().ok();
                if let Some(o) = self.owners.get_mut(&e.owner)
                    && o.incarnation == e.incarnation
                    && addr.is_some()
                {
                    o.addr = addr;
                }
                if rec.left {
                    self.owner_left(&e.owner.clone(), e.incarnation);
                }
            }
            _ => {}
        }
    }

    /// Turns an owner's entries in a network it left into tombstones of the
    /// detach's version, the same way on every node.
    fn detach(&mut self, now: Duration, network: &str, owner: &str, incarnation: u64, ltime: u64) {
        let ttl = self.cfg.tombstone_ttl;
        let Some(st) = self.scopes.get_mut(network) else {
            return;
        };
        let changes = st.data.rewrite(|_, _, e| {
            if e.owner == owner && e.incarnation == incarnation && e.ltime < ltime && !e.deleted {
                Rewrite::Replace(Entry {
                    ltime,
                    deleted: true,
                    reap_at: Some(now + ttl),
                    ..e.clone()
                })
            } else {
                Rewrite::Keep
            }
        });
        for c in &changes {
            self.schedule(
                now + ttl,
                Wake::Reap { scope: network.into(), table: c.table.clone(), key: c.key.clone() },
            );
        }
        self.emit_changes(network, &changes);
    }

    fn reap(&mut self, now: Duration, scope: &str, table: &str, key: &str) {
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        let due = matches!(st.data.get(table, key), Some(e) if e.deleted && e.reap_at.is_some_and(|at| at <= now));
        if due {
            st.data.remove(table, key);
            st.queue.invalidate(&(table.to_string(), key.to_string()));
            if scope == CLUSTER && table == NETWORKS_TABLE {
                self.net_peers = None;
            }
        }
    }

    fn emit_change(
        &mut self,
        scope: &str,
        table: &str,
        key: &str,
        before: Option<&Entry>,
        after: Option<&Entry>,
    ) {
        if scope == CLUSTER && (table == NODES_TABLE || table == NETWORKS_TABLE) {
            return;
        }
        let was = before.is_some_and(Entry::visible);
        let (kind, e) = match (was, after.filter(|e| e.visible())) {
            (false, Some(e)) => (EntryEventKind::Create, e),
            (true, Some(e)) => (EntryEventKind::Update, e),
            (true, None) => match (after, before) {
                (Some(a), _) => (EntryEventKind::Delete, a),
                (None, Some(b)) => (EntryEventKind::Delete, b),
                (None, None) => return,
            },
            (false, None) => return,
        };
        self.events.push_back(entry_event(scope, table, key, e, kind));
    }

    fn emit_changes(&mut self, scope: &str, changes: &[Change]) {
        for c in changes {
            self.emit_change(scope, &c.table, &c.key, c.before.as_ref(), c.after.as_ref());
        }
    }

    /// Applies `f(scope, table, entry)` to the entries of `owner` in every
    /// scope; entries that leave the gossip (removed or hidden) leave the
    /// broadcast queues too.
    fn rewrite_owner(&mut self, owner: &str, f: impl Fn(&str, &str, &Entry) -> Rewrite) {
        let names: Vec<String> = self.scopes.keys().cloned().collect();
        for scope in names {
            let Some(st) = self.scopes.get_mut(&scope) else {
                continue;
            };
            let changes = st
                .data
                .rewrite(|t, _, e| if e.owner == owner { f(&scope, t, e) } else { Rewrite::Keep });
            if changes.is_empty() {
                continue;
            }
            for c in &changes {
                if c.after.as_ref().is_none_or(|e| e.hidden) {
                    st.queue.invalidate(&(c.table.clone(), c.key.clone()));
                }
            }
            self.emit_changes(&scope, &changes);
        }
        self.net_peers = None;
    }

    // ----- internals: owner life cycle ------------------------------------

    fn member_event(&mut self, name: &str, state: MemberState) {
        let addr = self.owners.get(name).and_then(|o| o.addr);
        self.events.push_back(Event::Member { name: name.into(), addr, state });
    }

    /// foca says `id` is up: a new owner, a newer incarnation, or a failed
    /// owner back (its hidden entries become visible again, unchanged).
    fn owner_up(&mut self, id: &Identity) {
        if id.name == self.name || !valid_name(&id.name, self.cfg.max_name_len) {
            return;
        }
        let known = self.owners.get(&id.name).map(|o| (o.incarnation, o.status));
        match known {
            Some((inc, _)) if id.incarnation < inc => return,
            Some((inc, _)) if id.incarnation > inc => {
                self.new_incarnation(&id.name, id.incarnation, Some(id.addr));
            }
            Some((_, Status::Failed { .. })) => {
                let inc = id.incarnation;
                self.rewrite_owner(&id.name, |_, _, e| {
                    if e.incarnation == inc && e.hidden {
                        Rewrite::Replace(Entry { hidden: false, ..e.clone() })
                    } else {
                        Rewrite::Keep
                    }
                });
                // What it changed while away arrives by push/pull, now
                // rather than at the next periodic sync.
                for st in self.scopes.values_mut() {
                    st.needs_sync = true;
                }
            }
            Some((_, Status::Alive)) => {}
            Some((_, Status::Gone | Status::Left)) => {
                // Its entries were removed; push/pull brings back what it
                // still holds.
                if let Some(st) = self.scopes.get_mut(CLUSTER) {
                    st.needs_sync = true;
                }
            }
            None => {}
        }
        let o = self.owners.entry(id.name.clone()).or_insert(Owner {
            incarnation: id.incarnation,
            status: Status::Alive,
            addr: None,
        });
        o.status = Status::Alive;
        o.addr = Some(id.addr);
        self.net_peers = None;
        self.member_event(&id.name, MemberState::Alive);
    }

    fn owner_down(&mut self, now: Duration, id: &Identity) {
        let Some(o) = self.owners.get_mut(&id.name) else {
            return;
        };
        if o.incarnation != id.incarnation || o.status != Status::Alive {
            return;
        }
        o.status = Status::Failed { since: now };
        let inc = id.incarnation;
        self.rewrite_owner(&id.name, |_, _, e| {
            if e.incarnation == inc && !e.hidden {
                Rewrite::Replace(Entry { hidden: true, ..e.clone() })
            } else {
                Rewrite::Keep
            }
        });
        self.schedule(
            now + self.cfg.failed_grace,
            Wake::Grace { name: id.name.clone(), incarnation: inc },
        );
        self.member_event(&id.name, MemberState::Failed);
    }

    fn grace_expired(&mut self, now: Duration, name: &str, incarnation: u64) {
        let Some(o) = self.owners.get_mut(name) else {
            return;
        };
        let expired =
            matches!(o.status, Status::Failed { since } if since + self.cfg.failed_grace <= now);
        if o.incarnation != incarnation || !expired {
            return;
        }
        o.status = Status::Gone;
        self.rewrite_owner(name, |_, _, e| {
            if e.incarnation == incarnation { Rewrite::Remove } else { Rewrite::Keep }
        });
    }

    fn owner_left(&mut self, name: &str, incarnation: u64) {
        let Some(o) = self.owners.get_mut(name) else {
            return;
        };
        if o.incarnation != incarnation || o.status == Status::Left {
            return;
        }
        o.status = Status::Left;
        // The record that says "left" stays, visible and in the digest even
        // if it arrived while the owner looked failed, so late copies of the
        // owner's entries are refused and the news also spreads by push/pull.
        self.rewrite_owner(name, |scope, table, e| {
            if e.incarnation != incarnation {
                Rewrite::Keep
            } else if scope == CLUSTER && table == NODES_TABLE && !e.deleted {
                Rewrite::Replace(Entry { hidden: false, ..e.clone() })
            } else {
                Rewrite::Remove
            }
        });
        self.member_event(name, MemberState::Left);
    }

    /// A newer incarnation of `name` exists: everything the older ones wrote
    /// is gone for good.
    fn new_incarnation(&mut self, name: &str, incarnation: u64, addr: Option<SocketAddr>) {
        let o = self.owners.entry(name.into()).or_insert(Owner {
            incarnation,
            status: Status::Alive,
            addr,
        });
        o.incarnation = incarnation;
        o.status = Status::Alive;
        if addr.is_some() {
            o.addr = addr;
        }
        self.rewrite_owner(name, |_, _, e| {
            if e.incarnation < incarnation { Rewrite::Remove } else { Rewrite::Keep }
        });
    }

    // ----- internals: SWIM -------------------------------------------------

    /// Knocks on the seeds' doors and on a few other nodes this node has
    /// known, then retries with backoff until foca reports us active.
    ///
    /// Known nodes matter after a rejoin: when many nodes renew their SWIM
    /// identity at once (a healed partition), each addresses the others'
    /// old identities, which foca ignores; only an announce is accepted by
    /// address alone, so it is what reconnects them.
    fn announce(&mut self, now: Duration) {
        let mut targets = self.seeds.clone();
        let mut known: Vec<SocketAddr> = self
            .owners
            .iter()
            .filter(|(name, o)| *name != &self.name && o.status != Status::Left)
            .filter_map(|(_, o)| o.addr)
            .filter(|a| !targets.contains(a))
            .collect();
        for i in 0..known.len().min(KNOCK_KNOWN) {
            let j = self.rng.random_range(i..known.len());
            known.swap(i, j);
            targets.push(known[i]);
        }
        for to in targets {
            let _ = self.swim.announce(Identity::placeholder(to), &mut self.rt);
        }
        self.drain_swim(now);
        self.join_token += 1;
        let delay = self.join_delay;
        self.join_delay = (self.join_delay * 2).min(self.cfg.join_retry_max);
        self.schedule(now + delay, Wake::JoinRetry(self.join_token));
    }

    /// (Re)starts the announce loop after a short random delay, so nodes
    /// that lost the cluster together do not knock in lockstep.
    fn start_announcing(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.active = false;
        self.join_delay = self.cfg.join_retry;
        self.join_token += 1;
        let at = now + self.jitter(self.cfg.gossip_interval);
        self.schedule(at, Wake::JoinRetry(self.join_token));
    }

    /// Moves foca's effects out of its runtime: packets to the outbox,
    /// timers to the scheduler, notifications into the owner life cycle.
    fn drain_swim(&mut self, now: Duration) {
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.rt.to_send() {
                progressed = true;
                self.send_control(to.addr, wire::datagram::Body::Swim(data));
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                progressed = true;
                self.schedule(now + after, Wake::Swim(timer));
            }
            while let Some(n) = self.rt.to_notify() {
                progressed = true;
                self.swim_notification(now, n);
            }
            if !progressed {
                break;
            }
        }
        self.arm_tick(now);
    }

    fn swim_notification(&mut self, now: Duration, n: OwnedNotification<Identity>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                self.cluster_peers.insert(id.addr);
                self.owner_up(&id);
                self.resize_swim();
            }
            OwnedNotification::MemberDown(id) => {
                self.cluster_peers.remove(&id.addr);
                self.owner_down(now, &id);
                self.resize_swim();
            }
            OwnedNotification::Rename(old, new) => {
                if old.name != new.name {
                    self.owner_down(now, &old);
                }
                if new.incarnation > old.incarnation || old.name != new.name {
                    self.owner_up(&new);
                }
            }
            OwnedNotification::Active => {
                self.active = true;
                if let Some(st) = self.scopes.get_mut(CLUSTER) {
                    st.needs_sync = true;
                }
            }
            OwnedNotification::Idle => self.start_announcing(now),
            OwnedNotification::Rejoin(id) => {
                tracing::info!(
                    generation = id.generation,
                    "declared down by the cluster; rejoined"
                );
                for st in self.scopes.values_mut() {
                    st.needs_sync = true;
                }
                self.start_announcing(now);
            }
            OwnedNotification::Defunct if self.left => {}
            OwnedNotification::Defunct => {
                tracing::warn!("declared down and could not renew identity");
            }
        }
    }

    /// Keeps foca's retransmissions and suspicion timeout in step with the
    /// cluster size (they grow with log10 n).
    fn resize_swim(&mut self) {
        let n = self.cluster_peers.len() as u32 + 1;
        let params = swim_params(&self.cfg, n);
        if params != self.swim_params {
            self.swim_params = params;
            let _ = self.swim.set_config(swim_config(&self.cfg, n));
        }
    }

    // ----- internals: gossip ----------------------------------------------

    fn peers_of(&mut self, scope: &str) -> &[SocketAddr] {
        if scope == CLUSTER {
            return self.cluster_peers.as_slice();
        }
        if self.net_peers.is_none() {
            self.net_peers = Some(self.compute_net_peers());
        }
        self.net_peers.as_ref().and_then(|m| m.get(scope)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// (network, node, owner) of every other node's live attachment whose
    /// owner is alive in the incarnation that attached.
    fn live_attachments(&self) -> impl Iterator<Item = (&str, &str, &Owner)> {
        self.scopes.get(CLUSTER).into_iter().flat_map(|c| c.data.table(NETWORKS_TABLE)).filter_map(
            |(key, e)| {
                let (net, node) = parse_attachment_key(key)?;
                let o = self.owners.get(node)?;
                (node != self.name
                    && e.visible()
                    && o.status == Status::Alive
                    && o.incarnation == e.incarnation)
                    .then_some((net, node, o))
            },
        )
    }

    fn compute_net_peers(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        let mut map: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        for (net, _, o) in self.live_attachments() {
            if let (Some(a), true) = (o.addr, self.scopes.contains_key(net)) {
                map.entry(net.to_string()).or_default().push(a);
            }
        }
        map
    }

    fn choose_peers(&mut self, scope: &str, k: usize) -> Vec<SocketAddr> {
        let mut peers = self.peers_of(scope).to_vec();
        let k = k.min(peers.len());
        // Partial Fisher-Yates: the first k are a uniform sample.
        for i in 0..k {
            let j = self.rng.random_range(i..peers.len());
            peers.swap(i, j);
        }
        peers.truncate(k);
        peers
    }

    /// Makes sure a gossip tick comes when there is something to do: within
    /// a gossip interval of the last tick while events, SWIM updates or
    /// pending exchanges wait (at once if the node was idle), else at the
    /// next digest or periodic sync. An idle node thus wakes about once a
    /// second instead of five times.
    fn arm_tick(&mut self, now: Duration) {
        let soonest = now.max(self.last_tick.map_or(now, |t| t + self.cfg.gossip_interval));
        if self.tick_at.is_some_and(|t| t <= soonest) {
            return; // nothing could make it earlier
        }
        let pending: Vec<String> = self
            .scopes
            .iter()
            .filter(|(_, st)| !st.queue.is_empty() || st.needs_sync)
            .map(|(name, _)| name.clone())
            .collect();
        // Work without a peer to do it with waits for the idle ticks.
        let busy =
            self.swim.updates_backlog() > 0 || pending.iter().any(|n| !self.peers_of(n).is_empty());
        let at = if busy {
            soonest
        } else {
            let idle =
                self.scopes.values().map(|st| st.next_digest.min(st.next_periodic_sync)).min();
            idle.unwrap_or(now + self.cfg.digest_interval).max(soonest)
        };
        if self.tick_at.is_none_or(|t| at < t) {
            self.tick_at = Some(at);
            self.schedule(at, Wake::Gossip);
        }
    }

    fn gossip_tick(&mut self, now: Duration) {
        self.last_tick = Some(now);
        if self.swim.updates_backlog() > 0 && !self.left {
            // foca's own periodic gossip is off (it woke the node five times
            // a second for nothing); its updates ride our ticks instead.
            let _ = self.swim.gossip(&mut self.rt);
            self.drain_swim(now);
        }
        let names: Vec<String> = self.scopes.keys().cloned().collect();
        for scope in &names {
            self.scope_maintenance(now, scope);
        }
        // Round-robin one packet per scope until the tick's byte budget or
        // every queue is spent, so no network starves another.
        let mut budget = self.cfg.tick_byte_budget;
        let mut sent_any: BTreeMap<&str, bool> = BTreeMap::new();
        loop {
            let mut progressed = false;
            for scope in &names {
                if budget == 0 {
                    break;
                }
                if self.send_packet(now, scope, &mut budget) {
                    progressed = true;
                    sent_any.insert(scope, true);
                }
            }
            if !progressed || budget == 0 {
                break;
            }
        }
        for scope in &names {
            if sent_any.contains_key(scope.as_str()) {
                if let Some(st) = self.scopes.get_mut(scope) {
                    st.next_digest = now + self.cfg.digest_interval;
                }
            } else {
                self.send_digest(now, scope);
            }
        }
        self.arm_tick(now);
    }

    /// Sends everything queued for a scope, ignoring the tick's pacing (used
    /// when leaving).
    fn gossip_scope(&mut self, now: Duration, scope: &str, budget: &mut usize) {
        while self.send_packet(now, scope, budget) {}
    }

    /// Periodic and pending push/pull for one scope.
    fn scope_maintenance(&mut self, now: Duration, scope: &str) {
        let busy = self.syncs.values().any(|o| o.scope == scope);
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        let due = now >= st.next_periodic_sync;
        if due {
            st.next_periodic_sync = now + self.cfg.sync_interval;
        }
        if self.left || busy || !(due || st.needs_sync) || self.peers_of(scope).is_empty() {
            return;
        }
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        st.needs_sync = false;
        if let Some(peer) = self.choose_peers(scope, 1).pop() {
            self.start_sync(now, scope, peer);
        }
    }

    /// Builds and sends one packet of queued events; false if nothing left
    /// to send or no peer to send to.
    fn send_packet(&mut self, now: Duration, scope: &str, budget: &mut usize) -> bool {
        if self.scopes.get(scope).is_none_or(|st| st.queue.is_empty()) {
            return false;
        }
        let peers = self.choose_peers(scope, self.cfg.gossip_fanout);
        if peers.is_empty() {
            return false;
        }
        let Some(st) = self.scopes.get_mut(scope) else {
            return false;
        };
        let root = st.data.digest().root();
        let header =
            wire::Gossip { network: scope.into(), root, entries: Vec::new() }.encoded_len();
        // The datagram wrapper's length prefix takes at most 3 bytes here.
        let avail = self.cfg.packet_budget.saturating_sub(
            header + codec::datagram_overhead(self.cfg.packet_budget) + SEAL_OVERHEAD,
        );
        let (ids, took) = st.queue.take(avail, |q| q.framed_len);
        self.stats.queue_oversized += took.oversized as u64;
        if ids.is_empty() {
            return false;
        }
        let entries = ids
            .iter()
            .filter_map(|&id| st.queue.get(id))
            .map(|q| wire::Entry {
                reap_in_ms: codec::residual_ms(q.reap_at, now),
                ..q.entry.clone()
            })
            .collect();
        st.queue.sent(&ids);
        let payload =
            self.seal(codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
                network: scope.into(),
                root,
                entries,
            })));
        debug_assert!(payload.len() <= self.cfg.packet_budget, "{} > budget", payload.len());
        for to in peers {
            *budget = budget.saturating_sub(payload.len());
            self.stats.gossip_out.add(payload.len());
            self.outbox.push_back(Transmit::Datagram { to, payload: payload.clone() });
        }
        true
    }

    /// With nothing queued, a scope still tells one random peer its digest
    /// every `digest_interval`, so divergence is noticed within seconds.
    fn send_digest(&mut self, now: Duration, scope: &str) {
        let Some(st) = self.scopes.get(scope) else {
            return;
        };
        // Digests due before the next tick go now, so scopes share wake-ups.
        if now + self.cfg.gossip_interval / 2 < st.next_digest {
            return;
        }
        let root = st.data.digest().root();
        if let Some(st) = self.scopes.get_mut(scope) {
            st.next_digest = now + self.cfg.digest_interval;
        }
        let Some(to) = self.choose_peers(scope, 1).pop() else {
            return;
        };
        let payload =
            self.seal(codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
                network: scope.into(),
                root,
                entries: Vec::new(),
            })));
        self.stats.gossip_out.add(payload.len());
        self.outbox.push_back(Transmit::Datagram { to, payload });
    }

    /// A peer's digest differs from ours: once the difference has outlived
    /// the updates in flight, push/pull with that peer.
    fn compare_root(&mut self, now: Duration, scope: &str, theirs: u64, from: SocketAddr) {
        let delay = self.cfg.mismatch_sync_after;
        let busy = self.syncs.values().any(|o| o.scope == scope);
        let Some(st) = self.scopes.get_mut(scope) else {
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
        if busy || recent || now.saturating_sub(since) < delay || !(settled || long) {
            return;
        }
        self.start_sync(now, scope, from);
    }

    // ----- internals: push/pull ----------------------------------------------

    fn start_sync(&mut self, now: Duration, scope: &str, peer: SocketAddr) {
        let Some(st) = self.scopes.get_mut(scope) else {
            return;
        };
        st.last_sync_at = Some(now);
        st.mismatch_since = None;
        let digest = st.data.digest().to_bytes();
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        self.syncs.insert(id, Outgoing { scope: scope.into(), peer });
        self.stats.syncs_started += 1;
        let msg = wire::SyncMessage {
            version: codec::WIRE_VERSION,
            sync_id: id,
            network: scope.into(),
            body: Some(wire::sync_message::Body::Request(wire::Digest { buckets: digest.into() })),
        };
        self.send_sync(peer, id, true, msg);
        self.schedule(now + self.cfg.sync_timeout, Wake::SyncTimeout(id));
    }

    fn sync_failed(&mut self, scope: &str) {
        self.stats.syncs_failed += 1;
        if let Some(st) = self.scopes.get_mut(scope) {
            st.needs_sync = true;
        }
    }

    /// Seals an outgoing message when keys are set.
    fn seal(&mut self, plain: Vec<u8>) -> Vec<u8> {
        match &self.keyring {
            Some(k) => {
                let mut nonce = [0u8; 12];
                self.rng.fill(&mut nonce);
                k.seal(nonce, &plain)
            }
            None => plain,
        }
    }

    /// Opens an incoming message when keys are set; counts the drop and
    /// returns None if it is plaintext, under an unknown key, or forged.
    fn unseal<'a>(&mut self, bytes: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        match &self.keyring {
            Some(k) => match k.open(bytes) {
                Ok(plain) => Some(std::borrow::Cow::Owned(plain)),
                Err(r) => {
                    self.stats.drop(r);
                    None
                }
            },
            None => Some(std::borrow::Cow::Borrowed(bytes)),
        }
    }

    /// A membership or keyring datagram (counted with SWIM's traffic).
    fn send_control(&mut self, to: SocketAddr, body: wire::datagram::Body) {
        let payload = self.seal(codec::encode_datagram(body));
        self.stats.swim_out.add(payload.len());
        self.outbox.push_back(Transmit::Datagram { to, payload });
    }

    fn send_sync(&mut self, to: SocketAddr, sync_id: u64, opens: bool, msg: wire::SyncMessage) {
        let payload = self.seal(msg.encode_to_vec());
        self.stats.sync_out.add(payload.len());
        self.outbox.push_back(Transmit::Sync { to, sync_id, opens, payload });
    }

    fn serve_sync(
        &mut self,
        now: Duration,
        from: SocketAddr,
        id: u64,
        scope: String,
        d: &wire::Digest,
    ) {
        use wire::sync_message::Body as B;
        let body = match (self.scopes.get(&scope), codec::parse_digest(d)) {
            (Some(st), Some(theirs)) if self.serving.len() < MAX_SERVING => {
                let mine = st.data.digest().clone();
                let entries = self.bucket_entries(now, &scope, mine.differing(&theirs));
                self.serving.insert((from, id), scope.clone());
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
            network: scope,
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
        scope: &str,
        buckets: BucketSet,
    ) -> Vec<wire::Entry> {
        let mut out = Vec::new();
        if buckets.is_empty() {
            return out;
        }
        let start = self.rng.random_range(0..=u8::MAX);
        let limit = self.cfg.max_sync_frame.saturating_sub(DIGEST_SLACK);
        let Some(st) = self.scopes.get(scope) else {
            return out;
        };
        let mut by_bucket: Vec<Vec<wire::Entry>> = vec![Vec::new(); crate::digest::BUCKETS];
        for (table, key, e) in st.data.iter() {
            let b = bucket_of(table, key);
            if !e.hidden && buckets.contains(b) {
                by_bucket[usize::from(b)].push(entry_to_wire(table, key, e, now));
            }
        }
        let mut size = 0;
        for i in 0..crate::digest::BUCKETS {
            let bucket =
                std::mem::take(&mut by_bucket[(usize::from(start) + i) % crate::digest::BUCKETS]);
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

/// Largest step ahead of the local clock an entry's time may take (about a
/// trillion writes): far beyond any real cluster, far below the top.
const MAX_LTIME_JUMP: u64 = 1 << 40;

fn is_leave_record(scope: &str, w: &wire::Entry) -> bool {
    scope == CLUSTER
        && w.table == NODES_TABLE
        && !w.deleted
        && wire::NodeRecord::decode(&w.value[..]).is_ok_and(|r| r.left)
}

/// Room left in a sync frame for its header and digest.
const DIGEST_SLACK: usize = crate::digest::DIGEST_BYTES + 256;

fn entry_event(network: &str, table: &str, key: &str, e: &Entry, kind: EntryEventKind) -> Event {
    Event::Entry {
        network: network.into(),
        table: table.into(),
        key: key.into(),
        kind,
        owner: e.owner.clone(),
        value: e.value.clone(),
    }
}

/// foca's retransmissions and suspicion timeout for a cluster of `n`:
/// updates go out as often as table events (`retransmit_mult ×
/// ceil(log10(n+1))`; foca's own default gives a single transmission to
/// small clusters, which left some nodes unaware of a failure for many
/// seconds), suspicion lasts `suspicion_mult × max(1, log10 n)` probes.
fn swim_params(cfg: &Config, n: u32) -> (u8, Duration) {
    let tx = cfg.transmit_limit(n as usize, false).clamp(1, u32::from(u8::MAX)) as u8;
    let scale = f64::from(n.max(1)).log10().max(1.0);
    (tx, cfg.probe_period.mul_f64(cfg.suspicion_mult * scale))
}

fn swim_config(cfg: &Config, cluster_size: u32) -> foca::Config {
    let n = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut c = foca::Config::new_lan(n);
    c.probe_period = cfg.probe_period;
    c.probe_rtt = cfg.probe_rtt;
    let (tx, suspicion) = swim_params(cfg, n.get());
    c.max_transmissions = NonZeroU8::new(tx).unwrap_or(NonZeroU8::MIN);
    c.suspect_to_down_after = suspicion;
    // NetworkDB retries failed nodes every second; foca's default (65 s)
    // would leave a healed partition split for minutes.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: cfg.reconnect_interval,
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_gossip = None;
    // foca's packet rides inside a Datagram: leave room for its framing.
    let room = cfg
        .packet_budget
        .saturating_sub(codec::datagram_overhead(cfg.packet_budget) + SEAL_OVERHEAD);
    c.max_packet_size = NonZeroUsize::new(room.max(256)).unwrap_or(NonZeroUsize::MIN);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ttl: Duration) -> Node {
        let cfg = Config { tombstone_ttl: ttl, ..Config::default() };
        Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO).unwrap()
    }

    fn gossip(network: &str, entries: Vec<wire::Entry>) -> Vec<u8> {
        codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: network.into(),
            root: 0,
            entries,
        }))
    }

    fn peer_entry(table: &str, key: &str, value: Bytes, ltime: u64, deleted: bool) -> wire::Entry {
        wire::Entry {
            table: table.into(),
            key: key.into(),
            value,
            owner: "peer".into(),
            incarnation: 1,
            ltime,
            deleted,
            reap_in_ms: if deleted { 60_000 } else { 0 },
        }
    }

    const PEER: &str = "127.0.0.2:7946";

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

    #[test]
    fn commands_validate_their_arguments() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::ZERO;
        assert!(matches!(n.join_network(t, "bad/name"), Err(Error::BadName { .. })));
        assert!(matches!(n.join_network(t, ""), Err(Error::BadName { .. })));
        assert_eq!(n.put(t, "net", "t", "k", Bytes::new()), Err(Error::NotJoined("net".into())));
        n.join_network(t, "net").unwrap();
        assert!(matches!(n.put(t, "net", "t", "", Bytes::new()), Err(Error::BadKey { .. })));
        let big = Bytes::from(vec![0u8; n.config().max_value_len + 1]);
        assert!(matches!(n.put(t, "net", "t", "k", big), Err(Error::ValueTooLarge { .. })));
        assert!(matches!(n.delete(t, "net", "t", "nope"), Err(Error::NotFound { .. })));
        n.leave(t);
        assert_eq!(n.put(t, "net", "t", "k", Bytes::new()), Err(Error::Left));
    }

    #[test]
    fn gossip_packets_never_exceed_the_budget() {
        let mut n = node(Duration::from_secs(60));
        let t = Duration::ZERO;
        n.join_network(t, "net").unwrap();
        // A peer attached to the network, so there is someone to send to.
        let attach = peer_entry(NETWORKS_TABLE, "net/peer", Bytes::new(), 1, false);
        let record = wire::NodeRecord { addr: PEER.into(), left: false };
        let rec = peer_entry(NODES_TABLE, "peer", record.encode_to_vec().into(), 2, false);
        n.handle_datagram(t, PEER.parse().unwrap(), &gossip(CLUSTER, vec![attach, rec]));
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
