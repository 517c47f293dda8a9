//! Liveness and readiness: what `netdb health` and service managers ask.
//! An answer at all means the loop is alive (the call runs on it); ready
//! means the agent can serve its containers.

use std::time::Duration;

use super::Core;

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

/// The agent's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub(crate) name: String,
    pub(crate) version: &'static str,
    pub(crate) uptime: Duration,
    pub(crate) checks: Vec<Check>,
}

impl Health {
    /// Every check passed.
    pub(crate) fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl Core {
    pub(crate) fn health(&self) -> Health {
        let node = &self.node;
        let mut checks = Vec::new();
        let alive = node.members().iter().filter(|m| m.state == netdb::MemberState::Alive).count();
        checks.push(if !self.seeded || node.is_active() {
            Check { name: "joined", ok: true, detail: format!("{alive} members alive") }
        } else {
            Check {
                name: "joined",
                ok: false,
                detail: "no seed has answered yet; check --join and that UDP/TCP to the seeds' \
                         gossip port is open"
                    .into(),
            }
        });
        let synced = node.cluster_synced();
        checks.push(Check {
            name: "cluster-synced",
            ok: synced,
            detail: if synced {
                "cluster state pulled from a peer (or no live peer)".into()
            } else {
                "no push/pull of the cluster state has completed yet".into()
            },
        });
        if self.overlay.enabled() {
            let (reconciles, last_failed) = self.kernel_stats.last_outcome();
            checks.push(match (reconciles, last_failed) {
                (0, _) => Check {
                    name: "kernel",
                    ok: false,
                    detail: "the data plane has not been reconciled yet".into(),
                },
                (_, 0) => Check {
                    name: "kernel",
                    ok: true,
                    detail: format!("{reconciles} reconciles, the last one complete"),
                },
                (_, n) => Check {
                    name: "kernel",
                    ok: false,
                    detail: format!(
                        "the last reconcile failed {n} operations; see the agent's log (it retries)"
                    ),
                },
            });
        }
        Health { name: node.name().into(), version: netdb::VERSION, uptime: self.now(), checks }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::engine::KernelStats;
    use crate::overlay::Overlay;

    fn core(seeded: bool) -> Core {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let node =
            netdb::Node::new(netdb::Config::default(), "h1", 1, addr, 1, Duration::ZERO).unwrap();
        let gateway = crate::overlay::DEFAULT_GATEWAY_SUBNET.parse().unwrap();
        let overlay = Overlay::new("h1", None, None, Duration::from_secs(1), gateway);
        let mut core = Core::new(node, overlay, Arc::new(KernelStats::default()), None);
        if seeded {
            core.join(&["127.0.0.2:7946".parse().unwrap()]);
        }
        core
    }

    #[test]
    fn a_lone_first_node_is_ready_and_says_its_version() {
        let h = core(false).health();
        assert!(h.ready(), "{h:?}");
        assert_eq!(h.version, netdb::VERSION);
        assert_eq!(h.name, "h1");
        assert!(h.checks.iter().all(|c| c.name != "kernel"), "no data plane, no kernel check");
    }

    #[test]
    fn a_node_whose_seeds_never_answered_is_not_ready() {
        let h = core(true).health();
        assert!(!h.ready());
        let joined = h.checks.iter().find(|c| c.name == "joined").unwrap();
        assert!(!joined.ok && joined.detail.contains("--join"), "{joined:?}");
    }
}
