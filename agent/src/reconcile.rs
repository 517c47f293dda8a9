//! The kernel reconcile loop: on every overlay change and every period, the
//! desired state is taken from the core and the kernel is made to match.

use std::sync::Arc;
use std::time::Duration;

use netdb_dataplane::Kernel;
use tokio::sync::Notify;

use crate::engine::{Handle, KernelStats};

/// Changes arriving within this window share one reconcile.
const COALESCE: Duration = Duration::from_millis(20);

/// Runs until the core is gone. Without a kernel there is nothing to do.
pub(crate) async fn run<K: Kernel>(
    core: Handle<K>,
    wake: Arc<Notify>,
    period: Duration,
    stats: Arc<KernelStats>,
) {
    let Some(kernel) = core.kernel().cloned() else { return };
    loop {
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(period) => {}
        }
        // Held from the snapshot to the last kernel call: an attach or
        // detach in between would make the snapshot stale.
        let guard = kernel.lock().await;
        // A re-addressed endpoint's old veth first: its container side
        // holds the interface name the new one takes.
        let Some(retired) = core.take_retired().await else { return };
        for veth in retired {
            if let Err(e) = guard.detach(&veth).await {
                tracing::warn!(%veth, error = %e, "cannot remove the veth of a re-addressed endpoint; remove it by hand (ip link del)");
            }
        }
        let Some(desired) = core.desired().await else { return };
        let result = guard.reconcile(&desired).await;
        // The reaps below detach through the kernel lock themselves.
        drop(guard);
        match result {
            Ok(r) => {
                for gone in r.netns_gone.iter().cloned() {
                    let (veth, netns) = (gone.host_ifname.clone(), gone.netns.clone());
                    if let Err(e) = core.reap(gone).await {
                        tracing::warn!(endpoint = %veth, netns = %netns.display(), error = %e, "cannot detach an endpoint whose namespace is gone; retrying next period");
                    }
                }
                stats.reconciled(&r);
                if r.changes() > 0 || r.failed > 0 {
                    tracing::info!(
                        created = r.created,
                        removed = r.removed,
                        fdb_added = r.fdb_added,
                        fdb_removed = r.fdb_removed,
                        neigh_added = r.neigh_added,
                        neigh_removed = r.neigh_removed,
                        endpoints_repaired = r.endpoints_repaired,
                        gateway_changed = r.gateway_changed,
                        nft_changed = r.nft_changed,
                        failed = r.failed,
                        elapsed_ms = r.elapsed.as_millis() as u64,
                        "kernel reconciled"
                    );
                }
            }
            Err(e) => {
                stats.failed();
                tracing::warn!(error = %e, "cannot read the kernel state; retrying next period");
            }
        }
    }
}
