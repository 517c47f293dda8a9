//! Docker hosts on one machine: each host a network namespace on the
//! namespace cluster's underlay (see [`crate::cluster`]), with a `dockerd`
//! of its own and a `netdb agent` of its own, so that containers of two
//! "hosts" can reach each other over netdb's overlay.
//!
//! Each host has an anchor process (`sleep infinity`) that holds the
//! host's network namespace and a private mount namespace, in which
//!
//! - `/run` is a fresh tmpfs: `/run/docker/plugins`, `/run/docker.sock`
//!   and `/run/containerd` are the host's own, so each dockerd starts a
//!   containerd of its own and finds the plugins of its own agent only;
//! - `/sys` is a sysfs mounted from inside the namespace (it lists the
//!   host's interfaces), with the machine's `/sys/fs/cgroup` tree moved
//!   back onto it (`ip netns exec` remounts `/sys` too but loses the
//!   cgroup mounts, which dockerd needs).
//!
//! dockerd and the agent are started with `nsenter --target ANCHOR --net
//! --mount`, and share that namespace. The Docker CLI reaches host `i`'s
//! daemon from outside on `DIR/hI-docker/docker.sock`; inside the host the
//! daemon also listens on the usual `/run/docker.sock`.
//!
//! Every process started here carries `NETDB_DOCKER_HOST=<its host's
//! dir>` in its environment, and every container runs in the cgroup
//! `<run dir's name>-hI`: a later run with the same prefix finds what a
//! crashed one left by those, and removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{Cluster, run, stale_run_dirs, text};

/// The environment variable that marks the processes of a host.
const MARK: &str = "NETDB_DOCKER_HOST";
/// The local image [`DockerHosts::busybox_image`] builds.
pub const BUSYBOX_IMAGE: &str = "netdb-test/busybox";
/// The busybox applets the image links, beside `busybox` itself.
const APPLETS: &str = "sh ash ping nslookup sleep ip wget nc echo cat ls hostname ifconfig route \
    arp grep sed awk ps kill true false env mkdir rm touch test [ timeout httpd traceroute seq";
/// How long a dockerd may take to answer after it is started.
const DOCKERD_UP: Duration = Duration::from_secs(60);
/// How long a dockerd may take to stop on SIGTERM before it is killed.
const DOCKERD_STOP: Duration = Duration::from_secs(20);
/// How long `up` waits for every agent to see every other alive.
const FORM: Duration = Duration::from_secs(60);

/// The anchor's setup, run by `sh -c` with the host's dir as `$1`, in the
/// host's network namespace and a fresh private mount namespace.
const ANCHOR: &str = r#"
set -eu
dir=$1
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/docker/plugins
mkdir -p "$dir/cgroup"
mount --rbind /sys/fs/cgroup "$dir/cgroup"
umount -l /sys
mount -t sysfs sysfs /sys
mount --move "$dir/cgroup" /sys/fs/cgroup
rmdir "$dir/cgroup"
touch "$dir/ready"
exec sleep infinity
"#;

/// One host's processes.
struct Host {
    /// `RUN/hI-docker`: dockerd's socket, config, data and exec roots, log.
    dir: PathBuf,
    /// The cgroup parent of its containers.
    cgroup: String,
    anchor: Child,
    dockerd: Option<Child>,
    agent: Option<Child>,
}

/// Hosts `1..=n` as network namespaces `PREFIX-hI` on an underlay
/// `UNDERLAY.I/24`, each with its own dockerd and netdb agent; everything
/// is stopped and removed on drop. The namespaces, the agents' sockets and
/// logs follow [`Cluster`]'s layout (`RUN/hI.sock`, `RUN/hI.log`), and
/// [`DockerHosts::cluster`] gives its helpers (CLI as JSON, FDB and
/// neighbour entries, pause, partitions).
pub struct DockerHosts {
    cluster: Cluster,
    hosts: Vec<Host>,
}

