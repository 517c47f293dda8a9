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
    // First byte picks the path; the rest is the message. Paths 2 and 3 go
    // to a node with a keyring, the message sealed with its key, so what
    // only key holders may send (keyring commands) is fuzzed too.
    let ring = || netdb::keyring::Keyring::new(&[vec![7u8; netdb::keyring::KEY_LEN]]).expect("key");
    match data.split_first() {
        Some((k, rest)) => match k % 4 {
            0 => node.handle_datagram(t, peer, rest),
            1 => node.handle_sync(t, peer, rest),
            k => {
                node.set_keyring(Some(ring()));
                let sealed = ring().seal([3; 12], rest);
                if k == 2 {
                    node.handle_datagram(t, peer, &sealed)
                } else {
                    node.handle_sync(t, peer, &sealed)
                }
            }
        },
        None => {}
    }
    node.handle_timeout(Duration::from_secs(1));
    assert!(node.put(Duration::from_secs(1), "net", "t", "k", Default::default()).is_ok());
    while node.poll_transmit().is_some() {}
});
