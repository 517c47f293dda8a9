//! Helpers the node's unit tests share.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use netdb_wire as wire;
use netdb_wire::sync_message::Body;
use prost::Message;

use super::Node;
use crate::codec;
use crate::config::Config;
use crate::event::Transmit;

/// A peer's address, for datagrams the tests inject.
pub(super) const PEER: &str = "127.0.0.2:7946";

/// A lone node whose tombstones live `ttl`.
pub(super) fn node(ttl: Duration) -> Node {
    let cfg = Config { tombstone_ttl: ttl, ..Config::default() };
    Node::new(cfg, "solo", 1, "127.0.0.1:7946".parse().unwrap(), 1, Duration::ZERO).unwrap()
}

/// A lone node (tombstones live a minute) that joined "net" at 1 s, the
/// time, and the peer's address.
pub(super) fn node_in_net() -> (Node, Duration, SocketAddr) {
    let mut n = node(Duration::from_secs(60));
    let t = Duration::from_secs(1);
    n.join_network(t, "net").unwrap();
    (n, t, PEER.parse().unwrap())
}

/// A plaintext gossip datagram for `network` ("" is the cluster scope).
pub(super) fn gossip(network: &str, entries: Vec<wire::Entry>) -> Vec<u8> {
    codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
        network: network.into(),
        root: 0,
        entries,
    }))
}

/// An entry written by the node "peer" in its incarnation 1.
pub(super) fn peer_entry(
    table: &str,
    key: &str,
    value: Bytes,
    ltime: u64,
    deleted: bool,
) -> wire::Entry {
    wire::Entry {
        table: table.into(),
        key: key.into(),
        value,
        owner: "peer".into(),
        incarnation: 1,
        ltime,
        deleted,
        reap_in_ms: if deleted { 60_000 } else { 0 },
    }
}

/// A push/pull frame of the exchange `sync_id` in `network`.
pub(super) fn sync_bytes(network: &str, sync_id: u64, body: Body) -> Vec<u8> {
    wire::SyncMessage {
        version: codec::SYNC_VERSION,
        sync_id,
        network: network.into(),
        body: Some(body),
    }
    .encode_to_vec()
}

/// The id of the next exchange the node opened, if it opened one.
pub(super) fn next_opened(n: &mut Node) -> Option<u64> {
    std::iter::from_fn(|| n.poll_transmit()).find_map(|t| match t {
        Transmit::Sync { sync_id, opens: true, .. } => Some(sync_id),
        _ => None,
    })
}
