//! The node: one deterministic state machine per agent.
//!
//! # Contract
//! Every input comes with the current time, `now`: a `Duration` since any
//! fixed origin, the same origin for the node's whole life, and never
//! smaller than the `now` of an earlier call. The inputs are:
//! - [`Node::handle_datagram`]: a UDP datagram arrived;
//! - [`Node::handle_sync`]: a push/pull frame arrived on a stream;
//! - [`Node::handle_timeout`]: the time [`Node::poll_timeout`] named came;
//! - commands ([`Node::join`], [`Node::put`], ...), from the local user.
//!
//! After every input the shell drains the outputs: [`Node::poll_transmit`]
//! until `None` (packets and frames to send), [`Node::poll_event`] until
//! `None` (changes to act on), then asks [`Node::poll_timeout`] when to
//! call back. Nothing here reads a clock, opens a socket or uses a global
//! RNG, so the simulator runs a thousand nodes reproducibly from a seed.
//!
//! # Where things are
//! This file holds the state, the inputs and the queries; the behaviour is
//! split by concern: `commands` (what the local user asks), `merge` (writes,
//! merges, tombstones), `cluster` (the cluster scope's tables and their side
//! effects), `owners` (each owner's life: up, failed, gone, left),
//! `swim` (foca glue), `gossip` (ticks, fan-out, digests), `sync`
//! (push/pull), `keys` (keyring commands, routed to [`KeyCommands`]) and
//! `send` (sealing and the outbox).

mod cluster;
mod commands;
mod gossip;
mod keys;
mod merge;
mod owners;
#[cfg(feature = "sim")]
mod preload;
mod scope;
mod send;
mod suspicion;
mod swim;
mod sync;
#[cfg(test)]
mod test_support;
mod timers;
mod tree;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Timer};
use netdb_wire as wire;
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::clock::LamportClock;
use crate::codec::{self, Body, EntryRef};
use crate::config::Config;
use crate::error::Error;
use crate::event::{Event, Transmit};
use crate::keyops::KeyCommands;
use crate::keyring::Keyring;
use crate::membership::{Identity, MemberInfo, MemberState, Owner, PeerSet, Status, Swim};
use crate::names::{NODES_TABLE, Scope, ScopeId, valid_name};
use crate::stats::{DropReason, Stats};
use crate::table::Entry;
use crate::wireref;

use merge::{Merged, Via};
use scope::ScopeState;
pub use scope::{ScopeStats, SyncCounts};
use sync::{Outgoing, Serving};
use timers::{Timers, Wake};

/// Room an empty event queue keeps.
const IDLE_EVENTS: usize = 64;

