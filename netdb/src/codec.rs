//! Decoding and validation of everything that arrives from the network.
//!
//! Sizes are checked before prost sees a byte, so allocation is bounded by
//! the configured frame limits; every field is checked after decoding, and
//! a message that fails any check is dropped whole, before it changes any
//! state.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use netdb_wire as wire;
use prost::Message;

use crate::config::Config;
use crate::digest::{DEPTH, FANOUT, NodeId, Sum};
use crate::names::{ClusterTable, Scope, valid_key, valid_name};
use crate::stats::DropReason;
use crate::table::Entry;
use crate::wireref::{self, DatagramRef};
pub use crate::wireref::{EntryRef, GossipRef, RoundRef, SyncBodyRef, SyncRef};

/// Version of the datagram wire format; datagrams of another are dropped.
pub const WIRE_VERSION: u32 = 1;
/// Version of the push/pull frame format, apart from the datagrams' so a
/// change here leaves membership and gossip working between versions;
/// frames of another are dropped. 2: the hash-tree descent.
pub const SYNC_VERSION: u32 = 2;
/// Largest UDP payload; gossip packets are far smaller (`packet_budget`),
/// but a peer may be configured with a larger budget than ours.
pub const MAX_DATAGRAM: usize = 65_507;

#[derive(Debug)]
/// A decoded, validated datagram; gossip is borrowed from its bytes.
pub enum Body<'a> {
    /// SWIM (foca) payload.
    Swim(Bytes),
    /// Table gossip for one scope.
    Gossip(GossipRef<'a>),
    /// A keyring command from a peer.
    KeyQuery(wire::KeyQuery),
    /// A peer's answer to a keyring command.
    KeyAck(wire::KeyAck),
    /// Push tree control: announcements, grafts, a prune.
    Tree(wire::Tree),
}

/// Most event ids one push tree message may carry: more than a packet
/// budget's worth (an id takes at least 6 bytes), so an honest peer never
/// reaches it, and a hostile one cannot make a node look up or answer
/// thousands of keys with one datagram.
pub const MAX_TREE_IDS: usize = 256;

/// Most fingerprints and error bytes a keyring answer may carry.
const MAX_ACK_KEYS: usize = 64;
const MAX_ACK_ERROR: usize = 1024;

/// Frames a datagram body (unsealed).
pub fn encode_datagram(body: wire::datagram::Body) -> Vec<u8> {
    wire::Datagram { version: WIRE_VERSION, body: Some(body) }.encode_to_vec()
}

/// An entry encoded once when it is queued, without its residual reap
/// time: a queued entry goes out up to a dozen times, and re-encoding it
/// (and cloning its four fields) for every packet was a large part of a
/// burst's CPU and heap. In an `Arc`, made in one allocation: a packet's
/// entries are cloned out of the queue, and a `Bytes` made from a vector
/// allocates a shared header at its first clone.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEntry {
    fields: Arc<[u8]>,
    reap_at: Option<Duration>,
}

/// `Entry.reap_in_ms`'s field number.
const REAP_IN_MS_FIELD: u32 = 8;
/// `Gossip.entries`'s field number.
const GOSSIP_ENTRIES_FIELD: u32 = 3;
/// `Datagram.gossip`'s field number.
const DATAGRAM_GOSSIP_FIELD: u32 = 3;

impl EncodedEntry {
    /// Written by `EntryOut` (the bytes prost writes for the
    /// `wire::Entry`) straight into its buffer: through a `wire::Entry`,
    /// its four fields were four allocations more for each stored entry.
    pub(crate) fn new(table: &str, key: &str, e: &Entry) -> EncodedEntry {
        let out = EntryOut { table, key, e, reap_in_ms: 0 };
        let mut fields: Arc<[u8]> = std::iter::repeat_n(0, out.len()).collect();
        // A fresh `Arc` has no other owner.
        if let Some(mut buf) = Arc::get_mut(&mut fields) {
            out.encode(&mut buf);
            debug_assert!(buf.is_empty(), "EntryOut::len and encode agree");
        }
        EncodedEntry { fields, reap_at: e.reap_at }
    }

