//! Spread of one new entry through N simulated nodes: prints the virtual
//! time and gossip rounds until 50 %, 99 % and 100 % of the nodes hold it,
//! on a clean network and with 20 % loss, and the wall time of each run.
//!
//! `cargo run --release -p netdb --example sim_spread -- [--tree] [--relay-mult K] 200 1000`

use std::time::{Duration, Instant};

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim, config_from_args};
use netdb::{Config, MemberState};

const NET: &str = "net";

fn main() {
    let (cfg, rest) = config_from_args(std::env::args().skip(1));
    let sizes: Vec<usize> = rest.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![200, 1000] } else { sizes };
    println!(
        "{:>6} {:>5} {:>22} {:>22} {:>22} {:>9} {:>9} {:>9}",
        "nodes", "loss", "50% (time/rounds)", "99%", "100%", "form", "wall", "lost pkts"
    );
    for &n in &sizes {
        for loss in [0.0, 0.2] {
            run(n, loss, &cfg);
        }
    }
}

fn run(n: usize, loss: f64, cfg: &Config) {
    let wall = Instant::now();
    let tick = cfg.gossip_interval;
    let mut sim = Sim::new(7 + n as u64, cfg.clone(), NetConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    sim.join_all(0);
    let formed = sim
        .run_until_true(tick, Duration::from_secs(600), |s| {
            s.running().iter().all(|&i| {
                s.node(i).is_some_and(|x| {
                    x.members().iter().filter(|m| m.state == MemberState::Alive).count() == n
                })
            })
        })
        .expect("membership formed");
    eprintln!("n={n} loss={loss}: membership formed, {:.1}s wall", wall.elapsed().as_secs_f64());
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, NET).expect("join"));
    }
    sim.run_until_true(tick, Duration::from_secs(600), |s| {
        s.running().iter().all(|&i| s.node(i).is_some_and(|x| x.network_peers(NET).len() == n - 1))
    })
    .expect("attachments spread");
    eprintln!(
        "n={n} loss={loss}: network attachments spread, {:.1}s wall",
        wall.elapsed().as_secs_f64()
    );
    // Let the bootstrap's own gossip drain so it does not share the links.
    sim.run_for(Duration::from_secs(10));
    sim.net.loss = loss;
    sim.with_node(0, |node, now| {
        node.put(now, NET, "t", "the-key", Bytes::from_static(b"v")).expect("put")
    });
    let start = sim.now();
    let lost_before = sim.net_stats().lost;
    let mut marks: Vec<Option<Duration>> = vec![None; 3];
    let goals = [0.5, 0.99, 1.0];
    while marks[2].is_none() && sim.now() - start < Duration::from_secs(120) {
        let holders = (0..n)
            .filter(|&i| sim.node(i).is_some_and(|x| x.get(NET, "t", "the-key").is_some()))
            .count();
        for (m, g) in marks.iter_mut().zip(goals) {
            if m.is_none() && holders as f64 >= g * n as f64 {
                *m = Some(sim.now() - start);
            }
        }
        // Check at a finer grain than the tick, rounds are counted in ticks.
        sim.run_for(tick / 10);
    }
    let fmt = |d: Option<Duration>| match d {
        Some(d) => format!("{:.2}s / {:.1}", d.as_secs_f64(), d.as_secs_f64() / tick.as_secs_f64()),
        None => "not reached".into(),
    };
    let lost = sim.net_stats().lost - lost_before;
    println!(
        "{:>6} {:>4.0}% {:>22} {:>22} {:>22} {:>8.1}s {:>8.1}s {:>9}",
        n,
        loss * 100.0,
        fmt(marks[0]),
        fmt(marks[1]),
        fmt(marks[2]),
        formed.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        lost
    );
}