impl DockerHosts {
    /// Builds `hosts` hosts under namespace prefix `prefix` on underlay
    /// `underlay.0/24`, their agents running `netdb_bin` with the cluster's
    /// usual flags plus `agent_args`, and returns once every agent sees all
    /// of them alive. What a crashed run with `prefix` left is removed
    /// first.
    pub fn up(
        prefix: &str,
        underlay: [u8; 3],
        hosts: usize,
        netdb_bin: &Path,
        agent_args: &[&str],
    ) -> anyhow::Result<DockerHosts> {
        sweep(prefix);
        let [a, b, c] = underlay;
        let underlay = format!("{a}.{b}.{c}");
        let cluster = Cluster::clean_slate(netdb_bin, prefix, &underlay, agent_args);
        cluster.build_namespaces(hosts);
        let mut me = DockerHosts { cluster, hosts: Vec::new() };
        let run_name =
            Path::new(&me.cluster.dir).file_name().unwrap().to_string_lossy().into_owned();
        for i in 1..=hosts {
            let dir = PathBuf::from(format!("{}/h{i}-docker", me.cluster.dir));
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            let anchor = start_anchor(&me.cluster.ns(&format!("h{i}")), &dir)?;
            let cgroup = format!("{run_name}-h{i}");
            me.hosts.push(Host { dir, cgroup, anchor, dockerd: None, agent: None });
        }
        for i in 1..=hosts {
            me.spawn_dockerd(i)?;
        }
        for i in 1..=hosts {
            me.await_dockerd(i)?;
            me.start_agent(i)?;
        }
        me.await_members(hosts, FORM)?;
        Ok(me)
    }

    /// The namespace cluster under the hosts: its CLI helpers
    /// (`json`, `endpoints`, `fdb`, `neigh`, `ping`...), partitions and
    /// pauses. Its `kill` and `start` are not for these agents: use
    /// [`DockerHosts::stop_agent`] and [`DockerHosts::start_agent`].
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn host(&self, i: usize) -> &Host {
        assert!((1..=self.hosts.len()).contains(&i), "no host {i}: hosts are 1 to {}", self.len());
        &self.hosts[i - 1]
    }

    fn host_mut(&mut self, i: usize) -> &mut Host {
        assert!((1..=self.hosts.len()).contains(&i), "no host {i}: hosts are 1 to {}", self.len());
        &mut self.hosts[i - 1]
    }

    /// Host `i`'s directory: dockerd's config, data root (`root`), exec
    /// root (`exec`), log (`dockerd.log`) and socket.
    pub fn dir(&self, i: usize) -> &Path {
        &self.host(i).dir
    }

    /// The socket of host `i`'s dockerd, as seen from outside the host
    /// (inside, it listens on `/run/docker.sock` too).
    pub fn docker_socket(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("docker.sock")
    }

    /// The pid of host `i`'s anchor: `nsenter --target PID --net --mount`
    /// enters the host.
    pub fn anchor_pid(&self, i: usize) -> u32 {
        self.host(i).anchor.id()
    }

    /// The underlay address of host `i`.
    pub fn underlay_ip(&self, i: usize) -> String {
        self.cluster.underlay_ip(&format!("h{i}"))
    }

    /// Runs the Docker CLI against host `i`'s dockerd.
    pub fn docker(&self, i: usize, args: &[&str]) -> Output {
        let host = format!("unix://{}", self.docker_socket(i).display());
        Command::new("docker")
            .args(["-H", &host])
            .args(args)
            .env("DOCKER_CLI_HINTS", "false")
            .output()
            .expect("run docker")
    }