    /// Its length as an `Entry` at `now` (the residual only shrinks, so the
    /// length at queueing bounds every later one).
    fn len_at(&self, now: Duration) -> (usize, u64) {
        let reap = residual_ms(self.reap_at, now);
        let extra = if reap == 0 {
            0
        } else {
            prost::encoding::key_len(REAP_IN_MS_FIELD) + varint_len(reap)
        };
        (self.fields.len() + extra, reap)
    }

    /// Bytes it adds to a gossip packet at `now`, its field tag included.
    pub(crate) fn framed_len(&self, now: Duration) -> usize {
        let (len, _) = self.len_at(now);
        prost::encoding::key_len(GOSSIP_ENTRIES_FIELD) + varint_len(len as u64) + len
    }
}

/// A stored entry as `entry_to_wire` would make it at `now`, encoded
/// without making one: a push/pull answer holds tens of thousands of
/// entries, and a `wire::Entry` each (four allocations: table, key, value,
/// owner) made serving a fill hold some 27 MiB more than the 4 MiB frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryOut<'a> {
    table: &'a str,
    key: &'a str,
    e: &'a Entry,
    reap_in_ms: u64,
}

impl<'a> EntryOut<'a> {
    pub(crate) fn new(table: &'a str, key: &'a str, e: &'a Entry, now: Duration) -> Self {
        EntryOut { table, key, e, reap_in_ms: residual_ms(e.reap_at, now) }
    }

    /// The fields in `wire::Entry`'s order, as (number, value); prost
    /// leaves out a field at its default, so do `len` and `encode`.
    fn fields(&self) -> [(u32, Field<'a>); 8] {
        let e = self.e;
        [
            (1, Field::Bytes(self.table.as_bytes())),
            (2, Field::Bytes(self.key.as_bytes())),
            (3, Field::Bytes(&e.value)),
            (4, Field::Bytes(e.owner.as_bytes())),
            (5, Field::Varint(e.incarnation)),
            (6, Field::Varint(e.ltime)),
            (7, Field::Varint(u64::from(e.deleted))),
            (8, Field::Varint(self.reap_in_ms)),
        ]
    }

    /// Its length as an `Entry` message.
    fn len(&self) -> usize {
        self.fields().iter().map(|(number, f)| f.len(*number)).sum()
    }

    /// Bytes it adds to a `SyncRound`, its field tag included.
    pub(crate) fn framed_len(&self) -> usize {
        let len = self.len();
        prost::encoding::key_len(ROUND_ENTRIES_FIELD) + varint_len(len as u64) + len
    }

    fn encode(&self, out: &mut impl BufMut) {
        for (number, f) in self.fields() {
            f.encode(number, out);
        }
    }
}

/// A scalar or length-delimited field's value, as `EntryOut` writes it.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl Field<'_> {
    fn len(self, number: u32) -> usize {
        match self {
            Field::Varint(0) => 0,
            Field::Bytes([]) => 0,
            Field::Varint(v) => prost::encoding::key_len(number) + varint_len(v),
            Field::Bytes(b) => {
                prost::encoding::key_len(number) + varint_len(b.len() as u64) + b.len()
            }
        }
    }

    fn encode(self, number: u32, out: &mut impl BufMut) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        match self {
            Field::Varint(0) | Field::Bytes([]) => {}
            Field::Varint(v) => {
                encode_key(number, WireType::Varint, out);
                encode_varint(v, out);
            }
            Field::Bytes(b) => {
                encode_key(number, WireType::LengthDelimited, out);
                encode_varint(b.len() as u64, out);
                out.put_slice(b);
            }
        }
    }
}

/// A push/pull round to send, its entries still in the table: encoded
/// straight into the frame by `encode_round`.
#[derive(Default)]
pub(crate) struct RoundOut<'a> {
    pub(crate) branches: Vec<wire::Branch>,
    pub(crate) whole: Vec<wire::Subtree>,
    pub(crate) entries: Vec<EntryOut<'a>>,
    pub(crate) done: bool,
    pub(crate) cut: bool,
}

/// Which of `SyncMessage`'s bodies a round goes in: its field number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundKind {
    Open = 8,
    Ask = 9,
    Answer = 10,
}

