//! The namespace-cluster harness: a [`Cluster`] of network namespaces
//! built by `scripts/cluster`, with real `netdb agent` processes (the
//! binary its owner names: the agent's tests pass theirs, the chaos runner
//! a release build), owned by one test or run and removed on drop; the
//! small process helpers. A test harness: a step that fails panics with
//! what it ran and what it printed, and the drop still cleans up.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
/// `scripts/cluster`, which builds and removes the namespaces.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster");

/// A command's standard output and error, for a failure message.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `cmd` with `args` to completion (panics if it cannot start).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until `f` holds; returns how long it took.
pub fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// (name, host, ip, mac) of an endpoint.
pub type Ep = (String, String, String, String);
/// Kernel entries as (MAC, destination) or (IP, MAC) pairs.
pub type Pairs = BTreeSet<(String, String)>;

/// Every test's agents get these flags; a test may add its own.
pub const AGENT_ARGS: &str = "--reconcile-interval 1s --log info,netdb=debug";

/// Hosts (and their containers) as network namespaces named
/// `PREFIX-h1`, `PREFIX-h1c1`, ... behind a switch namespace `PREFIX-sw`.
pub struct Cluster {
    /// Namespace prefix.
    pub prefix: String,
    /// Sockets, pidfiles, logs and data dirs of the agents.
    pub dir: String,
    /// The `netdb` binary the agents and the CLI run.
    pub bin: PathBuf,
    underlay: String,
    agent_args: String,
}

impl Cluster {
    /// Builds a cluster with `scripts/cluster up ARGS` (`--hosts`,
    /// `--containers`, ...), its agents running `bin`, underlay
    /// `UNDERLAY.0/24`; what an earlier run with `prefix` left is removed
    /// first.
    pub fn up(bin: &Path, prefix: &str, underlay: &str, args: &[&str]) -> Cluster {
        Cluster::up_with(bin, prefix, underlay, args, &[])
    }

    /// A cluster whose agents (restarts included) also get `agent_args`.
    pub fn up_with(
        bin: &Path,
        prefix: &str,
        underlay: &str,
        args: &[&str],
        agent_args: &[&str],
    ) -> Cluster {
        let c = Cluster::clean_slate(bin, prefix, underlay, agent_args);
        let o = c.script(&[&["up"], args].concat());
        assert!(o.status.success(), "scripts/cluster up failed: {}", text(&o));
        c
    }

    /// This process's cluster `prefix`, nothing built yet: what an earlier
    /// run with `prefix` left is removed first (its agents, directory,
    /// namespaces and resolver files).
    pub(crate) fn clean_slate(
        bin: &Path,
        prefix: &str,
        underlay: &str,
        agent_args: &[&str],
    ) -> Cluster {
        // Before a Cluster exists, whose drop would tear the namespaces
        // down: the same test run twice at once (two worktrees, say) shares
        // the names, and each run's clean slate would delete the other's
        // hosts under it, failing it in ways that look like a bug of the
        // agent (a host's underlay gone in the middle of a test).
        if let Some((dir, _)) = run_dirs(prefix).find(|(_, live)| *live) {
            panic!(
                "another test process runs the namespaces {prefix}-* ({}): one run of a \
                 namespace test at a time per machine; wait for it, or kill it",
                dir.display()
            );
        }
        let c = Cluster {
            prefix: prefix.into(),
            dir: run_dir(prefix),
            bin: bin.to_path_buf(),
            underlay: underlay.into(),
            agent_args: [&[AGENT_ARGS], agent_args].concat().join(" "),
        };
        sweep_stale_runs(prefix);
        c.script(&["down"]);
        sweep_resolver_dirs(prefix);
        c
    }

