//! Counters for `netdb stats`: the node's, the core's and the kernel
//! reconcile loop's.

use std::sync::atomic::{AtomicU64, Ordering};

use netdb::DropReason;
use netdb_dataplane::ReconcileReport;

use super::Core;

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

impl KernelStats {
    fn counters(&self) -> Vec<(String, u64)> {
        [
            ("kernel_reconciles", &self.reconciles),
            ("kernel_changes", &self.changes),
            ("kernel_failures", &self.failures),
            ("kernel_last_reconcile_us", &self.last_us),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.load(Ordering::Relaxed)))
        .collect()
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

impl Core {
    /// Every counter, named for `netdb stats`.
    pub(crate) fn counters(&self) -> Vec<(String, u64)> {
        let s = self.node.stats();
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
            ("syncs_started", s.syncs_started),
            ("syncs_completed", s.syncs_completed),
            ("syncs_failed", s.syncs_failed),
            ("syncs_served", s.syncs_served),
            ("queue_overflow", s.queue_overflow),
            ("queue_oversized", s.queue_oversized),
            ("swim_errors", s.swim_errors),
            ("watchers", self.watchers.len() as u64),
            ("conflicts_detected", self.overlay.conflicts_seen()),
        ] {
            out.push((name.into(), v));
        }
        for (scope, len) in self.node.queue_lengths() {
            out.push((format!("queue_len:{scope}"), len as u64));
        }
        for r in DropReason::ALL {
            out.push((format!("drops:{}", r.as_str()), s.dropped(r)));
        }
        out.extend(self.kernel_stats.counters());
        out
    }
}