/// One member of a netdb cluster, without I/O: see the module's contract.
pub struct Node {
    cfg: Config,
    name: String,
    incarnation: u64,
    addr: SocketAddr,
    clock: LamportClock,
    rng: StdRng,
    swim: Swim,
    rt: AccumulatingRuntime<Identity>,
    timers: Timers,
    /// The cluster scope: every member holds it.
    cluster: ScopeState,
    /// Joined user networks, by name.
    /// Keyed by shared names: entry events carry them.
    networks: BTreeMap<Arc<str>, ScopeState>,
    /// Keyed by the name foca's identity of the member holds, shared.
    owners: BTreeMap<Arc<str>, Owner>,
    cluster_peers: PeerSet,
    net_peers: Option<BTreeMap<String, PeerSet>>,
    /// foca's cluster-size dependent settings in force.
    swim_params: (u8, Duration),
    /// This node renewed its identity: the suspicions foca still holds lost
    /// their timeouts and wait to be given new ones (see `swim::rearm`).
    rearm_suspects: bool,
    /// foca's announce to down members and its period, held while no
    /// member is down.
    announce_down_parked: Option<(Duration, Timer<Identity>)>,
    suspicions: suspicion::Suspicions,
    syncs: BTreeMap<u64, Outgoing>,
    next_sync_id: u64,
    serving: BTreeMap<(SocketAddr, u64), Serving>,
    seeds: Vec<SocketAddr>,
    join_delay: Duration,
    /// Invalidates older announce retries when the loop restarts.
    join_token: u64,
    /// When the last gossip tick ran (ticks are at least a gossip interval
    /// apart; the next one is `timers.tick()`).
    last_tick: Option<Duration>,
    /// A `Wake::News` is in the scheduler.
    news_due: bool,
    active: bool,
    left: bool,
    outbox: VecDeque<Transmit>,
    /// Room for the entries of the next gossip datagram read
    /// (`wireref::emptied`).
    entry_room: Vec<EntryRef<'static>>,
    events: VecDeque<Event>,
    stats: Stats,
    keyring: Option<Keyring>,
    keyops: KeyCommands,
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
        Node::restarted(cfg, name, incarnation, 0, addr, seed, now)
    }

    /// A node that resumes an earlier life of `incarnation` whose state it
    /// kept (its entries held by peers stay valid), in `generation`: larger
    /// than any generation that life reached, so peers take the new
    /// process for the renewed identity of the old one and change nothing
    /// of its entries (foca ignores an identity it already knows).
    pub fn restarted(
        cfg: Config,
        name: &str,
        incarnation: u64,
        generation: u32,
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
        let identity = Identity { name: name.into(), incarnation, generation, addr };
        let swim_rng = StdRng::seed_from_u64(rng.random());
        let swim = Swim::new(identity, swim::swim_config(&cfg, 1), swim_rng, foca::PostcardCodec);
        let cluster = ScopeState::new(&cfg, now, &mut rng);
        let mut node = Node {
            name: name.into(),
            incarnation,
            addr,
            clock: LamportClock::default(),
            rng,
            swim,
            rt: AccumulatingRuntime::new(),
            timers: Timers::default(),
            cluster,
            networks: BTreeMap::new(),
            owners: BTreeMap::new(),
            cluster_peers: PeerSet::default(),
            net_peers: None,
            swim_params: swim::swim_params(&cfg, 1),
            rearm_suspects: false,
            announce_down_parked: None,
            suspicions: suspicion::Suspicions::default(),
            syncs: BTreeMap::new(),
            next_sync_id: 1,
            serving: BTreeMap::new(),
            seeds: Vec::new(),
            join_delay: cfg.join_retry,
            join_token: 0,
            last_tick: None,
            news_due: false,
            active: false,
            left: false,
            outbox: VecDeque::new(),
            entry_room: Vec::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            keyring: None,
            keyops: KeyCommands::default(),
            scheduled_keys: false,
            wall_origin_ms: 0,
            cfg,
        };
        node.owners.insert(node.name.as_str().into(), Owner::new(incarnation, Some(addr)));
        let record = cluster::node_record(addr, false);
        let me = node.name.clone();
        node.write(now, Scope::Cluster, NODES_TABLE, &me, record.encode_to_vec().into(), false);
        node.drain_swim(now);
        Ok(node)
    }

    // ----- settings the shell gives -------------------------------------

    /// Moves the clock forward to at least `t`: a restarted node resumes
    /// from the time it saved, so its new writes never look older than
    /// those of its previous life.
    pub fn witness_clock(&mut self, t: u64) {
        self.clock.witness(t);
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

    /// Marks the keyring as derived from a cluster secret (the shell
    /// replaces it every epoch); keyring commands are then refused.
    pub fn set_scheduled_keys(&mut self, on: bool) {
        self.scheduled_keys = on;
    }

    /// Counts a drop the shell saw before the core could (a stream frame
    /// over the size limit, a connection that sent garbage framing).
    pub fn record_drop(&mut self, reason: DropReason) {
        self.stats.drop(reason);
    }

    // ----- outputs -------------------------------------------------------

    /// The next packet or frame to send; call until `None` after every
    /// input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event; call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() && self.events.capacity() > IDLE_EVENTS {
            // A join into a large cluster queues an event per member; the
            // queue would keep that room for the node's whole life.
            self.events.shrink_to(IDLE_EVENTS);
        }
        e
    }

    /// The time at which [`Node::handle_timeout`] must be called next;
    /// `None` when nothing is scheduled. Ask again after every input: an
    /// input may bring the time forward.
    pub fn poll_timeout(&self) -> Option<Duration> {
        // The probe timeout of a probe already answered waits on nothing
        // (it runs at the next wake-up): at rest a third of the wake-ups
        // were for it.
        self.timers.next(!self.swim.probe_answered())
    }

    // ----- inputs --------------------------------------------------------

    /// A UDP datagram from `from`. Anything that does not open, decode or
    /// validate is counted in [`Stats`] by reason and changes nothing; a
    /// gossip entry that breaks the entry rules is counted and skipped, and
    /// the others of its datagram are merged.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        if bytes.len() > codec::MAX_DATAGRAM {
            return self.stats.drop(DropReason::TooLarge);
        }
        let Some(plain) = self.unseal(bytes) else { return };
        self.suspicions.heard_from(from);
        let bytes = &plain[..];
        match codec::decode_datagram(&self.cfg, bytes, std::mem::take(&mut self.entry_room)) {
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
                let scope = Scope::from_wire(g.network);
                if self.scope(scope).is_none() {
                    return self.stats.drop(DropReason::NotMember);
                }
                let (mut news, mut copies) = (false, false);
                for e in &g.entries {
                    match self.apply_remote(now, scope, e, Via::Gossip(from)) {
                        Merged::News => news = true,
                        Merged::Copy => copies = true,
                        Merged::Nothing => {}
                    }
                }
                self.tree_received(now, scope, from, news, copies);
                self.compare_root(now, scope, g.root, from, g.entries.is_empty());
                self.entry_room = wireref::emptied(g.entries);
            }
            Ok(Body::KeyQuery(q)) => self.handle_key_query(now, from, q),
            Ok(Body::KeyAck(a)) => self.handle_key_ack(now, from, a),
            Ok(Body::Tree(t)) => {
                self.stats.gossip_in.add(bytes.len());
                self.handle_tree(now, from, t);
            }
        }
    }

    /// A push/pull frame from `from`, on the stream of the exchange it
    /// names. Frames of no open exchange are counted and dropped.
    pub fn handle_sync(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        if bytes.len() > self.cfg.max_sync_frame {
            return self.stats.drop(DropReason::TooLarge);
        }
        let Some(plain) = self.unseal(bytes) else { return };
        match codec::decode_sync(&self.cfg, &plain) {
            Ok(m) => {
                self.stats.sync_in.add(bytes.len());
                self.sync_message(now, from, m);
            }
            Err(r) => self.stats.drop(r),
        }
    }

    /// The shell could not carry push/pull exchange `sync_id` (connect
    /// failed, stream broke, as `why` says): fail it now instead of at its
    /// timeout.
    pub fn abort_sync(&mut self, sync_id: u64, why: &str) {
        if let Some(out) = self.syncs.remove(&sync_id) {
            self.sync_failed(&out, why);
        }
    }

    /// Runs everything due at `now`; call at (or after) the time
    /// [`Node::poll_timeout`] named.
    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some((at, wake)) = self.timers.pop_due(now) {
            match wake {
                Wake::Swim(t) => self.swim_timer(now, at, t, true),
                Wake::SwimLate(t) => self.swim_timer(now, at, t, false),
                Wake::DownHold(id) => self.down_hold_ended(now, &id),
                Wake::Gossip => self.gossip_tick(now),
                Wake::News => {
                    self.news_due = false;
                    self.send_news(now);
                }
                Wake::Reap { scope, table, key } => {
                    self.reap(now, scope.as_scope(), &table, &key);
                }
                Wake::Grace { name, incarnation } => self.grace_expired(now, &name, incarnation),
                Wake::KeyRetry(seq) => self.key_retry(now, seq),
                Wake::SyncTimeout(id) => {
                    if let Some(out) = self.syncs.remove(&id) {
                        self.sync_failed(&out, "timed out");
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

    // ----- queries -------------------------------------------------------

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The incarnation this node runs in.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The Lamport time of this node's latest write or observation.
    pub fn ltime(&self) -> u64 {
        self.clock.time()
    }

    /// The settings this node runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters about this node's traffic, exchanges and drops.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The keys this node seals with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// True once some member of the cluster has heard of this node.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// True once [`Node::leave`] ran.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Events waiting in each scope's broadcast queue.
    pub fn queue_lengths(&self) -> Vec<(Scope<'_>, usize)> {
        self.scopes().map(|(s, st)| (s, st.queue.len())).collect()
    }

    /// A visible entry.
    pub fn get(&self, network: &str, table: &str, key: &str) -> Option<&Entry> {
        self.networks.get(network)?.data.get(table, key).filter(|e| e.visible())
    }

    /// `Ok` if this node joined `network`, else the error to show.
    pub fn check_joined(&self, network: &str) -> Result<(), Error> {
        self.networks.get(network).map(|_| ()).ok_or_else(|| Error::NotJoined(network.into()))
    }

    /// Visible entries of a table, in key order.
    pub fn entries(&self, network: &str, table: &str) -> Vec<(&str, &Entry)> {
        match self.networks.get(network) {
            Some(st) => st.data.table(table).filter(|(_, e)| e.visible()).collect(),
            None => Vec::new(),
        }
    }

    /// Every entry held for a network, tombstones and hidden ones included.
    pub fn raw_entries(&self, network: &str) -> Vec<(&str, &str, &Entry)> {
        self.networks.get(network).map(|st| st.data.iter().collect()).unwrap_or_default()
    }

    /// Joined networks, in name order.
    pub fn networks(&self) -> Vec<&str> {
        self.networks.keys().map(|n| &**n).collect()
    }

    /// Digest root of a scope as this node holds it (entries of live
    /// owners, tombstones included): equal roots mean equal tables. `None`
    /// for a network this node did not join.
    pub fn root(&self, scope: Scope<'_>) -> Option<u64> {
        self.scope(scope).map(|st| st.data.digest().root())
    }

    /// What a scope holds and how its anti-entropy goes; `None` for a
    /// network this node did not join.
    pub fn scope_stats(&self, scope: Scope<'_>) -> Option<ScopeStats> {
        self.scope(scope).map(ScopeState::stats)
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
            let version = self
                .cluster
                .data
                .get(NODES_TABLE, name)
                .filter(|e| e.incarnation == o.incarnation)
                .and_then(|e| wire::NodeRecord::decode(&e.value[..]).ok())
                .map(|r| r.version)
                .unwrap_or_default();
            let info = MemberInfo {
                name: name.to_string(),
                addr: o.addr,
                incarnation: o.incarnation,
                generation: 0,
                state,
                version,
            };
            out.insert(name.to_string(), info);
        }
        for m in self.swim.iter_membership_state() {
            let id = m.id();
            if let Some(info) = out.get_mut(&*id.name)
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

    // ----- scopes --------------------------------------------------------

    fn scope(&self, scope: Scope<'_>) -> Option<&ScopeState> {
        match scope {
            Scope::Cluster => Some(&self.cluster),
            Scope::Network(n) => self.networks.get(n),
        }
    }

    fn scope_mut(&mut self, scope: Scope<'_>) -> Option<&mut ScopeState> {
        match scope {
            Scope::Cluster => Some(&mut self.cluster),
            Scope::Network(n) => self.networks.get_mut(n),
        }
    }

    /// Every scope, the cluster first, then the networks in name order.
    fn scopes(&self) -> impl Iterator<Item = (Scope<'_>, &ScopeState)> {
        std::iter::once((Scope::Cluster, &self.cluster))
            .chain(self.networks.iter().map(|(n, st)| (Scope::Network(n), st)))
    }

    fn scopes_mut(&mut self) -> impl Iterator<Item = &mut ScopeState> {
        std::iter::once(&mut self.cluster).chain(self.networks.values_mut())
    }

    /// Owned names of every scope, for loops that change the node.
    fn scope_ids(&self) -> Vec<ScopeId> {
        self.scopes().map(|(s, _)| s.to_id()).collect()
    }

    fn schedule(&mut self, at: Duration, wake: Wake) {
        self.timers.schedule(at, wake);
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        scope::jitter(&mut self.rng, max)
    }
}