/// `SyncRound`'s field numbers past the branches and whole subtrees.
const ROUND_ENTRIES_FIELD: u32 = 3;
const ROUND_DONE_FIELD: u32 = 4;
const ROUND_CUT_FIELD: u32 = 5;

/// Encodes a push/pull frame (unsealed) of exchange `sync_id` holding
/// `round`, byte for byte as prost encodes the `SyncMessage` with the
/// entries made by `entry_to_wire`, in one allocation of the frame's size.
pub(crate) fn encode_round(
    network: &str,
    sync_id: u64,
    kind: RoundKind,
    round: RoundOut<'_>,
) -> Vec<u8> {
    use prost::encoding::{WireType, bool as flag, encode_key, encode_varint, key_len};
    let RoundOut { branches, whole, entries, done, cut } = round;
    let head = wire::SyncRound { branches, whole, ..Default::default() };
    let flags = [(ROUND_DONE_FIELD, done), (ROUND_CUT_FIELD, cut)];
    let round_len = head.encoded_len()
        + entries.iter().map(EntryOut::framed_len).sum::<usize>()
        + flags.iter().filter(|(_, on)| *on).map(|(n, _)| key_len(*n) + 1).sum::<usize>();
    let message =
        wire::SyncMessage { version: SYNC_VERSION, sync_id, network: network.into(), body: None };
    let kind = kind as u32;
    let len = message.encoded_len() + key_len(kind) + varint_len(round_len as u64) + round_len;
    let mut out = Vec::with_capacity(len);
    message.encode_raw(&mut out);
    encode_key(kind, WireType::LengthDelimited, &mut out);
    encode_varint(round_len as u64, &mut out);
    head.encode_raw(&mut out);
    for e in &entries {
        encode_key(ROUND_ENTRIES_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(e.len() as u64, &mut out);
        e.encode(&mut out);
    }
    for (number, on) in flags {
        if on {
            flag::encode(number, &on, &mut out);
        }
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// What a field costs in its frame: its bytes, tag and length.
pub(crate) fn framed_len(m: &impl Message) -> usize {
    let len = m.encoded_len();
    1 + varint_len(len as u64) + len
}

/// Encodes a gossip datagram (unsealed) around entries encoded when they
/// were queued; decodes exactly as `encode_datagram` of the same `Gossip`.
pub(crate) fn encode_gossip<'a>(
    network: &str,
    root: u64,
    entries: impl Iterator<Item = &'a EncodedEntry> + Clone,
    now: Duration,
) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let header = wire::Gossip { network: network.into(), root, entries: Vec::new() };
    let gossip_len =
        header.encoded_len() + entries.clone().map(|e| e.framed_len(now)).sum::<usize>();
    let mut out = Vec::with_capacity(datagram_overhead(gossip_len) + gossip_len);
    wire::Datagram { version: WIRE_VERSION, body: None }.encode_raw(&mut out);
    encode_key(DATAGRAM_GOSSIP_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(gossip_len as u64, &mut out);
    header.encode_raw(&mut out);
    for e in entries {
        let (len, reap) = e.len_at(now);
        encode_key(GOSSIP_ENTRIES_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        out.extend_from_slice(&e.fields);
        if reap != 0 {
            prost::encoding::uint64::encode(REAP_IN_MS_FIELD, &reap, &mut out);
        }
    }
    out
}

/// Bytes a `Datagram` adds around a `Gossip` of `gossip_len` bytes.
pub(crate) fn datagram_overhead(gossip_len: usize) -> usize {
    // version field (tag + up to 5 bytes varint) + body tag + length varint.
    1 + varint_len(u64::from(WIRE_VERSION)) + 1 + varint_len(gossip_len as u64)
}

pub(crate) fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Decodes and validates a datagram (already unsealed); any violation drops
/// it whole, with the reason to count. A gossip body's entries are left to
/// the node to check by the entry rules (`validate_entry`), after it has
/// turned away the copies of versions it holds, which it checked when it
/// stored them: five arrivals in six are such copies, and checking each
/// again was a tenth of a burst's instructions. Its entries are read
/// into `entries`, emptied first (a caller reading many datagrams passes
/// the last one's back, `wireref::emptied`, to spare an allocation each).
pub fn decode_datagram<'a>(
    cfg: &Config,
    bytes: &'a [u8],
    entries: Vec<EntryRef<'a>>,
) -> Result<Body<'a>, DropReason> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DropReason::TooLarge);
    }
    if let DatagramRef::Gossip { version, gossip } =
        wireref::datagram(bytes, entries).ok_or(DropReason::Malformed)?
    {
        if version != WIRE_VERSION {
            return Err(DropReason::BadVersion);
        }
        validate_network_name(cfg, gossip.network)?;
        return Ok(Body::Gossip(gossip));
    }
    let d = wire::Datagram::decode(bytes).map_err(|_| DropReason::Malformed)?;
    if d.version != WIRE_VERSION {
        return Err(DropReason::BadVersion);
    }
    match d.body {
        Some(wire::datagram::Body::Swim(b)) => Ok(Body::Swim(b)),
        // Read in place above; prost cannot see gossip the reader did not.
        Some(wire::datagram::Body::Gossip(_)) => Err(DropReason::Malformed),
        Some(wire::datagram::Body::KeyQuery(q)) => {
            if !valid_name(&q.origin, cfg.max_name_len) {
                return Err(DropReason::BadName);
            }
            Ok(Body::KeyQuery(q))
        }
        Some(wire::datagram::Body::KeyAck(a)) => {
            let sane = a.fingerprints.len() <= MAX_ACK_KEYS
                && a.fingerprints.iter().all(|f| f.len() <= 16)
                && a.error.len() <= MAX_ACK_ERROR;
            if !valid_name(&a.origin, cfg.max_name_len) || !valid_name(&a.node, cfg.max_name_len) {
                return Err(DropReason::BadName);
            }
            if !sane {
                return Err(DropReason::BadEntry);
            }
            Ok(Body::KeyAck(a))
        }
        Some(wire::datagram::Body::Tree(t)) => {
            validate_network_name(cfg, &t.network)?;
            if t.have.len() + t.graft.len() > MAX_TREE_IDS {
                return Err(DropReason::TooLarge);
            }
            for id in t.have.iter().chain(&t.graft) {
                if !valid_name(&id.table, cfg.max_name_len) || !valid_key(&id.key, cfg.max_key_len)
                {
                    return Err(DropReason::BadName);
                }
                if id.ltime == 0 {
                    return Err(DropReason::BadEntry);
                }
            }
            Ok(Body::Tree(t))
        }
        None => Err(DropReason::Malformed),
    }
}

