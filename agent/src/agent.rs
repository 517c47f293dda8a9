//! `netdb agent`: one task owns the node and multiplexes its inputs (UDP,
//! push/pull frames, API commands, the timer, signals); everything else
//! talks to it through bounded channels.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use netdb::{DropReason, Event, Node, Transmit};
use netdb_api::netdb_server::NetdbServer;
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use netdb::keyring::Keyring;
use netdb_dataplane::Linux;

use crate::api::{Api, Kernel, Watcher};
use crate::cli::AgentArgs;
use crate::config::{self, Settings};
use crate::endpoint::Endpoint;
use crate::keys;
use crate::overlay::Overlay;
use crate::reconcile::{self, KernelStats};
use crate::state::Store;
use crate::streams::{self, NetMsg, Streams};

/// Work for the core loop, sent by the API.
pub type Command = Box<dyn FnOnce(&mut Core) + Send>;

/// What the core loop owns.
pub struct Core {
    pub node: Node,
    pub watchers: Vec<Watcher>,
    pub overlay: Overlay,
    pub kernel_stats: Arc<KernelStats>,
    key_file: Option<PathBuf>,
    start: Instant,
}

impl Core {
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Every counter, named for `netdb stats`.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let s = self.node.stats();
        let mut out = Vec::new();
        for (kind, t) in [
            ("swim_in", s.swim_in),
            ("swim_out", s.swim_out),
            ("gossip_in", s.gossip_in),
            ("gossip_out", s.gossip_out),
            ("sync_in", s.sync_in),
            ("sync_out", s.sync_out),
        ] {
            out.push((format!("{kind}_messages"), t.messages));
            out.push((format!("{kind}_bytes"), t.bytes));
        }
        for (name, v) in [
            ("entries_from_gossip", s.entries_from_gossip),
            ("entries_from_sync", s.entries_from_sync),
            ("syncs_started", s.syncs_started),
            ("syncs_completed", s.syncs_completed),
            ("syncs_failed", s.syncs_failed),
            ("syncs_served", s.syncs_served),
            ("queue_overflow", s.queue_overflow),
            ("queue_oversized", s.queue_oversized),
            ("swim_errors", s.swim_errors),
            ("watchers", self.watchers.len() as u64),
            ("conflicts_detected", self.overlay.conflicts_seen),
        ] {
            out.push((name.into(), v));
        }
        for (scope, len) in self.node.queue_lengths() {
            out.push((format!("queue_len:{scope}"), len as u64));
        }
        for r in DropReason::ALL {
            out.push((format!("drops:{}", r.as_str()), s.dropped(r)));
        }
        out.extend(self.kernel_stats.counters());
        out
    }

    /// Writes the keyring back, so a restart after a rotation holds the
    /// current keys.
    fn save_keyring(&self) {
        let Some(ring) = self.node.keyring() else { return };
        let fingerprints = ring.fingerprints();
        match &self.key_file {
            Some(path) => match keys::write_keyring(path, &ring.export()) {
                Ok(()) => tracing::info!(?fingerprints, file = %path.display(), "keyring saved"),
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), "cannot write the keyring back; a restart would use old keys")
                }
            },
            None => tracing::warn!(
                ?fingerprints,
                "keyring changed, but the keys came from NETDB_KEYS: a restart uses the old ones (use --key-file)"
            ),
        }
    }

    fn dispatch(&mut self, ev: Event) {
        if let Event::Member { name, addr, state } = &ev {
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(member = %name, %addr, state = state.as_str(), "membership change");
        }
        if let Event::KeyringChanged = ev {
            return self.save_keyring();
        }
        self.overlay.observe(&ev);
        self.watchers.retain(|w| w.offer(&ev));
    }
}

