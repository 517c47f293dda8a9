//! The kernel reconcile loop: on every overlay change and every period, the
//! desired state is taken from the core and the kernel is made to match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::agent::Command;
use crate::api::{Kernel, on_core};

/// Changes arriving within this window share one reconcile.
const COALESCE: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct KernelStats {
    reconciles: AtomicU64,
    changes: AtomicU64,
    failures: AtomicU64,
    last_us: AtomicU64,
}

impl KernelStats {
    pub fn counters(&self) -> Vec<(String, u64)> {
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
}

pub async fn run(
    kernel: Kernel,
    cmds: mpsc::Sender<Command>,
    wake: Arc<Notify>,
    period: Duration,
    stats: Arc<KernelStats>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(period) => {}
        }
        // Held from the snapshot to the last netlink call: an attach or
        // detach in between would make the snapshot stale.
        let linux = kernel.lock().await;
        let Some(desired) = on_core(&cmds, |core| core.overlay.desired(&core.node)).await else {
            return;
        };
        stats.reconciles.fetch_add(1, Ordering::Relaxed);
        match linux.reconcile(&desired).await {
            Ok(r) => {
                stats.last_us.store(r.elapsed.as_micros() as u64, Ordering::Relaxed);
                stats.changes.fetch_add(r.changes() as u64, Ordering::Relaxed);
                stats.failures.fetch_add(r.failed as u64, Ordering::Relaxed);
                if r.changes() > 0 || r.failed > 0 {
                    tracing::info!(
                        created = r.created,
                        removed = r.removed,
                        fdb_added = r.fdb_added,
                        fdb_removed = r.fdb_removed,
                        neigh_added = r.neigh_added,
                        neigh_removed = r.neigh_removed,
                        endpoints_repaired = r.endpoints_repaired,
                        failed = r.failed,
                        elapsed_ms = r.elapsed.as_millis() as u64,
                        "kernel reconciled"
                    );
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read the kernel state; retrying next period");
            }
        }
    }
}
