//! `netdb agent`: one task owns the core and multiplexes its inputs (UDP,
//! push/pull frames, API commands, the timer, the key schedule, signals);
//! each input is handed to a named method. Everything else talks to the
//! core through bounded channels (`engine::Handle`).

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use netdb::keyring::Keyring;
use netdb::{DropReason, Node, Transmit};
use netdb_dataplane::Linux;
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Mutex, mpsc};

use crate::alarm::Alarm;
use crate::api::Api;
use crate::cli::AgentArgs;
use crate::config::{self, Settings};
use crate::dns::Dns;
use crate::endpoint::Endpoint;
use crate::engine::{self, Commands, Core, KernelStats};
use crate::life::Life;
use crate::overlay::Overlay;
use crate::reconcile;
use crate::server::{Server, bind_error};
use crate::state::Store;
use crate::streams::{self, NetMsg, Streams};
use crate::{logging, metrics};

/// Runs the agent until a signal ends it.
pub(crate) async fn run(args: AgentArgs, api: Option<Endpoint>) -> anyhow::Result<()> {
    Agent::start(args, api).await?.run().await
}

/// Least time between two overlay upkeep passes.
const UPKEEP: Duration = Duration::from_millis(100);

/// Most datagrams read in one turn of the loop: enough to pay its cost
/// once for many, few enough that timers and API calls wait little.
const RECV_BATCH: usize = 32;

/// How often the wall clock is read for the key epoch.
const EPOCH_CHECK: Duration = Duration::from_millis(500);

/// The agent: the core and the loop's inputs.
pub(crate) struct Agent {
    s: Settings,
    core: Core,
    commands: Commands,
    udp: UdpSocket,
    buf: Vec<u8>,
    net_rx: mpsc::Receiver<NetMsg>,
    streams: Streams,
    server: Server,
    sigterm: Signal,
    sigint: Signal,
    alarm: Alarm,
    /// When to exit, once leaving.
    leaving: Option<Instant>,
    join_log: JoinLog,
    next_upkeep: Instant,
    schedule: Option<Schedule>,
}

/// Scheduled keys: the epoch in force, and when to read the wall clock
/// again (it may jump, so it is read now and then, not slept on).
struct Schedule {
    secret: Vec<u8>,
    period: Duration,
    epoch: u64,
    check_at: Instant,
}