/// Decodes and validates a push/pull frame (already unsealed), likewise;
/// its entries are borrowed from `bytes`.
pub fn decode_sync<'a>(cfg: &Config, bytes: &'a [u8]) -> Result<SyncRef<'a>, DropReason> {
    if bytes.len() > cfg.max_sync_frame {
        return Err(DropReason::TooLarge);
    }
    let m = wireref::sync_message(bytes).ok_or(DropReason::Malformed)?;
    if m.version != SYNC_VERSION {
        return Err(DropReason::BadVersion);
    }
    validate_network_name(cfg, m.network)?;
    match &m.body {
        Some(SyncBodyRef::Open(r) | SyncBodyRef::Ask(r) | SyncBodyRef::Answer(r)) => {
            for b in &r.branches {
                parse_branch(b).ok_or(DropReason::Malformed)?;
            }
            for w in &r.whole {
                parse_node(w).ok_or(DropReason::Malformed)?;
            }
            for e in &r.entries {
                validate_entry(cfg, m.network, e)?;
            }
        }
        Some(SyncBodyRef::Refused(reason)) => {
            if reason.len() > cfg.max_key_len {
                return Err(DropReason::BadEntry);
            }
        }
        None => return Err(DropReason::Malformed),
    }
    Ok(m)
}

pub(crate) fn parse_node(s: &wire::Subtree) -> Option<NodeId> {
    NodeId::new(s.level, s.prefix)
}

pub(crate) fn node_to_wire(id: NodeId) -> wire::Subtree {
    wire::Subtree { level: id.level(), prefix: id.prefix() }
}

