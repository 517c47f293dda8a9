//! The simulator's converged start (`Sim::form_converged`), which the scale
//! benchmark (`sim_scale`) builds its clusters with: a cluster formed at
//! once must behave as one formed by joins.

use std::time::Duration;

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, MemberState};

const N: usize = 40;

#[test]
fn a_converged_cluster_knows_everyone_and_spreads_through_loss() {
    let mut sim = Sim::new(3, Config::default(), NetConfig::default());
    for _ in 0..N {
        sim.add_node();
    }
    sim.form_converged(&["net"]);
    sim.run_for(Duration::from_secs(5));
    for i in 0..N {
        let node = sim.node(i).unwrap();
        let alive = node.members().iter().filter(|m| m.state == MemberState::Alive).count();
        assert_eq!(alive, N, "node {i} knows every member alive");
        assert_eq!(node.network_peers("net").len(), N - 1, "node {i} gossips to every peer");
        assert!(node.is_active(), "node {i}'s SWIM layer knows the cluster");
        assert!(node.stats().swim_out.messages > 0, "node {i} probes");
        assert_eq!(node.stats().swim_errors, 0);
    }
    let roots: Vec<_> =
        (0..N).map(|i| sim.node(i).unwrap().root(netdb::Scope::Cluster).unwrap()).collect();
    assert!(roots.iter().all(|r| *r == roots[0]), "every node holds the same cluster tables");

    sim.net.loss = 0.3;
    sim.with_node(0, |n, now| n.put(now, "net", "t", "k", Bytes::from_static(b"v"))).unwrap();
    let took = sim.run_until_true(Duration::from_millis(10), Duration::from_secs(10), |s| {
        (0..N).all(|i| s.node(i).unwrap().get("net", "t", "k").is_some())
    });
    assert!(took.is_some(), "the entry reached every node through 30 % loss");
    sim.run_for(Duration::from_secs(2));
    let news: u64 = (0..N).map(|i| sim.node(i).unwrap().stats().entries_from_gossip).sum();
    let copies: u64 = (0..N).map(|i| sim.node(i).unwrap().stats().gossip_copies).sum();
    assert!(news >= (N - 1) as u64 / 2, "most nodes learned it by gossip: {news}");
    assert!(copies >= news, "epidemic spread brings each node copies: {copies} for {news}");
}
