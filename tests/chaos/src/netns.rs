//! The namespace [`Backend`]: a [`Cluster`] with one container per host on
//! one overlay network, and every [`FaultKind`]. Frame-level faults live
//! where [`Cluster`] keeps them (nftables in the switch); delay and
//! bandwidth act on each host's underlay port (`eth0` in its namespace),
//! where a host's own packets leave.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cluster::{Cluster, text};
use crate::{Backend, Fault, FaultKind};

/// The overlay network the containers are attached to.
pub const NETWORK: &str = "chaosnet";

/// NFQUEUE numbers of delayed hosts: host `h` uses `QUEUE_BASE + h`.
const QUEUE_BASE: usize = 100;

/// How long a restarted agent may take to answer its API.
const START_BOUND: Duration = Duration::from_secs(15);

/// Hosts as network namespaces on this machine, with a data plane.
pub struct Netns {
    cluster: Cluster,
    hosts: usize,
    netem: PathBuf,
    /// `netdb-netem` of each delayed host.
    delays: BTreeMap<usize, Netem>,
    /// The processes keeping the cores busy.
    busy: Vec<Child>,
}

impl Netns {
    /// Brings up `hosts` hosts with one container each (`h1c1`, ...) on
    /// [`NETWORK`], agents running `bin`; `netem` is the `netdb-netem`
    /// binary the Delay fault runs.
    pub fn up(bin: &Path, netem: &Path, prefix: &str, underlay: &str, hosts: usize) -> Netns {
        let n = hosts.to_string();
        let args = ["--hosts", &n, "--containers", "1", "--network", NETWORK];
        let cluster = Cluster::up(bin, prefix, underlay, &args);
        Netns {
            cluster,
            hosts,
            netem: netem.to_path_buf(),
            delays: BTreeMap::new(),
            busy: Vec::new(),
        }
    }

    /// Runs `args` in host `h`'s namespace, which must succeed.
    fn in_host(&self, h: usize, args: &[&str]) -> Result<()> {
        let ns = self.cluster.ns(&format!("h{h}"));
        let o = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .with_context(|| format!("run {args:?} in {ns}"))?;
        ensure!(o.status.success(), "{args:?} in {ns}: {}", text(&o));
        Ok(())
    }

