//! One table's entries by key: a vector of (key, entry) and an index of
//! positions beside it, open-addressed with linear probing, whose slots
//! also hold a fingerprint of each entry's version.
//!
//! Why not a general hash map: five arrivals of six at a busy node are
//! copies of a version it holds, and with `IndexMap` recognising one cost
//! three cache misses (the control bytes, the index, the entry), 17 % of an
//! agent's CPU in the 100-agent burst, where a hundred processes share two
//! cores and every lookup finds its lines cold. Here a copy is recognised
//! from its slot alone, one line, which also counts it:
//! [`Keyed::copy_heard`].
//!
//! Hashed, not sorted: in a sorted map the lookups' string compares were a
//! quarter of that burst's CPU (listings sort on demand instead). Entries
//! in a vector with positions in the index, not in the hash table's own
//! buckets: those double at a power of two, and at a million keys held
//! 2^21 buckets of 113 bytes, 237 bytes an entry.

use std::hash::Hasher as _;

use super::{Entry, Version};
use crate::hash::MapHasher;
use crate::slots::{self, Slots};

/// A table's key: held in place up to 22 bytes (a container's endpoint
/// id, a name, an address), saving the 16-byte pointer and the 32-byte
/// chunk a boxed string costs each of a million entries.
#[derive(Debug, Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<str>),
}

/// Longest key held in place: with its length and the variant's tag, the
/// size of a boxed string's pointer and length plus 8.
const INLINE_KEY: usize = 22;

impl Key {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Key::Boxed(b) => b.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        // Copied whole from a `str`, so it is UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl From<&str> for Key {
    fn from(k: &str) -> Key {
        match u8::try_from(k.len()) {
            Ok(len) if k.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..k.len()].copy_from_slice(k.as_bytes());
                Key::Inline { len, bytes }
            }
            _ => Key::Boxed(k.into()),
        }
    }
}

/// One place of the index. Sixteen bytes, four to a cache line.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Fingerprint of the entry's version ([`print`]) in the high bits,
    /// copies of it heard in the low ones ([`HEARD`]).
    version: u64,
    /// One more than the entry's position; 0: the slot is empty.
    pos: u32,
    /// The key's hash folded to 32 bits ([`tag`]).
    tag: u32,
}

impl slots::Slot for Slot {
    fn is_empty(&self) -> bool {
        self.pos == 0
    }

    fn hash(&self) -> u64 {
        u64::from(self.tag)
    }
}

/// A table's entries, in no order callers see, and their index.
#[derive(Debug, Default)]
pub(super) struct Keyed {
    entries: Vec<(Key, Entry)>,
    slots: Slots<Slot>,
}

fn tag(key: &[u8]) -> u32 {
    let mut h = MapHasher::default();
    h.write(key);
    let h = h.finish();
    (h ^ (h >> 32)) as u32
}

/// A version's fingerprint, its low [`HEARD`] bits clear. Two versions of
/// one key share it with odds of 2^-56, and a false match would only make
/// a node take a new version for a copy: the digests then differ and
/// push/pull, which compares versions exactly (`Node::apply_remote`),
/// repairs it.
fn print((ltime, owner, incarnation): Version<'_>) -> u64 {
    let mut h = MapHasher::default();
    h.text(owner);
    h.write_u64(incarnation);
    h.write_u64(ltime);
    h.finish() & !HEARD
}

/// The bits of a slot's `version` that count the copies of it heard,
/// up to 255. They sit in the line the copy check reads anyway: counted
/// in the broadcast queue's index, every copy read a second cold line
/// there, half the time the 100-agent burst spent in handling datagrams
/// outside the merge (docs/performance.md).
const HEARD: u64 = 0xff;

/// Whether slot `s` is the one of `key`.
fn is_key(entries: &[(Key, Entry)], s: &Slot, key: &[u8]) -> bool {
    entries.get(s.pos as usize - 1).is_some_and(|(k, _)| k.as_bytes() == key)
}

impl Keyed {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    pub(super) fn get_index(&self, i: usize) -> Option<(&str, &Entry)> {
        self.entries.get(i).map(|(k, e)| (k.as_str(), e))
    }

