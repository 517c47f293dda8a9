//! What a cluster at rest costs a node: the wake-ups of its timers (a
//! real agent's CPU at rest is mostly wake-ups) and the datagrams that keep
//! its failure detection and anti-entropy going.

use std::time::Duration;

use netdb::sim::Sim;
use netdb::{Config, MemberState};
use netdb_tests::*;

const N: usize = 10;

fn gossip_out(sim: &Sim, i: usize) -> u64 {
    sim.node(i).map_or(0, |n| n.stats().gossip_out.messages)
}

/// At rest a node's timers wake it for its probe rounds and little else:
/// each scope's digest rides a round to the member probed, a scope with no
/// peer (node 0 alone on a network) wakes no one, and foca's announce to
/// down members waits for a member to be down. Anti-entropy keeps its pace
/// (each scope's digest about once a second), and a member that goes down
/// is knocked on every `reconnect_interval` again.
#[test]
fn a_node_at_rest_wakes_for_its_probe_rounds_and_its_digests_ride_them() {
    let cfg = Config::default();
    let mut sim = cluster(N, 3, cfg.clone());
    sim.with_node(0, |node, now| node.join_network(now, "alone").expect("join network"));
    sim.run_for(Duration::from_secs(10));
    let wakes: Vec<u64> = (0..N).map(|i| sim.timer_wakeups(i)).collect();
    let sent: Vec<u64> = (0..N).map(|i| gossip_out(&sim, i)).collect();
    let span = Duration::from_secs(30);
    sim.run_for(span);
    let rounds = 1.0 / cfg.probe_period.as_secs_f64();
    let per_s = |n: u64| n as f64 / span.as_secs_f64();
    for i in 0..N {
        let woke = per_s(sim.timer_wakeups(i) - wakes[i]);
        assert!(
            (rounds * 0.9..=rounds + 0.3).contains(&woke),
            "node {i} woke {woke:.2} times a second, for {rounds:.2} probe rounds"
        );
        // Two scopes with peers (the cluster's and NET), nothing queued:
        // only digests.
        let digests = per_s(gossip_out(&sim, i) - sent[i]);
        assert!((1.6..=2.4).contains(&digests), "node {i} sent {digests:.2} digests a second");
    }

    let dead = N - 1;
    let name = sim.name(dead).to_string();
    sim.crash(dead);
    let down = sim.run_until_true(CHECK, Duration::from_secs(30), |s| {
        (0..dead).all(|i| member_state(s, i, &name) == Some(MemberState::Failed))
    });
    assert!(down.is_some(), "the crashed node was never declared down");
    let before = sim.net_stats().unreachable;
    sim.run_for(Duration::from_secs(5));
    // Only announces go to a member declared down: one a second each.
    let knocks = sim.net_stats().unreachable - before;
    assert!(knocks >= (dead as u64) * 4, "{knocks} announces to the down member in 5 s");
}
