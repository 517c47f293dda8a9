//! A cluster split in two halves, written and deleted on both sides, then
//! healed: every node must end identical, with no deleted entry back and no
//! entry of a live owner lost.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use netdb::Config;
use netdb_tests::*;

const N: usize = 40;

#[test]
fn halves_written_and_deleted_during_a_partition_heal_identically() {
    let mut sim = cluster(N, 31, Config::default());
    let all: Vec<usize> = (0..N).collect();
    write_entries(&mut sim, &all, 4, 1);
    let mut want = expected(&all, 4, 1);
    await_converged(&mut sim, &all, &want, Duration::from_secs(60));

    let groups: Vec<u32> = (0..N).map(|i| (i % 2) as u32).collect();
    sim.partition(groups);
    // Long enough for each side to declare the other failed.
    sim.run_for(Duration::from_secs(30));
    assert_eq!(member_state(&sim, 0, "n1"), Some(netdb::MemberState::Failed));

    let mut deleted = Vec::new();
    for i in 0..N {
        sim.with_node(i, |n, now| {
            // Delete k0, update k1, add k9: on both sides.
            n.delete(now, NET, TABLE, &key(i, 0)).unwrap();
            n.put(now, NET, TABLE, &key(i, 1), value(i, 1, 2)).unwrap();
            n.put(now, NET, TABLE, &key(i, 9), value(i, 9, 2)).unwrap();
        });
        deleted.push(key(i, 0));
        want.remove(&key(i, 0));
        want.insert(key(i, 1), value(i, 1, 2));
        want.insert(key(i, 9), value(i, 9, 2));
    }
    sim.run_for(Duration::from_secs(10));
    // Each side sees its own side's changes only.
    let side0: BTreeMap<String, Bytes> = view(&sim, 0);
    assert!(!side0.contains_key(&key(0, 0)));
    assert!(side0.contains_key(&key(2, 9)) && !side0.contains_key(&key(1, 9)));

    sim.heal();
    let took = await_converged(&mut sim, &all, &want, Duration::from_secs(300));
    println!("healed and converged in {took:?}");
    for i in 0..N {
        let v = view(&sim, i);
        assert!(deleted.iter().all(|k| !v.contains_key(k)), "n{i}: a deleted entry came back");
        let n = sim.node(i).unwrap();
        let tombs = n.raw_entries(NET).into_iter().filter(|(_, _, e)| e.deleted).count();
        assert_eq!(tombs, N, "n{i} holds every delete as a tombstone");
    }
}

/// When a partition heals, both sides learn at once that the other declared
/// them down, and every node renews its SWIM identity in the same second.
/// Each then addresses the others' old identities, which foca ignores; a
/// node must knock (announce) until it is back: on its seed, and on other
/// nodes it knew, for when the seed is gone (every other run kills it).
#[test]
fn mass_identity_renewal_after_a_heal_reconnects_every_seed() {
    for seed in 100..110 {
        let n = 16;
        let mut sim = cluster(n, seed, Config::default());
        let seed_dead = seed % 2 == 0;
        if seed_dead {
            sim.crash(0);
        }
        let live: Vec<usize> = sim.running();
        sim.partition((0..n).map(|i| (i % 2) as u32).collect());
        sim.run_for(Duration::from_secs(20));
        assert!(alive_members(&sim, 1) < live.len(), "seed {seed}: the halves saw each other fail");
        sim.heal();
        let t = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
            live.iter().all(|&i| alive_members(s, i) == live.len())
        });
        assert!(
            t.is_some(),
            "seed {seed} (seed node dead: {seed_dead}): membership did not heal in 60 s"
        );
    }
}
