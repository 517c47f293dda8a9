//! Deterministic simulator: many `Node`s in one process on a virtual
//! network with latency, jitter (so reordering), loss, duplication and
//! partitions, driven by virtual time. Everything random comes from one
//! seeded RNG, so a seed reproduces a run bit for bit; `fingerprint` makes
//! that checkable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::Config;
use crate::event::{Event, Transmit};
use crate::hash::Hasher;
use crate::names::Scope;
use crate::node::Node;

/// The default `Config` with the protocol switches an example's command
/// line gives (`--relay-mult K`, `--quench K`, `--fanout K`, `--news-fanout K`,
/// `--mismatch-ms MS`, `--tree`, `--graft-after-ms MS`, `--lazy-fanout K`,
/// `--random-probes`, `--no-heard-probes`), and the other arguments in
/// their order, so every example compares the same variants the same way.
pub fn config_from_args(args: impl IntoIterator<Item = String>) -> (Config, Vec<String>) {
    let mut cfg = Config::default();
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--relay-mult" => {
                cfg.relay_mult = args.next().and_then(|s| s.parse().ok()).unwrap_or(cfg.relay_mult)
            }
            "--tree" => cfg.push_tree = true,
            "--no-early-news" => cfg.early_news = false,
            "--mismatch-ms" => {
                if let Some(ms) = args.next().and_then(|s| s.parse().ok()) {
                    cfg.mismatch_sync_after = Duration::from_millis(ms);
                }
            }
            "--quench" => {
                cfg.quench_after =
                    args.next().and_then(|s| s.parse().ok()).unwrap_or(cfg.quench_after)
            }
            "--fanout" => {
                cfg.gossip_fanout =
                    args.next().and_then(|s| s.parse().ok()).unwrap_or(cfg.gossip_fanout)
            }
            "--news-fanout" => {
                cfg.early_news_fanout =
                    args.next().and_then(|s| s.parse().ok()).unwrap_or(cfg.early_news_fanout)
            }
            "--random-probes" => cfg.ring_probes = false,
            "--no-heard-probes" => cfg.probe_heard_suspects = false,
            "--lazy-fanout" => {
                cfg.tree_lazy_fanout =
                    args.next().and_then(|s| s.parse().ok()).unwrap_or(cfg.tree_lazy_fanout)
            }
            "--graft-after-ms" => {
                if let Some(ms) = args.next().and_then(|s| s.parse().ok()) {
                    cfg.tree_graft_after = Duration::from_millis(ms);
                }
            }
            _ => rest.push(a),
        }
    }
    (cfg, rest)
}

/// How the virtual network treats packets. Push/pull frames ride a
/// reliable stream: never lost or duplicated, but cut by partitions.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// One-way delay of every packet.
    pub latency: Duration,
    /// Extra random delay in [0, jitter]; packets overtake each other.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

struct Host {
    name: String,
    addr: SocketAddr,
    node: Option<Node>,
    paused: bool,
    /// Stalled (a loop starved of CPU): what arrived meanwhile, in order.
    stalled: Option<Vec<Flight>>,
    incarnation: u64,
    /// Restarts that kept the incarnation.
    generation: u32,
    /// The wake-up currently in the timer heap for this host.
    scheduled: Option<Duration>,
    /// Times its timers woke it (a real agent's thread wake-ups, less
    /// those for datagrams).
    timer_wakeups: u64,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Payload {
    Datagram(bytes::Bytes),
    Sync(Vec<u8>),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: Duration,
    seq: u64,
    from: usize,
    to: usize,
    payload: Payload,
}

/// Counters of the virtual network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams and frames sent.
    pub sent: u64,
    /// Delivered.
    pub delivered: u64,
    /// Lost to the configured loss rate.
    pub lost: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Dropped by a partition.
    pub partitioned: u64,
    /// Arrived at a crashed or paused host.
    pub unreachable: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Largest datagram sent.
    pub max_datagram: usize,
}

