//! Gossip and push/pull frames read in place: their entries borrowed from
//! the bytes. A node receives every event several times over (each relay
//! sends it on), and most copies are turned away by version; decoded with
//! prost, each copy first cost three strings, a value and a vector, which
//! made allocation the largest part of a 100-agent burst's CPU. A 4 MiB
//! push/pull frame holds some 30,000 entries: decoded with prost, about 10
//! MiB more and 120,000 allocations. Only an entry that is news is copied
//! out (`codec::entry_from_wire`).
//!
//! The reader follows protobuf's rules as prost applies them to these
//! messages: unknown fields are skipped, the last of a repeated singular
//! field wins, strings must be UTF-8, a known field of the wrong wire type
//! is malformed, a message field that appears twice is merged. Groups
//! (wire types 3 and 4, deprecated and never sent by us) are malformed
//! here, as is a gossip body that appears twice. A frame's tree nodes
//! (branches, subtrees: a few per frame) are decoded by prost.

use netdb_wire as wire;
use prost::Message;

/// An entry as it sits in a datagram or a push/pull frame: the fields of
/// `wire::Entry`, which documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct EntryRef<'a> {
    pub table: &'a str,
    pub key: &'a str,
    pub value: &'a [u8],
    pub owner: &'a str,
    pub incarnation: u64,
    pub ltime: u64,
    pub deleted: bool,
    pub reap_in_ms: u64,
}

impl<'a> From<&'a wire::Entry> for EntryRef<'a> {
    fn from(e: &'a wire::Entry) -> Self {
        EntryRef {
            table: &e.table,
            key: &e.key,
            value: &e.value,
            owner: &e.owner,
            incarnation: e.incarnation,
            ltime: e.ltime,
            deleted: e.deleted,
            reap_in_ms: e.reap_in_ms,
        }
    }
}

/// A gossip body read in place: the fields of `wire::Gossip`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GossipRef<'a> {
    pub network: &'a str,
    pub root: u64,
    pub entries: Vec<EntryRef<'a>>,
}

/// A push/pull frame read in place: the fields of `wire::SyncMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SyncRef<'a> {
    pub version: u32,
    pub sync_id: u64,
    pub network: &'a str,
    pub body: Option<SyncBodyRef<'a>>,
}

/// `wire::sync_message::Body`, its rounds read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SyncBodyRef<'a> {
    Refused(&'a str),
    Open(RoundRef<'a>),
    Ask(RoundRef<'a>),
    Answer(RoundRef<'a>),
}

/// A push/pull round read in place: the fields of `wire::SyncRound`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct RoundRef<'a> {
    pub branches: Vec<wire::Branch>,
    pub whole: Vec<wire::Subtree>,
    pub entries: Vec<EntryRef<'a>>,
    pub done: bool,
    pub cut: bool,
}

/// Reads a push/pull frame; `None` when it is malformed.
pub(crate) fn sync_message(bytes: &[u8]) -> Option<SyncRef<'_>> {
    let mut m = SyncRef { version: 0, sync_id: 0, network: "", body: None };
    let text = |b| std::str::from_utf8(b).ok();
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(v)) => m.version = v as u32,
            (2, Value::Varint(v)) => m.sync_id = v,
            (3, Value::Bytes(b)) => m.network = text(b)?,
            (7, Value::Bytes(b)) => m.body = Some(SyncBodyRef::Refused(text(b)?)),
            (n @ 8..=10, Value::Bytes(b)) => {
                // Another body replaces this one; the same one is merged.
                let mut r = match (n, m.body.take()) {
                    (8, Some(SyncBodyRef::Open(r)))
                    | (9, Some(SyncBodyRef::Ask(r)))
                    | (10, Some(SyncBodyRef::Answer(r))) => r,
                    _ => RoundRef::default(),
                };
                merge_round(b, &mut r)?;
                m.body = Some(match n {
                    8 => SyncBodyRef::Open(r),
                    9 => SyncBodyRef::Ask(r),
                    _ => SyncBodyRef::Answer(r),
                });
            }
            (1..=3 | 7..=10, _) => return None,
            _ => {}
        }
    }
    Some(m)
}

