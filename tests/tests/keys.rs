//! Sealed traffic: a keyed cluster works as a plaintext one, a node with
//! another key can neither join nor read, and unsealed input is refused.

use std::time::Duration;

use netdb::KeyOp;
use netdb::keyring::{KEY_LEN, Keyring, key_id};
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, DropReason, MemberState, Scope};
use netdb_tests::*;

fn ring(byte: u8) -> Keyring {
    Keyring::new(&[vec![byte; KEY_LEN]]).unwrap()
}

#[test]
fn keyed_cluster_converges_and_a_node_with_another_key_stays_out() {
    let mut sim = Sim::new(51, Config::default(), NetConfig::default());
    for i in 0..6 {
        sim.add_node();
        let k = if i == 5 { ring(2) } else { ring(1) };
        sim.with_node(i, |n, _| n.set_keyring(Some(k)));
    }
    sim.join_all(0);
    let t = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
        (0..5).all(|i| alive_members(s, i) == 5)
    });
    assert!(t.is_some(), "the five keyed nodes form a cluster");
    for i in 0..6 {
        sim.with_node(i, |n, now| n.join_network(now, NET).unwrap());
    }
    write_entries(&mut sim, &[0, 1, 2, 3, 4, 5], 3, 1);
    let keyed: Vec<usize> = (0..5).collect();
    await_converged(&mut sim, &keyed, &expected(&keyed, 3, 1), Duration::from_secs(60));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(alive_members(&sim, 5), 1, "the outsider knows only itself");
    assert_eq!(view(&sim, 5), expected(&[5], 3, 1), "and reads nothing of the cluster");
    assert!(
        keyed.iter().all(|&i| member_state(&sim, i, "n5").is_none_or(|s| s != MemberState::Alive))
    );
    assert!(
        sim.node(0).unwrap().stats().dropped(DropReason::UnknownKey) > 0,
        "its knocks were refused"
    );
    assert!(sim.net_stats().max_datagram <= 1400, "sealed packets fit the budget");
}

#[test]
fn plaintext_and_forged_messages_to_a_keyed_node_are_dropped() {
    let mut sim = Sim::new(52, Config::default(), NetConfig::default());
    sim.add_node();
    sim.with_node(0, |n, _| n.set_keyring(Some(ring(1))));
    let from = "127.9.9.9:7946".parse().unwrap();
    let plain =
        netdb::codec::encode_datagram(netdb_wire::datagram::Body::Swim(bytes::Bytes::new()));
    let mut forged = ring(1).seal([9; 12], &plain);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    sim.with_node(0, |n, now| {
        n.handle_datagram(now, from, &plain);
        n.handle_datagram(now, from, &forged);
        n.handle_sync(now, from, &plain);
    });
    let st = sim.node(0).unwrap().stats();
    assert_eq!(st.dropped(DropReason::Plaintext), 2);
    assert_eq!(st.dropped(DropReason::Forged), 1);
}

fn keyed_cluster(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed, Config::default(), NetConfig::default());
    for i in 0..n {
        sim.add_node();
        sim.with_node(i, |node, _| node.set_keyring(Some(ring(1))));
    }
    sim.join_all(0);
    let t = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
        (0..n).all(|i| alive_members(s, i) == n)
    });
    assert!(t.is_some(), "the keyed nodes form a cluster");
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, NET).unwrap());
    }
    sim
}

/// Runs a keyring command from node `from` and waits for its report.
fn key_command(sim: &mut Sim, from: usize, op: KeyOp) -> netdb::KeyReport {
    let seq = sim.with_node(from, |n, now| n.key_command(now, op)).unwrap();
    sim.run_until_true(CHECK, Duration::from_secs(30), |s| {
        s.node(from).unwrap().key_report(seq).is_some_and(|r| r.done)
    })
    .expect("the command finishes");
    sim.node(from).unwrap().key_report(seq).unwrap()
}

fn fingerprints(sim: &Sim, i: usize) -> Vec<String> {
    sim.node(i).unwrap().keyring().unwrap().fingerprints()
}