    /// Runs the Docker CLI against host `i`'s dockerd, which must succeed;
    /// its standard output, trimmed.
    pub fn docker_ok(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let o = self.docker(i, args);
        if !o.status.success() {
            bail!("docker {} on h{i}: {}", args.join(" "), text(&o).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Runs the netdb CLI against host `i`'s agent.
    pub fn netdb(&self, i: usize, args: &[&str]) -> Output {
        self.host(i);
        self.cluster.cli(i, args)
    }

    /// Runs `cmd args` inside host `i`: its network and mount namespaces.
    pub fn in_host(&self, i: usize, cmd: &str, args: &[&str]) -> Output {
        let target = self.anchor_pid(i).to_string();
        Command::new("nsenter")
            .args(["--target", &target, "--net", "--mount", "--", cmd])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// FDB entries of our VXLAN device in host `i`'s overlay namespace
    /// (the agent's default, `netdb`, pinned in the host's own `/run`):
    /// (MAC, destination).
    pub fn fdb(&self, i: usize, vni: u64) -> crate::cluster::Pairs {
        let dev = format!("ndvx{vni}");
        let o = self.in_host(i, "bridge", &["-n", "netdb", "fdb", "show", "dev", &dev]);
        crate::cluster::fdb_pairs(&String::from_utf8_lossy(&o.stdout))
    }

    /// Starts host `i`'s agent (again, after [`DockerHosts::stop_agent`]),
    /// with its data dir: `--name hI --bind UNDERLAY.I:7946 --join
    /// UNDERLAY.1:7946 --api unix:RUN/hI.sock --data-dir RUN/hI-data`, the
    /// cluster's flags and the `agent_args` of [`DockerHosts::up`]; its
    /// output is appended to `RUN/hI.log`.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if self.host(i).agent.is_some() {
            bail!("host {i}'s agent runs already");
        }
        let dir = &self.cluster.dir;
        let log = format!("{dir}/h{i}.log");
        let ip = self.underlay_ip(i);
        let seed = self.underlay_ip(1);
        let mut args = vec![
            "--api".to_string(),
            format!("unix:{dir}/h{i}.sock"),
            "agent".into(),
            "--name".into(),
            format!("h{i}"),
            "--bind".into(),
            format!("{ip}:7946"),
            "--join".into(),
            format!("{seed}:7946"),
            "--data-dir".into(),
            format!("{dir}/h{i}-data"),
        ];
        args.extend(self.cluster.agent_args().split_whitespace().map(String::from));
        let bin = self.cluster.bin.to_string_lossy().into_owned();
        let child = self.spawn_in(i, &bin, &args, Path::new(&log))?;
        std::fs::write(format!("{dir}/h{i}.pid"), child.id().to_string())?;
        self.host_mut(i).agent = Some(child);
        Ok(())
    }

    /// SIGKILLs host `i`'s agent and waits until it is gone.
    pub fn stop_agent(&mut self, i: usize) {
        let pidfile = format!("{}/h{i}.pid", self.cluster.dir);
        if let Some(mut agent) = self.host_mut(i).agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = std::fs::remove_file(pidfile);
    }

    /// Stops host `i`'s dockerd gracefully (SIGTERM, as a service manager
    /// does; killed if it is not gone within 20 s) and starts it again on
    /// the same data root; returns once it answers.
    pub fn restart_dockerd(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop_dockerd(i);
        self.spawn_dockerd(i)?;
        self.await_dockerd(i)
    }

    /// The last lines of host `i`'s agent log and dockerd log.
    pub fn logs(&self, i: usize) -> String {
        let agent = format!("{}/h{i}.log", self.cluster.dir);
        let dockerd = self.host(i).dir.join("dockerd.log");
        format!(
            "--- h{i} agent ({agent})\n{}\n--- h{i} dockerd ({})\n{}\n",
            tail(Path::new(&agent), 40),
            dockerd.display(),
            tail(&dockerd, 30)
        )
    }

    /// Host `i`'s whole agent log.
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(format!("{}/h{i}.log", self.cluster.dir)).unwrap_or_default()
    }

    /// Host `i`'s agent data dir (`--data-dir`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.host(i);
        PathBuf::from(format!("{}/h{i}-data", self.cluster.dir))
    }

