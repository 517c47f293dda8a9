//! The loopback benchmark's workload on the simulator: N nodes each write
//! PER entries at once; prints when each node held all N×PER (min / median
//! / max), so protocol effects can be told apart from process effects.
//! Then what `bench_loopback` times next, each node's arrival (median /
//! max): one delete as the last node completes the burst (the benchmark
//! deletes then, while the burst's relays and exchanges go on), and 20
//! writes and 20 deletes at rest, 3 s apart. `--seed S` picks the
//! simulator's seed (5): the delete as the burst ends is one event a run.
//!
//! `cargo run --release -p netdb --example sim_burst -- [--relay-mult K] [--tree]
//! [--latency-us US] [--jitter-us US] [--seed S] 30 100`

use std::time::Duration;

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim, config_from_args};
use netdb::{EntryEventKind, Event, MemberState, Scope, TreeCounts};

fn main() {
    let (cfg, rest) = config_from_args(std::env::args().skip(1));
    let mut net = NetConfig::default();
    let mut sizes = Vec::new();
    let mut seed = 5;
    let mut rest = rest.into_iter();
    while let Some(a) = rest.next() {
        let us = |v: Option<String>| v.and_then(|s| s.parse().ok()).map(Duration::from_micros);
        match a.as_str() {
            "--latency-us" => net.latency = us(rest.next()).unwrap_or(net.latency),
            "--jitter-us" => net.jitter = us(rest.next()).unwrap_or(net.jitter),
            "--seed" => seed = rest.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            _ => sizes.extend(a.parse::<usize>().ok()),
        }
    }
    let n = sizes.first().copied().unwrap_or(30);
    let per = sizes.get(1).copied().unwrap_or(100).max(2);
    let mut sim = Sim::new(seed, cfg, net);
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
    sim.record_events = true;
    let end = spread(&mut sim, 0, "n0-000", true);
    print_spread("delete as the burst ends", &[end]);
    // Lone events at rest, each at another phase of the nodes' ticks (an
    // offset of 37 ms more each time), from node 1, 2, ...: half writes,
    // half deletes of the burst's entries (never n0-000, deleted above).
    let (mut writes, mut deletes) = (Vec::new(), Vec::new());
    for k in 1..=TRIALS {
        sim.run_for(Duration::from_secs(3) + Duration::from_millis(37 * k as u64));
        let from = k % n;
        if k % 2 == 0 {
            let key = format!("n{from}-{:03}", 1 + k % (per - 1));
            deletes.push(spread(&mut sim, from, &key, true));
        } else {
            writes.push(spread(&mut sim, from, &format!("lone-{k}"), false));
        }
    }
    print_spread("write at rest", &writes);
    print_spread("delete at rest", &deletes);
}

/// Lone events at rest measured, each.
const TRIALS: usize = 40;

/// One lone event's spread: when each other node's watcher would have
/// seen it, and the gossip copies the nodes received meanwhile.
struct Spread {
    arrivals: Vec<Duration>,
    copies: u64,
}

/// Over the events: each node's arrival (median over every node and
/// event; the median and the largest of the events' last arrivals), the
/// nodes never reached, and copies per node per event.
fn print_spread(what: &str, runs: &[Spread]) {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mut all: Vec<f64> = runs.iter().flat_map(|r| r.arrivals.iter().map(ms)).collect();
    all.sort_by(f64::total_cmp);
    let mut last: Vec<f64> =
        runs.iter().map(|r| r.arrivals.iter().map(ms).fold(0.0, f64::max)).collect();
    last.sort_by(f64::total_cmp);
    let nodes = runs.first().map_or(1, |r| r.arrivals.len() + 1);
    let copies = runs.iter().map(|r| r.copies).sum::<u64>() as f64;
    println!(
        "{what} ({} events): a node median {:.1} ms; last node median {:.1} ms, max {:.1} ms; \
         copies per node per event {:.2}",
        runs.len(),
        all[all.len() / 2],
        last[last.len() / 2],
        last[last.len() - 1],
        copies / (nodes * runs.len()) as f64
    );
}

/// Host `from` writes (or deletes) `key`; waits until every node saw it
/// (30 s at most: a node never reached counts as 30 s) and 2 s more, for
/// the copies.
fn spread(sim: &mut Sim, from: usize, key: &str, delete: bool) -> Spread {
    let n = sim.len();
    let copies =
        |sim: &Sim| (0..n).map(|i| sim.node(i).unwrap().stats().gossip_copies).sum::<u64>();
    let copies0 = copies(sim);
    sim.events.clear();
    let t0 = sim.now();
    sim.with_node(from, |node, now| {
        if delete {
            node.delete(now, "bench", "t", key).unwrap();
        } else {
            node.put(now, "bench", "t", key, Bytes::from_static(b"v")).unwrap();
        }
    });
    let kind = if delete { EntryEventKind::Delete } else { EntryEventKind::Create };
    let limit = Duration::from_secs(30);
    let mut seen: Vec<Option<Duration>> = vec![None; n];
    seen[from] = Some(Duration::ZERO);
    while seen.iter().any(Option::is_none) && sim.now() - t0 < limit {
        sim.run_for(Duration::from_millis(10));
        for (i, at, e) in sim.events.drain(..) {
            if let Event::Entry { key: k, kind: kd, .. } = &e
                && k == key
                && *kd == kind
            {
                seen[i].get_or_insert(at - t0);
            }
        }
    }
    sim.run_for(Duration::from_secs(2));
    sim.events.clear();
    let arrivals = seen
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != from)
        .map(|(_, d)| d.unwrap_or(limit))
        .collect();
    Spread { arrivals, copies: copies(sim) - copies0 }
}
