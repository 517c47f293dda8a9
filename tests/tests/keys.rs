//! Sealed traffic: a keyed cluster works as a plaintext one, a node with
//! another key can neither join nor read, and unsealed input is refused.

use std::time::Duration;

use netdb::keyring::{KEY_LEN, Keyring};
use netdb::sim::{NetConfig, Sim};
use netdb::{Config, DropReason, MemberState};
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
        netdb::codec::encode_datagram(netdb_proto::wire::datagram::Body::Swim(bytes::Bytes::new()));
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