    /// The iptables rule that hands host `h`'s outgoing underlay packets
    /// to its queue; `op` is `-A` or `-D`. `--queue-bypass`: with no
    /// helper bound, packets pass undelayed.
    fn queue_rule(&self, h: usize, op: &str) -> Result<()> {
        let queue = (QUEUE_BASE + h).to_string();
        self.in_host(
            h,
            &[
                "iptables-nft",
                op,
                "OUTPUT",
                "-o",
                "eth0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ],
        )
    }

    fn delay(&mut self, h: usize, fault: &Fault) -> Result<()> {
        let ns = self.cluster.ns(&format!("h{h}"));
        let queue = (QUEUE_BASE + h).to_string();
        let delay = format!("{}ms", fault.delay.as_millis());
        let jitter = format!("{}ms", fault.jitter.as_millis());
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&self.netem)
            .args(["--queue", &queue, "--delay", &delay, "--jitter", &jitter])
            .args(["--seed", &h.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", self.netem.display()))?;
        let mut stderr = BufReader::new(child.stderr.take().context("netdb-netem's stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line).context("read netdb-netem's first line")?;
        let netem = Netem { child, _stderr: stderr };
        ensure!(line.contains("bound"), "netdb-netem did not bind queue {queue}: {line}");
        self.delays.insert(h, netem);
        self.queue_rule(h, "-A")
    }

    fn undelay(&mut self, h: usize) -> Result<()> {
        // The rule first: once it is gone no packet waits for the helper.
        self.queue_rule(h, "-D")?;
        if let Some(netem) = self.delays.remove(&h) {
            // Its counts show the fault was in force (packets delayed).
            eprintln!("           h{h}: {}", netem.stop());
        }
        Ok(())
    }

    /// Two processes that keep both cores busy: stress-ng if installed,
    /// otherwise shell loops.
    fn busy(&mut self) -> Result<()> {
        let stress = Command::new("stress-ng")
            .args(["--cpu", "2", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match stress {
            Ok(child) => self.busy.push(child),
            Err(_) => {
                for _ in 0..2 {
                    let child = Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .context("start a busy loop")?;
                    self.busy.push(child);
                }
            }
        }
        Ok(())
    }

    fn unbusy(&mut self) {
        for mut child in self.busy.drain(..) {
            // SIGTERM: stress-ng stops its workers before it exits.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Waits until host `h`'s restarted agent answers its API.
    fn await_api(&self, h: usize) -> Result<()> {
        let start = Instant::now();
        while !self.cluster.cli(h, &["members"]).status.success() {
            if start.elapsed() > START_BOUND {
                bail!("h{h}'s agent did not answer within {START_BOUND:?} of its restart");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The other side of a one-sided partition.
    fn rest(&self, hosts: &[usize]) -> Vec<usize> {
        (1..=self.hosts).filter(|h| !hosts.contains(h)).collect()
    }
}

impl Backend for Netns {
    fn hosts(&self) -> usize {
        self.hosts
    }

    fn cli(&self, h: usize, args: &[&str]) -> Result<Output> {
        Ok(self.cluster.cli(h, args))
    }

    fn kinds(&self) -> &'static [FaultKind] {
        &FaultKind::ALL
    }

    fn inject(&mut self, fault: &Fault) -> Result<()> {
        match fault.kind {
            FaultKind::Kill => fault.hosts.iter().for_each(|&h| self.cluster.kill(h)),
            FaultKind::Pause => fault.hosts.iter().for_each(|&h| self.cluster.pause(h)),
            FaultKind::Partition => {
                let rest = self.rest(&fault.hosts);
                self.cluster.partition(&[&fault.hosts, &rest]);
            }
            FaultKind::Split => {
                let groups: Vec<&[usize]> = fault.groups.iter().map(Vec::as_slice).collect();
                self.cluster.partition(&groups);
            }
            FaultKind::Loss => {
                fault.hosts.iter().for_each(|&h| self.cluster.loss(h, fault.percent))
            }
            FaultKind::Delay => {
                for &h in &fault.hosts {
                    self.delay(h, fault)?;
                }
            }
            FaultKind::Bandwidth => {
                let rate = format!("{}kbit", fault.kbit);
                for &h in &fault.hosts {
                    let tbf = ["rate", &rate, "burst", "32kbit", "latency", "200ms"];
                    self.in_host(
                        h,
                        &[&["tc", "qdisc", "add", "dev", "eth0", "root", "tbf"], &tbf[..]].concat(),
                    )?;
                }
            }
            FaultKind::Busy => self.busy()?,
        }
        Ok(())
    }

    fn heal(&mut self, fault: &Fault) -> Result<()> {
        match fault.kind {
            FaultKind::Kill => {
                for &h in &fault.hosts {
                    self.cluster.start(h);
                    self.await_api(h)?;
                }
            }
            FaultKind::Pause => fault.hosts.iter().for_each(|&h| self.cluster.resume(h)),
            FaultKind::Partition | FaultKind::Split => self.cluster.heal(),
            FaultKind::Loss => fault.hosts.iter().for_each(|&h| self.cluster.loss(h, 0)),
            FaultKind::Delay => {
                for &h in &fault.hosts {
                    self.undelay(h)?;
                }
            }
            FaultKind::Bandwidth => {
                for &h in &fault.hosts {
                    self.in_host(h, &["tc", "qdisc", "del", "dev", "eth0", "root"])?;
                }
            }
            FaultKind::Busy => self.unbusy(),
        }
        Ok(())
    }

    fn dataplane(&self) -> bool {
        true
    }

    fn namespaces(&self) -> Option<&Cluster> {
        Some(&self.cluster)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The cluster's own drop removes the namespaces, and with them the
        // rules, qdiscs and paused agents; the helpers and the load are
        // processes of ours.
        for (_, netem) in std::mem::take(&mut self.delays) {
            netem.stop();
        }
        self.unbusy();
    }
}

/// A running `netdb-netem` (`ip netns exec` execs it: same pid).
struct Netem {
    child: Child,
    /// Kept open so the helper never writes to a closed pipe.
    _stderr: BufReader<ChildStderr>,
}

impl Netem {
    /// SIGTERM (it accepts what it holds and releases the queue), then
    /// waits for it; its summary line.
    fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let out = self.child.stdout.take();
        let _ = self.child.wait();
        let mut summary = String::new();
        if let Some(out) = out {
            let _ = BufReader::new(out).read_line(&mut summary);
        }
        summary.trim().to_string()
    }
}
