//! Transmit-limited broadcast queue.
//!
//! Every queued event is sent a bounded number of times, fewest-sent first
//! and newest first among equals. A newer event for the same key replaces
//! the queued one in O(1): NetworkDB's queue scanned itself on every enqueue
//! and burned a core under load. Events live in a slab; each transmit count
//! has an intrusive doubly linked list through the slab, so insert, replace,
//! take and requeue are all O(1) (plus the few list heads walked on take).
//! Events are keyed by a 64-bit hash of what they are about (the caller's:
//! two keys sharing one share a place, so the caller picks a hash wide
//! enough that this does not happen in practice).

use crate::slots::{self, Slots};

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<V> {
    key: Option<u64>,
    item: Option<V>,
    transmits: u32,
    limit: u32,
    /// Heard often enough: leaves at its next send.
    quenched: bool,
    /// Went in an early packet (`news`): the next one leaves it out.
    early: bool,
    prev: u32,
    next: u32,
    /// In a level list.
    linked: bool,
    /// Taken and not yet `sent`: such a slot is only freed by `sent`, so its
    /// id cannot be reused under the caller.
    in_flight: bool,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List { head: NIL, tail: NIL };

/// What one `take` did besides handing out events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakeStats {
    /// Events larger than any packet, dropped (push/pull carries them).
    pub oversized: usize,
}

/// Where a queued key's event is, its key compared in place (`slots`).
#[derive(Debug, Clone, Copy, Default)]
struct Place {
    key: u64,
    /// One more than the event's slot; 0: empty.
    id: u32,
    /// Whether copies heard quench it (`push`).
    counts: bool,
}

impl slots::Slot for Place {
    fn is_empty(&self) -> bool {
        self.id == 0
    }

    fn hash(&self) -> u64 {
        self.key
    }
}

#[derive(Debug)]
pub(crate) struct BroadcastQueue<V> {
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    index: Slots<Place>,
    levels: Vec<List>,
    len: usize,
    max_len: usize,
}