/// A virtual network of hosts, each running a [`Node`], driven by one
/// virtual clock and one seed: the same seed gives the same run.
pub struct Sim {
    /// The settings every node starts with.
    pub cfg: Config,
    /// How the network treats packets.
    pub net: NetConfig,
    seed: u64,
    now: Duration,
    rng: StdRng,
    hosts: Vec<Host>,
    by_addr: HashMap<SocketAddr, usize>,
    flights: BinaryHeap<Reverse<Flight>>,
    timers: BinaryHeap<Reverse<(Duration, usize)>>,
    seq: u64,
    groups: Option<Vec<u32>>,
    stats: NetStats,
    trace: Hasher,
    /// Events of every node, if `record_events` is set.
    pub events: Vec<(usize, Duration, Event)>,
    /// Whether to record every node's events in `events`.
    pub record_events: bool,
    /// Datagrams delivered, as (from, to, bytes), while this is `Some`: an
    /// eavesdropper's capture, for replay tests.
    pub capture: Option<Vec<(usize, usize, Vec<u8>)>>,
}

impl Sim {
    /// An empty network; add hosts with `add_node`.
    pub fn new(seed: u64, cfg: Config, net: NetConfig) -> Sim {
        Sim {
            cfg,
            net,
            seed,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            hosts: Vec::new(),
            by_addr: HashMap::new(),
            flights: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            groups: None,
            stats: NetStats::default(),
            trace: Hasher::default(),
            events: Vec::new(),
            record_events: false,
            capture: None,
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Hosts, crashed ones included.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True with no host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The virtual network's counters.
    pub fn net_stats(&self) -> NetStats {
        self.stats
    }

    /// Adds a node named `n<i>` at a loopback address (nothing is ever sent
    /// on a real network; the address only names the host).
    pub fn add_node(&mut self) -> usize {
        let i = self.hosts.len();
        let addr = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8),
            7946,
        ));
        self.hosts.push(Host {
            name: format!("n{i}"),
            addr,
            node: None,
            paused: false,
            stalled: None,
            incarnation: 0,
            generation: 0,
            scheduled: None,
            timer_wakeups: 0,
        });
        self.by_addr.insert(addr, i);
        self.boot(i);
        i
    }

    /// Starts a fresh process on host `i`: a new incarnation without state.
    fn boot(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.incarnation += 1;
        h.generation = 0;
        self.start_process(i);
    }

    /// Starts host `i`'s node in its current incarnation and generation.
    fn start_process(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let seed = Hasher::default().u64(self.seed).u64(i as u64).u64(h.incarnation);
        // The first life's seed as before generations existed: seeded runs
        // stay what they were.
        let seed = match h.generation {
            0 => seed.finish(),
            g => seed.u64(u64::from(g)).finish(),
        };
        let node = Node::restarted(
            self.cfg.clone(),
            &h.name,
            h.incarnation,
            h.generation,
            h.addr,
            seed,
            self.now,
        )
        .expect("simulated node names are valid");
        h.node = Some(node);
        h.paused = false;
        h.stalled = None;
        h.scheduled = None;
        self.after_input(i);
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.hosts[i].addr
    }

    /// Host `i`'s node name.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    /// How many times node `i`'s timers woke it, over all its lives.
    pub fn timer_wakeups(&self, i: usize) -> u64 {
        self.hosts[i].timer_wakeups
    }

    /// The running node of host `i` (None if crashed).
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.hosts[i].node.as_ref()
    }

    /// Hosts whose process runs and is not paused.
    pub fn running(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].node.is_some() && !self.hosts[i].paused)
            .collect()
    }

    /// Runs `f` on host `i`'s node at the current time and routes whatever it
    /// produced. Panics if the host is crashed: that is a test bug.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Duration) -> R) -> R {
        let now = self.now;
        let node = self.hosts[i].node.as_mut().expect("host is running");
        let r = f(node, now);
        self.after_input(i);
        r
    }

    /// Every node joins through host `seed`.
    pub fn join_all(&mut self, seed: usize) {
        let seed_addr = self.addr(seed);
        for i in 0..self.hosts.len() {
            if i != seed && self.hosts[i].node.is_some() {
                self.with_node(i, |n, now| n.join(now, &[seed_addr]));
            }
        }
    }

    /// Makes the running hosts a cluster that formed long ago, every host
    /// attached to `networks` (see `node::preload`): forming one by joins
    /// costs O(n²) gossip, most of a run at thousands of nodes. The tables
    /// are filled at once; foca learns the members host after host across
    /// one probe period, so the probe rounds do not tick in step.
    pub fn form_converged(&mut self, networks: &[&str]) {
        let hosts = self.running();
        for &i in &hosts {
            for net in networks {
                self.with_node(i, |n, now| n.join_network(now, net)).expect("valid network name");
            }
        }
        let now = self.now;
        let cluster: Vec<_> =
            hosts.iter().filter_map(|&i| self.node(i)).map(|n| n.introduction(now)).collect();
        for &i in &hosts {
            self.with_node(i, |n, now| n.learn_cluster_tables(now, &cluster));
        }
        let step = self.cfg.probe_period / hosts.len().max(1) as u32;
        for &i in &hosts {
            self.with_node(i, |n, now| n.learn_members(now, &cluster));
            self.run_for(step);
        }
    }

    /// Kills host `i`'s process: no goodbye, state lost.
    pub fn crash(&mut self, i: usize) {
        self.hosts[i].node = None;
        self.hosts[i].scheduled = None;
    }

    /// Starts host `i` again without its state and joins through `seed`.
    pub fn restart(&mut self, i: usize, seed: usize) {
        self.boot(i);
        let seed_addr = self.addr(seed);
        self.with_node(i, |n, now| n.join(now, &[seed_addr]));
    }

    /// Starts host `i` again in the incarnation it had, with empty tables
    /// and a larger generation (an agent restarted with its data dir,
    /// before it republishes), and joins through `seed`.
    pub fn restart_same_life(&mut self, i: usize, seed: usize) {
        self.hosts[i].generation += 1;
        self.start_process(i);
        let seed_addr = self.addr(seed);
        self.with_node(i, |n, now| n.join(now, &[seed_addr]));
    }

    /// Freezes host `i` (like SIGSTOP): it receives nothing and its timers
    /// wait.
    pub fn pause(&mut self, i: usize) {
        self.hosts[i].paused = true;
    }

    /// Thaws host `i`; its overdue timers fire at once.
    pub fn resume(&mut self, i: usize) {
        self.hosts[i].paused = false;
        self.hosts[i].scheduled = None;
        self.reschedule(i);
    }

    /// Starves host `i` of CPU: what arrives waits unread and its timers
    /// wait, until [`Sim::unstall`].
    pub fn stall(&mut self, i: usize) {
        self.hosts[i].stalled.get_or_insert_with(Vec::new);
    }

    /// Ends a stall the worst way for the host's judgement: its overdue
    /// timers fire first, then it reads what arrived meanwhile.
    pub fn unstall(&mut self, i: usize) {
        let Some(backlog) = self.hosts[i].stalled.take() else { return };
        self.hosts[i].scheduled = None;
        let now = self.now;
        if let Some(node) = self.hosts[i].node.as_mut() {
            node.handle_timeout(now);
            self.after_input(i);
        }
        for f in backlog {
            self.deliver(f);
        }
    }

    /// Splits the hosts: `group[i]` is host i's side; packets between
    /// different sides are dropped.
    pub fn partition(&mut self, group: Vec<u32>) {
        assert_eq!(group.len(), self.hosts.len());
        self.groups = Some(group);
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs, checking `done` every `every` of virtual time, until it holds
    /// or `limit` has passed; returns the virtual time it took, if it held.
    pub fn run_until_true(
        &mut self,
        every: Duration,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(every);
        }
    }

    /// A hash of everything that happened (deliveries in order) and of every
    /// node's final tables: two runs with the same seed give the same value.
    pub fn fingerprint(&self) -> u64 {
        let mut h = self.trace.u64(self.now.as_nanos() as u64);
        for host in &self.hosts {
            if let Some(n) = &host.node {
                // The cluster scope hashes as the empty name, as it always did.
                h = h.bytes(b"").u64(n.root(Scope::Cluster).unwrap_or(0));
                for net in n.networks() {
                    h = h.bytes(net.as_bytes()).u64(n.root(Scope::Network(net)).unwrap_or(0));
                }
            }
        }
        h.finish()
    }

    fn step(&mut self, until: Duration) -> bool {
        let next_flight = self.flights.peek().map(|Reverse(f)| f.at);
        let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let at = match (next_flight, next_timer) {
            (None, None) => return false,
            (Some(f), None) => f,
            (None, Some(t)) => t,
            (Some(f), Some(t)) => f.min(t),
        };
        if at > until {
            return false;
        }
        self.now = at;
        if next_flight == Some(at) {
            let Some(Reverse(f)) = self.flights.pop() else {
                return false;
            };
            self.deliver(f);
        } else {
            let Some(Reverse((at, i))) = self.timers.pop() else {
                return false;
            };
            let host = &mut self.hosts[i];
            if host.scheduled != Some(at) {
                return true; // superseded
            }
            host.scheduled = None;
            if host.paused || host.stalled.is_some() {
                return true; // resumed later with `resume` or `unstall`
            }
            if let Some(node) = host.node.as_mut() {
                host.timer_wakeups += 1;
                node.handle_timeout(at);
                self.after_input(i);
            }
        }
        true
    }

    fn deliver(&mut self, f: Flight) {
        let now = self.now;
        let from = self.hosts[f.from].addr;
        let host = &mut self.hosts[f.to];
        if let Some(backlog) = host.stalled.as_mut() {
            backlog.push(f);
            return;
        }
        let Some(node) = host.node.as_mut().filter(|_| !host.paused) else {
            self.stats.unreachable += 1;
            return;
        };
        self.stats.delivered += 1;
        match &f.payload {
            Payload::Datagram(p) => {
                self.trace =
                    self.trace.u64(now.as_nanos() as u64).u64(f.to as u64).u64(p.len() as u64);
                node.handle_datagram(now, from, p);
                if let Some(c) = self.capture.as_mut() {
                    c.push((f.from, f.to, p.to_vec()));
                }
            }
            Payload::Sync(p) => {
                self.trace =
                    self.trace.u64(now.as_nanos() as u64).u64(f.to as u64).u64(!(p.len() as u64));
                node.handle_sync(now, from, p);
            }
        }
        self.after_input(f.to);
    }

    /// Hands node `to` a datagram as if `from` had sent it now (a replay or
    /// a forgery: the virtual network is bypassed).
    pub fn inject(&mut self, from: usize, to: usize, payload: &[u8]) {
        let (now, addr) = (self.now, self.hosts[from].addr);
        if let Some(node) = self.hosts[to].node.as_mut() {
            node.handle_datagram(now, addr, payload);
            self.after_input(to);
        }
    }

    /// Routes a node's outputs and re-arms its wake-up.
    fn after_input(&mut self, i: usize) {
        let mut out = Vec::new();
        if let Some(node) = self.hosts[i].node.as_mut() {
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
            while let Some(e) = node.poll_event() {
                if self.record_events {
                    self.events.push((i, self.now, e));
                }
            }
        }
        for t in out {
            self.route(i, t);
        }
        self.reschedule(i);
    }

    fn reschedule(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let Some(node) = host.node.as_ref() else {
            return;
        };
        let next = node.poll_timeout();
        if next != host.scheduled {
            host.scheduled = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at.max(self.now), i)));
                host.scheduled = Some(at.max(self.now));
            }
        }
    }

    fn route(&mut self, from: usize, t: Transmit) {
        let (to, payload, lossy) = match t {
            Transmit::Datagram { to, payload } => (to, Payload::Datagram(payload), true),
            Transmit::Sync { to, payload, .. } => (to, Payload::Sync(payload), false),
        };
        self.stats.sent += 1;
        let Some(&to) = self.by_addr.get(&to) else {
            self.stats.unreachable += 1;
            return;
        };
        if let Some(g) = &self.groups
            && g[from] != g[to]
        {
            self.stats.partitioned += 1;
            return;
        }
        if lossy && self.net.loss > 0.0 && self.rng.random_bool(self.net.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies =
            if lossy && self.net.duplicate > 0.0 && self.rng.random_bool(self.net.duplicate) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
        let len = match &payload {
            Payload::Datagram(p) => p.len(),
            Payload::Sync(p) => p.len(),
        };
        self.stats.bytes += len as u64;
        if lossy {
            self.stats.max_datagram = self.stats.max_datagram.max(len);
        }
        // vec! clones for the duplicate and moves the original.
        for payload in vec![payload; copies] {
            let jitter = self.jitter();
            self.seq += 1;
            self.flights.push(Reverse(Flight {
                at: self.now + self.net.latency + jitter,
                seq: self.seq,
                from,
                to,
                payload,
            }));
        }
    }

    fn jitter(&mut self) -> Duration {
        let max = self.net.jitter.as_micros() as u64;
        if max == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.random_range(0..=max))
        }
    }
}