    /// Builds what `scripts/cluster up` builds before it starts agents:
    /// the switch namespace and its bridge, hosts 1..=`hosts` on it with
    /// their underlay addresses and static neighbour entries (see the
    /// script), and the run directory. For harnesses that start the agents
    /// their own way; [`Cluster::script`]`(["down"])`, or the drop, removes
    /// it all.
    pub(crate) fn build_namespaces(&self, hosts: usize) {
        assert!((1..=200).contains(&hosts), "1 to 200 hosts, not {hosts}");
        std::fs::create_dir_all(&self.dir).unwrap_or_else(|e| panic!("{}: {e}", self.dir));
        ok("chmod", &["700", &self.dir]);
        let sw = self.ns("sw");
        ok("ip", &["netns", "add", &sw]);
        ok("ip", &["-n", &sw, "link", "set", "lo", "up"]);
        ok("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ok("ip", &["-n", &sw, "link", "set", "br0", "up"]);
        let mut macs = Vec::new();
        for h in 1..=hosts {
            let (ns, port) = (self.ns(&format!("h{h}")), format!("h{h}"));
            let addr = format!("{}.{h}/24", self.underlay);
            ok("ip", &["netns", "add", &ns]);
            ok("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            ok("ip", &["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0"]);
            ok("ip", &["-n", &sw, "link", "set", "eth0", "netns", &ns]);
            ok("ip", &["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ok("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ok("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            let link = ok("ip", &["-n", &ns, "-o", "link", "show", "eth0"]);
            let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1);
            macs.push(mac.expect("eth0 has a MAC").to_string());
        }
        for h in 1..=hosts {
            for o in (1..=hosts).filter(|&o| o != h) {
                let (ns, ip) = (self.ns(&format!("h{h}")), format!("{}.{o}", self.underlay));
                let mac = &macs[o - 1];
                let neigh =
                    ["neigh", "replace", &ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"];
                ok("ip", &[&["-n", ns.as_str()], &neigh[..]].concat());
            }
        }
    }

    /// The flags every agent of this cluster gets, as one string.
    pub(crate) fn agent_args(&self) -> &str {
        &self.agent_args
    }

    /// Runs `scripts/cluster ARGS` on this cluster.
    pub fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("NETDB_BIN", &self.bin)
            .env("NETDB_CLUSTER_PREFIX", &self.prefix)
            .env("NETDB_CLUSTER_DIR", &self.dir)
            .env("NETDB_CLUSTER_UNDERLAY", &self.underlay)
            .env("NETDB_CLUSTER_AGENT_ARGS", &self.agent_args)
            .output()
            .expect("run scripts/cluster")
    }

    /// Runs the CLI against host `h`'s agent.
    pub fn cli(&self, h: usize, args: &[&str]) -> Output {
        let api = format!("unix:{}/h{h}.sock", self.dir);
        Command::new(&self.bin).args(["--api", &api]).args(args).output().expect("run netdb")
    }

    /// Runs the CLI with `-o json` against host `h`, which must succeed;
    /// what it printed.
    pub fn json(&self, h: usize, args: &[&str]) -> Value {
        let o = self.cli(h, &[args, &["-o", "json"]].concat());
        assert!(o.status.success(), "netdb {args:?} on h{h}: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("JSON output")
    }

    /// The error a command must fail with.
    pub fn refused(&self, h: usize, args: &[&str]) -> String {
        let o = self.cli(h, args);
        assert!(!o.status.success(), "netdb {args:?} should have failed: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The namespace of host or container `name` (`h1`, `h1c1`, `sw`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Whether one ping from container `from` to `ip` is answered within
    /// a second.
    pub fn ping(&self, from: &str, ip: &str) -> bool {
        run("ip", &["netns", "exec", &self.ns(from), "ping", "-c", "1", "-W", "1", ip])
            .status
            .success()
    }

    /// Endpoints as host `h` lists them: (name, host, ip, mac).
    pub fn endpoints(&self, h: usize) -> Vec<Ep> {
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

    /// The underlay address of host `host` (`h3`).
    pub fn underlay_ip(&self, host: &str) -> String {
        // "h3" → 3: the host's number after its one-letter prefix.
        let mut number = host.chars();
        number.next();
        format!("{}.{}", self.underlay, number.as_str())
    }

    /// The overlay namespace of host `h`'s agent (`--overlay-netns`, as
    /// `scripts/cluster` names it): its bridges, VXLAN devices and
    /// endpoints' host-side veths.
    pub fn ov(&self, h: usize) -> String {
        self.ns(&format!("h{h}ov"))
    }

    /// FDB entries of our VXLAN device in host `h`: (MAC, destination).
    pub fn fdb(&self, h: usize, vni: u64) -> Pairs {
        let out = run("bridge", &["-n", &self.ov(h), "fdb", "show", "dev", &format!("ndvx{vni}")]);
        fdb_pairs(&String::from_utf8_lossy(&out.stdout))
    }

    /// Permanent neighbor entries of our VXLAN device in host `h`: (IP, MAC).
    pub fn neigh(&self, h: usize, vni: u64) -> Pairs {
        let out = run("ip", &["-n", &self.ov(h), "neigh", "show", "dev", &format!("ndvx{vni}")]);
        neigh_pairs(&String::from_utf8_lossy(&out.stdout))
    }

    /// What host `h`'s kernel must hold given `endpoints` (every endpoint
    /// of the cluster): one FDB and one neighbor entry per remote one.
    pub fn expected(&self, h: usize, endpoints: &[Ep]) -> (Pairs, Pairs) {
        let me = format!("h{h}");
        let remote = endpoints.iter().filter(|e| e.1 != me);
        let fdb = remote.clone().map(|e| (e.3.clone(), self.underlay_ip(&e.1))).collect();
        let neigh = remote.map(|e| (e.2.clone(), e.3.clone())).collect();
        (fdb, neigh)
    }

    /// Whether host `h`'s kernel holds exactly what `endpoints` imply.
    pub fn in_step(&self, h: usize, vni: u64, endpoints: &[Ep]) -> bool {
        let (fdb, neigh) = self.expected(h, endpoints);
        self.fdb(h, vni) == fdb && self.neigh(h, vni) == neigh
    }

    /// Cuts host `h` off the underlay (a partition), or puts it back.
    pub fn underlay_link(&self, h: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ok("ip", &["-n", &self.ns(&format!("h{h}")), "link", "set", "eth0", state]);
    }

    /// Adds the container namespace `name` and attaches it on host `h`;
    /// its address.
    pub fn attach(&self, h: usize, network: &str, name: &str, extra: &[&str]) -> String {
        ok("ip", &["netns", "add", &self.ns(name)]);
        let netns = format!("/run/netns/{}", self.ns(name));
        let args = [&["endpoint", "attach", network, name, "--netns", &netns], extra].concat();
        self.json(h, &args)["ip"].as_str().expect("attach lists the address").to_string()
    }

    /// The resolver configuration `ip netns exec` gives a container.
    pub fn resolv_conf(&self, container: &str) -> PathBuf {
        format!("/etc/netns/{}/resolv.conf", self.ns(container)).into()
    }

    /// `getent DB KEY` in a container: the first two columns of each line,
    /// or `None` when the key is not found.
    pub fn getent(&self, container: &str, db: &str, key: &str) -> Option<Vec<(String, String)>> {
        let o = run("ip", &["netns", "exec", &self.ns(container), "getent", db, key]);
        match o.status.code() {
            Some(0) => Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        let mut w = l.split_whitespace().map(String::from);
                        Some((w.next()?, w.next().unwrap_or_default()))
                    })
                    .collect(),
            ),
            Some(2) => None,
            _ => panic!("getent {db} {key} in {container}: {}", text(&o)),
        }
    }

    /// The addresses a container's resolver gives for `name`, in order.
    pub fn resolve(&self, container: &str, name: &str) -> Option<Vec<String>> {
        Some(self.getent(container, "hosts", name)?.into_iter().map(|(ip, _)| ip).collect())
    }

    /// Every IPv4 address of `name` (getaddrinfo), once each.
    pub fn resolve_all(&self, container: &str, name: &str) -> Option<BTreeSet<String>> {
        Some(self.getent(container, "ahostsv4", name)?.into_iter().map(|(ip, _)| ip).collect())
    }

    /// The name a container's resolver gives for an address (PTR).
    pub fn name_of(&self, container: &str, ip: &str) -> Option<String> {
        self.getent(container, "hosts", ip)?.into_iter().next().map(|(_, name)| name)
    }

    /// Starts the stand-in upstream resolver in host `h`'s namespace, on
    /// 127.0.0.1:5300; it stops when dropped.
    pub fn stub_resolver(&self, h: usize) -> Background {
        let log = format!("{}/stub-h{h}.log", self.dir);
        let ns = self.ns(&format!("h{h}"));
        let mut stub = Background::python(&ns, STUB_RESOLVER, &["5300", &log]);
        until(&format!("the stub resolver in h{h} to listen"), Duration::from_secs(10), || {
            if let Some(status) = stub.0.try_wait().unwrap() {
                panic!("the stub resolver exited: {status}");
            }
            self.forwarded(h).is_some()
        });
        stub
    }

    /// A stub resolver on each of hosts 1..=`hosts`.
    pub fn stub_resolvers(&self, hosts: usize) -> Vec<Background> {
        (1..=hosts).map(|h| self.stub_resolver(h)).collect()
    }

    /// The names the stub resolver of host `h` was asked, once it listens.
    pub fn forwarded(&self, h: usize) -> Option<Vec<String>> {
        let log = std::fs::read_to_string(format!("{}/stub-h{h}.log", self.dir)).ok()?;
        let mut lines = log.lines().map(String::from);
        lines.next().filter(|l| l == "ready")?;
        Some(lines.collect())
    }

    fn agent_pid(&self, h: usize) -> String {
        let pidfile = format!("{}/h{h}.pid", self.dir);
        std::fs::read_to_string(&pidfile).unwrap_or_else(|e| panic!("{pidfile}: {e}")).trim().into()
    }

    /// Pauses host `h`'s agent (SIGSTOP), as a host stalled under load:
    /// its process and sockets stay, it answers nothing. Healed by
    /// [`Cluster::resume`].
    pub fn pause(&self, h: usize) {
        ok("kill", &["-STOP", &self.agent_pid(h)]);
    }

    /// Resumes host `h`'s paused agent (SIGCONT).
    pub fn resume(&self, h: usize) {
        ok("kill", &["-CONT", &self.agent_pid(h)]);
    }

    // Frame-dropping faults live in one place, the switch namespace, as
    // `bridge` family nftables tables named `netdb_chaos*` on its forward
    // hook: the host namespaces, where the agent keeps its own nftables
    // (SNAT, published ports), stay untouched; one rule per pair of groups
    // cuts both directions; the hosts' links stay up, so to them it looks
    // like a real partition (frames vanish, no carrier loss, unlike
    // `underlay_link`); and a heal is one table deleted. The switch's ports
    // are named after their hosts: `h1`, `h2`, ...

    /// Runs an nftables script in the switch namespace.
    fn switch_nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns("sw"), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().unwrap().write_all(script.as_bytes()).expect("write to nft");
        let o = child.wait_with_output().expect("wait for nft");
        assert!(o.status.success(), "nft -f - in the switch: {}\n{script}", text(&o));
    }

    /// Removes the switch's table `name` if it is there (adding an empty
    /// table is a no-op when it exists).
    fn drop_table(&self, name: &str) {
        self.switch_nft(&format!("table bridge {name}\ndelete table bridge {name}\n"));
    }

    /// Splits the hosts into `groups`: the switch drops every frame between
    /// hosts of different groups (a host in no group still reaches all).
    /// Replaces an earlier partition; healed by [`Cluster::heal`].
    pub fn partition(&self, groups: &[&[usize]]) {
        self.heal();
        let ports =
            |g: &[usize]| g.iter().map(|h| format!("\"h{h}\"")).collect::<Vec<_>>().join(", ");
        let mut rules = String::new();
        for (i, from) in groups.iter().enumerate() {
            for (j, to) in groups.iter().enumerate() {
                if i != j && !from.is_empty() && !to.is_empty() {
                    rules += &format!(
                        "        iifname {{ {} }} oifname {{ {} }} drop\n",
                        ports(from),
                        ports(to)
                    );
                }
            }
        }
        self.switch_nft(&format!(
            "table bridge netdb_chaos {{\n    chain filter {{\n        \
             type filter hook forward priority 0; policy accept;\n{rules}    }}\n}}\n"
        ));
    }

    /// Ends the partition.
    pub fn heal(&self) {
        self.drop_table("netdb_chaos");
    }

    /// Drops `percent` of the frames host `h` receives on its underlay
    /// (`numgen random`, at the switch port towards it); 0 ends it.
    pub fn loss(&self, h: usize, percent: u32) {
        assert!(percent <= 100, "loss of {percent}%");
        let table = format!("netdb_chaos_loss_h{h}");
        self.drop_table(&table);
        if percent > 0 {
            self.switch_nft(&format!(
                "table bridge {table} {{\n    chain filter {{\n        \
                 type filter hook forward priority 0; policy accept;\n        \
                 oifname \"h{h}\" numgen random mod 100 < {percent} drop\n    }}\n}}\n"
            ));
        }
    }

    /// Ends every fault: every chaos table of the switch removed, every
    /// paused agent resumed (SIGCONT does nothing to a running one).
    pub fn clear_faults(&self) {
        let o = run("ip", &["netns", "exec", &self.ns("sw"), "nft", "list", "tables", "bridge"]);
        assert!(o.status.success(), "nft list tables: {}", text(&o));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(name) = line.strip_prefix("table bridge ")
                && name.starts_with("netdb_chaos")
            {
                self.drop_table(name);
            }
        }
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid")
                && let Ok(pid) = std::fs::read_to_string(&path)
            {
                run("kill", &["-CONT", pid.trim()]);
            }
        }
    }

    /// SIGKILLs host `h`'s agent; [`Cluster::start`] starts it again.
    pub fn kill(&self, h: usize) {
        ok("kill", &["-9", &self.agent_pid(h)]);
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Starts host `h`'s agent again, with its data dir.
    pub fn start(&self, h: usize) {
        let o = self.script(&["start-agent", &h.to_string()]);
        assert!(o.status.success(), "start-agent: {}", text(&o));
    }

    /// The last lines of every agent's log.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for h in (1..).take_while(|h| Path::new(&format!("{}/h{h}.log", self.dir)).exists()) {
            let log = std::fs::read_to_string(format!("{}/h{h}.log", self.dir)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s += &format!("--- h{h}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        s
    }
}

/// The directory of this process's run with `prefix`:
/// `/tmp/netdb-test-PREFIX-PID`.
pub(crate) fn run_dir(prefix: &str) -> String {
    format!("/tmp/netdb-test-{prefix}-{}", std::process::id())
}

/// The directories earlier runs with `prefix` left whose test process is
/// gone (or is this one: the pid was reused).
pub(crate) fn stale_run_dirs(prefix: &str) -> Vec<PathBuf> {
    run_dirs(prefix).filter(|(_, live)| !live).map(|(dir, _)| dir).collect()
}

/// The run directories of `prefix`, each with whether its test process is
/// another one still running.
fn run_dirs(prefix: &str) -> impl Iterator<Item = (PathBuf, bool)> {
    let stem = format!("netdb-test-{prefix}-");
    let me = std::process::id();
    std::fs::read_dir("/tmp").into_iter().flatten().flatten().filter_map(move |entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(&stem)?.parse::<u32>().ok()?;
        Some((entry.path(), pid != me && Path::new(&format!("/proc/{pid}")).exists()))
    })
}

/// Kills the agents a crashed earlier run with `prefix` left, and removes
/// its directory: each run keeps its pidfiles in
/// `/tmp/netdb-test-PREFIX-PID`, PID the test process's; a directory whose
/// test process is gone (or is this one: the pid was reused) is stale.
/// `scripts/cluster down` then removes the namespaces.
fn sweep_stale_runs(prefix: &str) {
    for dir in stale_run_dirs(prefix) {
        for file in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "pid") {
                continue;
            }
            let Ok(agent) = std::fs::read_to_string(&path) else { continue };
            let agent = agent.trim();
            // Only a netdb process: the pid may have been reused since.
            let comm = std::fs::read_to_string(format!("/proc/{agent}/comm")).unwrap_or_default();
            if comm.trim() == "netdb" {
                run("kill", &["-9", agent]);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The tunnel entries (MAC, destination) in `bridge fdb show`'s output.
pub fn fdb_pairs(text: &str) -> Pairs {
    text.lines()
        .filter(|l| l.contains(" self "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let dst = w.iter().position(|x| *x == "dst")?;
            Some((w[0].to_string(), w.get(dst + 1)?.to_string()))
        })
        .collect()
}

/// The permanent entries (IP, MAC) in `ip neigh show`'s output.
pub fn neigh_pairs(text: &str) -> Pairs {
    text.lines()
        .filter(|l| l.contains("PERMANENT"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.first()?.to_string(), w.get(2)?.to_string()))
        })
        .collect()
}

/// Removes `/etc/netns/PREFIX-*`, the containers' resolver configuration
/// (`ip netns exec` mounts it) a crashed run left behind.
fn sweep_resolver_dirs(prefix: &str) {
    let stem = format!("{prefix}-");
    for entry in std::fs::read_dir("/etc/netns").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&stem) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Said, not panicked on (a drop may run while panicking): what a
        // failed teardown leaves (namespaces) fails the next run's setup.
        let o = self.script(&["down"]);
        if !o.status.success() {
            eprintln!(
                "scripts/cluster down failed for {}: {}{}",
                self.prefix,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// A stand-in upstream resolver (UDP, `python3 -c CODE PORT LOG`): A
/// 192.0.2.53 for `upstream.example`, an empty NOERROR for its other types,
/// NXDOMAIN for anything else. It logs "ready" once bound, then each name
/// it is asked.
pub const STUB_RESOLVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
log = open(sys.argv[2], "a", buffering=1)
log.write("ready\n")
while True:
    q, peer = s.recvfrom(4096)
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1 : i + 1 + q[i]].decode(errors="replace"))
        i += 1 + q[i]
    if len(q) < i + 5:
        continue
    name = ".".join(labels).lower()
    log.write(name + "\n")
    hit, a = name == "upstream.example", b""
    if hit and q[i + 1 : i + 3] == b"\0\1":
        a = b"\xc0\x0c\0\1\0\1\0\0\0\x3c\0\4" + bytes([192, 0, 2, 53])
    head = struct.pack(">HHHHH", 0x8180 | (0 if hit else 3), 1, len(a) > 0, 0, 0)
    s.sendto(q[:2] + head + q[12 : i + 5] + a, peer)
"#;

/// A process in a namespace, killed when dropped.
pub struct Background(Child);

impl Background {
    /// `python3 -c CODE ARGS` in namespace `ns`.
    pub fn python(ns: &str, code: &str, args: &[&str]) -> Background {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", code])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start python3");
        Background(child)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -c CODE ARGS` in namespace `ns`: its output, if it succeeded.
pub fn python_in(ns: &str, code: &str, args: &[&str]) -> Option<String> {
    let o = run("ip", &[&["netns", "exec", ns, "python3", "-c", code], args].concat());
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Waits until each of 3 hosts lists `n` endpoints; host 1's list.
pub fn all_endpoints_everywhere(c: &Cluster, n: usize) -> Vec<Ep> {
    all_endpoints_everywhere_of(c, 3, n)
}

/// Waits until each of `hosts` hosts lists `n` endpoints; host 1's list.
pub fn all_endpoints_everywhere_of(c: &Cluster, hosts: usize, n: usize) -> Vec<Ep> {
    until(&format!("every host to list {n} endpoints"), Duration::from_secs(20), || {
        (1..=hosts).all(|h| c.endpoints(h).len() == n)
    });
    c.endpoints(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_slate_refuses_a_prefix_another_live_process_runs() {
        // pid 1 is alive and not this process: its run must be left alone.
        let theirs = PathBuf::from("/tmp/netdb-test-ndlive-1");
        std::fs::create_dir_all(&theirs).unwrap();
        let taken = std::panic::catch_unwind(|| {
            Cluster::clean_slate(Path::new("/bin/true"), "ndlive", "10.254.254", &[])
        });
        let still_there = theirs.exists();
        std::fs::remove_dir_all(&theirs).unwrap();
        let err = taken.err().expect("clean_slate refused");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("another test process runs the namespaces ndlive-*"), "{msg}");
        assert!(still_there, "the live run's directory was kept");
        // A dead process's directory is stale, not live.
        let stale = PathBuf::from(format!("/tmp/netdb-test-ndlive-{}", u32::MAX - 1));
        std::fs::create_dir_all(&stale).unwrap();
        let dirs: Vec<_> = run_dirs("ndlive").collect();
        std::fs::remove_dir_all(&stale).unwrap();
        assert_eq!(dirs, vec![(stale, false)]);
    }
}
