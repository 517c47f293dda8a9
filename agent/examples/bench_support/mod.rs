//! What the loopback benchmarks share: starting agents and stopping them,
//! connecting to their API sockets, reading a process's CPU and memory.

use std::io;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netdb_api::netdb_client::NetdbClient;
use tonic::transport::{Channel, Endpoint};

fn log_filter() -> Option<String> {
    std::env::var("NETDB_BENCH_LOG").ok()
}

/// The API socket of agent `name` in `dir`.
pub(crate) fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Starts agent `name` on `bind` (no data plane, warnings logged to
/// `dir/NAME.log`, its API on `dir/NAME.sock`). `NETDB_BENCH_LOG` sets
/// another log filter (e.g. `netdb=debug`), and then the logs are kept.
pub(crate) fn spawn_agent<S: AsRef<std::ffi::OsStr>>(
    bin: &Path,
    dir: &Path,
    name: &str,
    bind: &str,
    extra: impl IntoIterator<Item = S>,
) -> io::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(bin)
        .args(["--api", &format!("unix:{}", sock(dir, name).display()), "agent", "--no-dataplane"])
        .args(["--name", name, "--bind", bind, "--log", &log_filter().unwrap_or("warn".into())])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
}

/// The agent's API, once it answers: its socket file appears at bind,
/// a moment before it listens (refused meanwhile, seen on a loaded machine).
pub(crate) async fn connect(
    path: &Path,
) -> Result<NetdbClient<Channel>, Box<dyn std::error::Error>> {
    let start = Instant::now();
    loop {
        let sock = path.to_path_buf();
        let attempt = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await;
        match attempt {
            Ok(ch) => return Ok(NetdbClient::new(ch)),
            Err(e) if start.elapsed() > Duration::from_secs(20) => {
                return Err(format!("agent API {} never answered: {e}", path.display()).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) fn check_time(
    what: &str,
    since: Instant,
    limit: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    if since.elapsed() > limit {
        Err(format!("{what} did not converge in {limit:?}").into())
    } else {
        Ok(())
    }
}

/// CPU seconds a process has run: the scheduler's nanosecond count
/// (/proc/PID/schedstat), far finer than the 10 ms ticks of /proc/PID/stat.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()))
        .map_or(0.0, |ns| ns / 1e9)
}

/// The machine's state, in the two costs an agent's CPU mostly goes to: a
/// gossip-sized datagram sent and received over loopback by one thread
/// (the kernel's path, µs a datagram), and a round trip between two
/// threads (the same plus two wake-ups, µs a round trip; on this VM a
/// wake-up of an idle CPU costs tens of µs and varies from minute to
/// minute). The same agent binary has cost half as much again on one day
/// as on another (docs/performance.md); printed beside a run's figures,
/// these tell such a day from a slower build. Blocks for about a second.
pub(crate) struct Reference {
    pub(crate) datagram_us: f64,
    pub(crate) round_trip_us: f64,
}

impl Reference {
    pub(crate) fn measure() -> io::Result<Reference> {
        const DATAGRAMS: u32 = 50_000;
        const TRIPS: u32 = 5_000;
        let wait = Some(Duration::from_secs(5));
        let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
        a.set_read_timeout(wait)?;
        b.set_read_timeout(wait)?;
        let to = b.local_addr()?;
        let (msg, mut buf) = ([0x5a_u8; 1400], [0u8; 2048]);
        let t = Instant::now();
        for _ in 0..DATAGRAMS {
            a.send_to(&msg, to)?;
            b.recv_from(&mut buf)?;
        }
        let datagram_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(DATAGRAMS);
        let echo = std::thread::spawn(move || -> io::Result<()> {
            let mut buf = [0u8; 2048];
            for _ in 0..TRIPS {
                let (n, from) = b.recv_from(&mut buf)?;
                b.send_to(&buf[..n], from)?;
            }
            Ok(())
        });
        let t = Instant::now();
        for _ in 0..TRIPS {
            a.send_to(&msg, to)?;
            a.recv_from(&mut buf)?;
        }
        let round_trip_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(TRIPS);
        echo.join().map_err(|_| io::Error::other("the echo thread panicked"))??;
        Ok(Reference { datagram_us, round_trip_us })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a 1,400-byte UDP datagram over loopback {:.2} µs, a round trip between two threads \
             {:.0} µs",
            self.datagram_us, self.round_trip_us
        )
    }
}

/// A memory figure of /proc/PID/status, in MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Every process it starts, it stops.
pub(crate) struct Procs {
    pub(crate) children: Vec<Option<Child>>,
    pub(crate) dir: PathBuf,
}

impl Procs {
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if log_filter().is_some() {
            eprintln!("agent logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
