//! Burst convergence on 200 simulated nodes: every node writes 10 entries
//! at once, and every node must end with all 2,000 and the same digest, on
//! a clean network, with 20 % loss, and with duplication and reordering.

use std::time::Duration;

use netdb::Config;
use netdb_tests::*;

const N: usize = 200;
const PER_NODE: usize = 10;

fn burst(seed: u64, tweak: impl FnOnce(&mut netdb::sim::Sim)) -> (netdb::sim::Sim, Duration) {
    let mut sim = cluster(N, seed, Config::default());
    tweak(&mut sim);
    let all: Vec<usize> = (0..N).collect();
    write_entries(&mut sim, &all, PER_NODE, 1);
    let want = expected(&all, PER_NODE, 1);
    assert_eq!(want.len(), N * PER_NODE);
    let took = await_converged(&mut sim, &all, &want, Duration::from_secs(120));
    let max = sim.net_stats().max_datagram;
    assert!(max <= 1400, "a datagram of {max} B exceeded the 1400 B budget");
    (sim, took)
}

#[test]
fn two_hundred_nodes_converge_to_identical_tables() {
    let (sim, took) = burst(11, |_| {});
    // Gossip, not the 30 s periodic sync, must do the work.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let n0 = sim.node(0).unwrap();
    assert!(n0.stats().entries_from_gossip > n0.stats().entries_from_sync);
    assert_eq!(n0.stats().total_drops(), 0, "{:?}", n0.stats());
}

#[test]
fn two_hundred_nodes_converge_with_twenty_percent_loss() {
    let (sim, _) = burst(12, |s| s.net.loss = 0.2);
    let st = sim.net_stats();
    assert!(st.lost > st.sent / 10, "the network really lost packets: {st:?}");
}

#[test]
fn two_hundred_nodes_converge_with_duplicated_and_reordered_packets() {
    let (sim, _) = burst(13, |s| {
        s.net.duplicate = 0.3;
        // 50 ms of jitter on 1 ms latency: most packets overtake others.
        s.net.jitter = Duration::from_millis(50);
    });
    assert!(sim.net_stats().duplicated > 1000);
}
