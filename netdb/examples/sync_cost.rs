//! What one push/pull costs between two nodes holding the same large
//! table but for D differences: bytes each way, frames, entries carried,
//! exchanges until both hold the same, and the wall time of the nodes'
//! work (both in this thread; a real network adds a round trip per reply).
//!
//! `cargo run --release -p netdb --example sync_cost -- 100000 3 [D...]`
//! (table size, repetitions, differences: 0, 1, 100 and 10,000 unless
//! given). Of D differences, half are keys the opener holds older (the
//! server rewrote them), half keys the server lacks (the opener wrote them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use netdb::{Config, Node, Scope, Transmit};
use netdb_wire as wire;
use netdb_wire::sync_message::Body as B;
use prost::Message;

const NET: &str = "bench";

/// One direction of an exchange.
#[derive(Default, Clone, Copy)]
struct Flow {
    bytes: usize,
    frames: usize,
    entries: usize,
}

#[derive(Default)]
struct Cost {
    exchanges: usize,
    out: Flow,
    back: Flow,
    wall: Duration,
}

fn entries_in(payload: &[u8]) -> usize {
    match wire::SyncMessage::decode(payload).ok().and_then(|m| m.body) {
        Some(B::Open(r) | B::Ask(r) | B::Answer(r)) => r.entries.len(),
        _ => 0,
    }
}

/// Carries push/pull frames between the two nodes until neither sends
/// one; datagrams (gossip of the writes) are dropped, so only the
/// exchange repairs the difference.
fn pump(nodes: &mut [Node; 2], now: Duration, cost: &mut Cost) {
    loop {
        let mut moved = false;
        for i in 0..2 {
            let from = nodes[i].addr();
            while let Some(t) = nodes[i].poll_transmit() {
                let Transmit::Sync { payload, opens, .. } = t else { continue };
                moved = true;
                cost.exchanges += usize::from(opens);
                let flow = if i == 1 { &mut cost.out } else { &mut cost.back };
                flow.bytes += payload.len();
                flow.frames += 1;
                flow.entries += entries_in(&payload);
                nodes[1 - i].handle_sync(now, from, &payload);
                while nodes[1 - i].poll_event().is_some() {}
            }
        }
        if !moved {
            return;
        }
    }
}

/// Node 1 hears node 0's digest root as different and opens an exchange
/// with it (the gossip path), and the exchanges it opens at once after cut
/// ones; repeated until both roots are equal (an exchange cut by a peer
/// that does not say so waits for the next hint).
fn sync_until_equal(nodes: &mut [Node; 2], now: Duration) -> Cost {
    let mut cost = Cost::default();
    let start = Instant::now();
    for hints in 0.. {
        let root = nodes[0].root(Scope::Network(NET)).unwrap();
        let theirs = if hints == 0 { !root } else { root };
        if hints > 0 && nodes[1].root(Scope::Network(NET)) == Some(root) {
            break;
        }
        let hint = netdb::codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: NET.into(),
            root: theirs,
            entries: Vec::new(),
        }));
        let from = nodes[0].addr();
        nodes[1].handle_datagram(now, from, &hint);
        pump(nodes, now, &mut cost);
        assert!(hints < 1000, "no convergence");
    }
    cost.wall = start.elapsed();
    cost
}

/// Drops the gossip of the writes (only the exchange may repair the
/// difference) and the events (the shell's business).
fn drain(nodes: &mut [Node; 2]) {
    for n in nodes.iter_mut() {
        while n.poll_transmit().is_some() {}
        while n.poll_event().is_some() {}
    }
}

/// This process's resident set (both nodes and their tables), in MiB.
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.map_or(f64::NAN, |k| k / 1024.0)
}

fn value(i: usize, round: usize) -> Bytes {
    Bytes::from(format!("{i:08}-{round:04}-{}", "v".repeat(50)))
}

fn main() {
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let size = args.next().unwrap_or(100_000);
    let reps = args.next().unwrap_or(3);
    let mut ds: Vec<usize> = args.collect();
    if ds.is_empty() {
        ds = vec![0, 1, 100, 10_000];
    }
    let cfg = Config {
        // The hint starts the exchange at once.
        mismatch_sync_after: Duration::ZERO,
        sync_interval: Duration::from_secs(1 << 30),
        ..Config::default()
    };
    let addr = |i: u8| SocketAddr::from(([127, 0, 0, i], 7946));
    let now = Duration::from_secs(1);
    let mut nodes = [
        Node::new(cfg.clone(), "a", 1, addr(1), 1, Duration::ZERO).unwrap(),
        Node::new(cfg, "b", 1, addr(2), 2, Duration::ZERO).unwrap(),
    ];
    for n in nodes.iter_mut() {
        n.join_network(now, NET).unwrap();
    }
    let empty = resident_mib();
    for i in 0..size {
        nodes[0].put(now, NET, "t", &format!("key-{i:08}"), value(i, 0)).unwrap();
        drain(&mut nodes);
    }
    drain(&mut nodes);
    let one = resident_mib();
    let fill = sync_until_equal(&mut nodes, now);
    let both = resident_mib();
    let sample = wire::Entry {
        table: "t".into(),
        key: format!("key-{:08}", 0),
        value: value(0, 0),
        owner: "a".into(),
        incarnation: 1,
        ltime: 100_000,
        deleted: false,
        reap_in_ms: 0,
    };
    println!(
        "{size} entries of {} bytes on the wire; filling the second node took {} exchanges, \
         {:.2}s; resident with both tables {both:.1} MiB: {:.1} MiB the written table, {:.1} MiB \
         the pulled one",
        sample.encoded_len(),
        fill.exchanges,
        fill.wall.as_secs_f64(),
        one - empty,
        both - one,
    );
    println!(
        "{:>6} {:>3} {:>5} {:>11} {:>6} {:>8} {:>11} {:>6} {:>8} {:>9}",
        "D",
        "rep",
        "exch",
        "out bytes",
        "frames",
        "entries",
        "back bytes",
        "frames",
        "entries",
        "wall ms"
    );
    let mut round = 0;
    for d in ds {
        for rep in 0..reps {
            round += 1;
            // Server-side rewrites (the opener lacks them), then the
            // opener's own new keys (the server lacks them).
            for i in 0..d / 2 {
                let k = (i * 7919 + round * 31) % size;
                nodes[0].put(now, NET, "t", &format!("key-{k:08}"), value(k, round)).unwrap();
            }
            for i in 0..d - d / 2 {
                nodes[1].put(now, NET, "t", &format!("b-{round}-{i}"), value(i, round)).unwrap();
            }
            drain(&mut nodes);
            let c = sync_until_equal(&mut nodes, now);
            println!(
                "{d:>6} {rep:>3} {:>5} {:>11} {:>6} {:>8} {:>11} {:>6} {:>8} {:>9.2}",
                c.exchanges,
                c.out.bytes,
                c.out.frames,
                c.out.entries,
                c.back.bytes,
                c.back.frames,
                c.back.entries,
                c.wall.as_secs_f64() * 1000.0
            );
        }
    }
}