fn merge_round<'a>(bytes: &'a [u8], r: &mut RoundRef<'a>) -> Option<()> {
    for field in Fields(bytes) {
        match field? {
            (1, Value::Bytes(b)) => r.branches.push(wire::Branch::decode(b).ok()?),
            (2, Value::Bytes(b)) => r.whole.push(wire::Subtree::decode(b).ok()?),
            (3, Value::Bytes(b)) => r.entries.push(entry(b)?),
            (4, Value::Varint(v)) => r.done = v != 0,
            (5, Value::Varint(v)) => r.cut = v != 0,
            (1..=5, _) => return None,
            _ => {}
        }
    }
    Some(())
}

/// A datagram's body, as far as the fast path needs to know.
pub(crate) enum DatagramRef<'a> {
    Gossip {
        version: u32,
        gossip: GossipRef<'a>,
    },
    /// Not gossip: decoded the usual way.
    Other,
}

/// Reads a datagram; `None` when it is malformed. A gossip body's entries
/// go into `entries` (emptied first), whose room is reused: `emptied`.
pub(crate) fn datagram<'a>(bytes: &'a [u8], entries: Vec<EntryRef<'a>>) -> Option<DatagramRef<'a>> {
    let (mut version, mut gossip, mut other) = (0u32, None, false);
    for field in Fields(bytes) {
        match field? {
            // prost keeps the low 32 bits of a uint32's varint.
            (1, Value::Varint(v)) => version = v as u32,
            (1, _) => return None,
            (3, Value::Bytes(b)) if gossip.is_none() => {
                gossip = Some(b);
                other = false;
            }
            (3, _) => return None,
            // A later body of another kind replaces the gossip, as in prost.
            (2 | 4 | 5, _) => {
                other = true;
                gossip = None;
            }
            _ => {}
        }
    }
    match (gossip, other) {
        (Some(g), false) => {
            Some(DatagramRef::Gossip { version, gossip: gossip_body(g, emptied(entries))? })
        }
        _ => Some(DatagramRef::Other),
    }
}

fn gossip_body<'a>(bytes: &'a [u8], entries: Vec<EntryRef<'a>>) -> Option<GossipRef<'a>> {
    let mut g = GossipRef { network: "", root: 0, entries };
    for field in Fields(bytes) {
        match field? {
            (1, Value::Bytes(b)) => g.network = std::str::from_utf8(b).ok()?,
            (2, Value::Fixed64(v)) => g.root = v,
            (3, Value::Bytes(b)) => g.entries.push(entry(b)?),
            (1..=3, _) => return None,
            _ => {}
        }
    }
    Some(g)
}

/// `v` emptied, as a vector of entries of another lifetime, its allocation
/// kept (collected in place: same layout, nothing to map). A node keeps
/// one for the entries of every gossip datagram it reads: grown anew for
/// each, its 1.7 KB were a large-bin request for glibc, which first
/// consolidated the small chunks freed meanwhile, several per cent of a
/// 100-agent burst's CPU.
pub(crate) fn emptied<'b>(mut v: Vec<EntryRef<'_>>) -> Vec<EntryRef<'b>> {
    v.clear();
    v.into_iter().map(|_| BLANK).collect()
}

/// An entry with every field at its protobuf default.
const BLANK: EntryRef<'static> = EntryRef {
    table: "",
    key: "",
    value: &[],
    owner: "",
    incarnation: 0,
    ltime: 0,
    deleted: false,
    reap_in_ms: 0,
};

fn entry(bytes: &[u8]) -> Option<EntryRef<'_>> {
    in_order(bytes).or_else(|| any_entry(bytes))
}

/// An entry laid out as every encoder of ours and prost write one: known
/// fields only, each at most once, in field order. Read straight through,
/// without the general reader's loop and dispatch per field, which with
/// its varints took a fifth of a burst's instructions (`sim_burst` under
/// cachegrind). `None` for any other layout, and for bad bytes, which the
/// general reader then reads (and refuses) as before.
fn in_order(bytes: &[u8]) -> Option<EntryRef<'_>> {
    let mut r = Fields(bytes);
    let mut e = BLANK;
    let text = |b| std::str::from_utf8(b).ok();
    if r.key(1, 2) {
        e.table = text(r.len_delimited()?)?;
    }
    if r.key(2, 2) {
        e.key = text(r.len_delimited()?)?;
    }
    if r.key(3, 2) {
        e.value = r.len_delimited()?;
    }
    if r.key(4, 2) {
        e.owner = text(r.len_delimited()?)?;
    }
    if r.key(5, 0) {
        e.incarnation = r.varint()?;
    }
    if r.key(6, 0) {
        e.ltime = r.varint()?;
    }
    if r.key(7, 0) {
        e.deleted = r.varint()? != 0;
    }
    if r.key(8, 0) {
        e.reap_in_ms = r.varint()?;
    }
    r.0.is_empty().then_some(e)
}

