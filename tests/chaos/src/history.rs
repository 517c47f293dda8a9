//! What the runner wrote: per (owner host, key), the owner's newest write,
//! and from it what every live agent's table must hold.

use std::collections::BTreeMap;

/// One write of an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `table put KEY VALUE`.
    Put(String),
    /// `table delete KEY`.
    Delete,
}

/// The writes the runner made, as they bear on the final state.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Each owner's newest write of each key. A restart with the data
    /// dir changes nothing of them: the agent resumes its incarnation and
    /// takes back from peers what it wrote (once it was out: the runner
    /// lets the cluster agree before it kills).
    last: BTreeMap<(usize, String), Op>,
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
    /// Absent: its owner deleted it last.
    Deleted,
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
        self.last.insert((owner, key.into()), op);
    }

    /// Every key written so far and what it must look like now.
    pub fn expected(&self) -> BTreeMap<&str, Expect> {
        self.last
            .iter()
            .map(|((owner, key), op)| {
                let expect = match op {
                    Op::Delete => Expect::Deleted,
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
        assert_eq!(e["b"], Expect::Deleted);
        assert_eq!(h.present(1), vec!["a".to_string()]);
        assert!(h.present(2).is_empty());
        assert_eq!(h.counts(), (3, 1));
    }
}
