use netdb::Config;
use netdb::sim::{NetConfig, Sim};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(10);
    let mut sim = Sim::new(
        std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(31),
        Config::default(),
        NetConfig::default(),
    );
    for _ in 0..n {
        sim.add_node();
    }
    sim.join_all(0);
    sim.run_for(Duration::from_secs(5));
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, "net").unwrap());
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..n {
        sim.with_node(i, |node, now| {
            node.put(now, "net", "t", &format!("k{i}"), bytes::Bytes::from_static(b"v")).unwrap()
        });
    }
    sim.run_for(Duration::from_secs(5));
    println!("before partition: {}", sim.node(0).unwrap().entries("net", "t").len());
    sim.partition((0..n).map(|i| (i % 2) as u32).collect());
    sim.run_for(Duration::from_secs(30));
    println!(
        "partitioned: {} raw {}",
        sim.node(0).unwrap().entries("net", "t").len(),
        sim.node(0).unwrap().raw_entries("net").len()
    );
    for i in 0..n {
        sim.with_node(i, |node, now| {
            node.delete(now, "net", "t", &format!("k{i}")).unwrap();
            node.put(now, "net", "t", &format!("j{i}"), bytes::Bytes::from_static(b"v")).unwrap();
        });
    }
    sim.run_for(Duration::from_secs(10));
    sim.record_events = true;
    sim.heal();
    for step in 0..6 {
        sim.run_for(Duration::from_secs(5));
        println!(
            "now {:?} net {:?} gossip_out {:?} next {:?}",
            sim.now(),
            sim.net_stats(),
            sim.node(0).unwrap().stats().gossip_out,
            sim.node(0).unwrap().poll_timeout()
        );
        for i in 0..4 {
            println!(
                "n{i} swim out {:?} in {:?} drops {:?}",
                sim.node(i).unwrap().stats().swim_out,
                sim.node(i).unwrap().stats().swim_in,
                sim.node(i).unwrap().stats().drops
            );
        }
        let ms = sim.node(0).unwrap().members();
        println!(
            "t+{}s: {:?}",
            (step + 1) * 5,
            ms.iter().map(|m| (m.name.clone(), m.state, m.generation)).collect::<Vec<_>>()
        );
        println!(
            "  visible {} raw {:?}",
            sim.node(0).unwrap().entries("net", "t").len(),
            sim.node(0)
                .unwrap()
                .raw_entries("net")
                .iter()
                .filter(|(_, k, _)| k.starts_with("j"))
                .map(|(_, k, e)| (k.to_string(), e.hidden, e.deleted))
                .collect::<Vec<_>>()
        );
    }
    for (i, t, e) in sim.events.iter().filter(|(i, _, _)| *i == 0).take(60) {
        println!("{i} {t:?} {e:?}");
    }
}