/// A branch's node (above the leaves) and its children's values.
pub(crate) fn parse_branch(b: &wire::Branch) -> Option<(NodeId, [Sum; FANOUT])> {
    let id = parse_node(b.node.as_ref()?)?;
    if id.level() >= DEPTH || b.sums.len() != FANOUT * 8 || b.counts.len() != FANOUT {
        return None;
    }
    let mut out = [Sum::default(); FANOUT];
    for ((slot, chunk), count) in out.iter_mut().zip(b.sums.chunks_exact(8)).zip(&b.counts) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *slot = Sum { sum: u64::from_le_bytes(word), count: *count };
    }
    Some((id, out))
}

pub(crate) fn branch_to_wire(id: NodeId, children: &[Sum; FANOUT]) -> wire::Branch {
    wire::Branch {
        node: Some(node_to_wire(id)),
        sums: children.iter().flat_map(|c| c.sum.to_le_bytes()).collect::<Vec<u8>>().into(),
        counts: children.iter().map(|c| c.count).collect(),
    }
}

fn validate_network_name(cfg: &Config, network: &str) -> Result<(), DropReason> {
    match Scope::from_wire(network) {
        Scope::Cluster => Ok(()),
        Scope::Network(n) if valid_name(n, cfg.max_name_len) => Ok(()),
        Scope::Network(_) => Err(DropReason::BadName),
    }
}

/// Field bounds, plus the cluster scope's shape: a node writes only its own
/// record, its own attachments and its own copies of shared objects, and
/// no other table (the cluster scope reaches every node).
pub(crate) fn validate_entry(
    cfg: &Config,
    network: &str,
    e: &EntryRef<'_>,
) -> Result<(), DropReason> {
    if !valid_name(e.table, cfg.max_name_len)
        || !valid_name(e.owner, cfg.max_name_len)
        || !valid_key(e.key, cfg.max_key_len)
    {
        return Err(DropReason::BadName);
    }
    if e.value.len() > cfg.max_value_len || e.ltime == 0 {
        return Err(DropReason::BadEntry);
    }
    if Scope::from_wire(network) == Scope::Cluster {
        let table = ClusterTable::from_name(e.table).ok_or(DropReason::BadName)?;
        match table.key_owner(e.key, cfg.max_name_len) {
            Some(owner) if owner == e.owner => {}
            Some(_) => return Err(DropReason::ForgedOwner),
            None => return Err(DropReason::BadName),
        }
        if table == ClusterTable::Nodes && !e.deleted {
            let r = wire::NodeRecord::decode(e.value).map_err(|_| DropReason::BadEntry)?;
            r.addr.parse::<std::net::SocketAddr>().map_err(|_| DropReason::BadEntry)?;
        }
    }
    Ok(())
}

/// A validated wire entry as stored. A tombstone's lifetime counts down from
/// the residual it arrived with, never from a fresh full lifetime. The
/// value is copied: a slice would keep its whole datagram or frame alive.
pub(crate) fn entry_from_wire(
    e: &EntryRef<'_>,
    owner: Arc<str>,
    now: Duration,
    ttl: Duration,
) -> Entry {
    let residual = Duration::from_millis(e.reap_in_ms).min(ttl);
    Entry {
        value: Bytes::copy_from_slice(e.value),
        owner,
        incarnation: e.incarnation,
        ltime: e.ltime,
        deleted: e.deleted,
        reap_at: e.deleted.then(|| now + residual),
        hidden: false,
    }
}

/// A stored entry as a `wire::Entry` (the simulator's preloaded cluster;
/// the tests' reference for `EntryOut`).
#[cfg(any(test, feature = "sim"))]
pub(crate) fn entry_to_wire(table: &str, key: &str, e: &Entry, now: Duration) -> wire::Entry {
    wire::Entry {
        table: table.to_owned(),
        key: key.to_owned(),
        // Copied: a clone would give the stored value a shared header
        // for life (`Tables::insert`).
        value: Bytes::copy_from_slice(&e.value),
        owner: e.owner.to_string(),
        incarnation: e.incarnation,
        ltime: e.ltime,
        deleted: e.deleted,
        reap_in_ms: residual_ms(e.reap_at, now),
    }
}

