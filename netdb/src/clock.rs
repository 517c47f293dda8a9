//! Lamport clock: one per node, for every table it writes.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LamportClock {
    time: u64,
}

impl LamportClock {
    pub(crate) fn time(&self) -> u64 {
        self.time
    }

    /// Advances the clock for a local write and returns the write's time.
    pub(crate) fn tick(&mut self) -> u64 {
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Records a time seen on a received message, so the next local write
    /// orders after everything this node has seen.
    pub(crate) fn witness(&mut self, seen: u64) {
        if seen > self.time {
            self.time = seen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_orders_after_witnessed_times() {
        let mut c = LamportClock::default();
        assert_eq!(c.tick(), 1);
        c.witness(41);
        assert_eq!(c.tick(), 42);
        c.witness(7);
        assert_eq!(c.tick(), 43, "an older time never moves the clock back");
        let mut top = LamportClock { time: u64::MAX };
        assert_eq!(top.tick(), u64::MAX, "saturates instead of wrapping");
    }
}
