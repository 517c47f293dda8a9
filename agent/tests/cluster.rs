//! Namespace clusters with the real data plane: hosts and containers are
//! network namespaces built by `scripts/cluster`, agents are real processes,
//! packets cross real VXLAN devices. Needs root; without CAP_NET_ADMIN the
//! tests say so and pass, except under CI (`CI` set), where they fail.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::allowed;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_netdb");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster");

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until `f` holds; returns how long it took.
fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// (name, host, ip, mac) of an endpoint.
type Ep = (String, String, String, String);
/// Kernel entries as (MAC, destination) or (IP, MAC) pairs.
type Pairs = BTreeSet<(String, String)>;

struct Cluster {
    prefix: String,
    dir: String,
    underlay: String,
}

impl Cluster {
    fn up(prefix: &str, underlay: &str, args: &[&str]) -> Cluster {
        let c = Cluster {
            prefix: prefix.into(),
            dir: format!("/tmp/netdb-test-{prefix}-{}", std::process::id()),
            underlay: underlay.into(),
        };
        c.script(&["down"]);
        let o = c.script(&[&["up"], args].concat());
        assert!(o.status.success(), "scripts/cluster up failed: {}", text(&o));
        c
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("NETDB_BIN", BIN)
            .env("NETDB_CLUSTER_PREFIX", &self.prefix)
            .env("NETDB_CLUSTER_DIR", &self.dir)
            .env("NETDB_CLUSTER_UNDERLAY", &self.underlay)
            .env("NETDB_CLUSTER_AGENT_ARGS", "--reconcile-interval 1s --log info,netdb=debug")
            .output()
            .expect("run scripts/cluster")
    }

    fn cli(&self, h: usize, args: &[&str]) -> Output {
        let api = format!("unix:{}/h{h}.sock", self.dir);
        Command::new(BIN).args(["--api", &api]).args(args).output().expect("run netdb")
    }

