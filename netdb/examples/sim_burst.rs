//! The loopback benchmark's workload on the simulator: N nodes each write
//! PER entries at once; prints when each node held all N×PER (min / median
//! / max), so protocol effects can be told apart from process effects.
//!
//! `cargo run --release -p netdb --example sim_burst -- [--relay-mult K] [--tree] 30 100`

use std::time::Duration;

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim, config_from_args};
use netdb::{MemberState, Scope, TreeCounts};

fn main() {
    let (cfg, rest) = config_from_args(std::env::args().skip(1));
    let mut args = rest.into_iter().filter_map(|a| a.parse::<usize>().ok());
    let n = args.next().unwrap_or(30);
    let per = args.next().unwrap_or(100);
    let mut sim = Sim::new(5, cfg, NetConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    sim.join_all(0);
    sim.run_until_true(Duration::from_millis(100), Duration::from_secs(120), |s| {
        (0..n).all(|i| {
            s.node(i).unwrap().members().iter().filter(|m| m.state == MemberState::Alive).count()
                == n
        })
    })
    .expect("membership");
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, "bench").unwrap());
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..n {
        sim.with_node(i, |node, now| {
            for k in 0..per {
                node.put(now, "bench", "t", &format!("n{i}-{k:03}"), Bytes::from(vec![b'v'; 40]))
                    .unwrap();
            }
        });
    }
    let start = sim.now();
    let mut done = vec![None; n];
    while done.iter().any(Option::is_none) && sim.now() - start < Duration::from_secs(60) {
        sim.run_for(Duration::from_millis(20));
        for (i, d) in done.iter_mut().enumerate() {
            let held = sim.node(i).unwrap().scope_stats(Scope::Network("bench"));
            if d.is_none() && held.is_some_and(|s| s.tables == [("t".to_string(), n * per)]) {
                *d = Some(sim.now() - start);
            }
        }
    }
    let mut t: Vec<f64> = done.iter().map(|d| d.map_or(f64::NAN, |d| d.as_secs_f64())).collect();
    t.sort_by(f64::total_cmp);
    let s0 = sim.node(0).unwrap().stats();
    println!(
        "{n} nodes x {per}: all entries on a node min {:.2}s median {:.2}s max {:.2}s; node 0: gossip out {} pkts, \
         entries from gossip {} / sync {}, syncs {}",
        t[0],
        t[n / 2],
        t[n - 1],
        s0.gossip_out.messages,
        s0.entries_from_gossip,
        s0.entries_from_sync,
        s0.syncs_started
    );
    let (mut copies, mut bytes, mut tree) = (0u64, 0u64, TreeCounts::default());
    for i in 0..n {
        let s = sim.node(i).unwrap().stats();
        copies += s.gossip_copies;
        bytes += s.gossip_out.bytes + s.sync_out.bytes;
        tree.ihave_sent += s.tree.ihave_sent;
        tree.graft_sent += s.tree.graft_sent;
        tree.prune_sent += s.tree.prune_sent;
    }
    println!(
        "copies per entry per node {:.2}; gossip and push/pull sent {:.1} MB in all; \
         tree: {} ihave, {} graft, {} prune sent",
        copies as f64 / (n * n * per) as f64,
        bytes as f64 / 1e6,
        tree.ihave_sent,
        tree.graft_sent,
        tree.prune_sent
    );
}
