//! A million entries between real agents on loopback (127.0.7.x): agent a
//! is filled through the streaming import (`netdb table import
//! --generate`, timed), agent b then joins and pulls them all by push/pull
//! (timed until b's table count, polled through the API, is complete),
//! while agent c writes an entry every 100 ms into another network, held by
//! a and c only, and each write is timed until a's watch shows it: before
//! the fill (the reference), during the fill and during the pull. Prints
//! the fill and pull times, the write latencies of each phase, and the CPU
//! and peak RSS of a and b, and the machine's state before (`Reference`).
//!
//! Run through `scripts/bench-million [N]` (it builds the release binary).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netdb_api::{self as api, netdb_client::NetdbClient};
use tonic::transport::Channel;

mod bench_support;
use bench_support::{
    Procs, Reference, check_time, connect, cpu_secs, sock, spawn_agent, status_mib,
};

/// The network a holds the million in, and b pulls.
const BULK: &str = "bulk";
/// The network c writes into while that goes on.
const LIVE: &str = "live";
const TABLE: &str = "t";
const VALUE_SIZE: usize = 100;
/// How often c writes.
const WRITE_EVERY: Duration = Duration::from_millis(100);

fn addr(i: u8) -> String {
    format!("127.0.7.{i}:7946")
}

/// c's writes: when each was sent, and when a's watch showed it.
#[derive(Default)]
struct Writes {
    sent: Vec<Instant>,
    seen: Vec<Option<Instant>>,
}

