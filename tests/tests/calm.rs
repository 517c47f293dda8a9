//! A node whose loop is starved of CPU for a moment reads its acks late,
//! after its probe timers fired: it must not accuse the members that
//! answered in time (it judges a late probe again once it caught up).

use std::time::Duration;

use netdb::Config;
use netdb::sim::{NetConfig, Sim};
use netdb_tests::*;

const N: usize = 8;

#[test]
fn a_stalled_node_accuses_no_member_that_answered_in_time() {
    let ms = Duration::from_millis;
    // 40 ms each way: an ack comes 80 ms after the ping, inside the
    // probe timeout, and a stall that starts in between finds it waiting.
    let net = NetConfig { latency: ms(40), jitter: ms(2), ..NetConfig::default() };
    // The fast probe timers (300 ms rounds, 150 ms timeout): with the
    // default 500 ms rounds these stalls seldom straddle a judgement.
    let cfg = Config {
        probe_period: ms(300),
        probe_rtt: ms(150),
        suspicion_mult: 2.0,
        ..Config::default()
    };
    let mut sim = Sim::new(5, cfg, net);
    for _ in 0..N {
        sim.add_node();
    }
    sim.join_all(0);
    let all_up = sim.run_until_true(CHECK, Duration::from_secs(60), |s| {
        (0..N).all(|i| alive_members(s, i) == N)
    });
    assert!(all_up.is_some(), "the cluster never formed");
    let slow = 3;
    for k in 0..60u64 {
        // Stalls of 400 ms at varied phases of its probe rounds.
        sim.run_for(ms(1500 + (k * 37) % 300));
        sim.stall(slow);
        sim.run_for(ms(400));
        sim.unstall(slow);
    }
    sim.run_for(Duration::from_secs(5));
    let st = sim.node(slow).expect("running").stats().clone();
    assert!(st.late_probe_wakes > 0, "its timers never fired late; nothing under test");
    assert_eq!(st.suspicions_started, 0, "it accused members for its own stalls");
}
