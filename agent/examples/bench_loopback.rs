//! Loopback benchmark: N agent processes on 127.0.2.x, all seeded to the
//! first; each writes 100 entries into one table at once. Prints, as
//! min / median / max over the nodes: time until a node holds all N×100,
//! time until a deleted entry is gone, time until a SIGKILLed node's entries
//! are gone, CPU during the write phase, peak RSS, idle CPU over 10 s
//! (`NETDB_BENCH_IDLE_SECS` makes the idle phase longer, e.g. 600 with the
//! CPUs kept busy to count false suspicions), and the suspicions started,
//! members marked failed and late probe timers of the idle phase, summed,
//! and the machine's state before and after (`Reference`: the same binary
//! costs more on some days than on others).
//! `NETDB_BENCH_NET=127.0.6` puts the agents on another /24 of loopback, so
//! two runs on one machine do not collide.
//!
//! Every node is watched. The agent cuts a watcher that falls more than
//! 4,096 events behind (at 100 agents the burst is 10,000 entries, and this
//! one process drains 100 streams on a busy machine): a cut watch is
//! started again, its snapshot replacing what the node was known to hold,
//! so the figures are of the nodes' tables, however often a watch was cut
//! (reported).
//!
//! Run through `scripts/bench-loopback N` (it builds the release binary).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netdb_api::{self as api, netdb_client::NetdbClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

mod bench_support;
use bench_support::{Procs, Reference, check_time, connect, cpu_secs, spawn_agent, status_mib};

const NET: &str = "bench";
const TABLE: &str = "t";
const PER_NODE: usize = 100;

#[derive(Debug)]
struct Seen {
    node: usize,
    /// "create", "update", "delete", or "reset" (a watch started again:
    /// its snapshot follows).
    event: String,
    key: String,
    at: Instant,
}

/// What each node holds, as its watch told.
struct Held(Vec<HashSet<String>>);

