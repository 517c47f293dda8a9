//! Counters for `netdb stats` and the state `/metrics` shows: the node's,
//! the core's and the kernel reconcile loop's. Both views are made from
//! one [`Tallies`], read on the loop, so they always agree.

use std::sync::atomic::{AtomicU64, Ordering};

use netdb::{DropReason, MemberChange, MemberState};
use netdb_dataplane::ReconcileReport;

use super::Core;
use crate::dns::{Dns, DnsTallies};

/// The kernel reconcile loop's counters, written by its task and read by
/// the core.
#[derive(Debug, Default)]
pub(crate) struct KernelStats {
    reconciles: AtomicU64,
    changes: AtomicU64,
    failures: AtomicU64,
    last_us: AtomicU64,
    /// Failed operations of the last reconcile (or 1 if it could not read
    /// the kernel): what readiness looks at.
    last_failed: AtomicU64,
}

/// [`KernelStats`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KernelTallies {
    /// Reconcile passes, failed ones included.
    pub(crate) reconciles: u64,
    /// Kernel objects created or removed to match the tables (repairs).
    pub(crate) changes: u64,
    /// Kernel calls that failed, and passes that could not read the kernel.
    pub(crate) failures: u64,
    /// How long the last pass took.
    pub(crate) last_us: u64,
}

impl KernelStats {
    fn read(&self) -> KernelTallies {
        KernelTallies {
            reconciles: self.reconciles.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
        }
    }

    /// A reconcile finished with this report.
    pub(crate) fn reconciled(&self, r: &ReconcileReport) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.last_us.store(r.elapsed.as_micros() as u64, Ordering::Relaxed);
        self.changes.fetch_add(r.changes() as u64, Ordering::Relaxed);
        self.failures.fetch_add(r.failed as u64, Ordering::Relaxed);
        self.last_failed.store(r.failed as u64, Ordering::Relaxed);
    }

    /// A reconcile could not even read the kernel.
    pub(crate) fn failed(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(1, Ordering::Relaxed);
    }

    /// Reconciles so far and the failed operations of the last one.
    pub(crate) fn last_outcome(&self) -> (u64, u64) {
        (self.reconciles.load(Ordering::Relaxed), self.last_failed.load(Ordering::Relaxed))
    }
}

/// Every counter of the agent at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tallies {
    pub(crate) node: netdb::Stats,
    pub(crate) watchers: u64,
    pub(crate) conflicts: u64,
    /// Broadcast queue length per scope, `(cluster)` first.
    pub(crate) queues: Vec<(String, u64)>,
    pub(crate) kernel: KernelTallies,
    pub(crate) dns: DnsTallies,
    /// Endpoints detached because their namespace was gone.
    pub(crate) reaped: u64,
}

impl Tallies {
    /// Every counter, named for `netdb stats`.
    pub(crate) fn named(&self) -> Vec<(String, u64)> {
        let s = &self.node;
        let mut out = Vec::new();
        for (kind, t) in [
            ("swim_in", s.swim_in),
            ("swim_out", s.swim_out),
            ("gossip_in", s.gossip_in),
            ("gossip_out", s.gossip_out),
            ("sync_in", s.sync_in),
            ("sync_out", s.sync_out),
        ] {
            out.push((format!("{kind}_messages"), t.messages));
            out.push((format!("{kind}_bytes"), t.bytes));
        }
        for (name, v) in [
            ("entries_from_gossip", s.entries_from_gossip),
            ("entries_from_sync", s.entries_from_sync),
            ("gossip_copies", s.gossip_copies),
            ("tree_ihave_sent", s.tree.ihave_sent),
            ("tree_ihave_received", s.tree.ihave_received),
            ("tree_graft_sent", s.tree.graft_sent),
            ("tree_graft_received", s.tree.graft_received),
            ("tree_prune_sent", s.tree.prune_sent),
            ("tree_prune_received", s.tree.prune_received),
            ("syncs_started", s.syncs_started),
            ("syncs_completed", s.syncs_completed),
            ("syncs_failed", s.syncs_failed),
            ("syncs_served", s.syncs_served),
            ("queue_overflow", s.queue_overflow),
            ("queue_oversized", s.queue_oversized),
            ("swim_errors", s.swim_errors),
            ("suspicions_started", s.suspicions_started),
            ("late_probe_wakes", s.late_probe_wakes),
            ("unexpected_downs", s.unexpected_downs),
            ("own_entries_restated", s.own_entries_restated),
            ("watchers", self.watchers),
            ("conflicts_detected", self.conflicts),
            ("endpoints_reaped", self.reaped),
        ] {
            out.push((name.into(), v));
        }
        for (scope, len) in &self.queues {
            out.push((format!("queue_len:{scope}"), *len));
        }
        for r in DropReason::ALL {
            out.push((format!("drops:{}", r.as_str()), s.dropped(r)));
        }
        let k = &self.kernel;
        out.extend([
            ("kernel_reconciles".to_string(), k.reconciles),
            ("kernel_changes".to_string(), k.changes),
            ("kernel_failures".to_string(), k.failures),
            ("kernel_last_reconcile_us".to_string(), k.last_us),
        ]);
        for c in MemberChange::ALL {
            out.push((format!("member_changes:{}", c.as_str()), s.changes(c)));
        }
        out.extend(self.dns.named().map(|(name, v)| (name.to_string(), v)));
        out
    }
}

/// What `/metrics` shows: the counters and the state behind the gauges.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) tallies: Tallies,
    /// Members by state, as `netdb members` lists them.
    pub(crate) members: Vec<MemberState>,
    /// Networks as `netdb network ls` lists them.
    pub(crate) networks: u64,
    /// Visible entries per (network, table), as `netdb table dump` lists
    /// them.
    pub(crate) entries: Vec<(String, String, u64)>,
    /// Key fingerprints, primary first; empty when gossip is not sealed.
    pub(crate) keys: Vec<String>,
}

impl Core {
    /// Every counter, read now.
    pub(crate) fn tallies(&self) -> Tallies {
        Tallies {
            node: self.node.stats().clone(),
            watchers: self.watchers.len() as u64,
            conflicts: self.overlay.conflicts_seen(),
            queues: self
                .node
                .queue_lengths()
                .into_iter()
                .map(|(scope, len)| (scope.to_string(), len as u64))
                .collect(),
            kernel: self.kernel_stats.read(),
            dns: self.dns.as_ref().map(Dns::tallies).unwrap_or_default(),
            reaped: self.overlay.endpoints_reaped(),
        }
    }

    /// Every counter, named for `netdb stats`.
    pub(crate) fn counters(&self) -> Vec<(String, u64)> {
        self.tallies().named()
    }

    /// The counters and the state for one scrape of `/metrics`.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut entries = Vec::new();
        for network in self.node.networks() {
            let mut per_table: Vec<(String, String, u64)> = Vec::new();
            for (table, _, e) in self.node.raw_entries(network) {
                if !e.visible() {
                    continue;
                }
                match per_table.last_mut() {
                    Some(last) if last.1 == table => last.2 += 1,
                    _ => per_table.push((network.to_string(), table.to_string(), 1)),
                }
            }
            entries.extend(per_table);
        }
        Snapshot {
            tallies: self.tallies(),
            members: self.node.members().into_iter().map(|m| m.state).collect(),
            networks: self.networks().len() as u64,
            entries,
            keys: self.node.keyring().map(|k| k.fingerprints()).unwrap_or_default(),
        }
    }
}
