//! Nodes that crash, pause, get cut off, restart without state, or leave:
//! what every other node must end up showing.

use std::collections::BTreeMap;
use std::time::Duration;

use netdb::sim::Sim;
use netdb::{Config, MemberState};
use netdb_tests::*;

const N: usize = 20;
const VICTIM: usize = 5;

fn others(except: usize) -> Vec<usize> {
    (0..N).filter(|&i| i != except).collect()
}

/// A converged cluster where every node wrote 5 entries.
fn settled(seed: u64) -> (Sim, BTreeMap<String, bytes::Bytes>) {
    let mut sim = cluster(N, seed, Config::default());
    let all: Vec<usize> = (0..N).collect();
    write_entries(&mut sim, &all, 5, 1);
    let want = expected(&all, 5, 1);
    await_converged(&mut sim, &all, &want, Duration::from_secs(60));
    (sim, want)
}

fn versions_of(sim: &Sim, observer: usize, owner: &str) -> Vec<(String, u64, u64)> {
    sim.node(observer)
        .unwrap()
        .entries(NET, TABLE)
        .into_iter()
        .filter(|(_, e)| &*e.owner == owner)
        .map(|(k, e)| (k.to_string(), e.ltime, e.incarnation))
        .collect()
}

fn without_owner(
    want: &BTreeMap<String, bytes::Bytes>,
    i: usize,
) -> BTreeMap<String, bytes::Bytes> {
    want.iter()
        .filter(|(k, _)| !k.starts_with(&format!("n{i}-")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn crashed_node_entries_disappear_everywhere() {
    let (mut sim, want) = settled(21);
    sim.crash(VICTIM);
    let took = await_converged(
        &mut sim,
        &others(VICTIM),
        &without_owner(&want, VICTIM),
        Duration::from_secs(60),
    );
    // Failure detection, not the 30 s sync, removes them.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for i in others(VICTIM) {
        assert_eq!(member_state(&sim, i, "n5"), Some(MemberState::Failed), "as seen by n{i}");
        assert!(!sim.node(i).unwrap().network_peers(NET).contains(&"n5".to_string()));
    }
}

/// Cuts the victim off (by `cut`), waits until everyone hid its entries,
/// undoes the cut (by `restore`) within the grace period, and checks its
/// entries come back on every node with the very same versions.
fn comes_back_within_grace(seed: u64, cut: impl FnOnce(&mut Sim), restore: impl FnOnce(&mut Sim)) {
    let (mut sim, want) = settled(seed);
    let before = versions_of(&sim, 0, "n5");
    assert_eq!(before.len(), 5);
    let writes_before = sim.node(VICTIM).unwrap().stats().clone();
    cut(&mut sim);
    await_converged(
        &mut sim,
        &others(VICTIM),
        &without_owner(&want, VICTIM),
        Duration::from_secs(60),
    );
    assert_eq!(member_state(&sim, 0, "n5"), Some(MemberState::Failed));
    sim.run_for(Duration::from_secs(20));
    restore(&mut sim);
    let all: Vec<usize> = (0..N).collect();
    await_converged(&mut sim, &all, &want, Duration::from_secs(180));
    for i in others(VICTIM) {
        assert_eq!(versions_of(&sim, i, "n5"), before, "n{i} restored n5's entries unchanged");
        assert_eq!(member_state(&sim, i, "n5"), Some(MemberState::Alive));
    }
    // The victim renewed its SWIM identity, not its entries.
    assert_eq!(sim.node(VICTIM).unwrap().incarnation(), 1);
    let generation =
        sim.node(0).unwrap().members().into_iter().find(|m| m.name == "n5").unwrap().generation;
    assert!(generation >= 1, "n5 rejoined under a renewed identity (generation {generation})");
    assert_eq!(versions_of(&sim, VICTIM, "n5"), before);
    assert!(sim.node(VICTIM).unwrap().stats().syncs_started > writes_before.syncs_started);
}

#[test]
fn paused_node_declared_failed_gets_its_entries_restored() {
    comes_back_within_grace(22, |s| s.pause(VICTIM), |s| s.resume(VICTIM));
}

#[test]
fn partitioned_node_declared_failed_gets_its_entries_restored() {
    let mut groups = vec![0u32; N];
    groups[VICTIM] = 1;
    comes_back_within_grace(23, move |s| s.partition(groups), |s| s.heal());
}

#[test]
fn failed_node_entries_are_removed_after_the_grace_period() {
    let cfg = Config { failed_grace: Duration::from_secs(30), ..Config::default() };
    let mut sim = cluster(N, 24, cfg);
    write_entries(&mut sim, &[VICTIM], 5, 1);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.node(0).unwrap().raw_entries(NET).len(), 5);
    sim.crash(VICTIM);
    sim.run_for(Duration::from_secs(15));
    assert!(view(&sim, 0).is_empty(), "hidden during the grace period");
    assert_eq!(sim.node(0).unwrap().raw_entries(NET).len(), 5, "but kept");
    sim.run_for(Duration::from_secs(40));
    for i in others(VICTIM) {
        assert!(
            sim.node(i).unwrap().raw_entries(NET).is_empty(),
            "n{i} removed them after the grace period"
        );
    }
}

#[test]
fn restart_without_state_removes_the_earlier_generation_everywhere() {
    let (mut sim, want) = settled(25);
    // Crash and restart at once, faster than failure detection: only the
    // new incarnation tells the cluster that the old entries are dead.
    sim.crash(VICTIM);
    sim.restart(VICTIM, 0);
    sim.run_for(Duration::from_millis(10));
    assert!(sim.node(VICTIM).unwrap().incarnation() > 1);
    sim.with_node(VICTIM, |n, now| n.join_network(now, NET).unwrap());
    sim.with_node(VICTIM, |n, now| {
        for k in 0..3 {
            n.put(now, NET, TABLE, &format!("n5-new{k}"), value(VICTIM, k, 2)).unwrap();
        }
    });
    let mut now_want = without_owner(&want, VICTIM);
    for k in 0..3 {
        now_want.insert(format!("n5-new{k}"), value(VICTIM, k, 2));
    }
    let all: Vec<usize> = (0..N).collect();
    await_converged(&mut sim, &all, &now_want, Duration::from_secs(120));
    for i in 0..N {
        let raw = sim.node(i).unwrap().raw_entries(NET);
        assert!(
            raw.iter().all(|(_, _, e)| &*e.owner != "n5" || e.incarnation == 2),
            "n{i} holds nothing of n5's first incarnation, not even hidden"
        );
    }
}

#[test]
fn restart_with_state_keeps_the_entries_everywhere_and_its_newest_word_wins() {
    let (mut sim, mut want) = settled(27);
    // Before the crash: a delete and an update the restarted node will not
    // remember, gossiped everywhere.
    sim.with_node(VICTIM, |n, now| {
        n.delete(now, NET, TABLE, &key(VICTIM, 0)).unwrap();
        n.put(now, NET, TABLE, &key(VICTIM, 1), value(VICTIM, 1, 2)).unwrap();
    });
    // And a network the restarted node will not join by itself.
    for i in [0, VICTIM] {
        sim.with_node(i, |n, now| n.join_network(now, "plain").unwrap());
    }
    sim.with_node(VICTIM, |n, now| n.put(now, "plain", TABLE, "p", value(VICTIM, 9, 1)).unwrap());
    let plain_everywhere = |s: &Sim| {
        [0, VICTIM].iter().all(|&i| s.node(i).is_some_and(|n| n.get("plain", TABLE, "p").is_some()))
    };
    assert!(sim.run_until_true(CHECK, Duration::from_secs(30), plain_everywhere).is_some());
    want.remove(&key(VICTIM, 0));
    want.insert(key(VICTIM, 1), value(VICTIM, 1, 2));
    let all: Vec<usize> = (0..N).collect();
    await_converged(&mut sim, &all, &want, Duration::from_secs(60));

    // Crash and restart at once in the same incarnation, as an agent with
    // its data dir does, with empty tables and its Lamport clock at zero:
    // what it writes now is older by time than what it wrote before.
    // It writes before it hears anyone: news reaches a restarted node
    // within milliseconds, and its clock would witness the cluster's time.
    sim.crash(VICTIM);
    sim.restart_same_life(VICTIM, 0);
    assert_eq!(sim.node(VICTIM).unwrap().incarnation(), 1);
    sim.with_node(VICTIM, |n, now| {
        n.join_network(now, NET).unwrap();
        n.put(now, NET, TABLE, &key(VICTIM, 2), value(VICTIM, 2, 3)).unwrap();
    });
    want.insert(key(VICTIM, 2), value(VICTIM, 2, 3));

    // Peers never lose a visible entry of the restarted node, never see it
    // fail, and end with its newest word: the entries it wrote before the
    // crash (taken back by the restarted node) and its write after it.
    let deadline = sim.now() + Duration::from_secs(60);
    loop {
        for i in others(VICTIM) {
            let seen = view(&sim, i);
            for k in [1, 3, 4] {
                assert!(
                    seen.contains_key(&key(VICTIM, k)),
                    "n{i} lost {} at {:?}",
                    key(VICTIM, k),
                    sim.now()
                );
            }
            assert_ne!(member_state(&sim, i, "n5"), Some(MemberState::Failed), "as seen by n{i}");
        }
        if converged_to(&sim, &all, &want) {
            break;
        }
        assert!(sim.now() < deadline, "no convergence: n5 holds {:?}", view(&sim, VICTIM));
        sim.run_for(CHECK);
    }
    let restarted = sim.node(VICTIM).unwrap();
    assert!(restarted.stats().own_entries_restated >= 1, "its newer word was restated");
    assert!(sim.run_until_true(CHECK, Duration::from_secs(30), plain_everywhere).is_some());
    let restarted = sim.node(VICTIM).unwrap();
    assert!(restarted.networks().contains(&"plain"), "joined again by itself");
    let p = restarted.get("plain", TABLE, "p").unwrap();
    assert_eq!((&*p.owner, &p.value), ("n5", &value(VICTIM, 9, 1)), "taken back");
    for i in 0..N {
        let raw = sim.node(i).unwrap().raw_entries(NET);
        let deleted = raw.iter().find(|(_, k, _)| *k == key(VICTIM, 0));
        assert!(deleted.is_none_or(|(_, _, e)| e.deleted), "n{i}: the delete stands");
    }
}

#[test]
fn graceful_leave_marks_left_and_removes_entries_at_once() {
    let (mut sim, want) = settled(26);
    sim.with_node(VICTIM, |n, now| n.leave(now));
    sim.run_for(Duration::from_millis(400));
    sim.crash(VICTIM); // the process exits after its goodbye
    let took = await_converged(
        &mut sim,
        &others(VICTIM),
        &without_owner(&want, VICTIM),
        Duration::from_secs(30),
    );
    assert!(took < Duration::from_secs(3), "a leave spreads by gossip, took {took:?}");
    for i in others(VICTIM) {
        assert_eq!(member_state(&sim, i, "n5"), Some(MemberState::Left), "as seen by n{i}");
    }
}

#[test]
fn leaving_a_network_tombstones_the_nodes_entries_there() {
    let (mut sim, want) = settled(27);
    sim.with_node(VICTIM, |n, now| n.leave_network(now, NET).unwrap());
    let rest = others(VICTIM);
    await_converged(&mut sim, &rest, &without_owner(&want, VICTIM), Duration::from_secs(30));
    for &i in &rest {
        let n = sim.node(i).unwrap();
        let tombs = n
            .raw_entries(NET)
            .into_iter()
            .filter(|(_, _, e)| &*e.owner == "n5")
            .collect::<Vec<_>>();
        assert_eq!(tombs.len(), 5);
        assert!(tombs.iter().all(|(_, _, e)| e.deleted && e.reap_at.is_some()));
        assert!(!n.network_peers(NET).contains(&"n5".to_string()));
    }
    assert!(sim.node(VICTIM).unwrap().networks().is_empty());
    let refused = sim.with_node(VICTIM, |n, now| n.put(now, NET, TABLE, "x", value(5, 0, 9)));
    assert_eq!(refused, Err(netdb::Error::NotJoined(NET.into())));
}