    /// The local image `netdb-test/busybox` on host `i`'s dockerd, built
    /// if missing: FROM scratch, Debian's static busybox as `/bin/busybox`
    /// with links for `sh`, `ping`, `nslookup`, `sleep`, `ip`, `wget`...,
    /// `PATH=/bin`. Installs `busybox-static` with apt-get when
    /// `/bin/busybox` is missing. Its name.
    pub fn busybox_image(&self, i: usize) -> anyhow::Result<String> {
        if self.docker(i, &["image", "inspect", BUSYBOX_IMAGE]).status.success() {
            return Ok(BUSYBOX_IMAGE.into());
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            let o = Command::new("apt-get")
                .args(["install", "-y", "-qq", "busybox-static"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .context("run apt-get")?;
            if !o.status.success() || !busybox.exists() {
                bail!("apt-get install busybox-static: {}", text(&o).trim());
            }
        }
        let ctx = self.host(i).dir.join("busybox-image");
        let _ = std::fs::remove_dir_all(&ctx);
        let bin = ctx.join("rootfs/bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(busybox, bin.join("busybox")).context("copy /bin/busybox")?;
        for applet in APPLETS.split_whitespace() {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        let tar = ctx.join("rootfs.tar");
        let (root, tar_path) = (ctx.join("rootfs"), tar.to_string_lossy().into_owned());
        let o = run("tar", &["-C", &root.to_string_lossy(), "-cf", &tar_path, "."]);
        if !o.status.success() {
            bail!("tar of the busybox image: {}", text(&o).trim());
        }
        self.docker_ok(i, &["import", "--change", "ENV PATH=/bin", &tar_path, BUSYBOX_IMAGE])?;
        let _ = std::fs::remove_dir_all(&ctx);
        Ok(BUSYBOX_IMAGE.into())
    }

    /// Starts `cmd args` inside host `i` (in a process group of its own, so
    /// that a ^C of the test does not reach it), output appended to `log`.
    fn spawn_in(&self, i: usize, cmd: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("{}", log.display()))?;
        let target = self.anchor_pid(i).to_string();
        Command::new("nsenter")
            .args(["--target", &target, "--net", "--mount", "--", cmd])
            .args(args)
            .env(MARK, &self.host(i).dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {cmd} in h{i}"))
    }

    fn spawn_dockerd(&mut self, i: usize) -> anyhow::Result<()> {
        let dir = self.host(i).dir.clone();
        let d = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut config = serde_json::json!({
            // Predictable cgroups (the sweep finds them by name), whatever
            // the machine's default driver.
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            // Containers outlive a restart of their dockerd, as on hosts
            // that upgrade Docker without stopping their services.
            "live-restore": true,
        });
        if dockerd_major() < 23 {
            // Before 23.0 dockerd writes its identity to
            // /etc/docker/key.json unless told otherwise.
            config["deprecated-key-path"] = d("key.json").into();
        }
        std::fs::write(dir.join("daemon.json"), config.to_string())?;
        let args: Vec<String> = [
            "--config-file".to_string(),
            d("daemon.json"),
            "-H".into(),
            "unix:///run/docker.sock".into(),
            "-H".into(),
            format!("unix://{}", d("docker.sock")),
            "--data-root".into(),
            d("root"),
            "--exec-root".into(),
            d("exec"),
            "--pidfile".into(),
            d("dockerd.pid"),
            "--iptables=false".into(),
            "--ip-forward=false".into(),
            "--bridge=none".into(),
            "--cgroup-parent".into(),
            format!("/{}", self.host(i).cgroup),
        ]
        .into();
        let child = self.spawn_in(i, "dockerd", &args, &dir.join("dockerd.log"))?;
        self.host_mut(i).dockerd = Some(child);
        Ok(())
    }

    fn await_dockerd(&mut self, i: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.docker(i, &["version"]).status.success() {
                return Ok(());
            }
            let exited = match self.host_mut(i).dockerd.as_mut() {
                Some(d) => d.try_wait()?,
                None => bail!("host {i}'s dockerd is not running"),
            };
            if let Some(status) = exited {
                self.host_mut(i).dockerd = None;
                bail!("host {i}'s dockerd exited ({status}):\n{}", self.logs(i));
            }
            if start.elapsed() > DOCKERD_UP {
                bail!("host {i}'s dockerd does not answer after {DOCKERD_UP:?}:\n{}", self.logs(i));
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn stop_dockerd(&mut self, i: usize) {
        let Some(mut dockerd) = self.host_mut(i).dockerd.take() else { return };
        run("kill", &["-TERM", &dockerd.id().to_string()]);
        let start = Instant::now();
        while dockerd.try_wait().ok().flatten().is_none() {
            if start.elapsed() > DOCKERD_STOP {
                eprintln!("h{i}: dockerd did not stop within {DOCKERD_STOP:?}; killing it");
                let _ = dockerd.kill();
                let _ = dockerd.wait();
                break;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every agent lists `n` members alive; fails early when
    /// an agent exits.
    fn await_members(&mut self, n: usize, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            for i in 1..=self.len() {
                let exited = match self.host_mut(i).agent.as_mut() {
                    Some(agent) => agent.try_wait()?,
                    None => continue,
                };
                if let Some(status) = exited {
                    self.host_mut(i).agent = None;
                    bail!("host {i}'s agent exited ({status}):\n{}", self.logs(i));
                }
            }
            let seen: Vec<usize> = (1..=self.len()).map(|i| self.alive(i)).collect();
            if seen.iter().all(|&a| a == n) {
                return Ok(());
            }
            if start.elapsed() > within {
                let logs: String = (1..=self.len()).map(|i| self.logs(i)).collect();
                bail!(
                    "after {within:?} the agents see {seen:?} members alive, not {n} each\n{logs}"
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// How many members host `i`'s agent lists alive (0 when it does not
    /// answer).
    pub fn alive(&self, i: usize) -> usize {
        let o = self.netdb(i, &["members", "-o", "json"]);
        let members: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        members.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
    }
}

impl Drop for DockerHosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 1..=self.len() {
                eprintln!("{}", tail(&self.host(i).dir.join("dockerd.log"), 30));
            }
        }
        for i in 1..=self.len() {
            if self.host(i).dockerd.is_some() {
                let ids = self.docker(i, &["ps", "-aq"]);
                let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let o = self.docker(i, &[&["rm", "--force", "--volumes"], &ids[..]].concat());
                    if !o.status.success() {
                        eprintln!("h{i}: docker rm: {}", text(&o).trim());
                    }
                }
            }
            self.stop_dockerd(i);
            self.stop_agent(i);
            let host = &mut self.hosts[i - 1];
            kill_mount_namespace(host.anchor.id());
            let _ = host.anchor.kill();
            let _ = host.anchor.wait();
            remove_cgroup(&host.cgroup);
            unmount_under(&host.dir);
        }
        // Then the cluster's drop: namespaces, run directory.
    }
}

/// `dockerd --version`'s major version (99 if it cannot be read).
fn dockerd_major() -> u32 {
    let o = run("dockerd", &["--version"]);
    let v = String::from_utf8_lossy(&o.stdout).into_owned();
    // "Docker version 20.10.24+dfsg1, build 5d6db84"
    v.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(99)
}

/// Starts the anchor of the host in namespace `ns`; returns once its mount
/// namespace is set up.
fn start_anchor(ns: &str, dir: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let netns = format!("--net=/run/netns/{ns}");
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut anchor = Command::new("nsenter")
        .args([&netns, "unshare", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", ANCHOR, "sh"])
        .arg(dir)
        .env(MARK, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("start the anchor (nsenter, unshare)")?;
    let start = Instant::now();
    while !ready.exists() {
        if anchor.try_wait()?.is_some() {
            let o = anchor.wait_with_output()?;
            bail!("the anchor of {ns} failed ({}): {}", o.status, text(&o).trim());
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = anchor.kill();
            bail!("the anchor of {ns} did not set up its mounts within 10 s");
        }
        sleep(Duration::from_millis(20));
    }
    Ok(anchor)
}

/// The pids of every process (other than this one's) in the mount
/// namespace of `pid`.
fn mount_namespace_pids(pid: u32) -> Vec<u32> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else { return Vec::new() };
    let Ok(mine) = std::fs::read_link("/proc/self/ns/mnt") else { return Vec::new() };
    if ns == mine {
        return Vec::new();
    }
    pids()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|n| n == ns))
        .collect()
}

/// SIGKILLs every process in the mount namespace of `pid` (its dockerd,
/// containerd and shims), and waits a while for them to go.
fn kill_mount_namespace(pid: u32) {
    kill_all(&mount_namespace_pids(pid));
}

/// Every pid in /proc.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
}

/// SIGKILLs `pids` and waits up to 5 s for them to be gone (or zombies).
fn kill_all(pids: &[u32]) {
    let me = std::process::id();
    let pids: Vec<String> = pids.iter().filter(|&&p| p != me).map(u32::to_string).collect();
    if pids.is_empty() {
        return;
    }
    run("kill", &[&["-9"], &pids.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5)
        && pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        })
    {
        sleep(Duration::from_millis(50));
    }
}

/// The cgroup directories named `name` at the top of each hierarchy
/// (`/sys/fs/cgroup/NAME` on cgroup v2, `/sys/fs/cgroup/CONTROLLER/NAME`
/// on v1).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(e.path().join(name));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Kills every process in cgroup `name` (the containers a dockerd left)
/// and removes it, children first.
fn remove_cgroup(name: &str) {
    fn walk(dir: &Path, procs: &mut Vec<u32>, dirs: &mut Vec<PathBuf>) {
        if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            procs.extend(p.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), procs, dirs);
            }
        }
        dirs.push(dir.to_path_buf());
    }
    let (mut procs, mut dirs) = (Vec::new(), Vec::new());
    for top in cgroup_dirs(name) {
        walk(&top, &mut procs, &mut dirs);
    }
    procs.sort_unstable();
    procs.dedup();
    kill_all(&procs);
    // Children were pushed before their parents.
    for dir in dirs {
        let start = Instant::now();
        while std::fs::remove_dir(&dir).is_err() && dir.exists() {
            if start.elapsed() > Duration::from_secs(2) {
                eprintln!("cannot remove cgroup {}", dir.display());
                break;
            }
            sleep(Duration::from_millis(50));
        }
    }
}

/// Unmounts (lazily) whatever this mount namespace has mounted under `dir`,
/// deepest first: nothing when the hosts' mounts stayed private, as they
/// should.
fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_unstable_by(|a, b| b.cmp(a));
    for m in points {
        eprintln!("unmounting {m}, left in the machine's mount namespace");
        run("umount", &["-l", m]);
    }
}

/// Removes what crashed runs with `prefix` left: every process marked as
/// one of their hosts' (anchors, dockerd, containerd, shims, agents) and
/// every process in their anchors' mount namespaces, their containers'
/// cgroups, and mounts under their directories; the cluster's sweep then
/// removes their directories and namespaces.
fn sweep(prefix: &str) {
    let stale: Vec<String> =
        stale_run_dirs(prefix).iter().map(|d| format!("{}/", d.display())).collect();
    let stem = format!("netdb-test-{prefix}-");
    let me = std::process::id();
    let mut doomed = Vec::new();
    for pid in pids().filter(|&p| p != me) {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let marked = env.split(|&b| b == 0).any(|var| {
            let var = String::from_utf8_lossy(var);
            var.strip_prefix(MARK)
                .and_then(|v| v.strip_prefix('='))
                .is_some_and(|v| stale.iter().any(|s| v.starts_with(s.as_str())))
        });
        if marked {
            doomed.push(pid);
            doomed.extend(mount_namespace_pids(pid));
        }
    }
    doomed.sort_unstable();
    doomed.dedup();
    kill_all(&doomed);
    // Cgroups `netdb-test-PREFIX-PID-hI` of runs whose process is gone.
    let mut names = Vec::new();
    for top in std::iter::once(PathBuf::from("/sys/fs/cgroup")).chain(
        std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path()),
    ) {
        for e in std::fs::read_dir(top).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&stem).and_then(|r| r.split('-').next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
                names.push(name);
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    for name in names {
        remove_cgroup(&name);
    }
    for dir in stale_run_dirs(prefix) {
        unmount_under(&dir);
    }
}

/// The last `n` lines of file `path`.
fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
