//! A cluster of Docker containers, one `netdb agent` in each, on a bridge
//! network of its own. Faults are Docker's own verbs: kill and start, pause
//! and unpause, network disconnect and connect.

use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backend::{Backend, Fault, FaultKind};

/// The agent's API in every container. It is the agent's default too, but
/// agent and CLI are both given it so that they cannot disagree.
const API: &str = "unix:/run/netdb/netdb.sock";
/// Gossip port of every agent.
const PORT: u16 = 7946;
/// Host `h` is 10.235.N.(OFFSET + h): .1 is the bridge's gateway.
const OFFSET: usize = 10;
/// As many hosts as the /24 holds above the offset.
const MAX_HOSTS: usize = 254 - OFFSET;
/// How long `up` waits for every agent to see every other alive.
const FORM: Duration = Duration::from_secs(60);
/// How long the heal of a kill waits for the restarted agent's API.
const RESTART: Duration = Duration::from_secs(20);

/// `hosts` containers of an image holding `netdb`, on a user-defined bridge
/// network with fixed addresses, so that a container restarted or
/// reconnected keeps the address its peers know.
///
/// Host `h` runs in container `{name}-{pid}-h{h}` as node `h{h}`, table-only
/// (`--no-dataplane --no-dns`, a data dir in the container, so a restart is
/// live): a container has no CAP_NET_ADMIN. Every
/// agent is given every host as a seed, so any of them, restarted after a
/// kill, finds the cluster again. Dropping it removes the containers and
/// the network.
#[derive(Debug)]
pub struct Docker {
    /// The bridge network, also the prefix of the containers' names.
    network: String,
    /// The network is 10.235.`subnet`.0/24.
    subnet: u8,
    /// The container of host `h` at `h - 1`: every container made, even
    /// one whose start failed, so that drop removes it.
    containers: Vec<String>,
}

impl Docker {
    /// Starts `hosts` agents from `image` on a fresh network named after
    /// `name` and this process (so runs in parallel do not collide), and
    /// returns once each agent sees all of them alive.
    pub fn up(hosts: usize, image: &str, name: &str) -> anyhow::Result<Docker> {
        if !(1..=MAX_HOSTS).contains(&hosts) {
            bail!("the docker backend runs 1 to {MAX_HOSTS} hosts, not {hosts}");
        }
        let network = format!("{name}-{}", std::process::id());
        let subnet = create_network(&network)?;
        // From here on, dropping `cluster` removes whatever was made.
        let mut cluster = Docker { network, subnet, containers: Vec::new() };
        let seeds: Vec<String> = (1..=hosts).map(|h| format!("{}:{PORT}", cluster.ip(h))).collect();
        let seeds = seeds.join(",");
        for h in 1..=hosts {
            let container = format!("{}-h{h}", cluster.network);
            cluster.containers.push(container.clone());
            let ip = cluster.ip(h);
            let node = format!("h{h}");
            let advertise = format!("{ip}:{PORT}");
            let bind = format!("0.0.0.0:{PORT}");
            let mut run = vec!["run", "--detach", "--pull", "never", "--label", "netdb-chaos"];
            run.extend(["--name", &container, "--hostname", &node]);
            run.extend(["--network", &cluster.network, "--ip", &ip, image]);
            run.extend(["--api", API, "agent", "--no-dataplane", "--no-dns", "--name", &node]);
            // Kept in the container across a kill and start: a live restart.
            run.extend(["--data-dir", "/var/lib/netdb"]);
            // Peers reach the agent at its fixed address; bound to every
            // address, its sockets do not depend on the interface that a
            // partition removes and restores.
            run.extend(["--bind", &bind, "--advertise", &advertise, "--join", &seeds]);
            docker(&run)?;
        }
        cluster.await_members(hosts, FORM)?;
        Ok(cluster)
    }

    /// Host `h`'s fixed address.
    fn ip(&self, h: usize) -> String {
        format!("10.235.{}.{}", self.subnet, OFFSET + h)
    }

    /// Host `h`'s container, if there is such a host.
    fn container(&self, h: usize) -> anyhow::Result<&str> {
        match h.checked_sub(1).and_then(|i| self.containers.get(i)) {
            Some(c) => Ok(c),
            None => bail!("no host {h}: hosts are 1 to {}", self.containers.len()),
        }
    }