#[test]
fn a_replayed_capture_changes_nothing() {
    let n = 4;
    let mut sim = keyed_cluster(53, n);
    let k2 = vec![2u8; KEY_LEN];
    // An eavesdropper records a write, an update and a keyring command.
    sim.capture = Some(Vec::new());
    sim.with_node(0, |node, now| node.put(now, NET, TABLE, "k", "v1".into()).unwrap());
    sim.run_for(Duration::from_secs(2));
    sim.with_node(0, |node, now| node.put(now, NET, TABLE, "k", "v2".into()).unwrap());
    sim.run_for(Duration::from_secs(2));
    assert!(key_command(&mut sim, 1, KeyOp::Install(k2.clone())).complete());
    let captured = sim.capture.take().unwrap();
    assert!(captured.len() > 20, "{} datagrams captured", captured.len());
    // Then the cluster moves on: the entry is deleted and the same node
    // removes the key again (a later command of the same origin).
    sim.with_node(0, |node, now| node.delete(now, NET, TABLE, "k").unwrap());
    assert!(key_command(&mut sim, 1, KeyOp::Remove(key_id(&k2))).complete());
    sim.run_for(Duration::from_secs(5));
    let all: Vec<usize> = (0..n).collect();
    let before_roots = roots(&sim, &all, Scope::Network(NET));
    assert_eq!(before_roots.len(), 1, "converged before the replay");
    let before_keys: Vec<_> = all.iter().map(|&i| fingerprints(&sim, i)).collect();
    let replayed_before: u64 =
        all.iter().map(|&i| sim.node(i).unwrap().stats().dropped(DropReason::Replayed)).sum();

    for (from, to, bytes) in &captured {
        sim.inject(*from, *to, bytes);
    }
    sim.run_for(Duration::from_secs(5));
    assert_eq!(roots(&sim, &all, Scope::Network(NET)), before_roots, "the tables did not move");
    for &i in &all {
        assert!(
            sim.node(i).unwrap().get(NET, TABLE, "k").is_none(),
            "the deleted entry stayed deleted on n{i}"
        );
    }
    let after_keys: Vec<_> = all.iter().map(|&i| fingerprints(&sim, i)).collect();
    assert_eq!(after_keys, before_keys, "the removed key was not reinstalled");
    let replayed: u64 =
        all.iter().map(|&i| sim.node(i).unwrap().stats().dropped(DropReason::Replayed)).sum();
    assert!(replayed > replayed_before, "the replayed command was refused and counted");

    // A node that restarts forgets which commands it applied; by the time
    // it is back, the capture is older than any command may be.
    sim.crash(3);
    sim.restart(3, 0);
    sim.with_node(3, |node, _| node.set_keyring(Some(ring(1))));
    let back = sim.run_until_true(CHECK, Duration::from_secs(60), |s| alive_members(s, 3) == n);
    assert!(back.is_some(), "the restarted node rejoins");
    sim.run_for(Duration::from_secs(61));
    for (from, to, bytes) in &captured {
        if *to == 3 {
            sim.inject(*from, 3, bytes);
        }
    }
    sim.run_for(Duration::from_secs(5));
    assert_eq!(fingerprints(&sim, 3), before_keys[3], "the restarted node took the stale command");
}

#[test]
fn rotation_by_commands_then_the_old_key_injects_nothing() {
    let n = 4;
    let mut sim = keyed_cluster(54, n);
    let (k1, k2) = (vec![1u8; KEY_LEN], vec![2u8; KEY_LEN]);
    for op in [KeyOp::Install(k2.clone()), KeyOp::Use(key_id(&k2)), KeyOp::Remove(key_id(&k1))] {
        let r = key_command(&mut sim, 0, op);
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.replies.len(), n);
    }
    let all: Vec<usize> = (0..n).collect();
    for &i in &all {
        assert_eq!(fingerprints(&sim, i), vec![netdb::keyring::fingerprint(&key_id(&k2))]);
    }
    // The primary cannot be removed, and an unknown key cannot be used.
    let r = key_command(&mut sim, 1, KeyOp::Remove(key_id(&k2)));
    assert!(
        !r.complete()
            && r.replies.values().all(|x| x.result.as_ref().is_err_and(|e| e.contains("primary")))
    );
    let r = key_command(&mut sim, 1, KeyOp::Use(key_id(&k1)));
    assert!(
        r.replies.values().all(|x| x.result.as_ref().is_err_and(|e| e.contains("not installed")))
    );

    // Someone holding only the old key forges a perfectly valid entry of
    // node 1's: refused unopened.
    let entry = netdb_wire::Entry {
        table: TABLE.into(),
        key: "injected".into(),
        value: bytes::Bytes::from_static(b"x"),
        owner: sim.name(1).into(),
        incarnation: sim.node(1).unwrap().incarnation(),
        ltime: sim.node(1).unwrap().ltime() + 1,
        ..Default::default()
    };
    let gossip = netdb_wire::Gossip { network: NET.into(), root: 0, entries: vec![entry] };
    let plain = netdb::codec::encode_datagram(netdb_wire::datagram::Body::Gossip(gossip));
    let forged = Keyring::new(&[k1]).unwrap().seal([5; 12], &plain);
    let unknown_before = sim.node(0).unwrap().stats().dropped(DropReason::UnknownKey);
    sim.inject(1, 0, &forged);
    sim.run_for(Duration::from_secs(3));
    assert!(all.iter().all(|&i| sim.node(i).unwrap().get(NET, TABLE, "injected").is_none()));
    assert_eq!(sim.node(0).unwrap().stats().dropped(DropReason::UnknownKey), unknown_before + 1);
    // The same entry sealed with the current key would have been taken:
    // the test above is not vacuous.
    let genuine = Keyring::new(&[k2]).unwrap().seal([6; 12], &plain);
    sim.inject(1, 0, &genuine);
    assert!(sim.node(0).unwrap().get(NET, TABLE, "injected").is_some());
}

