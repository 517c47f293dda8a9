//! Writes the fuzzers' seed corpus: real datagrams and push/pull frames
//! captured from two nodes that join, gossip and sync, plus sealed copies.
//!
//! `cargo run -p netdb --example fuzz_seeds` (writes netdb/fuzz/corpus/).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use netdb::codec::encode_datagram;
use netdb::keyring::{KEY_LEN, Keyring};
use netdb::{Config, Node, Transmit};
use netdb_wire as wire;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let a_addr = "127.0.0.1:7946".parse().expect("addr");
    let b_addr = "127.0.0.2:7946".parse().expect("addr");
    let mut a = Node::new(Config::default(), "a", 1, a_addr, 1, Duration::ZERO).expect("node");
    let mut b = Node::new(Config::default(), "b", 1, b_addr, 2, Duration::ZERO).expect("node");
    b.join(Duration::ZERO, &[a_addr]);
    let (mut datagrams, mut frames) = (Vec::new(), Vec::new());
    let mut now = Duration::ZERO;
    for step in 0..200 {
        now += Duration::from_millis(50);
        if step == 20 {
            for n in [&mut a, &mut b] {
                n.join_network(now, "net").expect("join");
            }
        }
        if step == 40 {
            for k in 0..5 {
                a.put(now, "net", "t", &format!("key{k}"), Bytes::from(format!("value {k}")))
                    .expect("put");
            }
            a.delete(now, "net", "t", "key0").expect("delete");
        }
        for flip in [false, true] {
            let (me, other) = if flip { (&mut b, &mut a) } else { (&mut a, &mut b) };
            exchange(now, me, other, &mut datagrams, &mut frames);
        }
    }
    datagrams.sort();
    datagrams.dedup();
    // Keyring commands and answers (never seen between plaintext nodes).
    let query = wire::KeyQuery {
        origin: "a".into(),
        incarnation: 1,
        seq: 1,
        op: wire::KeyOp::KeyInstall as i32,
        key: vec![9u8; KEY_LEN].into(),
        key_id: Vec::new().into(),
        sent_ms: 10,
    };
    let ack = wire::KeyAck {
        origin: "a".into(),
        seq: 1,
        node: "b".into(),
        ok: true,
        error: String::new(),
        fingerprints: vec!["0a0b0c0d".into()],
        incarnation: 1,
        wall_ms: 12,
    };
    let keyed = [
        encode_datagram(wire::datagram::Body::KeyQuery(query)),
        encode_datagram(wire::datagram::Body::KeyAck(ack)),
    ];
    datagrams.splice(0..0, keyed);
    frames.sort();
    frames.dedup();
    let ring = Keyring::new(&[vec![7u8; KEY_LEN]]).expect("key");
    let write = |target: &str, items: &[Vec<u8>]| -> std::io::Result<usize> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for (i, item) in items.iter().enumerate().take(40) {
            std::fs::write(d.join(format!("seed-{i:03}")), item)?;
        }
        Ok(items.len().min(40))
    };
    let sealed: Vec<Vec<u8>> = datagrams.iter().take(20).map(|d| ring.seal([1; 12], d)).collect();
    let node_inputs: Vec<Vec<u8>> = datagrams
        .iter()
        .take(2)
        .map(|d| [&[2u8][..], d].concat())
        .chain(datagrams.iter().map(|d| [&[0u8][..], d].concat()))
        .chain(frames.iter().map(|f| [&[1u8][..], f].concat()))
        .collect();
    println!("decode_datagram: {} seeds", write("decode_datagram", &datagrams)?);
    println!("decode_sync: {} seeds", write("decode_sync", &frames)?);
    println!("unseal: {} seeds", write("unseal", &sealed)?);
    println!("node_input: {} seeds", write("node_input", &node_inputs)?);
    Ok(())
}

/// Runs `me`'s timers and delivers what it sends to `other`, recording it.
fn exchange(
    now: Duration,
    me: &mut Node,
    other: &mut Node,
    datagrams: &mut Vec<Vec<u8>>,
    frames: &mut Vec<Vec<u8>>,
) {
    me.handle_timeout(now);
    let from = me.addr();
    while let Some(t) = me.poll_transmit() {
        match t {
            Transmit::Datagram { to, payload } if to == other.addr() => {
                other.handle_datagram(now, from, &payload);
                datagrams.push(payload.to_vec());
            }
            Transmit::Sync { to, payload, .. } if to == other.addr() => {
                other.handle_sync(now, from, &payload);
                frames.push(payload);
            }
            _ => {}
        }
    }
}