    /// Waits until every host lists `n` members alive.
    fn await_members(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for h in 1..=self.hosts() {
                seen.push(self.alive(h).unwrap_or(0));
            }
            if seen.iter().all(|&a| a == n) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("after {within:?} the hosts see {seen:?} members alive, not {n} each");
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// How many members host `h` sees alive.
    fn alive(&self, h: usize) -> anyhow::Result<usize> {
        let out = ok(self.cli(h, &["members", "-o", "json"])?)?;
        let members: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("members -o json is not JSON")?;
        let Some(members) = members.as_array() else {
            bail!("members -o json is not a list");
        };
        Ok(members.iter().filter(|m| m["state"] == "alive").count())
    }

    /// Waits until host `h`'s agent answers on its API.
    fn await_api(&self, h: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.cli(h, &["health", "--live"]).and_then(ok) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("host {h}'s agent is not up after {within:?}")));
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Backend for Docker {
    fn hosts(&self) -> usize {
        self.containers.len()
    }

    fn cli(&self, h: usize, args: &[&str]) -> anyhow::Result<Output> {
        let container = self.container(h)?;
        Command::new("docker")
            .args(["exec", container, "netdb", "--api", API])
            .args(args)
            .output()
            .context("cannot run docker")
    }

    fn kinds(&self) -> &'static [FaultKind] {
        &[FaultKind::Kill, FaultKind::Pause, FaultKind::Partition]
    }

    fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        for &h in &fault.hosts {
            let c = self.container(h)?;
            match fault.kind {
                FaultKind::Kill => {
                    docker(&["kill", c])?;
                    // `kill` returns once the signal is sent; `wait`, once
                    // the container has stopped.
                    docker(&["wait", c])?;
                }
                FaultKind::Pause => docker(&["pause", c])?,
                FaultKind::Partition => docker(&["network", "disconnect", &self.network, c])?,
                other => bail!("the docker backend cannot inject {other:?}"),
            }
        }
        Ok(())
    }

    fn heal(&mut self, fault: &Fault) -> anyhow::Result<()> {
        for &h in &fault.hosts {
            let c = self.container(h)?;
            match fault.kind {
                FaultKind::Kill => {
                    // The same container, so the same address, name and
                    // command: the agent rejoins as the node it was.
                    docker(&["start", c])?;
                    self.await_api(h, RESTART)?;
                }
                FaultKind::Pause => docker(&["unpause", c])?,
                FaultKind::Partition => {
                    let ip = self.ip(h);
                    docker(&["network", "connect", "--ip", &ip, &self.network, c])?;
                }
                other => bail!("the docker backend cannot heal {other:?}"),
            }
        }
        Ok(())
    }

    fn dataplane(&self) -> bool {
        false
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(self.containers.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                eprintln!("docker backend: removing the containers: {e:#}");
            }
        }
        match docker(&["network", "rm", &self.network]) {
            Ok(_) => eprintln!(
                "docker backend: removed {} containers and network {}",
                self.containers.len(),
                self.network
            ),
            Err(e) => eprintln!("docker backend: removing network {}: {e:#}", self.network),
        }
    }
}

/// Creates bridge network `name` on the first free 10.235.N.0/24, starting
/// from a place that depends on this process so that parallel runs seldom
/// try the same one; returns N.
fn create_network(name: &str) -> anyhow::Result<u8> {
    let start = std::process::id() as usize;
    for i in 0..256 {
        let n = ((start + i) % 256) as u8;
        let subnet = format!("10.235.{n}.0/24");
        let out = Command::new("docker")
            .args(["network", "create", "--driver", "bridge", "--subnet", &subnet])
            .args(["--label", "netdb-chaos", name])
            .output()
            .context("cannot run docker")?;
        if out.status.success() {
            return Ok(n);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // Another network (a parallel run's) holds that subnet.
        if !err.contains("overlaps") {
            bail!("docker network create {name} --subnet {subnet}: {}", err.trim());
        }
    }
    bail!("every 10.235.N.0/24 is taken by another Docker network")
}

/// Runs `docker args`, which must succeed.
fn docker(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    ok(out).with_context(|| format!("docker {}", args.join(" ")))?;
    Ok(())
}

/// `out`, if its command succeeded; its stderr as the error otherwise.
fn ok(out: Output) -> anyhow::Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    bail!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status)
}
