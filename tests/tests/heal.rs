//! A host cut off alone declares the members it could not reach down; when
//! the partition heals, that news reaches hosts that reached those members
//! all along. They must not mark any of them failed, not even for a
//! moment (it hides the member's entries), while a member that really dies
//! afterwards is still found failed everywhere.

use std::time::Duration;

use netdb::sim::Sim;
use netdb::{Config, MemberChange, MemberState};
use netdb_tests::*;

const N: usize = 6;
/// Fine enough to heal while the cut-off host still holds suspicions.
const FINE: Duration = Duration::from_millis(10);

#[test]
fn a_heal_fails_no_member_on_hosts_that_reached_it_all_along() {
    let mut unexpected = 0;
    for seed in 0..100 {
        // Heal while the cut-off host still waits on suspicions (it
        // declares those members down after the heal), or long after it
        // declared every member down.
        for long in [false, true] {
            unexpected += cut_off_and_heal(seed, long);
        }
    }
    assert!(unexpected > 0, "no host ever heard an unexpected down; nothing under test");
}

/// Returns how many unexpected downs the hosts that stayed together heard.
fn cut_off_and_heal(seed: u64, long: bool) -> u64 {
    let ctx = format!("seed {seed}, long {long}");
    let cut = N - 1;
    let mut sim = cluster(N, seed, Config::default());
    let all: Vec<usize> = (0..N).collect();
    write_entries(&mut sim, &all, 2, 1);
    let want = expected(&all, 2, 1);
    await_converged(&mut sim, &all, &want, Duration::from_secs(60));
    let stayed: Vec<usize> = (0..cut).collect();
    let name = sim.name(cut).to_string();

    sim.partition((0..N).map(|i| u32::from(i == cut)).collect());
    let down = sim.run_until_true(FINE, Duration::from_secs(30), |s| {
        stayed.iter().all(|&i| member_state(s, i, &name) == Some(MemberState::Failed))
    });
    assert!(down.is_some(), "{ctx}: the others never declared the cut-off host down");
    if long {
        sim.run_for(Duration::from_secs(20));
    }
    let failed_before: Vec<u64> = stayed.iter().map(|&i| failures(&sim, i)).collect();
    assert!(failed_before.iter().all(|&f| f == 1), "{ctx}: only the cut-off host failed");
    sim.heal();

    let back = await_converged(&mut sim, &all, &want, Duration::from_secs(60));
    sim.run_for(Duration::from_secs(10));
    for (k, &i) in stayed.iter().enumerate() {
        assert_eq!(
            failures(&sim, i),
            failed_before[k],
            "{ctx}: n{i}, which reached every other member all along, marked one failed after \
             the heal (converged {back:?} after it)"
        );
    }
    let heard: u64 = stayed.iter().map(|&i| stats(&sim, i).unexpected_downs).sum();

    // A member that really dies is still found failed by every other.
    let victim = 1;
    sim.crash(victim);
    let victim_name = sim.name(victim).to_string();
    let gone = sim.run_until_true(CHECK, Duration::from_secs(20), |s| {
        all.iter()
            .filter(|&&i| i != victim)
            .all(|&i| member_state(s, i, &victim_name) == Some(MemberState::Failed))
    });
    assert!(gone.is_some(), "{ctx}: a crashed member was not found failed everywhere");
    heard
}

fn stats(sim: &Sim, i: usize) -> netdb::Stats {
    sim.node(i).expect("running").stats().clone()
}

/// How many times node `i` marked a member failed.
fn failures(sim: &Sim, i: usize) -> u64 {
    stats(sim, i).changes(MemberChange::Failed)
}
