//! `netdb-netem` on a real kernel: two namespaces joined by a veth pair,
//! ICMP leaving namespace a queued to the helper. Pings show the delay,
//! the jitter, and (once the helper is gone) the queue bypass. Needs root.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// The NFQUEUE number the test's rule feeds.
const QUEUE: &str = "7";
/// Namespace name prefix: leftovers of a crashed run are swept by it.
const PREFIX: &str = "ndnm-";

/// Whether the test may run: without CAP_NET_ADMIN it says SKIP and passes,
/// except under CI (`CI` set), where it fails.
fn allowed(test: &str) -> bool {
    if netdb_dataplane::has_net_admin() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run as root (CAP_NET_ADMIN)");
    eprintln!("SKIP {test}: needs CAP_NET_ADMIN (run as root)");
    false
}

/// Runs a command and panics with its output if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces with the prefix whose owning test process is gone.
fn sweep() {
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Two namespaces `a` and `b` joined by a veth pair (10.77.0.1 and
/// 10.77.0.2), deleted on drop.
struct Pair {
    /// Namespace a: the pinger, where the NFQUEUE rule is.
    a: String,
    /// Namespace b: the target.
    b: String,
}

impl Pair {
    fn new() -> Self {
        sweep();
        let pid = std::process::id();
        let pair = Pair { a: format!("{PREFIX}a-{pid}"), b: format!("{PREFIX}b-{pid}") };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        run(&["ip", "netns", "add", a]);
        run(&["ip", "netns", "add", b]);
        run(&[
            "ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
        ]);
        run(&["ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "va"]);
        run(&["ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vb"]);
        for (ns, dev) in [(a, "va"), (b, "vb"), (a, "lo"), (b, "lo")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// `ping -c count` from a to b: each reply's RTT in milliseconds.
    fn ping(&self, count: u32) -> Vec<f64> {
        let count = count.to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.a, "ping", "-n", "-c", &count, "-i", "0.2", "-W", "2"])
            .arg("10.77.0.2")
            .output()
            .expect("ping");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
            .collect()
    }

    /// Starts `netdb-netem` in namespace a with `args` and waits until it
    /// has bound the queue.
    fn netem(&self, args: &[&str]) -> Netem {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.a, env!("CARGO_BIN_EXE_netdb-netem"), "--queue", QUEUE])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netdb-netem");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let _ = stderr.read_line(&mut line);
        assert!(line.contains("bound"), "netdb-netem did not bind the queue: {line}");
        Netem { child, _stderr: stderr }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A running helper; SIGTERM on drop if still running.
struct Netem {
    /// The process (`ip netns exec` execs the helper: same pid).
    child: Child,
    /// Kept open so the helper never writes to a closed pipe.
    _stderr: BufReader<ChildStderr>,
}

impl Netem {
    /// SIGTERM, then the exit status and the summary line.
    fn stop(mut self) -> String {
        run(&["kill", "-TERM", &self.child.id().to_string()]);
        let out = self.child.stdout.take();
        let status = self.child.wait().expect("wait netdb-netem");
        assert!(status.success(), "netdb-netem exited with {status}");
        let mut summary = String::new();
        if let Some(out) = out {
            let _ = BufReader::new(out).read_line(&mut summary);
        }
        summary.trim().to_owned()
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let _ = self.child.wait();
        }
    }
}

/// Minimum, median and maximum of the RTTs, for the log.
fn figures(rtts: &[f64]) -> (f64, f64, f64) {
    let mut v = rtts.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn netem_delays_jitters_and_bypasses_when_gone() {
    if !allowed("netem_delays_jitters_and_bypasses_when_gone") {
        return;
    }
    // The queue needs nfnetlink_queue: built in here, a module elsewhere.
    if !Path::new("/proc/net/netfilter/nfnetlink_queue").exists() {
        let _ = Command::new("modprobe").arg("nfnetlink_queue").status();
    }
    let pair = Pair::new();
    run(&[
        "ip",
        "netns",
        "exec",
        &pair.a,
        "iptables-nft",
        "-A",
        "OUTPUT",
        "-p",
        "icmp",
        "-j",
        "NFQUEUE",
        "--queue-num",
        QUEUE,
        "--queue-bypass",
    ]);

    let netem = pair.netem(&["--delay", "100ms"]);
    let rtts = pair.ping(5);
    let summary = netem.stop();
    eprintln!("delay 100ms: RTTs {rtts:?} ms; {summary}");
    assert_eq!(rtts.len(), 5, "every ping answered");
    assert!(rtts.iter().all(|r| (100.0..400.0).contains(r)), "RTTs in [100, 400) ms: {rtts:?}");
    assert!(summary.contains("delayed 5,"), "{summary}");

    let netem = pair.netem(&["--delay", "100ms", "--jitter", "50ms", "--seed", "7"]);
    let rtts = pair.ping(10);
    let summary = netem.stop();
    assert_eq!(rtts.len(), 10, "every ping answered: {rtts:?}; {summary}");
    let (min, median, max) = figures(&rtts);
    eprintln!(
        "delay 100ms jitter 50ms: RTTs {rtts:?} ms (min {min}, median {median}, max {max}); {summary}"
    );
    assert!(rtts.iter().all(|r| (50.0..200.0).contains(r)), "RTTs in [50, 200) ms: {rtts:?}");
    assert!(max - min > 10.0, "jitter spreads the RTTs: {rtts:?}");

    // The rule is still there; with --queue-bypass and no helper, packets pass.
    let rtts = pair.ping(5);
    assert_eq!(rtts.len(), 5, "every ping answered with the queue unbound: {rtts:?}");
    let (min, median, max) = figures(&rtts);
    eprintln!("helper gone: RTTs {rtts:?} ms (min {min}, median {median}, max {max})");
    assert!(median < 1.0, "sub-ms median once bypassed: {rtts:?}");
    assert!(max < 20.0, "no packet held once bypassed: {rtts:?}");
}