impl Agent {
    /// Binds the sockets, builds the node and the overlay from the
    /// settings (and the data dir, after a restart), and starts the API,
    /// the reconcile task and the stream acceptor.
    pub(crate) async fn start(args: AgentArgs, api: Option<Endpoint>) -> anyhow::Result<Agent> {
        let s = config::resolve(args, api)?;
        let log = logging::init(&s.log, s.log_format)?;
        let udp = bind_udp(s.bind).map_err(|e| bind_error("UDP", s.bind, e))?;
        let tcp = TcpListener::bind(s.bind).await.map_err(|e| bind_error("TCP", s.bind, e))?;
        let kernel = start_dataplane(&s)?;
        // The host's state outlives the process where the data plane runs,
        // or where it is off by choice and a data dir is given (tables
        // only: the agent keeps its identity, networks and entries across
        // restarts). Not where it is off for lack of privilege: the
        // default dir is root's.
        let mut store = match &s.data_dir {
            Some(dir) if kernel.is_some() || !s.dataplane => Some(Store::open(dir)?),
            _ => None,
        };
        let started_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1);
        let life = Life::resume(store.as_ref().map(|(_, state)| state), started_ms);
        if let Some((store, state)) = &mut store {
            (state.incarnation, state.generation) = (life.incarnation, life.generation);
            store.save(state)?;
        }
        let incarnation = life.incarnation;
        // The node leaves its own address out of the seeds.
        let mut seeds = s.join.clone();
        for peer in store.iter().flat_map(|(_, state)| &state.peers) {
            if !seeds.contains(peer) {
                seeds.push(*peer);
            }
        }
        let seed = RandomState::new().hash_one(started_ms);
        let mut node = Node::restarted(
            s.core.clone(),
            &s.name,
            incarnation,
            life.generation,
            s.advertise,
            seed,
            Duration::ZERO,
        )
        .map_err(|e| anyhow!("{e}; choose another --name"))?;
        node.set_wall_clock(started_ms);
        if !s.keys.is_empty() {
            let ring = Keyring::new(&s.keys)?;
            tracing::info!(fingerprints = ?ring.fingerprints(), "gossip is sealed");
            node.set_keyring(Some(ring));
        }
        let schedule = s.scheduled.as_ref().map(|(secret, period)| {
            let epoch = current_epoch(*period);
            let ring = Keyring::for_epoch(secret, epoch);
            tracing::info!(epoch, period = ?period, fingerprints = ?ring.fingerprints(), "gossip is sealed with scheduled keys");
            node.set_keyring(Some(ring));
            node.set_scheduled_keys(true);
            Schedule {
                secret: secret.clone(),
                period: *period,
                epoch,
                check_at: Instant::now() + EPOCH_CHECK,
            }
        });
        let tunnel = match s.advertise.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        };
        if kernel.is_some() && tunnel.is_none() {
            tracing::warn!(
                "the data plane needs an IPv4 --advertise address; endpoints are refused"
            );
        }
        let underlay = tunnel.and_then(|ip| {
            let ifname = crate::doctor::underlay::interface_of(IpAddr::V4(ip))?;
            let mtu = netdb_dataplane::link_mtu(&ifname)?;
            Some((ifname, mtu))
        });
        match &underlay {
            Some((ifname, mtu)) => tracing::info!(
                underlay = %ifname,
                mtu,
                network_mtu = netdb::netdefs::overlay_mtu(*mtu),
                "new networks get the underlay's MTU less VXLAN's 50 bytes"
            ),
            None if kernel.is_some() => tracing::warn!(
                "no interface holds the advertise address; new networks get MTU {}",
                netdb::netdefs::DEFAULT_MTU
            ),
            None => {}
        }
        // Without a kernel, no tunnel: endpoints are refused.
        let tunnel = tunnel.filter(|_| kernel.is_some());
        let mut overlay = Overlay::new(&s.name, tunnel, store, s.claim_settle, s.gateway_subnet)
            .with_vxlan_port(s.vxlan_port)
            .with_underlay(underlay)
            .with_vni_range(s.vni_range);
        overlay.set_default_pool(s.default_pool.0, s.default_pool.1);
        let kernel_stats = Arc::new(KernelStats::default());
        let view = overlay.dns_view();
        let dns = match (&s.dns, &kernel) {
            (Some(settings), Some(_)) => Some(Dns::start(settings.clone(), view)?),
            _ => None,
        };
        let mut core = Core::new(node, overlay, kernel_stats.clone(), s.key_file.clone())
            .with_dns(dns.clone());

        let (handle, commands) = engine::channel(kernel, dns);
        let wake = core.kernel_changes();
        tokio::spawn(reconcile::run(handle.clone(), wake, s.reconcile_interval, kernel_stats));
        if let Some(addr) = s.metrics {
            metrics::serve(addr, handle.clone()).await?;
        }
        if let Some(docker) = &s.docker {
            crate::docker::start(docker, s.data_dir.as_deref(), handle.clone(), s.default_pool)
                .await?;
        }
        let (net_tx, net_rx) = mpsc::channel::<NetMsg>(1024);
        let server = Server::start(&s, Api::new(handle).with_log(log)).await?;
        let limits = streams::Limits::new(s.core.max_sync_frame, s.core.sync_timeout);
        tokio::spawn(streams::accept_loop(tcp, net_tx.clone(), limits.clone()));
        let streams = Streams::new(net_tx, limits);

        tracing::info!(name = %s.name, bind = %s.bind, advertise = %s.advertise, api = %s.api, incarnation, generation = life.generation, resumed = life.resumed, "agent started");
        if !seeds.is_empty() {
            core.join(&seeds);
        }
        Ok(Agent {
            core,
            commands,
            udp,
            buf: vec![0u8; netdb::codec::MAX_DATAGRAM],
            net_rx,
            streams,
            server,
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
            alarm: Alarm::new()
                .map_err(|e| anyhow!("cannot create the agent's timer (timerfd): {e}"))?,
            leaving: None,
            join_log: JoinLog::new(&s),
            next_upkeep: Instant::now(),
            schedule,
            s,
        })
    }

    /// The loop: one input at a time, then whatever it produced goes out.
    /// Ends after a signal (and the leave's last gossip rounds).
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        loop {
            self.alarm.set(self.wake_at())?;
            tokio::select! {
                r = self.udp.recv_from(&mut self.buf) => self.on_datagrams(r),
                Some(msg) = self.net_rx.recv() => self.on_stream(msg),
                Some(cmd) = self.commands.recv() => cmd.apply(&mut self.core),
                r = self.alarm.fired() => self.on_alarm(r)?,
                _ = self.sigterm.recv() => self.on_signal(),
                _ = self.sigint.recv() => self.on_signal(),
            }
            self.flush().await;
            if self.leaving.is_some_and(|at| Instant::now() >= at) {
                break;
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// The node's next timer, the next upkeep, the key schedule's next
    /// look at the clock, or the exit, whichever is first.
    fn wake_at(&self) -> Instant {
        let check = self.schedule.as_ref().map(|e| e.check_at);
        [self.core.next_wake(self.next_upkeep), self.leaving, check]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    fn on_alarm(&mut self, fired: io::Result<()>) -> anyhow::Result<()> {
        fired.map_err(|e| anyhow!("the agent's timer (timerfd) failed: {e}"))?;
        self.core.handle_timeout();
        if self.schedule.as_ref().is_some_and(|e| Instant::now() >= e.check_at) {
            self.check_epoch();
        }
        Ok(())
    }

    /// A datagram, and those already waiting behind it (up to
    /// `RECV_BATCH`): the loop's turn (its select with two timers, the
    /// flush, the upkeep check) is paid once for all of them; under a
    /// burst the socket holds many. The batch is not charged to tokio's
    /// cooperative budget datagram by datagram: doing so made the loop
    /// yield every 128 datagrams, and the watch streams then went out in
    /// many small writes, which doubled the agents' CPU per datagram in
    /// the 100-agent burst (docs/performance.md).
    fn on_datagrams(&mut self, first: io::Result<(usize, SocketAddr)>) {
        if !self.on_datagram(first) {
            return;
        }
        for _ in 1..RECV_BATCH {
            let r = self.udp.try_recv_from(&mut self.buf);
            if !self.on_datagram(r) {
                return;
            }
        }
    }

    /// One datagram received; false when the socket had none or failed.
    fn on_datagram(&mut self, r: io::Result<(usize, SocketAddr)>) -> bool {
        match r {
            Ok((n, from)) => {
                self.core.handle_datagram(from, &self.buf[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                false
            }
        }
    }

    fn on_stream(&mut self, msg: NetMsg) {
        match msg {
            NetMsg::Frame { from, bytes, budget } => {
                self.core.handle_sync(from, &bytes);
                drop(budget);
            }
            NetMsg::Oversized => self.core.record_drop(DropReason::TooLarge),
            NetMsg::Opened { key, tx } => self.streams.opened(key, tx),
            NetMsg::Closed { key } => self.streams.closed(key),
            NetMsg::Failed { sync_id, why } => self.core.abort_sync(sync_id, &why),
        }
    }

    /// Switches to the next scheduled key when the epoch turned.
    fn check_epoch(&mut self) {
        let Some(e) = self.schedule.as_mut() else { return };
        e.check_at = Instant::now() + EPOCH_CHECK;
        self.core
            .follow_wall_clock(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let now_epoch = current_epoch(e.period);
        if now_epoch != e.epoch {
            e.epoch = now_epoch;
            let ring = Keyring::for_epoch(&e.secret, now_epoch);
            tracing::info!(epoch = now_epoch, fingerprints = ?ring.fingerprints(), "scheduled key rotation");
            self.core.set_keyring(ring);
        }
    }

    /// Starts leaving (once); the loop keeps gossiping until the news is
    /// out.
    fn on_signal(&mut self) {
        if self.leaving.is_none() {
            self.leaving = Some(Instant::now() + self.core.start_leaving());
        }
    }

    /// Sends what the node produced, hands out its events, and runs the
    /// overlay upkeep when due.
    async fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            match t {
                Transmit::Datagram { to, payload } => {
                    if let Err(e) = self.udp.send_to(&payload, to).await {
                        tracing::debug!(peer = %to, error = %e, "UDP send failed");
                    }
                }
                Transmit::Sync { to, sync_id, opens, closes, payload } => {
                    self.streams.route(to, sync_id, opens, closes, payload)
                }
            }
        }
        self.core.dispatch_events();
        // Overlay upkeep reads whole tables: at most every UPKEEP, however
        // many events arrive.
        if self.core.upkeep_due() && Instant::now() >= self.next_upkeep {
            self.core.upkeep();
            self.next_upkeep = Instant::now() + UPKEEP;
        }
        self.join_log.check(self.core.node());
    }

    /// Ends the watch streams and refuses queued calls (or the server's
    /// graceful shutdown would wait for them forever), then stops the API.
    pub(crate) async fn shutdown(self) {
        let Agent { mut core, commands, server, s, .. } = self;
        core.close_watchers();
        drop(commands);
        server.stop().await;
        if let Endpoint::Unix(path) = &s.api {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("left the cluster; bye");
    }
}

/// The key epoch of the wall clock now.
fn current_epoch(period: Duration) -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    netdb::keyring::epoch_at(unix, period)
}

/// The kernel data plane, unless it is off by flag or for lack of
/// privilege.
fn start_dataplane(s: &Settings) -> anyhow::Result<Option<Arc<Mutex<Linux>>>> {
    if !s.dataplane {
        return Ok(None);
    }
    if !netdb_dataplane::has_net_admin() {
        tracing::warn!(
            "no CAP_NET_ADMIN: the data plane is off and endpoint attach is refused (run as root, or pass --no-dataplane)"
        );
        return Ok(None);
    }
    if !netdb_dataplane::has_sys_admin() {
        tracing::warn!(
            "no CAP_SYS_ADMIN: the data plane is off and endpoint attach is refused: its overlay namespace and the containers' need unshare, setns and a mount; run as root or grant CAP_SYS_ADMIN beside CAP_NET_ADMIN"
        );
        return Ok(None);
    }
    Ok(Some(Arc::new(Mutex::new(Linux::new(&s.overlay_netns)?))))
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
