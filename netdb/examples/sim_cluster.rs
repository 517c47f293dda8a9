//! A local cluster inside one process: five simulated nodes join through
//! the first, one writes an entry, everyone shows it, one crashes and the
//! others mark it failed. Virtual time, so it runs in a blink.
//!
//! `cargo run --release -p netdb --example sim_cluster`

use std::time::Duration;

use bytes::Bytes;
use netdb::Config;
use netdb::sim::{NetConfig, Sim};

fn main() {
    let mut sim = Sim::new(1, Config::default(), NetConfig::default());
    for _ in 0..5 {
        sim.add_node();
    }
    sim.join_all(0);
    sim.run_for(Duration::from_secs(3));
    for i in 0..5 {
        sim.with_node(i, |n, now| n.join_network(now, "demo").expect("join"));
    }
    sim.run_for(Duration::from_secs(1));
    show_members(&sim, 0);

    sim.with_node(2, |n, now| {
        n.put(now, "demo", "services", "web", Bytes::from_static(b"10.0.0.2")).expect("put")
    });
    let t0 = sim.now();
    sim.run_until_true(Duration::from_millis(10), Duration::from_secs(10), |s| {
        (0..5).all(|i| s.node(i).is_some_and(|n| n.get("demo", "services", "web").is_some()))
    });
    println!("\nn2 wrote demo/services/web; on every node after {:?}:", sim.now() - t0);
    for i in 0..5 {
        let e = sim.node(i).and_then(|n| n.get("demo", "services", "web")).expect("entry");
        println!(
            "  n{i}: web = {} (owner {}, ltime {})",
            String::from_utf8_lossy(&e.value),
            e.owner,
            e.ltime
        );
    }

    sim.crash(4);
    let t0 = sim.now();
    sim.run_for(Duration::from_secs(10));
    println!("\nn4 crashed {:?} ago:", sim.now() - t0);
    show_members(&sim, 0);
}

fn show_members(sim: &Sim, observer: usize) {
    println!("members as n{observer} sees them:");
    for m in sim.node(observer).expect("running").members() {
        let addr = m.addr.map(|a| a.to_string()).unwrap_or_default();
        println!("  {:<4} {:<18} {}", m.name, addr, m.state.as_str());
    }
}