#[test]
fn scheduled_rotation_across_an_epoch_boundary_with_skewed_clocks() {
    let n = 5;
    let secret = b"the cluster secret shared by every node".to_vec();
    let mut sim = Sim::new(55, Config::default(), NetConfig::default());
    for i in 0..n {
        sim.add_node();
        let ring = Keyring::for_epoch(&secret, 10);
        sim.with_node(i, |node, _| {
            node.set_keyring(Some(ring));
            node.set_scheduled_keys(true);
        });
    }
    sim.join_all(0);
    assert!(
        sim.run_until_true(CHECK, Duration::from_secs(60), |s| (0..n)
            .all(|i| alive_members(s, i) == n))
            .is_some()
    );
    for i in 0..n {
        sim.with_node(i, |node, now| node.join_network(now, NET).unwrap());
    }
    // Writes every 200 ms on every node for 12 s; node i's clock reaches
    // epoch 11 at 2 s + i × 1.5 s, so for 6 s the cluster is split between
    // two epochs.
    let mut written = 0;
    let mut down = Vec::new();
    for step in 0..60u32 {
        let t = Duration::from_millis(200) * step;
        for i in 0..n {
            if t == Duration::from_millis(2000 + 1500 * i as u64) {
                let ring = Keyring::for_epoch(&secret, 11);
                sim.with_node(i, |node, _| node.set_keyring(Some(ring)));
            }
            sim.with_node(i, |node, now| {
                node.put(now, NET, TABLE, &format!("n{i}-{step}"), "v".into()).unwrap()
            });
            written += 1;
        }
        sim.run_for(Duration::from_millis(200));
        for i in 0..n {
            if alive_members(&sim, i) != n {
                down.push(format!("t={t:?}: n{i} sees {} alive", alive_members(&sim, i)));
            }
        }
    }
    assert!(down.is_empty(), "the cluster split across the boundary: {down:?}");
    let all: Vec<usize> = (0..n).collect();
    let t = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
        all.iter().all(|&i| s.node(i).unwrap().entries(NET, TABLE).len() == written)
    });
    assert!(t.is_some(), "every entry written across the boundary reached every node");
    assert_eq!(roots(&sim, &all, Scope::Network(NET)).len(), 1);
    // Commands that would change a keyring do not apply to derived keys;
    // list changes nothing and is answered (it measures clock skew).
    let install = KeyOp::Install(vec![9; KEY_LEN]);
    let err = sim.with_node(0, |node, now| node.key_command(now, install)).unwrap_err();
    assert_eq!(err, netdb::Error::ScheduledKeys);
    assert!(sim.with_node(0, |node, now| node.key_command(now, KeyOp::List)).is_ok());
    // A node two epochs ahead (a badly wrong clock) is refused.
    let far = sim.add_node();
    let ring = Keyring::for_epoch(&secret, 13);
    let seed = sim.addr(0);
    sim.with_node(far, |node, now| {
        node.set_keyring(Some(ring));
        node.join(now, &[seed]);
    });
    sim.run_for(Duration::from_secs(10));
    assert_eq!(alive_members(&sim, far), 1, "a node two epochs away stays out");
}