impl Held {
    fn apply(&mut self, s: &Seen) {
        let keys = &mut self.0[s.node];
        match s.event.as_str() {
            "reset" => keys.clear(),
            "delete" => {
                keys.remove(&s.key);
            }
            _ => {
                keys.insert(s.key.clone());
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bin =
        PathBuf::from(args.next().ok_or("usage: bench_loopback NETDB_BINARY N [agent flags...]")?);
    let n: usize = args.next().ok_or("missing N")?.parse()?;
    let extra: Vec<String> = args.collect();
    assert!((2..=250).contains(&n), "N must be 2..=250");
    let reference0 = Reference::measure()?;
    let dir = std::env::temp_dir().join(format!("netdb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs { children: Vec::new(), dir: dir.clone() };
    for i in 0..n {
        let join = ["--join".to_string(), addr(0)];
        let child = spawn_agent(&bin, &dir, &format!("n{i}"), &addr(i), join.iter().chain(&extra))?;
        procs.children.push(Some(child));
    }
    favour_self();
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(connect(&sock(&dir, i)).await?);
    }
    let t = Instant::now();
    while !all_alive(&mut clients, n).await? {
        check_time("membership", t, Duration::from_secs(60))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients.iter_mut() {
        c.join_network(api::NetworkRequest { network: NET.into() }).await?;
    }
    let t = Instant::now();
    while !all_peered(&mut clients, n).await? {
        check_time("network peers", t, Duration::from_secs(60))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the bootstrap's gossip settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let resumed = Arc::new(AtomicUsize::new(0));
    for (i, c) in clients.iter().enumerate() {
        let (mut c, tx, resumed) = (c.clone(), tx.clone(), resumed.clone());
        let mut first = true;
        tokio::spawn(async move {
            loop {
                let req = api::WatchRequest { network: NET.into(), table: TABLE.into() };
                let Ok(stream) = c.watch(req).await else { return };
                let mut stream = stream.into_inner();
                if !first {
                    resumed.fetch_add(1, Ordering::Relaxed);
                    let reset = Seen {
                        node: i,
                        event: "reset".into(),
                        key: String::new(),
                        at: Instant::now(),
                    };
                    if tx.send(reset).is_err() {
                        return;
                    }
                }
                first = false;
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            let key = ev.entry.map(|e| e.key).unwrap_or_default();
                            let seen = Seen { node: i, event: ev.event, key, at: Instant::now() };
                            if tx.send(seen).is_err() {
                                return;
                            }
                        }
                        // Cut for falling behind: start again.
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => break,
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        });
    }
    let mut held = Held(vec![HashSet::new(); n]);
    let pids: Vec<u32> = procs.children.iter().map(|c| c.as_ref().map_or(0, |c| c.id())).collect();

    // Write phase: every node puts 100 entries at the same moment.
    let all: Vec<usize> = (0..n).collect();
    let mut traffic0_each = Vec::with_capacity(n);
    for i in 0..n {
        traffic0_each.push(sum_counters(&mut clients, &[i], &TRAFFIC).await?);
    }
    let traffic0 = sum_counters(&mut clients, &all, &TRAFFIC).await?;
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let own0 = cpu_secs(std::process::id());
    let waited0 = run_queue_secs();
    let t0 = Instant::now();
    let mut puts = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        let entries = (0..PER_NODE)
            .map(|k| api::KeyValue { key: format!("n{i}-{k:03}"), value: vec![b'v'; 40].into() })
            .collect();
        puts.push(tokio::spawn(async move {
            c.put(api::PutRequest { network: NET.into(), table: TABLE.into(), entries }).await
        }));
    }
    for p in puts {
        p.await??;
    }
    let mut full = vec![None; n];
    // When a node held 99 %: tells the bulk of the spread from its tail
    // (the last entries, often left to push/pull).
    let mut most = vec![None; n];
    // Each node's last 1 %, as it came: whose entries, and when.
    let mut tail: Vec<Vec<(String, Duration)>> = vec![Vec::new(); n];
    collect(&mut rx, &mut held, Duration::from_secs(120), |s, keys| {
        if most[s.node].is_some() && full[s.node].is_none() {
            tail[s.node].push((s.key.clone(), s.at - t0));
        }
        if most[s.node].is_none() && keys.len() * 100 >= n * PER_NODE * 99 {
            most[s.node] = Some(s.at - t0);
        }
        if full[s.node].is_none() && keys.len() == n * PER_NODE {
            full[s.node] = Some(s.at - t0);
        }
        full.iter().all(Option::is_some)
    })
    .await;
    let cpu_write: Vec<f64> = pids.iter().zip(&cpu0).map(|(&p, c0)| cpu_secs(p) - c0).collect();
    let own_write = cpu_secs(std::process::id()) - own0;
    let own_waited = run_queue_secs() - waited0;
    let traffic1 = sum_counters(&mut clients, &all, &TRAFFIC).await?;
    let slowest = (0..n).max_by_key(|&i| full[i].unwrap_or(Duration::MAX)).unwrap_or(0);
    let mut slowest_traffic = sum_counters(&mut clients, &[slowest], &TRAFFIC).await?;
    for (c, c0) in slowest_traffic.iter_mut().zip(traffic0_each[slowest]) {
        *c -= c0;
    }

    // One delete.
    let t1 = Instant::now();
    clients[0]
        .delete(api::KeyRequest { network: NET.into(), table: TABLE.into(), key: "n0-000".into() })
        .await?;
    let mut gone = vec![None; n];
    collect(&mut rx, &mut held, Duration::from_secs(60), |s, keys| {
        if gone[s.node].is_none() && !keys.contains("n0-000") {
            gone[s.node] = Some(s.at - t1);
        }
        gone.iter().all(Option::is_some)
    })
    .await;

    // SIGKILL the last node; its 100 entries must vanish from the others.
    let victim = n - 1;
    let rss: Vec<f64> = pids.iter().map(|&p| status_mib(p, "VmHWM:")).collect();
    let anon: Vec<f64> = pids.iter().map(|&p| status_mib(p, "RssAnon:")).collect();
    let mut kill_calm = Vec::with_capacity(n);
    for i in 0..n {
        kill_calm.push(sum_counters(&mut clients, &[i], &KILL).await?);
    }
    let t2 = Instant::now();
    procs.kill(victim);
    let prefix = format!("n{victim}-");
    let mut killed_gone = vec![None; n];
    killed_gone[victim] = Some(Duration::ZERO);
    collect(&mut rx, &mut held, Duration::from_secs(120), |s, keys| {
        if killed_gone[s.node].is_none() && !keys.iter().any(|k| k.starts_with(&prefix)) {
            killed_gone[s.node] = Some(s.at - t2);
        }
        killed_gone.iter().all(Option::is_some)
    })
    .await;
    let last_to_know = (0..n).max_by_key(|&i| killed_gone[i].unwrap_or_default()).unwrap_or(0);
    let mut last_calm = sum_counters(&mut clients, &[last_to_know], &KILL).await?;
    for (c, c0) in last_calm.iter_mut().zip(kill_calm[last_to_know]) {
        *c -= c0;
    }
    killed_gone.remove(victim);

    // Idle: 10 s (or as long as asked) with nothing to do.
    let idle_secs: u64 =
        std::env::var("NETDB_BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let live: Vec<u32> =
        pids.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, &p)| p).collect();
    let live_clients: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
    let calm0 = sum_counters(&mut clients, &live_clients, &CALM).await?;
    let idle0: Vec<f64> = live.iter().map(|&p| cpu_secs(p)).collect();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle: Vec<f64> = live
        .iter()
        .zip(&idle0)
        .map(|(&p, c0)| (cpu_secs(p) - c0) * 1000.0 / idle_secs as f64)
        .collect();
    let calm1 = sum_counters(&mut clients, &live_clients, &CALM).await?;
    // Off this thread: the watches are still read.
    let reference1 = tokio::task::spawn_blocking(Reference::measure).await??;

    println!(
        "netdb loopback benchmark: {n} agents, {PER_NODE} entries each ({} in all)",
        n * PER_NODE
    );
    println!(
        "machine reference before the agents: {reference0}; after their idle phase: {reference1}"
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    row_secs("99 % of the N×100 entries on a node (s)", &most);
    row_secs("all N×100 entries on a node (s)", &full);
    row_secs("a deleted entry gone from a node (s)", &gone);
    row_secs("SIGKILLed node's entries gone from a node (s)", &killed_gone);
    row("CPU per node during the write phase (s)", cpu_write);
    row("peak RSS per node (MiB)", rss);
    row("  of it private (anonymous) after writes (MiB)", anon);
    row("idle CPU per node (ms/s)", idle);
    let per_node = |k: usize| (traffic1[k] - traffic0[k]) as f64 / n as f64;
    println!(
        "write phase, per node: gossip datagrams in {:.0}, out {:.0}; entries from gossip {:.0}, \
         from push/pull {:.0}; copies of held versions {:.0} ({:.1} per entry); push/pulls started {:.1}",
        per_node(0),
        per_node(1),
        per_node(2),
        per_node(3),
        per_node(4),
        per_node(4) / (n * PER_NODE) as f64,
        per_node(5),
    );
    report_tail(slowest, &tail[slowest], &slowest_traffic);
    println!(
        "this benchmark during the write phase (draining the watches): CPU {own_write:.2} s, \
         waiting for a CPU {own_waited:.2} s"
    );
    let before_kill = kill_calm.iter().fold([0; KILL.len()], |mut sum, c| {
        sum.iter_mut().zip(c).for_each(|(s, c)| *s += c);
        sum
    });
    println!(
        "before the kill, summed over the nodes: suspicions started {}, late probe timers {}",
        before_kill[0], before_kill[2]
    );
    report_last_to_know(last_to_know, &kill_calm[last_to_know], &last_calm);
    println!(
        "over the {idle_secs} s idle phase, summed over the nodes: suspicions started {}, \
         members marked failed {}, late probe timers {}",
        calm1[0] - calm0[0],
        calm1[1] - calm0[1],
        calm1[2] - calm0[2]
    );
    println!(
        "watch streams cut for falling behind and resumed: {}",
        resumed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The slowest node's last 1 %: when it came and from whose writes, and
/// what the node did meanwhile, to tell a lost round from a slow sync.
fn report_tail(node: usize, tail: &[(String, Duration)], traffic: &[u64; TRAFFIC.len()]) {
    let mut owners: Vec<&str> =
        tail.iter().map(|(k, _)| k.split_once('-').map_or(k.as_str(), |(o, _)| o)).collect();
    owners.sort_unstable();
    owners.dedup();
    let span = match (tail.first(), tail.last()) {
        (Some((_, a)), Some((_, b))) => format!("{:.3}-{:.3} s", a.as_secs_f64(), b.as_secs_f64()),
        _ => "none".into(),
    };
    println!(
        "slowest node n{node}: its last {} entries came at {span}, written by {}; it learned \
         {} entries from gossip and {} from push/pull, and started {} push/pulls",
        tail.len(),
        owners.join(" "),
        traffic[2],
        traffic[3],
        traffic[5],
    );
}

/// How the last node to hide the killed node's entries came to know of
/// its failure: its own probe (a suspicion it started) or others' word
/// (a down it held while asking the member), and how slow it was before.
fn report_last_to_know(node: usize, before: &[u64; KILL.len()], during: &[u64; KILL.len()]) {
    println!(
        "last to hide the killed node's entries, n{node}: before the kill, late probe timers {}; \
         since, suspicions started {}, downs heard from others and held {}, late probe timers {}",
        before[2], during[0], during[3], during[2]
    );
}

/// Runs this process before the agents: it reads every watch, and the
/// time an event is read is the time measured. At an equal share, one
/// process among 100 busy agents got a CPU so seldom that it read the
/// burst's events seconds late, then all at once, and its watches were cut
/// for falling behind; at nice -10 it still waited 8.7 s for a CPU during
/// an 11 s burst. A real-time class (SCHED_RR) takes the CPU whenever the
/// process is runnable; it needs about a second of CPU in the burst.
/// Without the right to, it says so and measures anyway.
fn favour_self() {
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("chrt")
        .args(["--rr", "--pid", "1", &pid])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "warning: cannot raise the benchmark's priority; its reading of the watches may lag"
        );
    }
}

/// Time this process spent runnable but waiting for a CPU, in seconds.
fn run_queue_secs() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|ns| ns.parse::<f64>().ok()))
        .map_or(0.0, |ns| ns / 1e9)
}

fn addr(i: usize) -> String {
    let net = std::env::var("NETDB_BENCH_NET").unwrap_or_else(|_| "127.0.2".to_string());
    format!("{net}.{}:7946", i + 1)
}

fn sock(dir: &Path, i: usize) -> PathBuf {
    bench_support::sock(dir, &format!("n{i}"))
}

/// Suspicions started, members marked failed and late probe timers.
const CALM: [&str; 3] = ["suspicions_started", "member_changes:failed", "late_probe_wakes"];

/// `CALM`, and the members declared down by others that a node held.
const KILL: [&str; 4] =
    ["suspicions_started", "member_changes:failed", "late_probe_wakes", "unexpected_downs"];

/// What the write phase cost in gossip: datagrams in and out, entries
/// learned each way, copies of versions already held, push/pulls.
const TRAFFIC: [&str; 6] = [
    "gossip_in_messages",
    "gossip_out_messages",
    "entries_from_gossip",
    "entries_from_sync",
    "gossip_copies",
    "syncs_started",
];

/// The counters `names` of the nodes `which`, each summed over them.
async fn sum_counters<const K: usize>(
    clients: &mut [NetdbClient<Channel>],
    which: &[usize],
    names: &[&str; K],
) -> Result<[u64; K], tonic::Status> {
    let mut sum = [0u64; K];
    for &i in which {
        let counters = clients[i].stats(api::StatsRequest {}).await?.into_inner().counters;
        for c in counters {
            if let Some(k) = names.iter().position(|n| *n == c.name) {
                sum[k] += c.value;
            }
        }
    }
    Ok(sum)
}

async fn all_alive(clients: &mut [NetdbClient<Channel>], n: usize) -> Result<bool, tonic::Status> {
    for c in clients.iter_mut() {
        let ms = c.members(api::MembersRequest {}).await?.into_inner().members;
        if ms.iter().filter(|m| m.state == "alive").count() < n {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn all_peered(clients: &mut [NetdbClient<Channel>], n: usize) -> Result<bool, tonic::Status> {
    for c in clients.iter_mut() {
        let ns = c.networks(api::NetworksRequest {}).await?.into_inner().networks;
        if ns.first().map_or(0, |x| x.peers.len()) < n - 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies watch events to `held` and shows each, with what its node now
/// holds, to `done`, until it returns true or `limit` passes.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    held: &mut Held,
    limit: Duration,
    mut done: impl FnMut(&Seen, &HashSet<String>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => {
                held.apply(&s);
                if done(&s, &held.0[s.node]) {
                    return;
                }
            }
            _ => {
                eprintln!(
                    "warning: stopped waiting after {limit:?}; missing nodes are shown as not reached"
                );
                return;
            }
        }
    }
}

fn row_secs(name: &str, v: &[Option<Duration>]) {
    let reached: Vec<f64> = v.iter().flatten().map(Duration::as_secs_f64).collect();
    if reached.len() < v.len() {
        println!("{name:<44} {} of {} nodes not reached", v.len() - reached.len(), v.len());
    }
    row(name, reached);
}

fn row(name: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort_by(f64::total_cmp);
    println!("{name:<44} {:>10.3} {:>10.3} {:>10.3}", v[0], v[v.len() / 2], v[v.len() - 1]);
}