impl Writes {
    /// Latencies in ms of the writes sent in [from, to), and how many of
    /// them a has not shown.
    fn latencies(&self, from: Instant, to: Instant) -> (Vec<f64>, usize) {
        let mut ms = Vec::new();
        let mut missing = 0;
        for (sent, seen) in self.sent.iter().zip(&self.seen) {
            if *sent < from || *sent >= to {
                continue;
            }
            match seen {
                Some(s) => ms.push(s.duration_since(*sent).as_secs_f64() * 1000.0),
                None => missing += 1,
            }
        }
        ms.sort_by(f64::total_cmp);
        (ms, missing)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().ok_or("usage: bench_million NETDB_BINARY [N]")?);
    let n: u32 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let reference = Reference::measure()?;
    let dir = std::env::temp_dir().join(format!("netdb-million-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs { children: Vec::new(), dir: dir.clone() };
    let start = |procs: &mut Procs, name: &str, i: u8| -> std::io::Result<u32> {
        let mut extra = vec!["--data-dir".to_string(), dir.join(name).display().to_string()];
        if i > 1 {
            extra.extend(["--join".to_string(), addr(1)]);
        }
        let child = spawn_agent(&bin, &dir, name, &addr(i), &extra)?;
        let pid = child.id();
        procs.children.push(Some(child));
        Ok(pid)
    };
    let pid_a = start(&mut procs, "a", 1)?;
    start(&mut procs, "c", 3)?;
    let mut a = connect(&sock(&dir, "a")).await?;
    let mut c = connect(&sock(&dir, "c")).await?;
    a.join_network(api::NetworkRequest { network: BULK.into() }).await?;
    for cl in [&mut a, &mut c] {
        cl.join_network(api::NetworkRequest { network: LIVE.into() }).await?;
    }
    let t = Instant::now();
    while peers(&mut a, LIVE).await? < 1 {
        check_time("c joining", t, Duration::from_secs(30))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // c writes every 100 ms until told to stop; a's watch times each.
    let writes = Arc::new(Mutex::new(Writes::default()));
    let watch = a.watch(api::WatchRequest { network: LIVE.into(), table: TABLE.into() }).await?;
    let mut watch = watch.into_inner();
    let seen = writes.clone();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = watch.message().await {
            let i = ev.entry.and_then(|e| e.key.strip_prefix("w-")?.parse::<usize>().ok());
            let mut w = seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = i.and_then(|i| w.seen.get_mut(i)) {
                slot.get_or_insert_with(Instant::now);
            }
        }
    });
    let sent = writes.clone();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(WRITE_EVERY);
        for i in 0usize.. {
            tick.tick().await;
            {
                let mut w = sent.lock().unwrap_or_else(|e| e.into_inner());
                w.sent.push(Instant::now());
                w.seen.push(None);
            }
            let kv = api::KeyValue { key: format!("w-{i}"), value: vec![b'w'; 40].into() };
            let req =
                api::PutRequest { network: LIVE.into(), table: TABLE.into(), entries: vec![kv] };
            if c.put(req).await.is_err() {
                return;
            }
        }
    });

    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;

    // The fill, through the CLI's streaming import.
    let fill_start = Instant::now();
    let cpu_a = cpu_secs(pid_a);
    let mut import = Command::new(&bin);
    import
        .args(["--api", &format!("unix:{}", sock(&dir, "a").display())])
        .args(["table", "import", BULK, TABLE, "--generate", &n.to_string()])
        .args(["--value-size", &VALUE_SIZE.to_string()]);
    // Off this thread: c's writer and a's watch run on it meanwhile.
    let out = tokio::task::spawn_blocking(move || import.output()).await??;
    if !out.status.success() {
        return Err(format!("import: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let fill = fill_start.elapsed();
    let fill_cpu_a = cpu_secs(pid_a) - cpu_a;
    let rss_a_filled = status_mib(pid_a, "VmRSS:");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // b joins and pulls.
    let pull_start = Instant::now();
    let cpu_a = cpu_secs(pid_a);
    let pid_b = start(&mut procs, "b", 2)?;
    let mut b = connect(&sock(&dir, "b")).await?;
    b.join_network(api::NetworkRequest { network: BULK.into() }).await?;
    let (mut held, mut counting, mut polls) = (0, Duration::ZERO, 0);
    while held < u64::from(n) {
        check_time("b's pull", pull_start, Duration::from_secs(600))?;
        // Each poll is a call on b's loop, which the pull shares: its time
        // is printed so it can be told apart from the pull's.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        held = count(&mut b, BULK).await?;
        counting += t.elapsed();
        polls += 1;
    }
    let pull = pull_start.elapsed();
    let pull_cpu = (cpu_secs(pid_a) - cpu_a, cpu_secs(pid_b));
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer.abort();
    let end = Instant::now();

    println!("{n} entries of a {VALUE_SIZE}-byte value and a 14-byte key");
    println!("machine reference before the agents: {reference}");
    println!(
        "fill of a through the streaming import: {:.2} s ({:.0} entries/s), a's CPU {:.2} s, a's RSS after {:.1} MiB",
        fill.as_secs_f64(),
        f64::from(n) / fill.as_secs_f64(),
        fill_cpu_a,
        rss_a_filled
    );
    println!(
        "b started, joined and pulled all: {:.2} s; CPU a {:.2} s, b {:.2} s (of it {polls} \
         counts every 200 ms, {:.2} s)",
        pull.as_secs_f64(),
        pull_cpu.0,
        pull_cpu.1,
        counting.as_secs_f64()
    );
    for (name, pid) in [("a", pid_a), ("b", pid_b)] {
        println!(
            "{name}: peak RSS {:.1} MiB, RSS now {:.1} MiB",
            status_mib(pid, "VmHWM:"),
            status_mib(pid, "VmRSS:")
        );
    }
    let w = writes.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "c's writes seen by a (ms): {:<24} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "phase", "n", "min", "median", "p90", "max"
    );
    let phases = [
        ("before the fill", quiet, fill_start),
        ("during the fill", fill_start, fill_start + fill),
        ("during b's pull", pull_start, pull_start + pull),
        ("all", quiet, end),
    ];
    for (phase, from, to) in phases {
        let (ms, missing) = w.latencies(from, to);
        if ms.is_empty() {
            println!("{:<24} none", phase);
            continue;
        }
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        println!(
            "{:>27}{phase:<24} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}{}",
            "",
            ms.len(),
            ms[0],
            at(0.5),
            at(0.9),
            ms[ms.len() - 1],
            if missing > 0 { format!(" ({missing} not seen)") } else { String::new() }
        );
    }
    Ok(())
}

/// Live peers of a network on this agent.
async fn peers(c: &mut NetdbClient<Channel>, network: &str) -> Result<usize, tonic::Status> {
    let ns = c.networks(api::NetworksRequest {}).await?.into_inner().networks;
    Ok(ns.iter().find(|x| x.name == network).map_or(0, |x| x.peers.len()))
}

/// Visible entries of `TABLE` in a network.
async fn count(c: &mut NetdbClient<Channel>, network: &str) -> Result<u64, tonic::Status> {
    let d = c.inspect_network(api::NetworkRequest { network: network.into() }).await?;
    Ok(d.into_inner().tables.iter().find(|t| t.table == TABLE).map_or(0, |t| t.entries))
}
