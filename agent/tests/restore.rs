//! Live restore: an agent restarted with its data dir (SIGKILL, or SIGTERM
//! as an upgrade does) resumes its incarnation, so its containers' traffic
//! goes on and no other host withdraws its endpoints. Needs root; without
//! CAP_NET_ADMIN the test says so and passes, except under CI.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netdb_chaos::cluster::{ok, until};
use serde_json::Value;
use support::allowed;
use support::cluster::{BIN, Cluster};

mod support;

/// Pings sent every 50 ms: the restarts' budget of lost ones is a second.
const INTERVAL: &str = "0.05";
const LOSS_BUDGET: u64 = 20;

#[test]
fn a_restarted_agent_keeps_its_containers_traffic_and_its_endpoints_everywhere() {
    if !allowed("a_restarted_agent_keeps_its_containers_traffic_and_its_endpoints_everywhere") {
        return;
    }
    let c = Cluster::up("ndlr", "10.223.0", &["--hosts", "2", "--containers", "1"]);
    let vni = c.json(1, &["network", "ls"])[0]["vni"].as_u64().unwrap();
    let eps = c.endpoints(2);
    let ep = |name: &str| eps.iter().find(|e| e.0 == name).expect("endpoint listed").clone();
    let (h1c1, h2c1) = (ep("h1c1"), ep("h2c1"));
    let life = |h: usize| {
        let members = c.json(2, &["members"]);
        let m = members.as_array().unwrap().iter().find(|m| m["name"] == format!("h{h}").as_str());
        m.map(|m| (m["incarnation"].as_u64(), m["state"].as_str().map(str::to_string)))
    };
    let before = life(1);

    // h2 watches the network: a withdrawal of h1's endpoints would show.
    let mut watch = Command::new(BIN)
        .args(["--api", &format!("unix:{}/h2.sock", c.dir), "watch", "demo", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run netdb watch");
    let lines = watch.stdout.take().unwrap();
    let watched = std::thread::spawn(move || {
        std::io::BufReader::new(lines).lines().map_while(Result::ok).collect::<Vec<String>>()
    });
    // Both ways across the tunnel, all the time.
    let pinging = Instant::now();
    let pings: Vec<_> = [("h2c1", &h1c1.2), ("h1c1", &h2c1.2)]
        .into_iter()
        .map(|(from, to)| {
            Command::new("ip")
                .args(["netns", "exec", &c.ns(from), "ping", "-n", "-q", "-i", INTERVAL, to])
                .stdout(Stdio::piped())
                .spawn()
                .expect("run ping")
        })
        .collect();
    // Both kernels keep each other's entries throughout.
    let done = AtomicBool::new(false);
    let gaps = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut gaps = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for (h, other) in [(1, &h2c1), (2, &h1c1)] {
                    if !c.fdb(h, vni).iter().any(|(mac, _)| *mac == other.3) {
                        gaps.push(format!("h{h} lacked {}'s FDB entry", other.0));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            gaps
        });
        std::thread::sleep(Duration::from_secs(1));

        // SIGKILL and at once again, as a supervisor does.
        let t = Instant::now();
        c.kill(1);
        c.start(1);
        until("h1 back in the API", Duration::from_secs(10), || {
            c.cli(1, &["health"]).status.success()
        });
        eprintln!("SIGKILLed agent ready again in {:?}", t.elapsed());
        std::thread::sleep(Duration::from_secs(2));

        // SIGTERM (an upgrade's stop: with endpoints, it does not leave),
        // and a start as soon as it exited, as a supervisor told by
        // SIGCHLD does. The agent is not our child: it is reaped by
        // whichever process adopted it, which may take its time (over a
        // second in some sandboxes), so its exit is seen in its state.
        let pid = std::fs::read_to_string(format!("{}/h1.pid", c.dir)).unwrap();
        let t = Instant::now();
        ok("kill", &["-TERM", pid.trim()]);
        let exited = until("h1's agent to exit", Duration::from_secs(10), || exited(pid.trim()));
        c.start(1);
        until("h1 back in the API", Duration::from_secs(10), || {
            c.cli(1, &["health"]).status.success()
        });
        eprintln!("SIGTERMed agent exited within {exited:?}, ready again in {:?}", t.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap()
    });

    // ping sends a little slower than its interval (about 55 ms apart
    // here); one that stopped early would fall far short.
    let ran = pinging.elapsed();
    let interval = Duration::from_secs_f64(INTERVAL.parse().unwrap());
    let at_least = (ran.as_secs_f64() / interval.as_secs_f64() * 0.7) as u64;
    let mut lost = Vec::new();
    for p in pings {
        ok("kill", &["-INT", &p.id().to_string()]);
        let out = p.wait_with_output().unwrap();
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        let count = |what: &str| -> u64 {
            let words: Vec<&str> = summary.split([',', '\n']).map(str::trim).collect();
            words
                .iter()
                .find_map(|w| w.strip_suffix(what)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no '{what}' in ping's summary: {summary}"))
        };
        let (sent, received) = (count("packets transmitted"), count("received"));
        assert!(sent >= at_least, "ping ran all along ({ran:?}, at least {at_least}): {summary}");
        lost.push(sent - received);
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let withdrawn: Vec<Value> = watched
        .join()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["event"] == "delete")
        .collect();
    eprintln!("pings lost across two restarts: {lost:?}; kernel gaps: {gaps:?}");
    assert!(gaps.is_empty(), "the kernels kept every entry: {gaps:?}");
    assert!(withdrawn.is_empty(), "h2 saw no endpoint withdrawn: {withdrawn:?}");
    assert!(lost.iter().all(|&l| l <= LOSS_BUDGET), "lost {lost:?} pings, budget {LOSS_BUDGET}");
    assert_eq!(life(1), before, "the same incarnation, alive, as h2 sees it");
    let resumed = c.logs().matches("resumed=true").count();
    assert_eq!(resumed, 2, "both restarts resumed the saved life");
}

/// Whether process `pid` ended: gone, or a zombie waiting to be reaped.
fn exited(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}
