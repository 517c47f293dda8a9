//! The eager/lazy push tree (`Config::push_tree`) in the simulator: it
//! forms (copies fall to about two per event per node), a lost eager link
//! is repaired by a graft before anti-entropy would, and a partition heals.

use std::time::Duration;

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, Stats};
use netdb_tests::*;

const N: usize = 30;

fn tree_config() -> Config {
    Config { push_tree: true, ..Config::default() }
}

/// A cluster formed at once, every node attached to NET.
fn formed(cfg: Config, seed: u64) -> Sim {
    let mut sim = Sim::new(seed, cfg, NetConfig::default());
    for _ in 0..N {
        sim.add_node();
    }
    sim.form_converged(&[NET]);
    sim.run_for(Duration::from_secs(5));
    sim
}

fn sum(sim: &Sim, nodes: &[usize], f: impl Fn(&Stats) -> u64) -> u64 {
    nodes.iter().filter_map(|&i| sim.node(i)).map(|n| f(n.stats())).sum()
}

/// Each node writes one entry, a tick apart, `rounds` times; returns the
/// copies gossip brought per event per node over the last half.
fn copies_per_event(sim: &mut Sim, rounds: usize) -> f64 {
    let all: Vec<usize> = (0..N).collect();
    let mut before = 0;
    for r in 0..rounds {
        if r == rounds / 2 {
            before = sum(sim, &all, |s| s.gossip_copies);
        }
        for i in 0..N {
            sim.with_node(i, |node, now| {
                node.put(now, NET, TABLE, &key(i, r), Bytes::from_static(b"v")).unwrap()
            });
            sim.run_for(Duration::from_millis(50));
        }
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..N {
        assert_eq!(view(sim, i).len(), N * rounds, "node {i} holds every event");
    }
    let copies = sum(sim, &all, |s| s.gossip_copies) - before;
    copies as f64 / ((rounds - rounds / 2) * N * (N - 1)) as f64
}

#[test]
fn the_tree_forms_and_copies_fall_to_a_few_per_event() {
    let tree = copies_per_event(&mut formed(tree_config(), 1), 6);
    let epidemic = copies_per_event(&mut formed(Config::default(), 1), 6);
    // Two eager links kept per node (`MIN_EAGER`) cost about a copy more
    // than a pure tree's none.
    assert!(tree < 2.5, "after warm-up: {tree:.2} copies per event per node");
    assert!(epidemic > 3.0 * tree, "the epidemic fan-out: {epidemic:.2}, the tree {tree:.2}");
}

#[test]
fn a_lost_eager_link_is_repaired_by_a_graft() {
    let mut sim = formed(tree_config(), 2);
    copies_per_event(&mut sim, 2);
    // Paused hosts still count as members for a while: whoever had one as
    // its eager parent now misses its pushes, and hears of events only
    // through announcements.
    let paused = [3, 7, 11, 19, 23];
    for &i in &paused {
        sim.pause(i);
    }
    let live: Vec<usize> = (0..N).filter(|i| !paused.contains(i)).collect();
    let grafts = sum(&sim, &live, |s| s.tree.graft_sent);
    sim.with_node(0, |node, now| node.put(now, NET, TABLE, "after", Bytes::from_static(b"v")))
        .unwrap();
    let took = sim.run_until_true(Duration::from_millis(10), Duration::from_secs(10), |s| {
        live.iter().all(|&i| s.node(i).unwrap().get(NET, TABLE, "after").is_some())
    });
    let took = took.expect("the write reached every live node");
    assert!(sum(&sim, &live, |s| s.tree.graft_sent) > grafts, "some node grafted it");
    assert!(took < Duration::from_secs(2), "faster than anti-entropy: {took:?}");
}

#[test]
fn a_partition_heals_with_the_tree() {
    let mut sim = formed(tree_config(), 3);
    let all: Vec<usize> = (0..N).collect();
    write_entries(&mut sim, &all, 1, 1);
    await_converged(&mut sim, &all, &expected(&all, 1, 1), Duration::from_secs(30));
    sim.partition((0..N).map(|i| u32::from(i % 3 == 0)).collect());
    sim.run_for(Duration::from_secs(1));
    write_entries(&mut sim, &all, 2, 2);
    sim.run_for(Duration::from_secs(20));
    sim.heal();
    await_converged(&mut sim, &all, &expected(&all, 2, 2), Duration::from_secs(120));
}
