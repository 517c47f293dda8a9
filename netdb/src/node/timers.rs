//! The node's wake-ups: one heap of everything that must happen at a time
//! (foca's timers, gossip ticks, tombstone reaps, the end of a grace
//! period, exchange and command timeouts, announce retries).

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
    seq: u64,
}

impl Timers {
    pub(super) fn schedule(&mut self, at: Duration, wake: Wake) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq: self.seq, wake }));
    }

    /// When the earliest wake-up is due.
    pub(super) fn next(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse(s)| s.at)
    }

    /// The earliest wake-up due at `now`, with the time it was due.
    pub(super) fn pop_due(&mut self, now: Duration) -> Option<(Duration, Wake)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(s)| (s.at, s.wake))
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
        assert_eq!(t.next(), Some(ms(10)));
        let mut order = Vec::new();
        while let Some((at, Wake::JoinRetry(n))) = t.pop_due(ms(20)) {
            order.push((at, n));
        }
        assert_eq!(order, vec![(ms(10), 2), (ms(10), 3), (ms(20), 4)]);
        assert!(t.pop_due(ms(29)).is_none(), "not before its time");
        assert_eq!(t.next(), Some(ms(30)));
        assert!(matches!(t.pop_due(ms(31)), Some((_, Wake::JoinRetry(1)))));
        assert_eq!(t.next(), None);
    }
}
