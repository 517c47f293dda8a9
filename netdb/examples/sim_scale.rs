//! Scale of the simulator (issue 15 item 5): for each N, a cluster formed
//! long ago (`Sim::form_converged`, every node attached to one network) on
//! 1 ms ± 1 ms links, then
//! - the time for one new entry to reach every node, clean and at 30 %
//!   loss, and the copies of it each node received beyond the first;
//! - bytes sent per node per second at rest and under 100 writes/s
//!   cluster-wide (each write by a random node), with the copies per write
//!   per node;
//! - with `--calm SECS`: suspicions raised and members declared failed
//!   over SECS simulated seconds at 10 % loss (every member lives, so each
//!   one is false);
//! - memory per node (the process's resident set grown since the start,
//!   over N) and the wall time of each phase; `--form-only` stops there;
//!   at the end, the process's peak resident set.
//!
//! `--relay-mult K` overrides `Config::relay_mult`, to weigh copies
//! against spread; `--tree` turns on the eager/lazy push tree.
//!
//! `cargo run --release -p netdb --features sim --example sim_scale -- [--calm 600] [--form-only] [--relay-mult K] 100 1000`

use std::time::{Duration, Instant};

use bytes::Bytes;
use netdb::sim::{NetConfig, Sim, config_from_args};
use netdb::{Config, MemberChange};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NET: &str = "net";

fn main() {
    let (cfg, rest) = config_from_args(std::env::args().skip(1));
    let mut opts = Opts { calm: None, form_only: false, cfg };
    let mut sizes = Vec::new();
    let mut args = rest.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calm" => {
                opts.calm = args.next().and_then(|s| s.parse().ok()).map(Duration::from_secs)
            }
            "--form-only" => opts.form_only = true,
            n => sizes.extend(n.parse::<usize>().ok()),
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 1000];
    }
    for n in sizes {
        run(n, &opts);
    }
}

struct Opts {
    /// Seconds at 10 % loss to count false suspicions over.
    calm: Option<Duration>,
    /// Only form the cluster and report its memory.
    form_only: bool,
    /// The nodes' settings (`--relay-mult`, `--tree`).
    cfg: Config,
}

/// Sums of the node counters that the scenarios read.
#[derive(Default, Clone, Copy)]
struct Totals {
    swim: u64,
    gossip: u64,
    sync: u64,
    copies: u64,
    suspicions: u64,
    failed: u64,
}

impl Totals {
    fn of(sim: &Sim) -> Totals {
        let mut t = Totals::default();
        for i in 0..sim.len() {
            let Some(s) = sim.node(i).map(|n| n.stats()) else { continue };
            t.swim += s.swim_out.bytes;
            t.gossip += s.gossip_out.bytes;
            t.sync += s.sync_out.bytes;
            t.copies += s.gossip_copies;
            t.suspicions += s.suspicions_started;
            t.failed += s.changes(MemberChange::Failed);
        }
        t
    }

    fn since(self, before: Totals) -> Totals {
        Totals {
            swim: self.swim - before.swim,
            gossip: self.gossip - before.gossip,
            sync: self.sync - before.sync,
            copies: self.copies - before.copies,
            suspicions: self.suspicions - before.suspicions,
            failed: self.failed - before.failed,
        }
    }

    /// Bytes per node per second over `d`, as "total (swim / gossip / sync)".
    fn rate(&self, n: usize, d: Duration) -> String {
        let per = |b: u64| b as f64 / n as f64 / d.as_secs_f64();
        format!(
            "{:.0} B/s (swim {:.0}, gossip {:.0}, sync {:.0})",
            per(self.swim + self.gossip + self.sync),
            per(self.swim),
            per(self.gossip),
            per(self.sync)
        )
    }
}

/// State a node keeps per member, measured (docs/performance.md): the
/// simulator's memory grows as N². Formed, about 870 bytes at 1,000 to
/// 2,000 nodes; the whole run peaks higher, 1,300 at 2,000 nodes (the news
/// of the 30 % loss phase's suspicions and failures, queued on every node
/// about most members).
const FORMED_BYTES_PER_MEMBER: u64 = 900;
const RUN_BYTES_PER_MEMBER: u64 = 1_300;

