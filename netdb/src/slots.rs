//! Open addressing with linear probing, for the indexes every gossiped
//! copy passes through: a table's entries by key (`table::keyed`) and the
//! broadcast queue's events by key. A slot carries its own hash and what a
//! lookup compares, so a lookup reads one cache line where a general hash
//! map reads its control bytes and then its bucket: with a hundred agents
//! on two cores every lookup finds its lines cold, and those misses were
//! the larger part of turning a copy away.

/// What a slot must tell the table.
pub(crate) trait Slot: Copy + Default {
    /// An empty slot (the default).
    fn is_empty(&self) -> bool;
    /// The hash whose low bits are the slot probing for it starts at.
    fn hash(&self) -> u64;
}

/// Slots are grown before more than this share of them is used (3/4):
/// linear probing's runs lengthen fast past it.
const MAX_LOAD: (usize, usize) = (3, 4);

#[derive(Debug, Default)]
pub(crate) struct Slots<S> {
    /// Empty, or a power of two long.
    slots: Vec<S>,
    used: usize,
}

impl<S: Slot> Slots<S> {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// Walks the run from `hash`'s slot: the first slot `hit` accepts
    /// (`Ok`), or the empty slot that ends the run (`Err`). There must be
    /// slots.
    fn walk(&self, hash: u64, mut hit: impl FnMut(&S) -> bool) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // The load limit keeps a quarter empty, so every run ends.
        loop {
            let s = &self.slots[i];
            if s.is_empty() {
                return Err(i);
            }
            if hit(s) {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot of `hash`'s run that `hit` accepts, if any.
    pub(crate) fn find(&self, hash: u64, hit: impl FnMut(&S) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.walk(hash, hit).ok()
    }

    pub(crate) fn get(&self, i: usize) -> &S {
        &self.slots[i]
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> &mut S {
        &mut self.slots[i]
    }

    /// Puts `s` in the slot of its run that `hit` accepts, or in the
    /// run's empty slot if none does; returns that slot and what it held.
    pub(crate) fn put(&mut self, s: S, hit: impl FnMut(&S) -> bool) -> (usize, Option<S>) {
        if (self.used + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
        }
        match self.walk(s.hash(), hit) {
            Ok(i) => (i, Some(std::mem::replace(&mut self.slots[i], s))),
            Err(i) => {
                self.slots[i] = s;
                self.used += 1;
                (i, None)
            }
        }
    }

    /// Empties slot `hole`, shifting back the slots after it that probing
    /// would no longer reach across the gap (no tombstones to sweep).
    pub(crate) fn vacate(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.is_empty() {
                break;
            }
            let home = s.hash() as usize & mask;
            // It may fill the hole if the hole lies on its probe path,
            // between its home and where it sits.
            if hole.wrapping_sub(home) & mask < j.wrapping_sub(home) & mask {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = S::default();
        self.used -= 1;
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(&mut self.slots, vec![S::default(); len]);
        let mask = len - 1;
        for s in old.into_iter().filter(|s| !s.is_empty()) {
            let mut i = s.hash() as usize & mask;
            while !self.slots[i].is_empty() {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::hash::Rng;

    /// A key and the hash it is given: few hashes, so runs are long and
    /// wrap around the end.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct Pair(u32, u64);

    impl Slot for Pair {
        fn is_empty(&self) -> bool {
            self.0 == 0
        }
        fn hash(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn runs_that_wrap_are_found_and_shifted_back_on_removal() {
        let mut rng = Rng(3);
        let (mut slots, mut model) = (Slots::<Pair>::default(), BTreeMap::new());
        for step in 0..20_000 {
            let key = (rng.next() % 200) as u32 + 1;
            // Every hash lands on one of the last slots, whatever the size.
            let hash = u64::MAX - rng.next() % 3;
            if rng.next().is_multiple_of(3) {
                let found = slots.find(*model.get(&key).unwrap_or(&hash), |p| p.0 == key);
                if let Some(i) = found {
                    slots.vacate(i);
                }
                assert_eq!(found.is_some(), model.remove(&key).is_some(), "step {step}");
            } else if let Some(&h) = model.get(&key) {
                let (_, old) = slots.put(Pair(key, h), |p| p.0 == key);
                assert_eq!(old, Some(Pair(key, h)));
            } else {
                assert_eq!(slots.put(Pair(key, hash), |p| p.0 == key).1, None);
                model.insert(key, hash);
            }
            assert_eq!(slots.used(), model.len());
        }
        for (&key, &hash) in &model {
            let i = slots.find(hash, |p| p.0 == key).expect("every key found");
            assert_eq!(*slots.get(i), Pair(key, hash));
        }
        assert!(slots.find(0, |p| p.0 == 999).is_none());
    }
}