    /// The slot of `key`.
    fn find(&self, key: &str) -> Option<usize> {
        let (key, tag) = (key.as_bytes(), tag(key.as_bytes()));
        self.slots.find(tag.into(), |s| s.tag == tag && is_key(&self.entries, s, key))
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        let i = self.find(key)?;
        self.entries.get(self.slots.get(i).pos as usize - 1).map(|(_, e)| e)
    }

    /// Whether the entry of `key` is at `version`: if so, one more copy
    /// of it was heard, and the count since the version came is returned
    /// (it stops at 255). A slot of the key's tag and the version's
    /// fingerprint answers without the entry being read; any other answer
    /// is exact.
    pub(super) fn copy_heard(&mut self, key: &str, version: Version<'_>) -> Option<u8> {
        let (key, tag, print) = (key.as_bytes(), tag(key.as_bytes()), print(version));
        let entries = &self.entries;
        let hit =
            |s: &Slot| s.tag == tag && (s.version & !HEARD == print || is_key(entries, s, key));
        let s = self.slots.get_mut(self.slots.find(tag.into(), hit)?);
        if s.version & !HEARD != print {
            return None;
        }
        let heard = (s.version & HEARD).saturating_add(1).min(HEARD);
        s.version = print | heard;
        Some(heard as u8)
    }

    /// Makes `key`'s slot carry `version`'s fingerprint whatever its entry
    /// holds: the false match a fingerprint allows, for the tests of what
    /// repairs one.
    #[cfg(test)]
    pub(super) fn forge_print(&mut self, key: &str, version: Version<'_>) {
        if let Some(i) = self.find(key) {
            self.slots.get_mut(i).version = print(version);
        }
    }

    /// Inserts or replaces; returns the entry's position and the replaced
    /// entry.
    pub(super) fn insert(&mut self, key: &str, entry: Entry) -> (usize, Option<Entry>) {
        let tag = tag(key.as_bytes());
        // Positions fit: four billion entries of a table would not fit in
        // any memory first.
        let new = Slot { version: print(entry.version()), pos: self.entries.len() as u32 + 1, tag };
        let entries = &self.entries;
        let (i, old) = self.slots.put(new, |s| s.tag == tag && is_key(entries, s, key.as_bytes()));
        match old {
            Some(old) => {
                let s = self.slots.get_mut(i);
                s.pos = old.pos;
                // The same version written again (hidden or shown) keeps
                // its count: the copies heard were of that very write.
                if old.version & !HEARD == s.version {
                    s.version = old.version;
                }
                let at = old.pos as usize - 1;
                (at, Some(std::mem::replace(&mut self.entries[at].1, entry)))
            }
            None => {
                self.entries.push((key.into(), entry));
                (self.entries.len() - 1, None)
            }
        }
    }

