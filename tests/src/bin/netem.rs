//! `netdb-netem`: delay, jitter and loss for tests on kernels without
//! `tc netem`. It binds an NFQUEUE, holds each packet the kernel hands it
//! for `delay ± uniform jitter` (a seeded RNG: the same seed gives the same
//! delays) and then accepts it, or drops it with probability `loss`.
//!
//! Feed it with e.g.
//! `iptables-nft -A OUTPUT -p icmp -j NFQUEUE --queue-num 7 --queue-bypass`:
//! with `--queue-bypass`, traffic flows undelayed once the helper is gone.
//!
//! One thread: the queue socket is non-blocking; the loop reads what the
//! kernel has queued, issues the verdicts that are due (a min-heap on
//! release time, then arrival order, so packets keep their order when the
//! jitter is 0) and sleeps until the next is due, at most a millisecond.
//! Only packet metadata is copied from the kernel (the payload is never
//! read), and at most `--cap` packets are held: beyond that they are
//! accepted at once and counted. SIGTERM or SIGINT accepts what is held,
//! releases the queue and prints a one-line summary.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nfq::{Message, Queue, Verdict};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The longest the loop sleeps with nothing due: how late a verdict can be
/// issued, and how long a signal can wait to be noticed.
const TICK: Duration = Duration::from_millis(1);

/// Command line of `netdb-netem`.
#[derive(Debug, Parser)]
#[command(
    name = "netdb-netem",
    about = "Delay (and drop) packets handed over through NFQUEUE: a test tool for kernels without tc netem"
)]
struct Args {
    /// NFQUEUE number to bind (as in `-j NFQUEUE --queue-num N`).
    #[arg(long)]
    queue: u16,
    /// How long each packet is held, e.g. `100ms` or `1s`.
    #[arg(long, value_parser = parse_duration)]
    delay: Duration,
    /// Uniform jitter around the delay: each packet is held for a delay in
    /// `[delay - jitter, delay + jitter]` (never below zero).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    jitter: Duration,
    /// Percentage of packets dropped (0 to 100).
    #[arg(long, value_parser = parse_loss, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the RNG that draws jitter and loss.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most packets held at once; beyond it packets are accepted at once.
    #[arg(long, default_value_t = 10_000)]
    cap: usize,
}

/// Parses `100ms`, `1s`, `250us` or `0`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected a whole number and a unit, e.g. 100ms or 1s"))?;
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (use us, ms or s)")),
    }
}

