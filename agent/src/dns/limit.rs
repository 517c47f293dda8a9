//! A token bucket per container: a container that floods its resolver
//! loses its own excess queries, not the other containers' answers nor
//! the agent's gossip.

use std::time::{Duration, Instant};

/// Queries a container may send: `rate` per second, in bursts of up to
/// one second's worth.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `rate` queries per second; 0 is no limit.
    pub(crate) fn new(rate: u32, now: Instant) -> Bucket {
        Bucket { rate: f64::from(rate), tokens: f64::from(rate), at: now }
    }

    /// Takes one query's token; false when the container is over its rate.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at).min(Duration::from_secs(1));
        self.at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert_eq!((0..150).filter(|_| b.take(t0)).count(), 100, "the burst");
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..50).filter(|_| b.take(t1)).count(), 10, "refilled at the rate");
        // Idle for long: still only one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..500).filter(|_| b.take(t2)).count(), 100);
    }

    #[test]
    fn zero_is_no_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0, t0);
        assert!((0..100_000).all(|_| b.take(t0)));
    }
}