/// Milliseconds a tombstone has left at `now` (0 for live entries): what
/// goes on the wire, so receivers count down from it.
pub(crate) fn residual_ms(reap_at: Option<Duration>, now: Duration) -> u64 {
    reap_at.map_or(0, |at| at.saturating_sub(now).as_millis().min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{NETWORKS_TABLE, NODES_TABLE};

    const CLUSTER_WIRE: &str = "";

    fn entry(table: &str, key: &str, owner: &str) -> wire::Entry {
        wire::Entry {
            table: table.into(),
            key: key.into(),
            value: Bytes::from_static(b"v"),
            owner: owner.into(),
            incarnation: 1,
            ltime: 3,
            deleted: false,
            reap_in_ms: 0,
        }
    }

    fn gossip(network: &str, entries: Vec<wire::Entry>) -> Vec<u8> {
        encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: network.into(),
            root: 7,
            entries,
        }))
    }

    #[test]
    fn gossip_of_encoded_entries_is_the_gossip_prost_encodes() {
        let live = Entry {
            value: Bytes::from_static(b"10.0.0.2"),
            owner: "n1".into(),
            incarnation: 9,
            ltime: 300,
            deleted: false,
            reap_at: None,
            hidden: false,
        };
        let reap_at = Some(Duration::from_secs(1800));
        let tomb = Entry { deleted: true, reap_at, ltime: 301, ..live.clone() };
        let queued = [EncodedEntry::new("eps", "a", &live), EncodedEntry::new("eps", "b", &tomb)];
        let at_queueing: Vec<usize> = queued.iter().map(|e| e.framed_len(Duration::ZERO)).collect();
        for now in [Duration::ZERO, Duration::from_millis(1234), Duration::from_secs(1800)] {
            let bytes = encode_gossip("net", 42, queued.iter(), now);
            let expected = encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
                network: "net".into(),
                root: 42,
                entries: vec![
                    entry_to_wire("eps", "a", &live, now),
                    entry_to_wire("eps", "b", &tomb, now),
                ],
            }));
            assert_eq!(bytes, expected, "at {now:?}");
            for (e, first) in queued.iter().zip(&at_queueing) {
                assert!(e.framed_len(now) <= *first, "a queued entry never grows");
            }
        }
        assert!(at_queueing[1] > at_queueing[0], "the reap time is counted");
    }

    /// Entries of every shape: tombstones with and without time left,
    /// empty values, long and non-ASCII strings, large and zero numbers.
    fn varied_entries(rng: &mut crate::hash::Rng, n: usize) -> Vec<(String, String, Entry)> {
        (0..n)
            .map(|i| {
                let deleted = rng.next().is_multiple_of(3);
                let e = Entry {
                    value: Bytes::from(vec![b'v'; (rng.next() % 300) as usize]),
                    owner: format!("n{}é", rng.next() % 7).into(),
                    incarnation: rng.next() >> (rng.next() % 64),
                    ltime: 1 + (rng.next() >> (rng.next() % 64)),
                    deleted,
                    reap_at: (deleted && i % 2 == 0)
                        .then(|| Duration::from_millis(rng.next() % 1_000_000)),
                    hidden: false,
                };
                (format!("t{}", rng.next() % 3), "k".repeat(1 + (rng.next() % 200) as usize), e)
            })
            .collect()
    }

    #[test]
    fn sync_frames_encoded_from_the_table_are_the_frames_prost_encodes() {
        use wire::sync_message::Body as B;
        let mut rng = crate::hash::Rng(0x5eed);
        let now = Duration::from_secs(500);
        for (i, n) in [0, 1, 3, 40, 1000].into_iter().enumerate() {
            let held = varied_entries(&mut rng, n);
            let branches =
                vec![branch_to_wire(NodeId::ROOT, &[Sum { sum: rng.next(), count: 3 }; FANOUT]); i];
            let whole = vec![wire::Subtree { level: DEPTH, prefix: rng.next() % 65536 }; n % 5];
            for (kind, done, cut) in [
                (RoundKind::Open, false, false),
                (RoundKind::Ask, true, false),
                (RoundKind::Answer, false, true),
                (RoundKind::Ask, true, true),
            ] {
                let (network, sync_id) = if done { ("", 0) } else { ("net", rng.next()) };
                let round = RoundOut {
                    branches: branches.clone(),
                    whole: whole.clone(),
                    entries: held.iter().map(|(t, k, e)| EntryOut::new(t, k, e, now)).collect(),
                    done,
                    cut,
                };
                let framed: usize = round.entries.iter().map(EntryOut::framed_len).sum();
                let bytes = encode_round(network, sync_id, kind, round);
                let r = wire::SyncRound {
                    branches: branches.clone(),
                    whole: whole.clone(),
                    entries: held.iter().map(|(t, k, e)| entry_to_wire(t, k, e, now)).collect(),
                    done,
                    cut,
                };
                assert_eq!(framed, r.entries.iter().map(framed_len).sum::<usize>());
                let body = match kind {
                    RoundKind::Open => B::Open(r),
                    RoundKind::Ask => B::Ask(r),
                    RoundKind::Answer => B::Answer(r),
                };
                let m = wire::SyncMessage {
                    version: SYNC_VERSION,
                    sync_id,
                    network: network.into(),
                    body: Some(body),
                };
                assert_eq!(bytes, m.encode_to_vec(), "{n} entries, {kind:?}");
            }
        }
    }

    #[test]
    fn good_gossip_round_trips() {
        let cfg = Config::default();
        let bytes = gossip("net", vec![entry("t", "k", "n1")]);
        match decode_datagram(&cfg, &bytes, Vec::new()) {
            Ok(Body::Gossip(g)) => {
                assert_eq!(g.root, 7);
                assert_eq!(g.entries[0].key, "k");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_rejected_or_still_valid() {
        let cfg = Config::default();
        let bytes = gossip("net", vec![entry("t", "key", "n1"), entry("t", "k2", "n2")]);
        for cut in 0..bytes.len() {
            // A prefix may decode (protobuf fields are optional), but its
            // entries must then pass every check, and it must never panic.
            if let Ok(Body::Gossip(g)) = decode_datagram(&cfg, &bytes[..cut], Vec::new()) {
                for e in &g.entries {
                    assert!(validate_entry(&cfg, g.network, e).is_ok());
                }
            }
        }
        assert_eq!(
            decode_datagram(&cfg, &bytes[..bytes.len() - 1], Vec::new()).err(),
            Some(DropReason::Malformed)
        );
    }

    #[test]
    fn oversized_and_bad_fields_are_rejected() {
        let cfg = Config::default();
        assert_eq!(
            decode_datagram(&cfg, &vec![0u8; MAX_DATAGRAM + 1], Vec::new()).err(),
            Some(DropReason::TooLarge)
        );
        let mut big = entry("t", "k", "n1");
        big.value = Bytes::from(vec![0u8; cfg.max_value_len + 1]);
        let mut zero = entry("t", "k", "n1");
        zero.ltime = 0;
        let bad = [
            (big, DropReason::BadEntry),
            (zero, DropReason::BadEntry),
            (entry("t", "", "n1"), DropReason::BadName),
            (entry("t", "k\n", "n1"), DropReason::BadName),
        ];
        for (e, reason) in &bad {
            assert_eq!(validate_entry(&cfg, "net", &e.into()).err(), Some(*reason), "{e:?}");
        }
        assert_eq!(
            decode_datagram(&cfg, &gossip("bad/net", vec![]), Vec::new()).err(),
            Some(DropReason::BadName)
        );
        let v2 =
            wire::Datagram { version: 2, body: Some(wire::datagram::Body::Swim(Bytes::new())) };
        assert_eq!(
            decode_datagram(&cfg, &v2.encode_to_vec(), Vec::new()).err(),
            Some(DropReason::BadVersion)
        );
        assert_eq!(decode_datagram(&cfg, &[], Vec::new()).err(), Some(DropReason::BadVersion));
    }

    #[test]
    fn cluster_scope_entries_must_belong_to_their_owner() {
        let cfg = Config::default();
        let ok = entry(NETWORKS_TABLE, "net/n1", "n1");
        assert!(validate_entry(&cfg, CLUSTER_WIRE, &(&ok).into()).is_ok());
        let forged = entry(NETWORKS_TABLE, "net/n2", "n1");
        assert_eq!(
            validate_entry(&cfg, CLUSTER_WIRE, &(&forged).into()).err(),
            Some(DropReason::ForgedOwner)
        );
        let mut rec = entry(NODES_TABLE, "n2", "n1");
        assert_eq!(
            validate_entry(&cfg, CLUSTER_WIRE, &(&rec).into()).err(),
            Some(DropReason::ForgedOwner)
        );
        rec.key = "n1".into();
        assert_eq!(
            validate_entry(&cfg, CLUSTER_WIRE, &(&rec).into()).err(),
            Some(DropReason::BadEntry)
        );
        rec.value = wire::NodeRecord { addr: "127.0.0.1:7946".into(), ..Default::default() }
            .encode_to_vec()
            .into();
        assert!(validate_entry(&cfg, CLUSTER_WIRE, &(&rec).into()).is_ok());
        assert_eq!(
            validate_entry(&cfg, CLUSTER_WIRE, &(&entry("other", "k", "n1")).into()).err(),
            Some(DropReason::BadName)
        );
    }

    fn round(r: wire::SyncRound) -> Vec<u8> {
        wire::SyncMessage {
            version: SYNC_VERSION,
            sync_id: 1,
            network: "net".into(),
            body: Some(wire::sync_message::Body::Ask(r)),
        }
        .encode_to_vec()
    }

    #[test]
    fn sync_frames_are_bounded_and_checked() {
        let cfg = Config { max_sync_frame: 64, ..Config::default() };
        assert_eq!(decode_sync(&cfg, &[0u8; 65]).err(), Some(DropReason::TooLarge));
        let cfg = Config::default();
        let good = branch_to_wire(NodeId::ROOT, &[Sum { sum: 9, count: 1 }; FANOUT]);
        assert_eq!(
            parse_branch(&good).map(|(id, c)| (id, c[15])),
            Some((NodeId::ROOT, Sum { sum: 9, count: 1 }))
        );
        let ok = wire::SyncRound { branches: vec![good.clone()], ..Default::default() };
        assert!(decode_sync(&cfg, &round(ok)).is_ok());
        let mut short = good.clone();
        short.sums.truncate(10);
        let mut few = good.clone();
        few.counts.pop();
        let mut leaf = good.clone();
        leaf.node = Some(wire::Subtree { level: DEPTH, prefix: 0 });
        let mut beyond = good.clone();
        beyond.node = Some(wire::Subtree { level: 1, prefix: 16 });
        let mut headless = good;
        headless.node = None;
        for b in [short, few, leaf, beyond, headless] {
            let r = wire::SyncRound { branches: vec![b], ..Default::default() };
            assert_eq!(decode_sync(&cfg, &round(r)).err(), Some(DropReason::Malformed));
        }
        let deep = wire::SyncRound {
            whole: vec![wire::Subtree { level: DEPTH + 1, prefix: 0 }],
            ..Default::default()
        };
        assert_eq!(decode_sync(&cfg, &round(deep)).err(), Some(DropReason::Malformed));
        let old = wire::SyncMessage { version: 1, ..Default::default() };
        assert_eq!(decode_sync(&cfg, &old.encode_to_vec()).err(), Some(DropReason::BadVersion));
    }

    #[test]
    fn random_input_never_panics() {
        // A deterministic xorshift stream; the fuzz targets (issue 5) go
        // further, this keeps a cheap guard in every test run.
        let cfg = Config::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let buf: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_datagram(&cfg, &buf, Vec::new());
            let _ = decode_sync(&cfg, &buf);
        }
    }

    #[test]
    fn tombstone_residual_is_capped_and_carried() {
        let mut w = entry("t", "k", "n1");
        w.deleted = true;
        w.reap_in_ms = u64::MAX;
        let ttl = Duration::from_secs(60);
        let now = Duration::from_secs(100);
        let e = entry_from_wire(&(&w).into(), w.owner.as_str().into(), now, ttl);
        assert_eq!(e.reap_at, Some(now + ttl));
        let back = entry_to_wire("t", "k", &e, now + Duration::from_secs(10));
        assert_eq!(back.reap_in_ms, 50_000);
    }
}