/// Parses a loss percentage in `[0, 100]`.
fn parse_loss(s: &str) -> Result<f64, String> {
    let pct: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}`: expected a percentage, e.g. 5 or 0.5"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("`{s}`: loss must be between 0 and 100"));
    }
    Ok(pct)
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Dropped (the loss draw).
    Drop,
    /// Accepted after this long.
    Hold(Duration),
}

/// Draws each packet's fate from a seeded RNG: reproducible for a seed.
struct Plan {
    /// The RNG, seeded from `--seed`.
    rng: StdRng,
    /// Mean hold time.
    delay: Duration,
    /// Half-width of the uniform spread around `delay`.
    jitter: Duration,
    /// Drop probability in `[0, 1]`.
    loss: f64,
}

impl Plan {
    /// A plan from the command line's figures (`loss` in percent).
    fn new(seed: u64, delay: Duration, jitter: Duration, loss: f64) -> Self {
        Plan { rng: StdRng::seed_from_u64(seed), delay, jitter, loss: loss / 100.0 }
    }

    /// The next packet's fate.
    fn next(&mut self) -> Fate {
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return Fate::Drop;
        }
        if self.jitter.is_zero() {
            return Fate::Hold(self.delay);
        }
        let spread = self.jitter.as_nanos().saturating_mul(2);
        let offset = self.rng.random_range(0..=spread);
        let nanos = (self.delay.as_nanos() + offset).saturating_sub(self.jitter.as_nanos());
        Fate::Hold(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }
}

/// A packet waiting for its verdict, ordered by release time then arrival.
struct Held {
    /// When to accept it.
    due: Instant,
    /// Arrival order: ties (and jitter 0) keep packets in order.
    seq: u64,
    /// The kernel's message, handed back with the verdict.
    msg: Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// What the helper did, printed at exit.
#[derive(Debug, Default)]
struct Counts {
    /// Packets held and then accepted.
    delayed: u64,
    /// Packets dropped by the loss draw.
    dropped: u64,
    /// Packets accepted at once because `--cap` were already held.
    over_cap: u64,
    /// Packets still held at exit, accepted then.
    flushed: u64,
    /// Receive or verdict errors (logged, not fatal).
    errors: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.queue;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("cannot install a handler for signal {sig}"))?;
    }

    let mut queue = Queue::open().context(
        "cannot open a netfilter netlink socket; netdb-netem needs CAP_NET_ADMIN (run as root)",
    )?;
    queue.bind(n).with_context(|| {
        format!(
            "cannot bind NFQUEUE {n}; is another netdb-netem on this queue? \
             is nfnetlink_queue available (modprobe nfnetlink_queue)?"
        )
    })?;
    // Metadata only: the payload is never read, and a held packet then
    // costs a few kilobytes, not 64.
    queue
        .set_copy_range(n, 0)
        .with_context(|| format!("NFQUEUE {n}: cannot set the copy range"))?;
    // The kernel keeps every packet we hold: room for the cap plus a
    // burst, and past that the kernel accepts rather than drops.
    let kernel_len = u32::try_from(args.cap.saturating_add(1024)).unwrap_or(u32::MAX);
    queue
        .set_queue_max_len(n, kernel_len)
        .with_context(|| format!("NFQUEUE {n}: cannot set the queue length"))?;
    queue.set_fail_open(n, true).with_context(|| format!("NFQUEUE {n}: cannot set fail-open"))?;
    queue.set_nonblocking(true);
    eprintln!(
        "netdb-netem: queue {n} bound: delay {:?}, jitter {:?}, loss {}%, seed {}, cap {}",
        args.delay, args.jitter, args.loss, args.seed, args.cap
    );

    let mut plan = Plan::new(args.seed, args.delay, args.jitter, args.loss);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut counts = Counts::default();
    let mut seq = 0u64;

    while !stop.load(AtomicOrdering::Relaxed) {
        loop {
            let mut msg = match queue.recv() {
                Ok(msg) => msg,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    counts.errors += 1;
                    eprintln!("netdb-netem: queue {n}: receive failed: {e}");
                    break;
                }
            };
            match plan.next() {
                Fate::Hold(d) if !d.is_zero() && held.len() < args.cap => {
                    seq += 1;
                    held.push(Reverse(Held { due: Instant::now() + d, seq, msg }));
                }
                Fate::Hold(d) => {
                    if d.is_zero() {
                        counts.delayed += 1;
                    } else {
                        counts.over_cap += 1;
                    }
                    accept(&mut queue, msg, &mut counts, n);
                }
                Fate::Drop => {
                    counts.dropped += 1;
                    msg.set_verdict(Verdict::Drop);
                    give(&mut queue, msg, &mut counts, n);
                }
            }
        }

        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            if let Some(Reverse(h)) = held.pop() {
                counts.delayed += 1;
                accept(&mut queue, h.msg, &mut counts, n);
            }
        }
        let sleep =
            held.peek().map_or(TICK, |Reverse(h)| h.due.saturating_duration_since(now).min(TICK));
        if !sleep.is_zero() {
            std::thread::sleep(sleep);
        }
    }

    // Accept what is held (unbinding would have the kernel drop it), in order.
    while let Some(Reverse(h)) = held.pop() {
        counts.flushed += 1;
        accept(&mut queue, h.msg, &mut counts, n);
    }
    if let Err(e) = queue.unbind(n) {
        eprintln!("netdb-netem: queue {n}: unbind failed ({e}); closing the socket releases it");
    }
    let Counts { delayed, dropped, over_cap, flushed, errors } = counts;
    println!(
        "netdb-netem: queue {n}: delayed {delayed}, dropped {dropped}, passed through over the cap {over_cap}, \
         accepted at exit {flushed}, errors {errors}"
    );
    if errors > 0 && delayed == 0 {
        bail!("queue {n}: every operation failed ({errors} errors)");
    }
    Ok(())
}

/// Accepts a packet.
fn accept(queue: &mut Queue, mut msg: Message, counts: &mut Counts, n: u16) {
    msg.set_verdict(Verdict::Accept);
    give(queue, msg, counts, n);
}

/// Hands a verdict back to the kernel; a failure is logged and counted.
fn give(queue: &mut Queue, msg: Message, counts: &mut Counts, n: u16) {
    if let Err(e) = queue.verdict(msg) {
        counts.errors += 1;
        eprintln!("netdb-netem: queue {n}: verdict failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("10m").is_err());
        assert!(parse_loss("101").is_err());
        assert_eq!(parse_loss("5%"), Ok(5.0));
    }

    #[test]
    fn plan_is_reproducible_and_bounded() {
        let draw = |seed| {
            let mut p =
                Plan::new(seed, Duration::from_millis(100), Duration::from_millis(20), 10.0);
            (0..1000).map(|_| p.next()).collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        let drops = a.iter().filter(|f| **f == Fate::Drop).count();
        assert!((50..150).contains(&drops), "{drops} drops of 1000 at 10%");
        for f in a {
            if let Fate::Hold(d) = f {
                assert!(d >= Duration::from_millis(80) && d <= Duration::from_millis(120), "{d:?}");
            }
        }
    }
}
