//! Helpers shared by the workspace's integration tests: building simulated
//! clusters and reading their state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, MemberState, Scope};

/// The network every test cluster joins.
pub const NET: &str = "net";
/// The table tests write to.
pub const TABLE: &str = "t";
/// How often convergence conditions are checked.
pub const CHECK: Duration = Duration::from_millis(200);

/// `n` nodes joined through node 0, all attached to `NET`; panics if the
/// cluster does not form within generous deadlines.
pub fn cluster(n: usize, seed: u64, cfg: Config) -> Sim {
    let mut sim = Sim::new(seed, cfg, NetConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    sim.join_all(0);
    let t = sim.run_until_true(CHECK, Duration::from_secs(120), |s| {
        s.running().iter().all(|&i| alive_members(s, i) == n)
    });
    assert!(t.is_some(), "membership of {n} nodes did not converge in 120 s");
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, NET).expect("join network"));
    }
    let t = sim.run_until_true(CHECK, Duration::from_secs(120), |s| {
        s.running().iter().all(|&i| s.node(i).is_some_and(|x| x.network_peers(NET).len() == n - 1))
    });
    assert!(t.is_some(), "attachments of {n} nodes did not converge in 120 s");
    sim
}

/// Members node `i` sees alive, itself included.
pub fn alive_members(sim: &Sim, i: usize) -> usize {
    sim.node(i).map_or(0, |n| n.members().iter().filter(|m| m.state == MemberState::Alive).count())
}

/// What `observer` thinks of member `name`.
pub fn member_state(sim: &Sim, observer: usize, name: &str) -> Option<MemberState> {
    sim.node(observer)?.members().into_iter().find(|m| m.name == name).map(|m| m.state)
}

/// Key of the k-th entry node i writes.
pub fn key(i: usize, k: usize) -> String {
    format!("n{i}-k{k}")
}

/// Value of the k-th entry node i writes in a round.
pub fn value(i: usize, k: usize, round: u32) -> Bytes {
    Bytes::from(format!("value of n{i}-k{k} round {round}"))
}

/// Each of `writers` puts `per_node` entries into NET/TABLE at the current
/// instant.
pub fn write_entries(sim: &mut Sim, writers: &[usize], per_node: usize, round: u32) {
    for &i in writers {
        sim.with_node(i, |node, now| {
            for k in 0..per_node {
                node.put(now, NET, TABLE, &key(i, k), value(i, k, round)).expect("put");
            }
        });
    }
}

/// Visible (key → value) of NET/TABLE on node i.
pub fn view(sim: &Sim, i: usize) -> BTreeMap<String, Bytes> {
    sim.node(i)
        .map(|n| {
            n.entries(NET, TABLE)
                .into_iter()
                .map(|(k, e)| (k.to_string(), e.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Distinct digest roots of a scope over the given nodes.
pub fn roots(sim: &Sim, nodes: &[usize], scope: Scope<'_>) -> BTreeSet<Option<u64>> {
    nodes.iter().map(|&i| sim.node(i).and_then(|n| n.root(scope))).collect()
}

/// True when every given node shows exactly `expected` and all of them have
/// the same digest of NET and of the cluster scope.
pub fn converged_to(sim: &Sim, nodes: &[usize], expected: &BTreeMap<String, Bytes>) -> bool {
    nodes.iter().all(|&i| &view(sim, i) == expected)
        && roots(sim, nodes, Scope::Network(NET)).len() == 1
        && roots(sim, nodes, Scope::Cluster).len() == 1
}

/// Waits (virtual time) for `converged_to`; panics with a summary if it
/// does not happen within `limit`. Returns the time it took.
pub fn await_converged(
    sim: &mut Sim,
    nodes: &[usize],
    expected: &BTreeMap<String, Bytes>,
    limit: Duration,
) -> Duration {
    match sim.run_until_true(CHECK, limit, |s| converged_to(s, nodes, expected)) {
        Some(t) => t,
        None => {
            let wrong: Vec<_> = nodes
                .iter()
                .filter(|&&i| &view(sim, i) != expected)
                .map(|&i| (i, view(sim, i).len()))
                .take(10)
                .collect();
            panic!(
                "no convergence in {limit:?}: expected {} entries; nodes differing (node, entries held): {wrong:?}; \
                 distinct NET roots {}",
                expected.len(),
                roots(sim, nodes, Scope::Network(NET)).len()
            );
        }
    }
}

/// The expected view when each of `writers` wrote `per_node` entries in
/// `round`.
pub fn expected(writers: &[usize], per_node: usize, round: u32) -> BTreeMap<String, Bytes> {
    let mut m = BTreeMap::new();
    for &i in writers {
        for k in 0..per_node {
            m.insert(key(i, k), value(i, k, round));
        }
    }
    m
}
