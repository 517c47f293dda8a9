//! The core: the state the agent's loop owns (the node, the overlay, the
//! watch streams) and everything done to it, as named methods. The loop
//! (`crate::agent`) feeds it network input and time; the API and the
//! reconcile task reach it through a [`Handle`]. Nothing here knows the
//! loop, the API or gRPC.
//!
//! - `commands`: what the API asks of the core, one method per request.
//! - `handle`: the channel to the core, its named async calls, and attach
//!   and detach run beside the loop.
//! - `health`: liveness and readiness.
//! - `stats`: counters, and the state `/metrics` shows.

mod commands;
mod handle;
mod health;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netdb::keyring::{KeyId, Keyring};
use netdb::{DropReason, Event, Node, Transmit};
use netdb::{KeyOp, KeyReport};

use crate::dns::Dns;
use crate::keyfile;
use crate::overlay::Overlay;
use crate::watch::{Notice, Watcher};

pub(crate) use handle::{Commands, Error, Handle, channel};
pub(crate) use health::Health;
pub(crate) use stats::{KernelStats, Snapshot};

/// What the core loop owns.
pub(crate) struct Core {
    node: Node,
    overlay: Overlay,
    watchers: Vec<Watcher>,
    kernel_stats: Arc<KernelStats>,
    /// Where the keyring is written back after it changes; `None` when the
    /// keys came from the environment.
    key_file: Option<PathBuf>,
    start: Instant,
    /// The agent was given seeds to join through (a first node is not).
    seeded: bool,
    /// The embedded DNS, for its counters; `None` when off.
    dns: Option<Dns>,
}

impl Core {
    /// The core at time zero; the overlay's saved state (a restart) goes
    /// out again at once.
    pub(crate) fn new(
        node: Node,
        overlay: Overlay,
        kernel_stats: Arc<KernelStats>,
        key_file: Option<PathBuf>,
    ) -> Core {
        let mut core = Core {
            node,
            overlay,
            watchers: Vec::new(),
            kernel_stats,
            key_file,
            start: Instant::now(),
            seeded: false,
            dns: None,
        };
        core.overlay.republish(&mut core.node, Duration::ZERO);
        core
    }

    /// Counts the embedded DNS's queries with the core's.
    pub(crate) fn with_dns(mut self, dns: Option<Dns>) -> Core {
        self.dns = dns;
        self
    }

    /// Time since the core started: the node's clock.
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Read-only view of the node, for the loop's bookkeeping.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Wakes the kernel reconcile loop whenever the overlay changed.
    pub(crate) fn kernel_changes(&self) -> Arc<tokio::sync::Notify> {
        self.overlay.kernel_changes()
    }

    /// When the loop must wake next: the node's timer, and the next upkeep
    /// pass (`upkeep_at`) if one is due.
    pub(crate) fn next_wake(&self, upkeep_at: Instant) -> Option<Instant> {
        let next = self.node.poll_timeout().map(|t| self.start + t);
        if self.overlay.upkeep_due() {
            return Some(next.map_or(upkeep_at, |n| n.min(upkeep_at)));
        }
        next
    }

    pub(crate) fn join(&mut self, seeds: &[SocketAddr]) {
        // A seed list that names only this node (the first of a cluster
        // started from one list) is no seed at all.
        self.seeded = seeds.iter().any(|s| *s != self.node.addr());
        let now = self.now();
        self.node.join(now, seeds);
    }

