//! A whole node fed arbitrary datagrams and frames: no input may panic it,
//! and whatever it accepts must leave it able to write and gossip.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = netdb::Config::default();
    let addr = "127.0.0.1:7946".parse().expect("addr");
    let peer = "127.0.0.2:7946".parse().expect("addr");
    let Ok(mut node) = netdb::Node::new(cfg, "fuzz", 1, addr, 1, Duration::ZERO) else { return };
    let _ = node.join_network(Duration::ZERO, "net");
    let t = Duration::from_millis(10);
    // First byte picks the path; the rest is the message.
    match data.split_first() {
        Some((k, rest)) if k % 2 == 0 => node.handle_datagram(t, peer, rest),
        Some((_, rest)) => node.handle_sync(t, peer, rest),
        None => {}
    }
    node.handle_timeout(Duration::from_secs(1));
    assert!(node.put(Duration::from_secs(1), "net", "t", "k", Default::default()).is_ok());
    while node.poll_transmit().is_some() {}
});
