//! The node's wake-ups: one heap of everything that must happen at a time
//! (foca's timers, tombstone reaps, the end of a grace period, exchange and
//! command timeouts, announce retries), beside two slots that move: the
//! gossip tick and one lazy wake-up.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::Timer;

use crate::membership::Identity;
use crate::names::ScopeId;

/// What a wake-up is for.
#[derive(Debug)]
pub(super) enum Wake {
    Swim(Timer<Identity>),
    /// A probe timer that fired late, run again once this node caught up
    /// with its input (never deferred twice).
    SwimLate(Timer<Identity>),
    /// The end of the hold of a member declared down unexpectedly.
    DownHold(Identity),
    Gossip,
    /// Events not yet sent wait for a tick that is far off
    /// (`Config::early_news`).
    News,
    Reap {
        scope: ScopeId,
        table: String,
        key: String,
    },
    Grace {
        name: String,
        incarnation: u64,
    },
    SyncTimeout(u64),
    ServeTimeout(SocketAddr, u64),
    JoinRetry(u64),
    KeyRetry(u64),
}

#[derive(Debug)]
struct Scheduled {
    at: Duration,
    seq: u64,
    wake: Wake,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Wake-ups in time order; those due at the same time come out in the
/// order they were scheduled, so a run is the same every time.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Scheduled>>,
    /// One wake-up that may come late: it is not waited for while the
    /// caller says it has nothing to do, and comes out at the next
    /// wake-up instead, still before anything due after it.
    lazy: Option<Scheduled>,
    /// The gossip tick, one at a time: moving it (a digest that went
    /// early puts it off) leaves no stale wake-up behind.
    tick: Option<Scheduled>,
    seq: u64,
}

impl Timers {
    pub(super) fn schedule(&mut self, at: Duration, wake: Wake) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq: self.seq, wake }));
    }

    /// Schedules the one lazy wake-up; one held already keeps its time
    /// with the others.
    pub(super) fn schedule_lazy(&mut self, at: Duration, wake: Wake) {
        self.seq += 1;
        if let Some(old) = self.lazy.replace(Scheduled { at, seq: self.seq, wake }) {
            self.heap.push(Reverse(old));
        }
    }

    /// Sets (or with `None` cancels) the gossip tick.
    pub(super) fn set_tick(&mut self, at: Option<Duration>) {
        self.seq += 1;
        let seq = self.seq;
        self.tick = at.map(|at| Scheduled { at, seq, wake: Wake::Gossip });
    }

    /// When the gossip tick is due, if one is set.
    pub(super) fn tick(&self) -> Option<Duration> {
        self.tick.as_ref().map(|s| s.at)
    }

    /// When the earliest wake-up is due, the lazy one counted only if it
    /// `waits`.
    pub(super) fn next(&self, waits: bool) -> Option<Duration> {
        let lazy = self.lazy.as_ref().filter(|_| waits).map(|s| s.at);
        let heap = self.heap.peek().map(|Reverse(s)| s.at);
        lazy.into_iter().chain(heap).chain(self.tick()).min()
    }

    /// The earliest wake-up due at `now`, with the time it was due.
    pub(super) fn pop_due(&mut self, now: Duration) -> Option<(Duration, Wake)> {
        let key = |s: &Scheduled| (s.at <= now).then_some((s.at, s.seq));
        let heap = self.heap.peek().and_then(|Reverse(s)| key(s));
        let lazy = self.lazy.as_ref().and_then(key);
        let tick = self.tick.as_ref().and_then(key);
        let first = [heap, lazy, tick].into_iter().flatten().min()?;
        let s = if lazy == Some(first) {
            self.lazy.take()
        } else if tick == Some(first) {
            self.tick.take()
        } else {
            self.heap.pop().map(|Reverse(s)| s)
        }?;
        Some((s.at, s.wake))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn due_wakeups_come_in_time_then_schedule_order() {
        let mut t = Timers::default();
        t.schedule(ms(30), Wake::JoinRetry(1));
        t.schedule(ms(10), Wake::JoinRetry(2));
        t.schedule(ms(10), Wake::JoinRetry(3));
        t.schedule(ms(20), Wake::JoinRetry(4));
        assert_eq!(t.next(true), Some(ms(10)));
        let mut order = Vec::new();
        while let Some((at, Wake::JoinRetry(n))) = t.pop_due(ms(20)) {
            order.push((at, n));
        }
        assert_eq!(order, vec![(ms(10), 2), (ms(10), 3), (ms(20), 4)]);
        assert!(t.pop_due(ms(29)).is_none(), "not before its time");
        assert_eq!(t.next(true), Some(ms(30)));
        assert!(matches!(t.pop_due(ms(31)), Some((_, Wake::JoinRetry(1)))));
        assert_eq!(t.next(true), None);
    }

    #[test]
    fn the_tick_moves_either_way_and_leaves_no_stale_wakeup() {
        let mut t = Timers::default();
        t.schedule(ms(50), Wake::JoinRetry(1));
        t.set_tick(Some(ms(10)));
        assert_eq!(t.next(true), Some(ms(10)));
        t.set_tick(Some(ms(30)));
        assert_eq!(t.next(true), Some(ms(30)), "put off, not due at 10 any more");
        assert!(t.pop_due(ms(20)).is_none());
        assert!(matches!(t.pop_due(ms(60)), Some((at, Wake::Gossip)) if at == ms(30)));
        assert!(matches!(t.pop_due(ms(60)), Some((_, Wake::JoinRetry(1)))));
        t.set_tick(Some(ms(70)));
        t.set_tick(None);
        assert_eq!(t.next(true), None, "cancelled");
    }

    #[test]
    fn a_lazy_wakeup_is_waited_for_only_when_asked_and_keeps_its_place() {
        let mut t = Timers::default();
        t.schedule_lazy(ms(10), Wake::JoinRetry(1));
        t.schedule(ms(20), Wake::JoinRetry(2));
        assert_eq!(t.next(true), Some(ms(10)));
        assert_eq!(t.next(false), Some(ms(20)), "not waited for");
        // Taken at the next wake-up, before what is due after it.
        let order: Vec<_> = std::iter::from_fn(|| t.pop_due(ms(25)))
            .map(|(at, w)| (at, matches!(w, Wake::JoinRetry(1))))
            .collect();
        assert_eq!(order, vec![(ms(10), true), (ms(20), false)]);
        // A second lazy one sends the first to the others, on time.
        t.schedule_lazy(ms(30), Wake::JoinRetry(3));
        t.schedule_lazy(ms(40), Wake::JoinRetry(4));
        assert_eq!(t.next(false), Some(ms(30)));
        assert!(matches!(t.pop_due(ms(35)), Some((_, Wake::JoinRetry(3)))));
        assert!(t.pop_due(ms(35)).is_none(), "the lazy one is not due yet");
        assert!(matches!(t.pop_due(ms(40)), Some((_, Wake::JoinRetry(4)))));
        assert_eq!(t.next(true), None);
    }
}
