//! Rules that hold whatever the arrival order: equal-ltime writes, tombstone
//! lifetimes, hostile input, and reproducibility.

use std::time::Duration;

use bytes::Bytes;
use netdb::codec::{self, SYNC_VERSION};
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, DropReason, Scope};
use netdb_tests::*;
use netdb_wire as wire;
use prost::Message;

fn gossip(network: &str, entries: Vec<wire::Entry>) -> Vec<u8> {
    codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
        network: network.into(),
        root: 0,
        entries,
    }))
}

fn entry(owner: &str, ltime: u64, value: &str) -> wire::Entry {
    wire::Entry {
        table: TABLE.into(),
        key: "shared".into(),
        value: Bytes::from(value.to_string()),
        owner: owner.into(),
        incarnation: 1,
        ltime,
        deleted: false,
        reap_in_ms: 0,
    }
}

#[test]
fn equal_ltime_writes_by_two_owners_end_the_same_on_every_node() {
    let mut sim = cluster(6, 41, Config::default());
    let from = sim.addr(5);
    let a = gossip(NET, vec![entry("n1", 1000, "from n1")]);
    let b = gossip(NET, vec![entry("n2", 1000, "from n2")]);
    let mut tomb = entry("n1", 1000, "n1 deleted");
    tomb.deleted = true;
    tomb.reap_in_ms = 60_000;
    let t = gossip(NET, vec![tomb]);
    // Three nodes, three arrival orders, including a same-ltime tombstone
    // (NetworkDB's tie kept whichever came first).
    let orders: [[&Vec<u8>; 3]; 3] = [[&a, &b, &t], [&b, &a, &t], [&t, &b, &a]];
    for (i, order) in orders.iter().enumerate() {
        sim.with_node(i, |n, now| {
            for p in order {
                n.handle_datagram(now, from, p);
            }
        });
    }
    let winners: Vec<_> = (0..3).map(|i| view(&sim, i).get("shared").cloned()).collect();
    assert_eq!(winners[0], Some(Bytes::from("from n2")), "n2 > n1 at equal ltime");
    assert!(winners.iter().all(|w| w == &winners[0]), "{winners:?}");
    // And the rest of the cluster converges to the same by gossip.
    let all: Vec<usize> = (0..6).collect();
    let t = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
        all.iter().all(|&i| view(s, i).get("shared") == Some(&Bytes::from("from n2")))
            && roots(s, &all, Scope::Network(NET)).len() == 1
    });
    assert!(t.is_some());
}

#[test]
fn concurrent_writes_of_one_key_converge() {
    let mut sim = cluster(10, 42, Config::default());
    // Cut 3 and 7 apart so neither learns of the other's write first.
    let groups: Vec<u32> = (0..10).map(|i| u32::from(i >= 5)).collect();
    sim.partition(groups);
    for i in [3usize, 7] {
        sim.with_node(i, |n, now| {
            n.put(now, NET, TABLE, "shared", Bytes::from(format!("n{i}"))).unwrap()
        });
    }
    sim.run_for(Duration::from_secs(2));
    sim.heal();
    let all: Vec<usize> = (0..10).collect();
    let t = sim.run_until_true(CHECK, Duration::from_secs(300), |s| {
        let v0 = view(s, 0).get("shared").cloned();
        v0.is_some()
            && all.iter().all(|&i| view(s, i).get("shared") == v0.as_ref())
            && roots(s, &all, Scope::Network(NET)).len() == 1
    });
    assert!(t.is_some(), "one value of the shared key everywhere");
}

