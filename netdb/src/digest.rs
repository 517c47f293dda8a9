//! Per-network digest, kept in O(1) per change: 256 bucket sums of entry
//! hashes. Two nodes with the same buckets hold the same entries (up to
//! 64-bit hash collisions); a push/pull exchanges only differing buckets.

use std::cell::Cell;

use crate::hash::Hasher;

pub(crate) const BUCKETS: usize = 256;
pub(crate) const DIGEST_BYTES: usize = BUCKETS * 8;

#[derive(Clone)]
pub(crate) struct Digest {
    buckets: Box<[u64; BUCKETS]>,
    /// The root, once computed since the last change: every gossip datagram
    /// sent carries it and every one received compares it, and between
    /// changes there is nothing to fold the 256 buckets again for.
    root: Cell<Option<u64>>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { buckets: Box::new([0; BUCKETS]), root: Cell::new(None) }
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Digest) -> bool {
        self.buckets == other.buckets
    }
}

impl Eq for Digest {}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({:016x})", self.root())
    }
}

/// The bucket of a key: all versions of a key fall in the same bucket.
pub(crate) fn bucket_of(table: &str, key: &str) -> u8 {
    (Hasher::default().bytes(table.as_bytes()).bytes(key.as_bytes()).finish() >> 56) as u8
}

impl Digest {
    pub(crate) fn add(&mut self, bucket: u8, hash: u64) {
        self.root.set(None);
        let b = &mut self.buckets[bucket as usize];
        *b = b.wrapping_add(hash);
    }

    pub(crate) fn remove(&mut self, bucket: u8, hash: u64) {
        self.root.set(None);
        let b = &mut self.buckets[bucket as usize];
        *b = b.wrapping_sub(hash);
    }

    pub(crate) fn root(&self) -> u64 {
        if let Some(root) = self.root.get() {
            return root;
        }
        let root = self.buckets.iter().fold(Hasher::default(), |h, b| h.u64(*b)).finish();
        self.root.set(Some(root));
        root
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.buckets.iter().flat_map(|b| b.to_le_bytes()).collect()
    }

    /// Parses `DIGEST_BYTES` bytes; anything else is malformed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Digest> {
        if bytes.len() != DIGEST_BYTES {
            return None;
        }
        let mut d = Digest::default();
        for (slot, chunk) in d.buckets.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *slot = u64::from_le_bytes(word);
        }
        Some(d)
    }

    /// A 256-bit set of the buckets where the two digests differ.
    pub(crate) fn differing(&self, other: &Digest) -> BucketSet {
        let mut set = BucketSet::default();
        for i in 0..BUCKETS {
            if self.buckets[i] != other.buckets[i] {
                set.insert(i as u8);
            }
        }
        set
    }
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct BucketSet([u64; 4]);

impl BucketSet {
    pub(crate) fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }

    pub(crate) fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    #[cfg(test)]
    fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_is_order_free_and_reversible() {
        let (mut a, mut b) = (Digest::default(), Digest::default());
        a.add(3, 10);
        a.add(200, 7);
        b.add(200, 7);
        b.add(3, 10);
        assert_eq!(a.root(), b.root());
        b.remove(3, 10);
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing(&b).len(), 1);
        assert!(a.differing(&b).contains(3));
        b.add(3, 10);
        assert!(a.differing(&b).is_empty());
        // The cached root follows every change.
        let root = a.root();
        a.add(5, 1);
        assert_ne!(a.root(), root);
        a.remove(5, 1);
        assert_eq!(a.root(), root);
    }

    #[test]
    fn bytes_round_trip_and_reject_wrong_length() {
        let mut a = Digest::default();
        a.add(255, u64::MAX);
        a.add(0, 1);
        assert_eq!(Digest::from_bytes(&a.to_bytes()), Some(a.clone()));
        assert!(Digest::from_bytes(&a.to_bytes()[1..]).is_none());
        assert!(Digest::from_bytes(&[]).is_none());
    }
}