pub async fn run(args: AgentArgs, api: Option<Endpoint>) -> anyhow::Result<()> {
    let s = config::resolve(args, api)?;
    init_logging(&s.log)?;
    let udp = bind_udp(s.bind).map_err(|e| bind_error("UDP", s.bind, e))?;
    let tcp = TcpListener::bind(s.bind).await.map_err(|e| bind_error("TCP", s.bind, e))?;
    let incarnation =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1);
    let seed = RandomState::new().hash_one(incarnation);
    let mut node =
        Node::new(s.core.clone(), &s.name, incarnation, s.advertise, seed, Duration::ZERO)
            .map_err(|e| anyhow!("{e}; choose another --name"))?;
    // The incarnation is the wall clock at time zero.
    node.set_wall_clock(incarnation);
    if !s.keys.is_empty() {
        let ring = netdb::keyring::Keyring::new(&s.keys)?;
        tracing::info!(fingerprints = ?ring.fingerprints(), "gossip is sealed");
        node.set_keyring(Some(ring));
    }
    let mut epoch = s.scheduled.as_ref().map(|(secret, period)| {
        let e = current_epoch(*period);
        let ring = Keyring::for_epoch(secret, e);
        tracing::info!(epoch = e, period = ?period, fingerprints = ?ring.fingerprints(), "gossip is sealed with scheduled keys");
        node.set_keyring(Some(ring));
        node.set_scheduled_keys(true);
        e
    });
    let kernel = start_dataplane(&s)?;
    let tunnel = match s.advertise.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    if kernel.is_some() && tunnel.is_none() {
        tracing::warn!("the data plane needs an IPv4 --advertise address; endpoints are refused");
    }
    let store = match (&kernel, &s.data_dir) {
        (Some(_), Some(dir)) => Some(Store::open(dir)?),
        _ => None,
    };
    let overlay = Overlay::new(&s.name, tunnel, store, s.claim_settle);
    let kernel_stats = Arc::new(KernelStats::default());
    let mut core = Core {
        node,
        watchers: Vec::new(),
        overlay,
        kernel_stats: kernel_stats.clone(),
        key_file: s.key_file.clone(),
        start: Instant::now(),
    };
    core.overlay.republish(&mut core.node, Duration::ZERO);

    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(256);
    if let Some(k) = &kernel {
        let task = reconcile::run(
            k.clone(),
            cmd_tx.clone(),
            core.overlay.kernel.clone(),
            s.reconcile_interval,
            kernel_stats,
        );
        tokio::spawn(task);
    }
    let (net_tx, mut net_rx) = mpsc::channel::<NetMsg>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = serve_api(&s, Api::new(cmd_tx, kernel), stop_rx).await?;
    let limits = streams::Limits::new(s.core.max_sync_frame, s.core.sync_timeout);
    tokio::spawn(streams::accept_loop(tcp, net_tx.clone(), limits.clone()));
    let mut streams = Streams::new(net_tx, limits);

    tracing::info!(name = %s.name, bind = %s.bind, advertise = %s.advertise, api = %s.api, incarnation, "agent started");
    if !s.join.is_empty() {
        let now = core.now();
        core.node.join(now, &s.join);
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut buf = vec![0u8; netdb::codec::MAX_DATAGRAM];
    let mut leaving: Option<Instant> = None;
    let mut join_log = JoinLog::new(&s);
    let mut next_upkeep = Instant::now();
    // The wall clock is read now and then (it may jump), not slept on.
    let mut epoch_check = Instant::now() + EPOCH_CHECK;
    loop {
        let mut next = core.node.poll_timeout().map(|t| core.start + t);
        if core.overlay.dirty {
            next = Some(next.map_or(next_upkeep, |n| n.min(next_upkeep)));
        }
        let wake = match (next, leaving) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        };
        tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let now = core.now();
                    core.node.handle_datagram(now, from, &buf[..n]);
                }
                Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
            },
            Some(msg) = net_rx.recv() => match msg {
                NetMsg::Frame { from, bytes, budget } => {
                    let now = core.now();
                    core.node.handle_sync(now, from, &bytes);
                    drop(budget);
                }
                NetMsg::Oversized => core.node.record_drop(DropReason::TooLarge),
                NetMsg::Opened { key, tx } => streams.opened(key, tx),
                NetMsg::Closed { key } => streams.closed(key),
                NetMsg::Failed { sync_id } => core.node.abort_sync(sync_id),
            },
            Some(cmd) = cmd_rx.recv() => cmd(&mut core),
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = core.now();
                core.node.handle_timeout(now);
            }
            _ = tokio::time::sleep_until(epoch_check.into()), if s.scheduled.is_some() => {
                epoch_check = Instant::now() + EPOCH_CHECK;
                if let (Some((secret, period)), Some(e)) = (&s.scheduled, epoch.as_mut()) {
                    let now_epoch = current_epoch(*period);
                    if now_epoch != *e {
                        *e = now_epoch;
                        let ring = Keyring::for_epoch(secret, now_epoch);
                        tracing::info!(epoch = now_epoch, fingerprints = ?ring.fingerprints(), "scheduled key rotation");
                        core.node.set_keyring(Some(ring));
                    }
                }
            }
            _ = sigterm.recv() => leaving = leaving.or_else(|| Some(start_leaving(&mut core))),
            _ = sigint.recv() => leaving = leaving.or_else(|| Some(start_leaving(&mut core))),
        }
        while let Some(t) = core.node.poll_transmit() {
            match t {
                Transmit::Datagram { to, payload } => {
                    if let Err(e) = udp.send_to(&payload, to).await {
                        tracing::debug!(peer = %to, error = %e, "UDP send failed");
                    }
                }
                Transmit::Sync { to, sync_id, opens, payload } => {
                    streams.route(to, sync_id, opens, payload)
                }
            }
        }
        while let Some(ev) = core.node.poll_event() {
            core.dispatch(ev);
        }
        // Overlay upkeep reads whole tables: at most every UPKEEP, however
        // many events arrive.
        if core.overlay.dirty && Instant::now() >= next_upkeep {
            let now = core.now();
            core.overlay.maintain(&mut core.node, now);
            next_upkeep = Instant::now() + UPKEEP;
            for (net, text) in std::mem::take(&mut core.overlay.notices) {
                core.watchers.retain(|w| w.notice(&net, &text));
            }
            while let Some(ev) = core.node.poll_event() {
                core.dispatch(ev);
            }
        }
        join_log.check(&core.node);
        if leaving.is_some_and(|at| Instant::now() >= at) {
            break;
        }
    }
    // End the watch streams and refuse queued calls, or the server's
    // graceful shutdown would wait for them forever.
    core.watchers.clear();
    drop(cmd_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
        tracing::warn!("API clients did not disconnect in 2 s; exiting anyway");
    }
    if let Endpoint::Unix(path) = &s.api {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("left the cluster; bye");
    Ok(())
}