#[test]
fn tombstones_carry_residual_lifetime_and_are_reaped_everywhere() {
    let ttl = Duration::from_secs(60);
    let cfg = Config { tombstone_ttl: ttl, ..Config::default() };
    let mut sim = cluster(8, 43, cfg);
    // Node 7 leaves the network so it will learn of the delete late.
    sim.with_node(7, |n, now| n.leave_network(now, NET).unwrap());
    sim.with_node(0, |n, now| n.put(now, NET, TABLE, "k", Bytes::from_static(b"v")).unwrap());
    sim.run_for(Duration::from_secs(2));
    let deleted_at = sim.now();
    sim.with_node(0, |n, now| n.delete(now, NET, TABLE, "k").unwrap());
    sim.run_for(Duration::from_secs(30));
    for i in 0..7 {
        let raw = sim.node(i).unwrap().raw_entries(NET);
        assert!(raw.iter().any(|(_, k, e)| *k == "k" && e.deleted), "n{i} holds the tombstone");
    }
    // Joining 30 s later, node 7 gets the tombstone by push/pull with the
    // lifetime it has left, not a fresh one.
    sim.with_node(7, |n, now| n.join_network(now, NET).unwrap());
    sim.run_for(Duration::from_secs(5));
    let late = sim.node(7).unwrap().raw_entries(NET);
    let reap_at = late.iter().find(|(_, k, _)| *k == "k").and_then(|(_, _, e)| e.reap_at);
    let reap_at = reap_at.expect("late joiner holds the tombstone");
    assert!(reap_at <= deleted_at + ttl + Duration::from_secs(1), "not re-armed: {reap_at:?}");
    sim.run_until(deleted_at + ttl + Duration::from_secs(5));
    for i in 0..8 {
        let raw = sim.node(i).unwrap().raw_entries(NET);
        assert!(raw.iter().all(|(_, k, _)| *k != "k"), "n{i} reaped the tombstone");
    }
    // And nobody brings it back.
    sim.run_for(Duration::from_secs(40));
    assert!((0..8).all(|i| view(&sim, i).is_empty()));
}

#[test]
fn hostile_input_is_dropped_counted_and_changes_nothing() {
    let mut sim = cluster(4, 44, Config::default());
    write_entries(&mut sim, &[1, 2], 3, 1);
    sim.run_for(Duration::from_secs(5));
    let before_root = sim.node(0).unwrap().root(Scope::Network(NET));
    let before_view = view(&sim, 0);
    let from = sim.addr(3);
    let mut forged = entry("n1", 99, "x");
    forged.table = "networks".into();
    forged.key = "net/n2".into();
    let mut huge = entry("n1", 5, "x");
    huge.value = Bytes::from(vec![b'x'; 70_000]);
    let bad_version =
        wire::Datagram { version: 9, body: Some(wire::datagram::Body::Swim(Bytes::new())) };
    let inputs: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![0xff; 32], DropReason::Malformed),
        (gossip(NET, vec![entry("n1", 0, "zero ltime")]), DropReason::BadEntry),
        (gossip("", vec![forged]), DropReason::ForgedOwner),
        (gossip(NET, vec![huge]), DropReason::TooLarge),
        (bad_version.encode_to_vec(), DropReason::BadVersion),
        (gossip("other-net", vec![entry("n1", 5, "x")]), DropReason::NotMember),
    ];
    for (bytes, reason) in &inputs {
        let before = sim.node(0).unwrap().stats().dropped(*reason);
        sim.with_node(0, |n, now| n.handle_datagram(now, from, bytes));
        assert_eq!(sim.node(0).unwrap().stats().dropped(*reason), before + 1, "{reason:?}");
    }
    let garbage_sync = [vec![], vec![1, 2, 3], vec![0x0a; 5000]];
    for g in &garbage_sync {
        sim.with_node(0, |n, now| n.handle_sync(now, from, g));
    }
    let unsolicited = wire::SyncMessage {
        version: SYNC_VERSION,
        sync_id: 777,
        network: NET.into(),
        body: Some(wire::sync_message::Body::Ask(wire::SyncRound {
            entries: vec![entry("n1", 50, "x")],
            ..Default::default()
        })),
    };
    sim.with_node(0, |n, now| n.handle_sync(now, from, &unsolicited.encode_to_vec()));
    assert!(sim.node(0).unwrap().stats().dropped(DropReason::UnexpectedSync) >= 1);
    assert_eq!(sim.node(0).unwrap().root(Scope::Network(NET)), before_root);
    assert_eq!(view(&sim, 0), before_view);
    // Still serving: a new write spreads.
    sim.with_node(0, |n, now| n.put(now, NET, TABLE, "after", Bytes::from_static(b"ok")).unwrap());
    sim.run_for(Duration::from_secs(3));
    assert!(view(&sim, 3).contains_key("after"));
}

