//! What the runner wrote: per (owner host, key), the owner's newest write,
//! and from it what every live agent's table must hold.

use std::collections::BTreeMap;

/// Whether an agent restarted with its data dir keeps the user-table
/// entries it wrote before it was killed. Today a restart starts a new
/// incarnation and the cluster removes the old one's entries (endpoints
/// and networks are republished from the data dir; user entries are not),
/// so they are gone after the restart. The one place that expectation is
/// stated: flip it when a restart keeps the incarnation.
pub const RESTART_KEEPS_WRITES: bool = false;

/// One write of an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `table put KEY VALUE`.
    Put(String),
    /// `table delete KEY`.
    Delete,
}

/// Why a key is expected absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Its owner deleted it last.
    Deleted,
    /// Its owner wrote it before a restart that drops such entries
    /// ([`RESTART_KEEPS_WRITES`]).
    Restarted,
}

/// An owner's newest write of a key.
#[derive(Clone, Debug)]
struct Last {
    /// The owner's life (restarts before it) when it wrote.
    life: u32,
    op: Op,
}

/// The writes the runner made, as they bear on the final state.
#[derive(Clone, Debug, Default)]
pub struct History {
    last: BTreeMap<(usize, String), Last>,
    /// Restarts of each host so far.
    lives: BTreeMap<usize, u32>,
    puts: usize,
    deletes: usize,
}

/// What a key must look like on every live agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Present with this owner and value.
    Value {
        /// The owner host.
        owner: usize,
        /// The newest value its owner wrote.
        value: String,
    },
    /// Absent, and why.
    Absent(Gone),
}

impl History {
    /// Records that host `owner` put `key` = `value`.
    pub fn put(&mut self, owner: usize, key: &str, value: &str) {
        self.puts += 1;
        self.record(owner, key, Op::Put(value.into()));
    }

    /// Records that host `owner` deleted `key`.
    pub fn delete(&mut self, owner: usize, key: &str) {
        self.deletes += 1;
        self.record(owner, key, Op::Delete);
    }

    fn record(&mut self, owner: usize, key: &str, op: Op) {
        let life = self.life(owner);
        self.last.insert((owner, key.into()), Last { life, op });
    }

    /// Records that host `owner`'s agent was killed and started again.
    pub fn restarted(&mut self, owner: usize) {
        *self.lives.entry(owner).or_default() += 1;
    }

    fn life(&self, owner: usize) -> u32 {
        self.lives.get(&owner).copied().unwrap_or(0)
    }

    /// Every key written so far and what it must look like now.
    pub fn expected(&self) -> BTreeMap<&str, Expect> {
        self.last
            .iter()
            .map(|((owner, key), last)| {
                let expect = match &last.op {
                    Op::Delete => Expect::Absent(Gone::Deleted),
                    Op::Put(_) if last.life < self.life(*owner) && !RESTART_KEEPS_WRITES => {
                        Expect::Absent(Gone::Restarted)
                    }
                    Op::Put(value) => Expect::Value { owner: *owner, value: value.clone() },
                };
                (key.as_str(), expect)
            })
            .collect()
    }

    /// The keys of `owner` that must be present now (which it may delete
    /// or overwrite).
    pub fn present(&self, owner: usize) -> Vec<String> {
        self.expected()
            .into_iter()
            .filter(|(_, e)| matches!(e, Expect::Value { owner: o, .. } if *o == owner))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Puts and deletes recorded.
    pub fn counts(&self) -> (usize, usize) {
        (self.puts, self.deletes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_write_of_the_owner_is_expected() {
        let mut h = History::default();
        h.put(1, "a", "1");
        h.put(1, "a", "2");
        h.put(2, "b", "x");
        h.delete(2, "b");
        let e = h.expected();
        assert_eq!(e["a"], Expect::Value { owner: 1, value: "2".into() });
        assert_eq!(e["b"], Expect::Absent(Gone::Deleted));
        assert_eq!(h.present(1), vec!["a".to_string()]);
        assert!(h.present(2).is_empty());
        assert_eq!(h.counts(), (3, 1));
    }

    #[test]
    fn a_restart_decides_the_fate_of_earlier_writes_by_one_rule() {
        let mut h = History::default();
        h.put(3, "old", "1");
        h.put(4, "other", "1");
        h.restarted(3);
        h.put(3, "new", "2");
        let e = h.expected();
        let old = if RESTART_KEEPS_WRITES {
            Expect::Value { owner: 3, value: "1".into() }
        } else {
            Expect::Absent(Gone::Restarted)
        };
        assert_eq!(e["old"], old);
        assert_eq!(e["new"], Expect::Value { owner: 3, value: "2".into() });
        assert_eq!(e["other"], Expect::Value { owner: 4, value: "1".into() });
    }
}