    pub(crate) fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now = self.now();
        self.node.handle_datagram(now, from, bytes);
    }

    pub(crate) fn handle_sync(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now = self.now();
        self.node.handle_sync(now, from, bytes);
    }

    pub(crate) fn handle_timeout(&mut self) {
        let now = self.now();
        self.node.handle_timeout(now);
    }

    pub(crate) fn record_drop(&mut self, reason: DropReason) {
        self.node.record_drop(reason);
    }

    pub(crate) fn abort_sync(&mut self, sync_id: u64, why: &str) {
        self.node.abort_sync(sync_id, why);
    }

    /// A new scheduled key epoch began.
    pub(crate) fn set_keyring(&mut self, ring: Keyring) {
        self.node.set_keyring(Some(ring));
    }

    /// Re-anchors the node's wall clock on the system's (Unix time now),
    /// so a clock stepped after start (NTP) is what keyring commands and
    /// their skew reports see, as the key epochs do.
    pub(crate) fn follow_wall_clock(&mut self, unix: Duration) {
        let origin = unix.saturating_sub(self.now());
        self.node.set_wall_clock(origin.as_millis() as u64);
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.node.poll_transmit()
    }

    /// Hands the node's events to the overlay and the watch streams.
    pub(crate) fn dispatch_events(&mut self) {
        while let Some(ev) = self.node.poll_event() {
            self.dispatch(ev);
        }
    }

    /// True when the overlay needs an upkeep pass.
    pub(crate) fn upkeep_due(&self) -> bool {
        self.overlay.upkeep_due()
    }

    /// One overlay upkeep pass; its conflict notices go to the watchers.
    pub(crate) fn upkeep(&mut self) {
        let now = self.now();
        self.overlay.maintain(&mut self.node, now);
        for (net, text) in self.overlay.take_notices() {
            self.announce(Notice::Conflict, &net, &text);
        }
        self.dispatch_events();
    }

    /// Saves the overlay and announces the leave, unless this host has
    /// endpoints: its containers keep running, and a leave would release
    /// its address blocks and withdraw its endpoints everywhere. Peers see
    /// it failed (entries hidden, blocks kept) until it restarts and
    /// republishes. Returns how long to keep gossiping before exiting.
    pub(crate) fn start_leaving(&mut self) -> Duration {
        let now = self.now();
        self.overlay.save(&self.node);
        let endpoints = self.overlay.local_endpoints();
        if endpoints > 0 {
            tracing::info!(
                endpoints,
                "signal received: stopping without leaving, to keep this host's endpoints (detach them first to leave for good)"
            );
            return Duration::ZERO;
        }
        tracing::info!("signal received: leaving the cluster");
        // Peers drop what this life wrote: the next start is a new one.
        self.node.leave(now);
        self.overlay.end_life(&self.node);
        self.node.config().gossip_interval * 2 + Duration::from_millis(100)
    }

    /// Sends a notice to the watchers of `network`.
    pub(crate) fn announce(&mut self, kind: Notice, network: &str, text: &str) {
        self.watchers.retain(|w| w.notice(kind, network, text));
    }

    /// Ends every watch stream (at shutdown).
    pub(crate) fn close_watchers(&mut self) {
        self.watchers.clear();
    }

    fn dispatch(&mut self, ev: Event) {
        if let Event::KeyringChanged = ev {
            return self.save_keyring();
        }
        self.overlay.observe(&ev);
        // The last watcher of the event takes it and the others get copies:
        // a copy is an allocation per string, and one more for the value's
        // shared header; every event of a watched network went to its one
        // watcher as a copy.
        let mut wanted = self.watchers.iter().filter(|w| w.wants(&ev)).count();
        let mut ev = Some(ev);
        self.watchers.retain(|w| match &ev {
            Some(e) if w.wants(e) => {
                wanted -= 1;
                let mine = if wanted == 0 { ev.take() } else { ev.clone() };
                mine.is_some_and(|e| w.send(e))
            }
            _ => w.is_open(),
        });
    }

    /// Writes the keyring back, so a restart after a rotation holds the
    /// current keys.
    fn save_keyring(&self) {
        let Some(ring) = self.node.keyring() else { return };
        let fingerprints = ring.fingerprints();
        match &self.key_file {
            Some(path) => match keyfile::write_keyring(path, &ring.export()) {
                Ok(()) => tracing::info!(?fingerprints, file = %path.display(), "keyring saved"),
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), "cannot write the keyring back; a restart would use old keys")
                }
            },
            None => tracing::warn!(
                ?fingerprints,
                "keyring changed, but the keys came from NETDB_KEYS: a restart uses the old ones (use --key-file)"
            ),
        }
    }
}