/// A `kB` field of a /proc file, in bytes (0 where there is none).
fn proc_kb(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The resident set of this process.
fn rss_bytes() -> u64 {
    proc_kb("/proc/self/status", "VmRSS:")
}

fn run(n: usize, opts: &Opts) {
    // The machine is shared: a size that cannot fit is refused, not left
    // to the OOM killer, which may pick someone else's process.
    let per_member = if opts.form_only { FORMED_BYTES_PER_MEMBER } else { RUN_BYTES_PER_MEMBER };
    let need = per_member * (n * n) as u64;
    let available = proc_kb("/proc/meminfo", "MemAvailable:");
    if available > 0 && need > available * 3 / 4 {
        println!(
            "N={n}: skipped: needs about {:.1} GB ({per_member} B per node per member), {:.1} GB available",
            need as f64 / 1e9,
            available as f64 / 1e9
        );
        return;
    }
    let rss0 = rss_bytes();
    let wall = Instant::now();
    let mut sim = Sim::new(11 + n as u64, opts.cfg.clone(), NetConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    sim.form_converged(&[NET]);
    // The first push/pulls (each node's, with a random peer) settle.
    sim.run_for(Duration::from_secs(10));
    let formed = wall.elapsed();
    let per_node = rss_bytes().saturating_sub(rss0) / n as u64;
    println!(
        "N={n}: formed in {:.1}s wall, memory {:.1} KiB per node ({:.0} B per node per member)",
        formed.as_secs_f64(),
        per_node as f64 / 1024.0,
        per_node as f64 / n as f64
    );
    if opts.form_only {
        return;
    }

    let t = Instant::now();
    let window = Duration::from_secs(10);
    let before = Totals::of(&sim);
    sim.run_for(window);
    let rest = Totals::of(&sim).since(before);
    println!(
        "N={n}: at rest {}; {:.1}s wall for {}s",
        rest.rate(n, window),
        t.elapsed().as_secs_f64(),
        window.as_secs()
    );

    let t = Instant::now();
    let b = writes_at(&mut sim, 100, window);
    println!(
        "N={n}: 100 writes/s {}; copies per write per node {:.2}; missing 5 s after: {} of {}; {:.1}s wall; resident {:.2} GB",
        b.busy.rate(n, window),
        b.copies as f64 / b.writes as f64 / n as f64,
        b.missing,
        b.writes * n as u64,
        t.elapsed().as_secs_f64(),
        rss_bytes() as f64 / 1e9
    );

    for (i, loss) in [0.0, 0.3].into_iter().enumerate() {
        let t = Instant::now();
        sim.net.loss = loss;
        let (took, during) = spread_one(&mut sim, &format!("one-{i}"));
        sim.net.loss = 0.0;
        let took =
            took.map_or("not reached in 60 s".into(), |d| format!("{:.2}s", d.as_secs_f64()));
        println!(
            "N={n}: one entry at {:.0}% loss: everywhere in {took}, copies per node {:.2} \
             (meanwhile {} suspicions, {} declared failed); {:.1}s wall; resident {:.2} GB",
            loss * 100.0,
            during.copies as f64 / n as f64,
            during.suspicions,
            during.failed,
            t.elapsed().as_secs_f64(),
            rss_bytes() as f64 / 1e9
        );
    }

    if let Some(calm) = opts.calm {
        // What the 30 % loss left (suspicions being refuted) settles first.
        sim.run_for(Duration::from_secs(30));
        let t = Instant::now();
        sim.net.loss = 0.1;
        let before = Totals::of(&sim);
        sim.run_for(calm);
        let c = Totals::of(&sim).since(before);
        sim.net.loss = 0.0;
        println!(
            "N={n}: {}s at 10% loss: {} suspicions raised, {} members declared failed (summed over nodes); {}; {:.1}s wall",
            calm.as_secs(),
            c.suspicions,
            c.failed,
            c.rate(n, calm),
            t.elapsed().as_secs_f64()
        );
    }
    // The peak of the process: a size run after a larger one reports the
    // larger one's.
    let peak = proc_kb("/proc/self/status", "VmHWM:");
    println!(
        "N={n}: total {:.1}s wall; peak resident {:.2} GB ({:.0} B per node per member)",
        wall.elapsed().as_secs_f64(),
        peak as f64 / 1e9,
        peak.saturating_sub(rss0) as f64 / (n * n) as f64
    );
}

/// Node 0 writes one entry: the virtual time until every node holds it
/// (checked every 10 ms), and the counters' growth until its gossip is
/// over (copies of it received beyond the first, among others).
fn spread_one(sim: &mut Sim, key: &str) -> (Option<Duration>, Totals) {
    let before = Totals::of(sim);
    sim.with_node(0, |node, now| node.put(now, NET, "t", key, Bytes::from_static(b"v")))
        .expect("put");
    let took = sim.run_until_true(Duration::from_millis(10), Duration::from_secs(60), |s| {
        (0..s.len()).all(|i| s.node(i).is_some_and(|x| x.get(NET, "t", key).is_some()))
    });
    sim.run_for(Duration::from_secs(5));
    (took, Totals::of(sim).since(before))
}

/// What a burst of writes cost and reached.
struct Burst {
    /// The counters' growth while writing.
    busy: Totals,
    writes: u64,
    /// Copies received beyond the first, once the gossip is over.
    copies: u64,
    /// (node, write) pairs still missing 5 s after the last write.
    missing: u64,
}

/// Random nodes write `per_sec` new entries a second for `d`.
fn writes_at(sim: &mut Sim, per_sec: u32, d: Duration) -> Burst {
    let mut rng = StdRng::seed_from_u64(sim.len() as u64);
    let gap = Duration::from_secs(1) / per_sec;
    let before = Totals::of(sim);
    let end = sim.now() + d;
    let mut writes = 0u64;
    while sim.now() < end {
        let i = rng.random_range(0..sim.len());
        let key = format!("w{writes}");
        sim.with_node(i, |node, now| node.put(now, NET, "t", &key, Bytes::from_static(b"v")))
            .expect("put");
        writes += 1;
        sim.run_for(gap);
    }
    let busy = Totals::of(sim).since(before);
    sim.run_for(Duration::from_secs(5));
    let copies = Totals::of(sim).since(before).copies;
    let held = |i: usize| {
        sim.node(i).map_or(0, |x| {
            (0..writes).filter(|w| x.get(NET, "t", &format!("w{w}")).is_some()).count()
        })
    };
    let missing = (0..sim.len()).map(|i| writes - held(i) as u64).sum();
    Burst { busy, writes, copies, missing }
}