/// An entry in any layout protobuf allows.
fn any_entry(bytes: &[u8]) -> Option<EntryRef<'_>> {
    let mut e = BLANK;
    let text = |b| std::str::from_utf8(b).ok();
    for field in Fields(bytes) {
        match field? {
            (1, Value::Bytes(b)) => e.table = text(b)?,
            (2, Value::Bytes(b)) => e.key = text(b)?,
            (3, Value::Bytes(b)) => e.value = b,
            (4, Value::Bytes(b)) => e.owner = text(b)?,
            (5, Value::Varint(v)) => e.incarnation = v,
            (6, Value::Varint(v)) => e.ltime = v,
            (7, Value::Varint(v)) => e.deleted = v != 0,
            (8, Value::Varint(v)) => e.reap_in_ms = v,
            (1..=8, _) => return None,
            _ => {}
        }
    }
    Some(e)
}

/// A field's value by wire type.
#[derive(Debug)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of a message, in order; an item is `None` (and the last)
/// where the bytes stop making sense.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u32, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Option<(u32, Value<'a>)> {
        // A key past 32 bits is refused, as prost refuses it.
        let key = u32::try_from(self.varint()?).ok()?;
        let number = Some(key >> 3).filter(|&n| n != 0)?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => Value::Bytes(self.len_delimited()?),
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return None,
        };
        Some((number, value))
    }

    /// Steps over the next field's key if it is `number` of `wire_type`
    /// (one byte: fields up to 15).
    fn key(&mut self, number: u8, wire_type: u8) -> bool {
        match self.0.split_first() {
            Some((&b, rest)) if b == number << 3 | wire_type => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A varint of at most 10 bytes, its tenth holding the top bit alone.
    fn varint(&mut self) -> Option<u64> {
        // Nearly every key and length of a gossip entry is one byte.
        if let Some((&b, rest)) = self.0.split_first()
            && b < 0x80
        {
            self.0 = rest;
            return Some(u64::from(b));
        }
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.0.get(i)?;
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use netdb_wire as wire;
    use prost::Message;

    use super::*;
    use crate::hash::Rng;

    fn sample(rng: &mut Rng, entries: usize) -> wire::Gossip {
        let mut text = |n: u64| format!("t{}é", rng.next() % n);
        let entries = (0..entries)
            .map(|_| wire::Entry {
                table: text(10),
                key: text(1_000_000),
                value: vec![7; 40].into(),
                owner: text(100),
                incarnation: 1 << 40,
                ltime: u64::MAX,
                deleted: true,
                reap_in_ms: 12_345,
            })
            .collect();
        wire::Gossip { network: "net".into(), root: u64::MAX - 3, entries }
    }

    fn owned_entry(e: &EntryRef<'_>) -> wire::Entry {
        wire::Entry {
            table: e.table.into(),
            key: e.key.into(),
            value: e.value.to_vec().into(),
            owner: e.owner.into(),
            incarnation: e.incarnation,
            ltime: e.ltime,
            deleted: e.deleted,
            reap_in_ms: e.reap_in_ms,
        }
    }

    fn owned(g: &GossipRef<'_>) -> wire::Gossip {
        let entries = g.entries.iter().map(owned_entry).collect();
        wire::Gossip { network: g.network.into(), root: g.root, entries }
    }

    fn owned_sync(m: &SyncRef<'_>) -> wire::SyncMessage {
        use wire::sync_message::Body as B;
        let round = |r: &RoundRef<'_>| wire::SyncRound {
            branches: r.branches.clone(),
            whole: r.whole.clone(),
            entries: r.entries.iter().map(owned_entry).collect(),
            done: r.done,
            cut: r.cut,
        };
        wire::SyncMessage {
            version: m.version,
            sync_id: m.sync_id,
            network: m.network.into(),
            body: m.body.as_ref().map(|b| match b {
                SyncBodyRef::Refused(why) => B::Refused((*why).into()),
                SyncBodyRef::Open(r) => B::Open(round(r)),
                SyncBodyRef::Ask(r) => B::Ask(round(r)),
                SyncBodyRef::Answer(r) => B::Answer(round(r)),
            }),
        }
    }

    /// Frames of every body, with tree nodes, entries and flags.
    fn sync_samples(rng: &mut Rng) -> Vec<wire::SyncMessage> {
        use wire::sync_message::Body as B;
        let mut out = Vec::new();
        for (i, n) in [0, 1, 7, 40].into_iter().enumerate() {
            let round = wire::SyncRound {
                branches: (0..i)
                    .map(|j| wire::Branch {
                        node: Some(wire::Subtree { level: j as u32, prefix: rng.next() % 16 }),
                        sums: vec![3; 128].into(),
                        counts: (0..16).map(|c| c * 1000).collect(),
                    })
                    .collect(),
                whole: (0..n % 5)
                    .map(|_| wire::Subtree { level: 4, prefix: rng.next() % 65536 })
                    .collect(),
                entries: sample(rng, n).entries,
                done: i % 2 == 1,
                cut: i >= 2,
            };
            let body = [B::Open(round.clone()), B::Ask(round.clone()), B::Answer(round)];
            for body in body.into_iter().chain([B::Refused("busy é".into())]) {
                out.push(wire::SyncMessage {
                    version: 2,
                    sync_id: rng.next() >> (i * 16),
                    network: if n == 0 { String::new() } else { format!("net{n}") },
                    body: Some(body),
                });
            }
        }
        out
    }

    fn read_sync(bytes: &[u8]) -> Option<wire::SyncMessage> {
        sync_message(bytes).as_ref().map(owned_sync)
    }

    #[test]
    fn reads_sync_frames_as_prost_decodes_them() {
        let mut rng = Rng(5);
        let frames = sync_samples(&mut rng);
        for m in &frames {
            assert_eq!(read_sync(&m.encode_to_vec()).as_ref(), Some(m));
        }
        // Concatenated frames are one message to protobuf: the same body
        // twice is merged, another replaces it, scalars are the last's.
        for (a, b) in frames.iter().zip(frames.iter().skip(1).chain(frames.iter().skip(3))) {
            let mut both = a.encode_to_vec();
            both.extend(b.encode_to_vec());
            let prost = wire::SyncMessage::decode(&both[..]).unwrap();
            assert_eq!(read_sync(&both), Some(prost));
        }
        assert_eq!(read_sync(&[]), Some(wire::SyncMessage::default()));
    }

    #[test]
    fn sync_frames_prost_refuses_are_refused() {
        let mut rng = Rng(13);
        for m in sync_samples(&mut rng).iter().step_by(5) {
            let bytes = m.encode_to_vec();
            for cut in 0..bytes.len() {
                if wire::SyncMessage::decode(&bytes[..cut]).is_err() {
                    assert!(read_sync(&bytes[..cut]).is_none(), "cut at {cut}");
                }
            }
        }
        // A round of the wrong wire type, a bad subtree, a string not UTF-8.
        let bad: [&[u8]; 3] =
            [&[8 << 3, 1], &[(8 << 3) | 2, 3, (2 << 3) | 2, 1, 0x88], &[(7 << 3) | 2, 1, 0xff]];
        for bad in bad {
            assert!(wire::SyncMessage::decode(bad).is_err());
            assert_eq!(read_sync(bad), None);
        }
        for _ in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // What is read is what prost decodes (prost also skips groups).
            if let Some(ours) = read_sync(&junk) {
                assert_eq!(wire::SyncMessage::decode(&junk[..]).ok(), Some(ours), "{junk:?}");
            }
        }
    }

    fn read(bytes: &[u8]) -> Option<(u32, wire::Gossip)> {
        // Room left from another read, with entries in it: they must go.
        let old = wire::Entry::default();
        let stale = vec![EntryRef::from(&old); 3];
        match datagram(bytes, emptied(stale))? {
            DatagramRef::Gossip { version, gossip } => Some((version, owned(&gossip))),
            DatagramRef::Other => None,
        }
    }

    #[test]
    fn reads_gossip_as_prost_decodes_it() {
        let mut rng = Rng(7);
        for n in [0, 1, 5, 30] {
            let g = sample(&mut rng, n);
            let bytes = crate::codec::encode_datagram(wire::datagram::Body::Gossip(g.clone()));
            assert_eq!(read(&bytes), Some((crate::codec::WIRE_VERSION, g)));
        }
    }

    #[test]
    fn entries_in_field_order_read_as_the_general_reader_reads_them() {
        let mut rng = Rng(11);
        let mut fast = 0;
        for i in 0..30_000u64 {
            let mut e = sample(&mut rng, 1).entries.remove(0);
            // Fields at their defaults are left out by the encoder.
            match i % 4 {
                0 => (e.deleted, e.reap_in_ms) = (false, 0),
                1 => (e.table, e.value) = (String::new(), bytes::Bytes::new()),
                2 => e.value = vec![1; 300].into(),
                _ => {}
            }
            let mut bytes = e.encode_to_vec();
            assert_eq!(in_order(&bytes), Some(EntryRef::from(&e)), "as encoded");
            let at = (rng.next() as usize) % bytes.len();
            match rng.next() % 4 {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes.truncate(at),
                2 => bytes.insert(at, rng.next() as u8),
                _ => {
                    let other = (rng.next() as usize) % bytes.len();
                    bytes.swap(at, other);
                }
            }
            let general = any_entry(&bytes);
            if let Some(e) = in_order(&bytes) {
                fast += 1;
                assert_eq!(Some(e), general, "{bytes:?}");
            }
            assert_eq!(entry(&bytes), general, "{bytes:?}");
        }
        assert!(fast > 1_000, "damaged entries the fast reader still took: {fast}");
    }

    #[test]
    fn the_room_for_entries_is_reused_not_reallocated() {
        let e = wire::Entry { table: "t".into(), ltime: 1, ..Default::default() };
        let full: Vec<EntryRef<'_>> = vec![EntryRef::from(&e); 16];
        let (at, room) = (full.as_ptr() as usize, full.capacity());
        let reused: Vec<EntryRef<'static>> = emptied(full);
        assert!(reused.is_empty());
        assert_eq!((reused.as_ptr() as usize, reused.capacity()), (at, room));
    }

    #[test]
    fn unknown_fields_are_skipped_and_the_last_scalar_wins() {
        let e = wire::Entry { table: "t".into(), key: "k".into(), ltime: 1, ..Default::default() };
        let mut raw = e.encode_to_vec();
        // Field 9, each wire type we skip; then ltime again.
        raw.extend([9 << 3, 0x96, 0x01]);
        raw.extend([(9 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        raw.extend([(9 << 3) | 2, 2, b'x', b'y']);
        raw.extend([(9 << 3) | 5, 1, 2, 3, 4]);
        raw.extend([6 << 3, 42]);
        let prost = wire::Entry::decode(&raw[..]).unwrap();
        assert_eq!(prost.ltime, 42);
        assert_eq!(entry(&raw), Some(EntryRef::from(&prost)));
    }

    #[test]
    fn what_prost_refuses_is_refused_and_no_input_panics() {
        let mut rng = Rng(11);
        let g = sample(&mut rng, 6);
        let bytes = crate::codec::encode_datagram(wire::datagram::Body::Gossip(g));
        // Every truncation: where prost fails to decode, so do we.
        for cut in 0..bytes.len() {
            if wire::Datagram::decode(&bytes[..cut]).is_err() {
                assert!(read(&bytes[..cut]).is_none(), "cut at {cut}");
            }
        }
        // A string that is not UTF-8, and a known field of the wrong type.
        let bad_utf8 = [(1 << 3) | 2, 1, 0xff];
        assert!(wire::Entry::decode(&bad_utf8[..]).is_err());
        assert_eq!(entry(&bad_utf8), None);
        let wrong_type = [6 << 3 | 2, 1, 0];
        assert!(wire::Entry::decode(&wrong_type[..]).is_err());
        assert_eq!(entry(&wrong_type), None);
        // An 11-byte varint, and a length past the end.
        assert_eq!(
            entry(&[6 << 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
        assert_eq!(entry(&[(1 << 3) | 2, 5, b'a']), None);
        for _ in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = datagram(&junk, Vec::new());
        }
    }

    #[test]
    fn other_bodies_are_left_to_prost() {
        let swim = crate::codec::encode_datagram(wire::datagram::Body::Swim(vec![1, 2].into()));
        assert!(matches!(datagram(&swim, Vec::new()), Some(DatagramRef::Other)));
        // Gossip, then a SWIM body: the last of a oneof wins, as in prost.
        let mut both = crate::codec::encode_datagram(wire::datagram::Body::Gossip(wire::Gossip {
            network: "n".into(),
            ..Default::default()
        }));
        both.extend([(2 << 3) | 2, 1, 9]);
        assert!(matches!(
            wire::Datagram::decode(&both[..]).unwrap().body,
            Some(wire::datagram::Body::Swim(_))
        ));
        assert!(matches!(datagram(&both, Vec::new()), Some(DatagramRef::Other)));
    }
}