fn chaotic_run(seed: u64) -> (u64, netdb::sim::NetStats) {
    let net = NetConfig {
        loss: 0.1,
        duplicate: 0.1,
        jitter: Duration::from_millis(20),
        ..NetConfig::default()
    };
    let mut sim = Sim::new(seed, Config::default(), net);
    for _ in 0..30 {
        sim.add_node();
    }
    sim.join_all(0);
    sim.run_for(Duration::from_secs(10));
    for i in 0..30 {
        sim.with_node(i, |n, now| n.join_network(now, NET).unwrap());
    }
    sim.run_for(Duration::from_secs(5));
    write_entries(&mut sim, &(0..30).collect::<Vec<_>>(), 3, 1);
    sim.crash(4);
    sim.run_for(Duration::from_secs(20));
    (sim.fingerprint(), sim.net_stats())
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let a = chaotic_run(45);
    let b = chaotic_run(45);
    assert_eq!(a, b);
    let c = chaotic_run(46);
    assert_ne!(a.0, c.0, "a different seed takes a different path");
}

/// A digest alone (the sender had nothing queued) that differs from a
/// root which has not moved since the last comparison: nothing is in
/// flight either way, so the push/pull starts at once. A root that just
/// moved waits for the difference to outlast the updates in flight.
#[test]
fn a_lone_digest_against_a_settled_root_starts_a_push_pull_at_once() {
    let all = [0, 1, 2];
    let mut sim = cluster(all.len(), 71, Config::default());
    write_entries(&mut sim, &all, 2, 1);
    await_converged(&mut sim, &all, &expected(&all, 2, 1), Duration::from_secs(30));
    sim.run_for(Duration::from_secs(3));
    let digest = |root| {
        codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: NET.into(),
            root,
            entries: Vec::new(),
        }))
    };
    let root = |sim: &Sim| sim.node(2).unwrap().scope_stats(Scope::Network(NET)).unwrap().root;
    let started = |sim: &Sim| sim.node(2).unwrap().stats().syncs_started;
    // A matching digest first, so node 2 has compared its present root.
    sim.inject(1, 2, &digest(root(&sim)));
    sim.run_for(Duration::from_millis(300));
    let before = started(&sim);
    sim.inject(1, 2, &digest(root(&sim) ^ 1));
    assert_eq!(started(&sim), before + 1, "a settled difference is repaired at once");

    sim.run_for(Duration::from_secs(3));
    sim.with_node(2, |n, now| n.put(now, NET, TABLE, "fresh", Bytes::from_static(b"v")).unwrap());
    let before = started(&sim);
    sim.inject(1, 2, &digest(root(&sim) ^ 1));
    assert_eq!(started(&sim), before, "its root just moved: updates may be in flight");
}

#[test]
fn a_difference_larger_than_one_sync_frame_still_converges() {
    // 64 KiB frames against ~300 KB of entries: each exchange must carry
    // what the last did not, not the same first frame's worth again.
    let cfg = Config { max_sync_frame: 64 * 1024, ..Config::default() };
    let mut sim = cluster(3, 47, cfg);
    sim.with_node(2, |n, now| n.leave_network(now, NET).unwrap());
    sim.with_node(0, |n, now| {
        for k in 0..3000 {
            n.put(now, NET, TABLE, &format!("k{k:05}"), Bytes::from(vec![b'x'; 80])).unwrap();
        }
    });
    sim.run_for(Duration::from_secs(20));
    sim.with_node(2, |n, now| n.join_network(now, NET).unwrap());
    let t = sim.run_until_true(CHECK, Duration::from_secs(300), |s| view(s, 2).len() == 3000);
    assert!(t.is_some(), "the late joiner holds {} of 3000", view(&sim, 2).len());
}

#[test]
fn a_node_that_saw_an_owner_fail_for_good_still_learns_it_left() {
    let cfg = Config { failed_grace: Duration::from_secs(30), ..Config::default() };
    let mut sim = cluster(5, 48, cfg);
    sim.partition(vec![0, 0, 1, 1, 1]);
    sim.run_for(Duration::from_secs(5));
    sim.with_node(4, |n, now| n.leave(now));
    sim.run_for(Duration::from_secs(1));
    sim.crash(4);
    // Past the grace period: nodes 0 and 1 removed n4 as failed (Gone),
    // nodes 2 and 3 as left.
    sim.run_for(Duration::from_secs(60));
    sim.heal();
    let live = [0, 1, 2, 3];
    let t = sim.run_until_true(CHECK, Duration::from_secs(120), |s| {
        roots(s, &live, Scope::Cluster).len() == 1
    });
    assert!(t.is_some(), "cluster digests stay split: {:?}", roots(&sim, &live, Scope::Cluster));
    assert_eq!(member_state(&sim, 0, "n4"), Some(netdb::MemberState::Left));
}