/// How often the wall clock is read for the key epoch.
const EPOCH_CHECK: Duration = Duration::from_millis(500);

/// The key epoch of the wall clock now.
fn current_epoch(period: Duration) -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    netdb::keyring::epoch_at(unix, period)
}

/// Least time between two overlay upkeep passes.
const UPKEEP: Duration = Duration::from_millis(100);

/// The kernel data plane, unless it is off by flag or for lack of
/// privilege.
fn start_dataplane(s: &Settings) -> anyhow::Result<Option<Kernel>> {
    if s.data_dir.is_none() {
        return Ok(None);
    }
    if !netdb_dataplane::has_net_admin() {
        tracing::warn!(
            "no CAP_NET_ADMIN: the data plane is off and endpoint attach is refused (run as root, or pass --no-dataplane)"
        );
        return Ok(None);
    }
    Ok(Some(Arc::new(tokio::sync::Mutex::new(Linux::new()?))))
}

/// Announces the leave; the loop keeps gossiping for two rounds so the news
/// goes out before the process exits.
/// A host with endpoints does not leave: its containers keep running, and
/// a leave would release its address blocks and withdraw its endpoints
/// everywhere. Peers see it failed (entries hidden, blocks kept) until it
/// restarts and republishes.
fn start_leaving(core: &mut Core) -> Instant {
    let now = core.now();
    core.overlay.save(&core.node);
    let endpoints = core.overlay.local_endpoints();
    if endpoints > 0 {
        tracing::info!(
            endpoints,
            "signal received: stopping without leaving, to keep this host's endpoints (detach them first to leave for good)"
        );
        return Instant::now();
    }
    tracing::info!("signal received: leaving the cluster");
    core.node.leave(now);
    Instant::now() + core.node.config().gossip_interval * 2 + Duration::from_millis(100)
}

/// Says, now and then, that the seeds have not answered yet, and once that
/// the node joined.
struct JoinLog {
    seeds: Vec<SocketAddr>,
    next: Instant,
    joined: bool,
}

impl JoinLog {
    fn new(s: &Settings) -> Self {
        JoinLog {
            seeds: s.join.clone(),
            next: Instant::now() + Duration::from_secs(3),
            joined: s.join.is_empty(),
        }
    }

    fn check(&mut self, node: &Node) {
        if self.joined {
            return;
        }
        if node.is_active() {
            self.joined = true;
            tracing::info!("joined the cluster");
        } else if Instant::now() >= self.next {
            self.next = Instant::now() + Duration::from_secs(10);
            tracing::warn!(seeds = ?self.seeds, "no seed has answered yet; still trying (is the seed address right and its agent running?)");
        }
    }
}

/// The gossip socket, with buffers large enough to absorb a burst of
/// packets from many peers (the kernel caps them at net.core.rmem_max and
/// wmem_max; a smaller buffer only means more loss for push/pull to mend).
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the UDP send buffer");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

const UDP_BUFFER: usize = 4 << 20;

fn bind_error(proto: &str, addr: SocketAddr, e: io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "address in use; is another agent running? use --bind",
        io::ErrorKind::AddrNotAvailable => {
            "no such local address; use --bind with an address of this host"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied; use a port above 1023 or run as root"
        }
        _ => "use --bind",
    };
    anyhow!("cannot bind {proto} {addr}: {e}; {hint}")
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad --log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
}

/// Starts the API server (with gRPC reflection) on `ep`; it stops when
/// `stop` turns true.
async fn serve_api(
    s: &Settings,
    api: Api,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ep = &s.api;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(netdb_api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service")?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &s.api_tls {
        builder = builder.tls_config(tls.config()?).context("TLS for the API")?;
    }
    let router = builder.add_service(NetdbServer::new(api)).add_service(reflection);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let task = match ep {
        Endpoint::Unix(path) => {
            let listener = bind_unix(path)?;
            tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                    .await
                {
                    tracing::error!(error = %e, "API server stopped");
                }
            })
        }
        Endpoint::Tcp(addr) => {
            let listener =
                TcpListener::bind(addr).await.map_err(|e| bind_error("API TCP", *addr, e))?;
            tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                    .await
                {
                    tracing::error!(error = %e, "API server stopped");
                }
            })
        }
    };
    Ok(task)
}

/// Binds the API's Unix socket, owner-only (it accepts every command).
fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another agent serves the API at {}; use --api", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