impl<V> BroadcastQueue<V> {
    pub(crate) fn new(max_len: usize) -> Self {
        BroadcastQueue {
            slots: Vec::new(),
            free: Vec::new(),
            index: Slots::default(),
            levels: Vec::new(),
            len: 0,
            max_len: max_len.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events never sent nor sent early, newest first. Past the early
    /// ones only: at most the few packets' worth early sends mark between
    /// two ticks.
    fn news_iter(&self) -> impl Iterator<Item = (u32, &V)> {
        let mut cur = self.levels.first().map_or(NIL, |l| l.head);
        std::iter::from_fn(move || {
            while cur != NIL {
                let id = cur;
                let s = &self.slots[id as usize];
                cur = s.next;
                if let (false, Some(item)) = (s.early, s.item.as_ref()) {
                    return Some((id, item));
                }
            }
            None
        })
    }

    /// Whether the news is some and fits in `budget` by `size` (more is a
    /// burst). Stops at the first event past the budget.
    pub(crate) fn news_fits(&self, budget: usize, size: impl Fn(&V) -> usize) -> bool {
        let mut left = budget;
        let mut any = false;
        for (_, item) in self.news_iter() {
            let n = size(item);
            if n > left {
                return false;
            }
            left -= n;
            any = true;
        }
        any
    }

    /// Queues `item` to be sent `limit` times, replacing any queued event of
    /// the same key; copies of it heard from peers quench it if it `counts`
    /// (`quench`). Returns how many events were dropped to stay within the
    /// length bound (the most-sent first).
    pub(crate) fn push(&mut self, key: u64, item: V, limit: u32, counts: bool) -> usize {
        if let Some(old) = self.queued(key) {
            self.unlink(old);
            self.release(old);
        }
        let id = match self.free.pop() {
            Some(id) => {
                let s = &mut self.slots[id as usize];
                s.key = Some(key);
                s.item = Some(item);
                s.transmits = 0;
                s.limit = limit.max(1);
                s.quenched = false;
                s.early = false;
                id
            }
            None => {
                self.slots.push(Slot {
                    key: Some(key),
                    item: Some(item),
                    transmits: 0,
                    limit: limit.max(1),
                    quenched: false,
                    early: false,
                    prev: NIL,
                    next: NIL,
                    linked: false,
                    in_flight: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.put(Place { key, id: id + 1, counts }, |p| p.key == key);
        self.link_front(id);
        self.len += 1;
        let mut dropped = 0;
        while self.len > self.max_len {
            match self.levels.iter().rposition(|l| l.tail != NIL) {
                Some(level) => {
                    let victim = self.levels[level].tail;
                    self.unlink(victim);
                    self.release(victim);
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    /// Drops the queued event of `key`, if any.
    pub(crate) fn invalidate(&mut self, key: u64) -> bool {
        match self.queued(key) {
            Some(id) => {
                self.unlink(id);
                self.release(id);
                true
            }
            None => false,
        }
    }

    /// Peers sent this node enough copies of `key`'s queued event (if it
    /// counts: `push`): it leaves the queue, at once if it was sent
    /// already (true), else after its first send, so every node that
    /// learns an event passes it on at least once. Every copy is a peer
    /// that holds the event and relays it: an event heard often is held
    /// widely, and more transmissions would mostly make more copies. An
    /// event that copies seldom reach (a lossy network, few relays) keeps
    /// its transmissions. The caller counts the copies where it recognises
    /// them (`Tables::copy_heard`), so this index is read once an event,
    /// not once a copy.
    pub(crate) fn quench(&mut self, key: u64) -> bool {
        let Some(i) = self.place(key) else { return false };
        let p = self.index.get(i);
        if !p.counts {
            return false;
        }
        let id = p.id - 1;
        let s = &mut self.slots[id as usize];
        if s.transmits == 0 {
            s.quenched = true;
            return false;
        }
        self.unlink(id);
        self.release(id);
        true
    }

    /// Takes events for one packet: fewest-sent first, each fitting in what
    /// is left of `budget` by `size`. The events stay owned by the queue
    /// until `sent` or `requeue`; read them with `get`.
    pub(crate) fn take(
        &mut self,
        budget: usize,
        size: impl Fn(&V) -> usize,
    ) -> (Vec<u32>, TakeStats) {
        let mut taken = Vec::new();
        let mut stats = TakeStats::default();
        let mut left = budget;
        // Bounded scan past events that do not fit, so a queue of large
        // events cannot make a tick expensive.
        let mut misses = 0;
        'levels: for level in 0..self.levels.len() {
            let mut cur = self.levels[level].head;
            while cur != NIL {
                let next = self.slots[cur as usize].next;
                let Some(item) = self.slots[cur as usize].item.as_ref() else {
                    cur = next;
                    continue;
                };
                let n = size(item);
                if n > budget {
                    self.unlink(cur);
                    self.release(cur);
                    stats.oversized += 1;
                } else if n <= left {
                    self.unlink(cur);
                    self.slots[cur as usize].in_flight = true;
                    taken.push(cur);
                    left -= n;
                } else {
                    misses += 1;
                    if misses >= 32 {
                        break 'levels;
                    }
                }
                cur = next;
            }
        }
        (taken, stats)
    }

    /// The news that fits in `budget`, newest first, marked early: left
    /// queued and uncounted, an extra copy rather than a transmission, and
    /// left out of the next early packet.
    pub(crate) fn take_news(&mut self, budget: usize, size: impl Fn(&V) -> usize) -> Vec<u32> {
        let mut left = budget;
        let ids: Vec<u32> = self
            .news_iter()
            .map_while(|(id, item)| {
                let n = size(item);
                (n <= left).then(|| {
                    left -= n;
                    id
                })
            })
            .collect();
        for &id in &ids {
            self.slots[id as usize].early = true;
        }
        ids
    }

    pub(crate) fn get(&self, id: u32) -> Option<&V> {
        self.slots.get(id as usize)?.item.as_ref()
    }

    /// Counts one transmission of each taken event; events that reached their
    /// limit leave the queue, the others go back behind fresher ones.
    pub(crate) fn sent(&mut self, ids: &[u32]) {
        for &id in ids {
            let s = &mut self.slots[id as usize];
            s.in_flight = false;
            s.transmits += 1;
            if s.item.is_none() {
                self.free.push(id);
            } else if s.transmits >= s.limit || s.quenched {
                self.release(id);
            } else {
                self.link_front(id);
                self.len += 1;
            }
        }
    }

    fn link_front(&mut self, id: u32) {
        let level = self.slots[id as usize].transmits as usize;
        if self.levels.len() <= level {
            self.levels.resize(level + 1, EMPTY);
        }
        let head = self.levels[level].head;
        {
            let s = &mut self.slots[id as usize];
            s.prev = NIL;
            s.next = head;
            s.linked = true;
        }
        if head != NIL {
            self.slots[head as usize].prev = id;
        } else {
            self.levels[level].tail = id;
        }
        self.levels[level].head = id;
    }

    /// Removes a linked slot from its list (the slot stays allocated).
    fn unlink(&mut self, id: u32) {
        if !self.slots[id as usize].linked {
            return;
        }
        let (prev, next, level) = {
            let s = &self.slots[id as usize];
            (s.prev, s.next, s.transmits as usize)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.levels[level].head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.levels[level].tail = prev;
        }
        let s = &mut self.slots[id as usize];
        s.prev = NIL;
        s.next = NIL;
        s.linked = false;
        self.len -= 1;
    }

    /// The slot of `key`'s queued event.
    fn queued(&self, key: u64) -> Option<u32> {
        self.place(key).map(|i| self.index.get(i).id - 1)
    }

    /// The index's place of `key`.
    fn place(&self, key: u64) -> Option<usize> {
        self.index.find(key, |p| p.key == key)
    }

    /// Frees an unlinked slot.
    fn release(&mut self, id: u32) {
        if let Some(k) = self.slots[id as usize].key.take()
            && let Some(i) = self.place(k)
        {
            self.index.vacate(i);
        }
        let s = &mut self.slots[id as usize];
        s.item = None;
        if !s.in_flight {
            self.free.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's key: the queue takes hashes.
    fn k(name: &str) -> u64 {
        crate::hash::Hasher::default().bytes(name.as_bytes()).finish()
    }

    fn drain_once(q: &mut BroadcastQueue<usize>, budget: usize) -> Vec<usize> {
        let (ids, _) = q.take(budget, |v| *v);
        let items = ids.iter().map(|&i| *q.get(i).unwrap()).collect();
        q.sent(&ids);
        items
    }

    #[test]
    fn each_event_is_sent_exactly_its_limit() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("a"), 10, 3, true);
        q.push(k("b"), 20, 1, true);
        let mut sends = 0;
        while !q.is_empty() {
            sends += drain_once(&mut q, 1000).len();
        }
        assert_eq!(sends, 4);
    }

    #[test]
    fn news_is_what_went_neither_out_nor_early_and_fits_or_is_a_burst() {
        let mut q = BroadcastQueue::new(100);
        assert!(!q.news_fits(100, |v| *v), "no news");
        q.push(k("a"), 40, 2, true);
        q.push(k("b"), 40, 2, true);
        assert!(q.news_fits(100, |v| *v));
        let ids = q.take_news(100, |v| *v);
        let early: Vec<usize> = ids.iter().map(|&i| *q.get(i).unwrap()).collect();
        assert_eq!(early, [40, 40]);
        assert!(!q.news_fits(100, |v| *v), "sent early: no longer news");
        q.push(k("c"), 30, 2, true);
        assert_eq!(q.take_news(100, |v| *v).len(), 1, "only the event not sent early");
        // Early sends are not transmissions: the tick sends all three.
        assert_eq!(drain_once(&mut q, 1000).len(), 3);
        // News past the budget is a burst; a replaced event is news again.
        q.push(k("d"), 60, 2, true);
        q.push(k("e"), 60, 2, true);
        assert!(!q.news_fits(100, |v| *v));
        assert_eq!(q.take_news(100, |v| *v).len(), 1, "what fits, newest first");
        q.push(k("e"), 20, 2, true);
        assert!(q.news_fits(100, |v| *v), "d went early, e is new again");
    }

    #[test]
    fn newer_event_replaces_queued_one() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("k"), 1, 5, true);
        q.push(k("other"), 2, 5, true);
        q.push(k("k"), 3, 5, true);
        assert_eq!(q.len(), 2);
        let items = drain_once(&mut q, 1000);
        assert_eq!(items, vec![3, 2], "newest first, old value of k gone");
        assert!(q.invalidate(k("k")));
        assert!(!q.invalidate(k("k")));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn least_sent_first_and_budget_respected() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("old"), 5, 10, true);
        drain_once(&mut q, 100); // "old" now sent once
        q.push(k("new"), 5, 10, true);
        assert_eq!(drain_once(&mut q, 5), vec![5]);
        // "new" (0 sends) went first; now both have 1 send.
        let (ids, _) = q.take(7, |v| *v);
        assert_eq!(ids.len(), 1, "second event does not fit in what is left");
        q.sent(&ids);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn replacing_an_in_flight_event_keeps_ids_stable() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("k"), 1, 5, true);
        let (ids, _) = q.take(100, |v| *v);
        q.push(k("k"), 2, 5, true);
        q.push(k("j"), 3, 5, true);
        assert_eq!(q.get(ids[0]), None, "the replaced event is gone");
        q.sent(&ids);
        assert_eq!(q.len(), 2);
        assert_eq!(drain_once(&mut q, 100), vec![3, 2]);
    }

    #[test]
    fn a_quenched_event_leaves_the_queue_unless_its_copies_do_not_count() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("a"), 1, 10, true);
        q.push(k("b"), 2, 10, false);
        drain_once(&mut q, 100);
        assert!(!q.quench(k("missing")));
        assert!(!q.quench(k("b")), "b's copies do not count");
        assert!(q.quench(k("a")));
        assert!(!q.quench(k("a")), "gone");
        assert_eq!(q.len(), 1);
        assert_eq!(drain_once(&mut q, 100), vec![2]);
        // A newer event of the key counts if it says so, and is new: it
        // goes out once more.
        q.push(k("b"), 3, 10, true);
        assert!(!q.quench(k("b")));
        assert_eq!(drain_once(&mut q, 100), vec![3]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_event_quenched_before_its_first_send_is_sent_once() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("a"), 1, 10, true);
        assert!(!q.quench(k("a")));
        assert_eq!(q.len(), 1);
        assert_eq!(drain_once(&mut q, 100), vec![1]);
        assert!(q.is_empty(), "gone after that send");
        q.push(k("b"), 2, 10, true);
        assert_eq!(drain_once(&mut q, 100), vec![2], "its slot is reused cleanly");
    }

    #[test]
    fn oversized_events_are_dropped_and_counted() {
        let mut q = BroadcastQueue::new(100);
        q.push(k("huge"), 5000, 3, true);
        q.push(k("small"), 10, 3, true);
        let (ids, stats) = q.take(1400, |v| *v);
        assert_eq!(stats.oversized, 1);
        assert_eq!(ids.len(), 1);
        q.sent(&ids);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn length_bound_drops_most_sent_events() {
        let mut q = BroadcastQueue::new(2);
        q.push(k("a"), 1, 10, true);
        drain_once(&mut q, 100);
        q.push(k("b"), 1, 10, true);
        assert_eq!(q.push(k("c"), 1, 10, true), 1);
        assert_eq!(q.len(), 2);
        assert!(!q.invalidate(k("a")), "a was sent most, so it went");
        assert!(q.invalidate(k("b")) && q.invalidate(k("c")));
    }

    #[test]
    fn replace_is_constant_time_under_a_large_queue() {
        // 200k replacements of 100k distinct keys: quadratic work would not
        // finish in a test's time; this is O(n).
        let mut q: BroadcastQueue<u32> = BroadcastQueue::new(1_000_000);
        for i in 0..200_000u32 {
            q.push(u64::from(i % 100_000), i, 4, true);
        }
        assert_eq!(q.len(), 100_000);
        let (ids, _) = q.take(10, |_| 1);
        assert_eq!(ids.len(), 10);
        assert_eq!(*q.get(ids[0]).unwrap(), 199_999);
    }
}
