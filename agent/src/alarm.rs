//! The agent loop's one timer: a timerfd armed for the node's next
//! wake-up.
//!
//! Why not tokio's sleep: its timer wheel files a deadline more than 64 ms
//! ahead in a coarser level, and the thread wakes when that level's slot
//! begins, to file it again finer, then once more at the deadline. Every
//! probe, probe timeout and gossip tick cost two wake-ups, and an idle
//! agent's CPU is mostly wake-ups (docs/performance.md, "Idle wake-ups").
//! A timerfd wakes the thread once, at the deadline.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The descriptor as tokio's reactor takes it.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub(crate) struct Alarm {
    fd: AsyncFd<Fd>,
    /// The deadline it is armed for, until it is seen to fire.
    armed: Option<Instant>,
}

impl Alarm {
    pub(crate) fn new() -> io::Result<Alarm> {
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags).map_err(io::Error::from)?;
        // tokio 1.54 deprecates its safe constructors for a type whose
        // `as_raw_fd` might name a descriptor it does not own (the unsafe
        // `register` is the replacement, and this workspace forbids unsafe
        // code). `Fd` owns its descriptor, and it lives as long as the
        // registration: the condition `register` asks for holds.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(Fd(fd), Interest::READABLE)?;
        Ok(Alarm { fd, armed: None })
    }

    /// Arms it for `at`, unless it already is: most turns of the loop leave
    /// the deadline where it was, and they cost no system call.
    pub(crate) fn set(&mut self, at: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // A zero expiry would disarm it: a deadline already past fires at
        // once.
        let after = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let when = Expiration::OneShot(TimeSpec::from_duration(after));
        self.fd.get_ref().0.set(when, TimerSetTimeFlags::empty()).map_err(io::Error::from)?;
        self.armed = Some(at);
        Ok(())
    }

    /// Resolves when the deadline set last has passed.
    pub(crate) async fn fired(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            // Readiness may be stale (re-armed since): a read that finds
            // no expiry clears it, and the wait goes on.
            if let Ok(r) = ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                self.armed = None;
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_at_the_deadline_set_last_and_not_before() {
        let mut a = Alarm::new().unwrap();
        let start = Instant::now();
        a.set(start + Duration::from_secs(3600)).unwrap();
        // Moved earlier: the hour-long arming no longer counts.
        a.set(start + Duration::from_millis(30)).unwrap();
        let fired = tokio::time::timeout(Duration::from_secs(5), a.fired()).await;
        assert!(matches!(fired, Ok(Ok(()))), "not moved earlier: {fired:?}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30), "fired early, after {took:?}");
        // Moved later while armed: it waits for the later one.
        let start = Instant::now();
        a.set(start + Duration::from_millis(10)).unwrap();
        a.set(start + Duration::from_millis(40)).unwrap();
        a.fired().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn a_deadline_already_past_fires_at_once_and_again_when_set_again() {
        let mut a = Alarm::new().unwrap();
        let past = Instant::now() - Duration::from_secs(1);
        a.set(past).unwrap();
        a.fired().await.unwrap();
        // Fired, it is disarmed: the same deadline set again arms it
        // again instead of being taken for the one already set.
        a.set(past).unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), a.fired()).await;
        assert!(matches!(again, Ok(Ok(()))), "{again:?}");
    }
}
