use netdb::Config;
use netdb::sim::{NetConfig, Sim};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(10);
    let mut sim = Sim::new(1, Config::default(), NetConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    sim.join_all(0);
    let t = sim.run_until_true(Duration::from_millis(200), Duration::from_secs(120), |s| {
        s.running().iter().all(|&i| {
            s.node(i)
                .unwrap()
                .members()
                .iter()
                .filter(|m| m.state == netdb::MemberState::Alive)
                .count()
                == n
        })
    });
    println!("members converged after {t:?}");
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, "net").unwrap());
    }
    let t = sim.run_until_true(Duration::from_millis(200), Duration::from_secs(120), |s| {
        s.running().iter().all(|&i| s.node(i).unwrap().network_peers("net").len() == n - 1)
    });
    println!("attachments converged after {t:?}");
    for i in 0..n {
        sim.with_node(i, |node, now| {
            for k in 0..10 {
                node.put(now, "net", "t", &format!("{i}-{k}"), bytes::Bytes::from_static(b"value"))
                    .unwrap()
            }
        });
    }
    let t = sim.run_until_true(Duration::from_millis(200), Duration::from_secs(120), |s| {
        s.running().iter().all(|&i| s.node(i).unwrap().entries("net", "t").len() == n * 10)
    });
    println!("entries converged after {t:?} {:?}", sim.net_stats());
    let roots: std::collections::BTreeSet<_> =
        (0..n).map(|i| sim.node(i).unwrap().root("net")).collect();
    println!("distinct roots {}", roots.len());
    println!("{:?}", sim.node(0).unwrap().stats());
}