    /// Removes `key`'s entry; the last entry takes its position. Returns
    /// that position and the entry.
    pub(super) fn swap_remove(&mut self, key: &str) -> Option<(usize, Entry)> {
        let i = self.find(key)?;
        let at = self.slots.get(i).pos as usize - 1;
        self.slots.vacate(i);
        let last = self.entries.len() - 1;
        if at != last {
            let (moved, _) = &self.entries[last];
            let pos = last as u32 + 1;
            let j = self.slots.find(tag(moved.as_bytes()).into(), |s| s.pos == pos)?;
            self.slots.get_mut(j).pos = at as u32 + 1;
        }
        let (_, entry) = self.entries.swap_remove(at);
        Some((at, entry))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::hash::Rng;

    fn e(owner: &str, ltime: u64) -> Entry {
        super::super::tests::e(owner, ltime, false)
    }

    #[test]
    fn a_slot_is_sixteen_bytes_and_a_key_twenty_four() {
        assert_eq!(size_of::<Slot>(), 16);
        assert_eq!(size_of::<Key>(), 24, "a key costs no more than a string's header");
    }

    /// Random inserts, replacements and removals against a sorted map:
    /// every key is found at its version, positions stay dense, and the
    /// copy check answers as an exact comparison would.
    #[test]
    fn follows_a_model_through_inserts_replacements_and_removals() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut k, mut model) = (Keyed::default(), BTreeMap::new());
        for step in 0..60_000u64 {
            // Few keys, so runs form, wrap around and are shifted back.
            let key = format!("k{}", rng.next() % 3_000);
            let key = if rng.next().is_multiple_of(7) { key.repeat(5) } else { key };
            match rng.next() % 3 {
                0 => {
                    let removed = k.swap_remove(&key).map(|(_, e)| e.ltime);
                    assert_eq!(removed, model.remove(&key), "step {step}");
                }
                _ => {
                    let (_, old) = k.insert(&key, e("o", step));
                    assert_eq!(old.map(|e| e.ltime), model.insert(key.clone(), step));
                }
            }
            if step.is_multiple_of(5_000) {
                check(&mut k, &model);
            }
        }
        check(&mut k, &model);
        for key in model.keys().cloned().collect::<Vec<_>>() {
            assert!(k.swap_remove(&key).is_some());
        }
        assert!(k.is_empty() && k.slots.used() == 0);
    }

    fn check(k: &mut Keyed, model: &BTreeMap<String, u64>) {
        assert_eq!(k.len(), model.len());
        for (key, &lt) in model {
            assert_eq!(k.get(key).map(|e| e.ltime), Some(lt), "{key}");
            assert!(k.copy_heard(key, (lt, "o", 1)).is_some(), "{key} at its version");
            assert_eq!(k.copy_heard(key, (lt + 1, "o", 1)), None, "{key} at another time");
            assert_eq!(k.copy_heard(key, (lt, "p", 1)), None, "{key} of another owner");
            assert_eq!(k.copy_heard(key, (lt, "o", 2)), None, "{key} of another incarnation");
        }
        assert!(k.get("absent").is_none() && k.copy_heard("absent", (1, "o", 1)).is_none());
        let mut listed: Vec<_> = k.iter().map(|(key, e)| (key.to_string(), e.ltime)).collect();
        listed.sort();
        assert_eq!(listed, model.iter().map(|(k, &v)| (k.clone(), v)).collect::<Vec<_>>());
        assert_eq!(k.slots.used(), k.len(), "one slot per entry");
        assert!(k.len() * 4 <= k.slots.len() * 3, "at most three quarters used");
    }

    #[test]
    fn copies_are_counted_per_version_up_to_255() {
        let mut k = Keyed::default();
        k.insert("a", e("o", 1));
        k.insert("b", e("o", 1));
        assert_eq!(k.copy_heard("a", (1, "o", 1)), Some(1));
        assert_eq!(k.copy_heard("a", (1, "o", 1)), Some(2));
        assert_eq!(k.copy_heard("b", (1, "o", 1)), Some(1), "each key its own count");
        assert_eq!(k.copy_heard("a", (2, "o", 1)), None, "not the version held: not counted");
        k.insert("a", e("o", 1));
        assert_eq!(k.copy_heard("a", (1, "o", 1)), Some(3), "the same write again keeps its count");
        k.insert("a", e("o", 2));
        assert_eq!(k.copy_heard("a", (1, "o", 1)), None, "the old version is no copy");
        assert_eq!(k.copy_heard("a", (2, "o", 1)), Some(1), "a new version starts again");
        for _ in 0..300 {
            k.copy_heard("a", (2, "o", 1));
        }
        assert_eq!(k.copy_heard("a", (2, "o", 1)), Some(255), "the count stops at its top");
        assert_eq!(k.get("a").map(|e| e.ltime), Some(2), "counting leaves the entry alone");
        assert!(k.copy_heard("a", (2, "o", 1)).is_some(), "and the version's match");
    }

    #[test]
    fn removal_moves_the_last_entry_into_the_gap() {
        let mut k = Keyed::default();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(k.insert(key, e("o", i as u64)), (i, None));
        }
        assert_eq!(k.swap_remove("a").map(|(at, e)| (at, e.ltime)), Some((0, 0)));
        assert_eq!(k.get_index(0).map(|(key, _)| key), Some("c"));
        assert_eq!(k.get("c").map(|e| e.ltime), Some(2));
        assert_eq!(k.swap_remove("a"), None);
        assert_eq!(k.insert("b", e("o", 9)).0, 1, "a replacement keeps its place");
    }
}