    fn json(&self, h: usize, args: &[&str]) -> Value {
        let o = self.cli(h, &[args, &["-o", "json"]].concat());
        assert!(o.status.success(), "netdb {args:?} on h{h}: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("JSON output")
    }

    /// The error a command must fail with.
    fn refused(&self, h: usize, args: &[&str]) -> String {
        let o = self.cli(h, args);
        assert!(!o.status.success(), "netdb {args:?} should have failed: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn ping(&self, from: &str, ip: &str) -> bool {
        run("ip", &["netns", "exec", &self.ns(from), "ping", "-c", "1", "-W", "1", ip])
            .status
            .success()
    }

    /// Endpoints as host `h` lists them: (name, host, ip, mac).
    fn endpoints(&self, h: usize) -> Vec<Ep> {
        self.json(h, &["endpoint", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_string();
                (s("name"), s("host"), s("ip"), s("mac"))
            })
            .collect()
    }

    fn underlay_ip(&self, host: &str) -> String {
        // "h3" → 3: the host's number after its one-letter prefix.
        let mut number = host.chars();
        number.next();
        format!("{}.{}", self.underlay, number.as_str())
    }

    /// FDB entries of our VXLAN device in host `h`: (MAC, destination).
    fn fdb(&self, h: usize, vni: u64) -> Pairs {
        let out = run(
            "bridge",
            &["-n", &self.ns(&format!("h{h}")), "fdb", "show", "dev", &format!("ndvx{vni}")],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" self "))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let dst = w.iter().position(|x| *x == "dst")?;
                Some((w[0].to_string(), w.get(dst + 1)?.to_string()))
            })
            .collect()
    }

    /// Permanent neighbor entries of our VXLAN device in host `h`: (IP, MAC).
    fn neigh(&self, h: usize, vni: u64) -> Pairs {
        let out = run(
            "ip",
            &["-n", &self.ns(&format!("h{h}")), "neigh", "show", "dev", &format!("ndvx{vni}")],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("PERMANENT"))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some((w.first()?.to_string(), w.get(2)?.to_string()))
            })
            .collect()
    }

    /// What host `h`'s kernel must hold given `endpoints` (every endpoint
    /// of the cluster): one FDB and one neighbor entry per remote one.
    fn expected(&self, h: usize, endpoints: &[Ep]) -> (Pairs, Pairs) {
        let me = format!("h{h}");
        let remote = endpoints.iter().filter(|e| e.1 != me);
        let fdb = remote.clone().map(|e| (e.3.clone(), self.underlay_ip(&e.1))).collect();
        let neigh = remote.map(|e| (e.2.clone(), e.3.clone())).collect();
        (fdb, neigh)
    }

    fn in_step(&self, h: usize, vni: u64, endpoints: &[Ep]) -> bool {
        let (fdb, neigh) = self.expected(h, endpoints);
        self.fdb(h, vni) == fdb && self.neigh(h, vni) == neigh
    }

    fn kill(&self, h: usize) {
        let pid = std::fs::read_to_string(format!("{}/h{h}.pid", self.dir)).unwrap();
        ok("kill", &["-9", pid.trim()]);
        std::thread::sleep(Duration::from_millis(200));
    }

    fn start(&self, h: usize) {
        let o = self.script(&["start-agent", &h.to_string()]);
        assert!(o.status.success(), "start-agent: {}", text(&o));
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for h in 1..=3 {
            let log = std::fs::read_to_string(format!("{}/h{h}.log", self.dir)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s += &format!("--- h{h}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.script(&["down"]);
    }
}

fn all_endpoints_everywhere(c: &Cluster, n: usize) -> Vec<Ep> {
    until(&format!("every host to list {n} endpoints"), Duration::from_secs(20), || {
        (1..=3).all(|h| c.endpoints(h).len() == n)
    });
    c.endpoints(1)
}

#[test]
fn three_hosts_ping_across_vxlan_and_the_kernel_follows_the_tables() {
    if !allowed("three_hosts_ping_across_vxlan_and_the_kernel_follows_the_tables") {
        return;
    }
    let c = Cluster::up("ndt1", "10.201.0", &["--hosts", "3", "--containers", "2"]);
    let vni = c.json(1, &["network", "ls"])[0]["vni"].as_u64().unwrap();
    assert_eq!(vni, 4096, "the first network gets Docker's first VNI");

    // Three more endpoints attached at once on every host: no address is
    // handed out twice.
    let extra: Vec<_> = (1..=3)
        .map(|h| {
            let name = format!("h{h}c3");
            ok("ip", &["netns", "add", &c.ns(&name)]);
            let api = format!("unix:{}/h{h}.sock", c.dir);
            let netns = format!("/run/netns/{}", c.ns(&name));
            Command::new(BIN)
                .args([
                    "--api", &api, "endpoint", "attach", "demo", &name, "--netns", &netns, "-o",
                    "json",
                ])
                .args(["--alias", &format!("{name}.svc"), "--service", "web"])
                .output()
                .unwrap()
        })
        .collect();
    for o in &extra {
        assert!(o.status.success(), "attach: {}", text(o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v["ip"].as_str().unwrap().starts_with("10.10.0.")
                && v["mac"].as_str().unwrap().starts_with("02:42:")
        );
    }
    let eps = all_endpoints_everywhere(&c, 9);
    let ips: BTreeSet<&str> = eps.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(ips.len(), 9, "duplicate addresses: {eps:?}");

    // Names are the network's, not the host's: h3 cannot take h1's
    // endpoint name, nor h2 another host's alias.
    ok("ip", &["netns", "add", &c.ns("h3x")]);
    let netns = format!("/run/netns/{}", c.ns("h3x"));
    let err = c.refused(3, &["endpoint", "attach", "demo", "h1c1", "--netns", &netns]);
    assert!(
        err.contains(
            "name h1c1 is taken on network demo by endpoint h1c1 on host h1; \
             pick another name or detach it there"
        ),
        "{err}"
    );
    let err = c.refused(
        2,
        &["endpoint", "attach", "demo", "h2x", "--netns", &netns, "--alias", "h3c3.svc"],
    );
    assert!(
        err.contains(
            "name h3c3.svc is taken on network demo by endpoint h3c3 (as an alias) on host h3"
        ),
        "{err}"
    );
    assert!(!ok("ip", &["-n", &c.ns("h3x"), "link", "show"]).contains("eth0"));
    assert_eq!(c.endpoints(1).len(), 9, "a refused attach published nothing");

    // Every container pings every other, by IP, across hosts.
    for from in &eps {
        for to in eps.iter().filter(|e| e.0 != from.0) {
            assert!(c.ping(&from.0, &to.2), "{} cannot ping {} ({})", from.0, to.0, to.2);
        }
    }
    for h in 1..=3 {
        until(&format!("h{h}'s kernel in step"), Duration::from_secs(10), || {
            c.in_step(h, vni, &eps)
        });
    }

    // Detach: gone from every other host's FDB and neighbor table, and from
    // the container.
    let gone = eps.iter().find(|e| e.0 == "h2c2").unwrap().clone();
    ok(BIN, &["--api", &format!("unix:{}/h2.sock", c.dir), "endpoint", "detach", "demo", "h2c2"]);
    let eps: Vec<_> = eps.into_iter().filter(|e| e.0 != "h2c2").collect();
    for h in [1, 3] {
        until(&format!("h{h} to drop h2c2"), Duration::from_secs(10), || c.in_step(h, vni, &eps));
        assert!(!c.fdb(h, vni).iter().any(|(mac, _)| *mac == gone.3));
    }
    assert!(!ok("ip", &["-n", &c.ns("h2c2"), "link", "show"]).contains("eth0"));

    // A hand-deleted FDB entry and a stray one: repaired within the
    // reconcile period (1 s here).
    let victim = eps.iter().find(|e| e.1 == "h2").unwrap();
    let h1 = c.ns("h1");
    let dev = format!("ndvx{vni}");
    ok(
        "bridge",
        &["-n", &h1, "fdb", "del", &victim.3, "dev", &dev, "dst", &c.underlay_ip("h2"), "self"],
    );
    ok(
        "bridge",
        &[
            "-n",
            &h1,
            "fdb",
            "add",
            "02:42:0a:0a:00:fe",
            "dev",
            &dev,
            "dst",
            "10.201.0.9",
            "self",
            "permanent",
        ],
    );
    ok("ip", &["-n", &h1, "neigh", "del", &victim.2, "dev", &dev]);
    let took = until("h1's hand edits undone", Duration::from_secs(10), || c.in_step(1, vni, &eps));
    eprintln!("hand edits repaired in {took:?}");

    // A killed agent: its endpoints leave the other kernels, and come back
    // when it returns (republished from its data dir).
    c.kill(3);
    let without3: Vec<_> = eps.iter().filter(|e| e.1 != "h3").cloned().collect();
    let took = until("h3's endpoints removed from h1 and h2", Duration::from_secs(30), || {
        c.in_step(1, vni, &without3) && c.in_step(2, vni, &without3)
    });
    eprintln!("killed host's endpoints removed in {took:?}");
    // Its containers' kernel state outlives the agent.
    assert!(ok("ip", &["-n", &c.ns("h3c1"), "addr", "show", "eth0"]).contains("inet 10.10.0."));
    c.start(3);
    let took = until("h3's endpoints back everywhere", Duration::from_secs(30), || {
        (1..=3).all(|h| c.in_step(h, vni, &eps))
    });
    eprintln!("restarted host's endpoints back in {took:?}");
    let h3c1 = eps.iter().find(|e| e.0 == "h3c1").unwrap();
    assert!(c.ping("h1c1", &h3c1.2), "h1c1 cannot reach h3c1 after h3's restart");
    assert!(c.ping("h3c2", &eps.iter().find(|e| e.0 == "h1c2").unwrap().2));
    // The restarted agent lists exactly the same endpoints: none lost, none
    // duplicated.
    let mut after = c.endpoints(3);
    after.sort();
    let mut before = eps.clone();
    before.sort();
    assert_eq!(after, before);

    // The network cannot go while endpoints exist.
    let err = c.refused(1, &["network", "rm", "demo"]);
    assert!(err.contains("still has endpoints"), "{err}");
}

#[test]
fn bad_attaches_are_refused_cleanly_and_partition_conflicts_are_reported() {
    if !allowed("bad_attaches_are_refused_cleanly_and_partition_conflicts_are_reported") {
        return;
    }
    let c = Cluster::up(
        "ndt2",
        "10.202.0",
        &["--hosts", "2", "--containers", "1", "--subnet", "10.30.0.0/24"],
    );
    for n in ["x1", "x2", "x3"] {
        ok("ip", &["netns", "add", &c.ns(n)]);
    }
    let netns = |n: &str| format!("/run/netns/{}", c.ns(n));
    let links = |h: &str| ok("ip", &["-n", &c.ns(h), "link", "show"]);
    let before = links("h1");
    let attach = |extra: &[&str]| c.refused(1, &[&["endpoint", "attach"], extra].concat());

    let err = attach(&["nosuch", "x1", "--netns", &netns("x1")]);
    assert!(err.contains("no network nosuch"), "{err}");
    let err = attach(&["demo", "x1", "--netns", "/run/netns/ndt2-missing"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = attach(&["demo", "h1c1", "--netns", &netns("x1")]);
    assert!(err.contains("already exists"), "{err}");
    let err = attach(&["demo", "x1", "--netns", &netns("x1"), "--ip", "10.31.0.5"]);
    assert!(err.contains("outside") && err.contains("10.30.0.0/24"), "{err}");
    let err = attach(&["demo", "x1", "--netns", &netns("x1"), "--ip", "10.30.0.1"]);
    assert!(err.contains("reserved"), "{err}");
    let used = c.endpoints(1)[0].2.clone();
    let err = attach(&["demo", "x1", "--netns", &netns("x1"), "--ip", &used]);
    assert!(err.contains("already used"), "{err}");
    // eth0 exists in h1c1 already: the kernel refuses, nothing is left.
    let err = attach(&["demo", "x1", "--netns", &netns("h1c1")]);
    assert!(err.contains("eth0") && err.contains("--ifname"), "{err}");

    // A full subnet: a /30 has a single usable address.
    ok(
        BIN,
        &[
            "--api",
            &format!("unix:{}/h1.sock", c.dir),
            "network",
            "create",
            "tiny",
            "--subnet",
            "10.40.0.0/30",
        ],
    );
    let one = c.json(1, &["endpoint", "attach", "tiny", "x2", "--netns", &netns("x2")]);
    assert_eq!(one["ip"], "10.40.0.2");
    let err = attach(&["tiny", "x3", "--netns", &netns("x3")]);
    assert!(err.contains("no free address"), "{err}");

    // Nothing half-made: no stray veth on the host, no eth0 in the
    // refused namespaces, the endpoint list unchanged.
    let after = links("h1");
    let ndve = |s: &str| s.lines().filter(|l| l.contains(": ndve")).count();
    assert_eq!(ndve(&after), ndve(&before) + 1, "{after}");
    assert!(!after.contains("ndvp"), "a temporary veth end was left: {after}");
    for n in ["x1", "x3"] {
        assert!(!links(n).contains("eth0"), "{n} has an eth0");
    }
    let want: BTreeSet<String> = ["h1c1", "h2c1", "x2"].map(String::from).into();
    until("h1 to list exactly h1c1, h2c1 and x2", Duration::from_secs(10), || {
        c.endpoints(1).into_iter().map(|e| e.0).collect::<BTreeSet<String>>() == want
    });

    until("h2 to see h1 on tiny", Duration::from_secs(10), || {
        let nets = c.json(2, &["network", "ls"]);
        nets.as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "tiny" && n["peers"] == serde_json::json!(["h1"]))
    });
    let err = c.refused(2, &["network", "rm", "tiny"]);
    assert!(err.contains("still has endpoints on h1"), "{err}");
    ok(BIN, &["--api", &format!("unix:{}/h1.sock", c.dir), "endpoint", "detach", "tiny", "x2"]);
    // h2 learns of the detach by gossip; until then it still refuses.
    until("rm tiny accepted on h2 once the detach spread", Duration::from_secs(10), || {
        c.cli(2, &["network", "rm", "tiny"]).status.success()
    });
    until("tiny gone everywhere", Duration::from_secs(10), || {
        (1..=2).all(|h| {
            c.json(h, &["network", "ls"]).as_array().unwrap().iter().all(|n| n["name"] != "tiny")
        })
    });

    // Two networks created at once on two hosts: every host ends with the
    // same VNI for each, and no VNI twice.
    let creates: Vec<_> = [(1, "red", "10.50.0.0/24"), (2, "green", "10.51.0.0/24")]
        .into_iter()
        .map(|(h, name, subnet)| {
            let api = format!("unix:{}/h{h}.sock", c.dir);
            Command::new(BIN)
                .args(["--api", &api, "network", "create", name, "--subnet", subnet])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in creates {
        assert!(p.wait().unwrap().success());
    }
    let vnis = |h: usize| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = c
            .json(h, &["network", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["name"].as_str().unwrap().to_string(), n["vni"].as_u64().unwrap()))
            .collect();
        v.sort();
        v
    };
    until("both hosts agree on red's and green's VNIs", Duration::from_secs(10), || {
        let v = vnis(1);
        v.len() == 3 && v == vnis(2)
    });
    let v: BTreeSet<u64> = vnis(1).into_iter().map(|(_, vni)| vni).collect();
    assert_eq!(v.len(), 3, "a VNI granted twice: {:?}", vnis(1));

    // A partition: both sides hand out the same address. At heal, the
    // conflict is reported on both hosts (log, counter, network ls, watch).
    let conflicts = |h: usize| c.json(h, &["stats"])["conflicts_detected"].as_u64().unwrap();
    let conflicts_before = [conflicts(1), conflicts(2)];
    ok("ip", &["-n", &c.ns("h2"), "link", "set", "eth0", "down"]);
    until("h1 to see h2 failed", Duration::from_secs(20), || {
        c.json(1, &["members"])
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "h2" && m["state"] != "alive")
    });
    ok("ip", &["netns", "add", &c.ns("y2")]);
    let watch_log = format!("{}/watch.out", c.dir);
    let mut watcher = Command::new(BIN)
        .args(["--api", &format!("unix:{}/h1.sock", c.dir), "watch", "demo"])
        .stdout(std::fs::File::create(&watch_log).unwrap())
        .spawn()
        .unwrap();
    c.json(
        1,
        &["endpoint", "attach", "demo", "y1", "--netns", &netns("x1"), "--ip", "10.30.0.200"],
    );
    c.json(
        2,
        &["endpoint", "attach", "demo", "y2", "--netns", &netns("y2"), "--ip", "10.30.0.200"],
    );
    ok("ip", &["-n", &c.ns("h2"), "link", "set", "eth0", "up"]);
    let listed = |h: usize| {
        let nets = c.json(h, &["network", "ls"]);
        nets.as_array().unwrap().iter().find(|n| n["name"] == "demo").unwrap()["conflicts"]
            .to_string()
    };
    until("the address conflict listed on both hosts", Duration::from_secs(30), || {
        listed(1).contains("10.30.0.200") && listed(2).contains("10.30.0.200")
    });
    for h in [1, 2] {
        assert!(conflicts(h) > conflicts_before[h - 1], "h{h}'s conflicts_detected did not grow");
    }
    let log = std::fs::read_to_string(format!("{}/h2.log", c.dir)).unwrap();
    assert!(
        log.contains("conflict detected") && log.contains("10.30.0.200"),
        "no conflict in the log"
    );
    until("the conflict on h1's watch stream", Duration::from_secs(5), || {
        std::fs::read_to_string(&watch_log)
            .unwrap_or_default()
            .contains("CONFLICT address 10.30.0.200")
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// An agent that may manage devices but not enter namespaces says at start
/// that attaches will fail, and why; a full root agent does not.
#[test]
fn an_agent_without_cap_sys_admin_warns_that_attach_fails() {
    if !allowed("an_agent_without_cap_sys_admin_warns_that_attach_fails") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("netdb-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let start = |tag: &str, wrap: &[&str]| {
        let log = dir.join(format!("{tag}.log"));
        let api = format!("unix:{}/{tag}.sock", dir.display());
        let data = dir.join(tag);
        let bind = if tag == "limited" { "127.0.69.1:7946" } else { "127.0.69.2:7946" };
        let mut args: Vec<&str> = wrap.to_vec();
        args.push(BIN);
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .args(["--api", &api, "agent", "--name", tag, "--bind", bind])
            .arg("--data-dir")
            .arg(&data)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = || {
            Command::new(BIN)
                .args(["--api", &api, "health", "--live"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while !ready() {
            assert!(Instant::now() < deadline, "agent {tag} did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    let limited = start("limited", &["setpriv", "--bounding-set", "-sys_admin", "--"]);
    assert!(
        limited.contains("no CAP_SYS_ADMIN") && limited.contains("setns"),
        "the warning names the missing capability and why: {limited}"
    );
    let full = start("full", &["env"]);
    assert!(!full.contains("no CAP_SYS_ADMIN"), "a root agent does not warn: {full}");
    let _ = std::fs::remove_dir_all(&dir);
}
