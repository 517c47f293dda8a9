//! One container's resolver: UDP and TCP sockets bound to 127.0.0.11:53
//! inside its network namespace. A socket belongs to the namespace of the
//! thread that made it, for its whole life, so a short-lived thread enters
//! the namespace, binds and ends; the sockets are then served from the
//! DNS thread's runtime like any other. Who asks is known by which
//! socket the query came in on: the answer comes only from that
//! container's networks.
//!
//! Or a network's resolver for Docker's containers: the same sockets at
//! the network's gateway address, in the agent's namespace (where the
//! network's bridge holds it). Who asks is known by the query's source
//! address.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use rand::SeedableRng;
use rand::rngs::StdRng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use super::counters::Counters;
use super::limit::Bucket;
use super::resolv::LISTEN;
use super::upstream::{Upstreams, servfail};
use super::{Network, Refusals, Reply, Transport, answer};
use crate::overlay::View;

/// Largest UDP query read: what we announce with EDNS, plus one byte to
/// tell a larger one.
const UDP_QUERY: usize = 4097;

/// Forwarded queries in flight per container; more are refused at once
/// (SERVFAIL) rather than queued.
const MAX_FORWARDS: usize = 64;

/// TCP connections open per container.
const MAX_TCP: usize = 16;

/// How long a TCP connection may idle between queries, or take to send
/// one.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What every listener shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) counters: Arc<Counters>,
    /// Queries per second per container; 0: no limit.
    pub(crate) rate: u32,
}

/// A container's open resolver; closed when dropped.
pub(crate) struct Listener {
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Who asks through a listener.
enum Who {
    /// The container whose namespace it is in, as its endpoints name it.
    Container(Vec<PathBuf>),
    /// Docker's containers on the network whose gateway address it is at.
    Gateway(Ipv4Addr),
}

/// Who asks through one listener, and what it may still ask for.
struct Asker {
    who: Who,
    shared: Shared,
    bucket: Mutex<Bucket>,
    forwards: Arc<Semaphore>,
    rng: Mutex<StdRng>,
}

impl Listener {
    /// Binds inside the namespace `ns` (opened from `paths[0]`) and serves.
    pub(crate) fn open(ns: &File, paths: Vec<PathBuf>, shared: Shared) -> io::Result<Listener> {
        Listener::serve(bind_in(ns)?, Who::Container(paths), shared)
    }

    /// Binds at `gateway`:53 in this namespace and serves. The bridge may
    /// get the address only at the next reconcile: bound regardless
    /// (IP_FREEBIND), the sockets answer as soon as it has it.
    pub(crate) fn at_gateway(gateway: Ipv4Addr, shared: Shared) -> io::Result<Listener> {
        let addr = SocketAddr::new(IpAddr::V4(gateway), 53).into();
        let bound = |ty: Type, proto: Protocol| -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
            s.set_freebind_v4(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr)?;
            Ok(s)
        };
        let udp = bound(Type::DGRAM, Protocol::UDP)?;
        let tcp = bound(Type::STREAM, Protocol::TCP)?;
        tcp.listen(128)?;
        Listener::serve((udp.into(), tcp.into()), Who::Gateway(gateway), shared)
    }

    fn serve(
        (udp, tcp): (std::net::UdpSocket, std::net::TcpListener),
        who: Who,
        shared: Shared,
    ) -> io::Result<Listener> {
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        let asker = Arc::new(Asker {
            who,
            bucket: Mutex::new(Bucket::new(shared.rate, Instant::now())),
            shared,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            rng: Mutex::new(StdRng::from_rng(&mut rand::rng())),
        });
        let tasks =
            [tokio::spawn(serve_udp(udp, asker.clone())), tokio::spawn(serve_tcp(tcp, asker))];
        Ok(Listener { tasks })
    }
}

/// The two sockets, made by a thread that entered the namespace.
fn bind_in(ns: &File) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let ns = ns.try_clone()?;
    std::thread::spawn(move || -> io::Result<_> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let udp = std::net::UdpSocket::bind(LISTEN)?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind(LISTEN)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

impl Asker {
    /// The reply for one query, or what to do instead (a query over the
    /// container's rate is dropped).
    fn reply(&self, query: &[u8], transport: Transport, from: IpAddr) -> Reply {
        let c = &self.shared.counters;
        c.query();
        if !self.bucket.lock().is_ok_and(|mut b| b.take(Instant::now())) {
            c.rate_limited();
            return Reply::Drop;
        }
        let view = self.shared.view.borrow().clone();
        let known = match (&self.who, from) {
            (Who::Container(paths), _) => view.networks_of(paths),
            (Who::Gateway(gateway), IpAddr::V4(from)) => match view.networks_at(*gateway, from) {
                Some(networks) => networks,
                // Not a container of the network: no answers, and above all
                // no forwarding for whoever can reach the address.
                None => {
                    c.refused(&Refusals { strangers: 1, ..Refusals::default() });
                    return Reply::Drop;
                }
            },
            (Who::Gateway(_), IpAddr::V6(_)) => return Reply::Drop,
        };
        let networks: Vec<Network<'_>> =
            known.into_iter().map(|(name, names)| Network { name, names }).collect();
        let mut refused = Refusals::default();
        let reply = match self.rng.lock() {
            Ok(mut rng) => answer(&networks, query, transport, &mut *rng, &mut refused),
            Err(_) => return Reply::Drop,
        };
        c.refused(&refused);
        if matches!(reply, Reply::Answer(_)) && refused == Refusals::default() {
            c.answered();
        }
        reply
    }

    /// A place among the forwarded queries in flight; `None` (counted)
    /// when they are all taken.
    fn forward_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.forwards.clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.shared.counters.overloaded();
        }
        slot
    }

    /// Forwards `query` upstream, holding `_slot` until the reply is in;
    /// the reply to send back.
    async fn forward(
        &self,
        query: &[u8],
        transport: Transport,
        _slot: OwnedSemaphorePermit,
    ) -> Vec<u8> {
        let c = &self.shared.counters;
        c.forwarded();
        match self.shared.upstreams.forward(query, transport).await {
            Ok(reply) => reply,
            Err(servfail) => {
                c.upstream_failed();
                servfail
            }
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, asker: Arc<Asker>) {
    let mut buf = vec![0u8; UDP_QUERY];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // Transient (ICMP errors reported on the socket); slowed so
                // a persistent one cannot spin.
                tracing::debug!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = &buf[..n];
        match asker.reply(query, Transport::Udp, from.ip()) {
            Reply::Answer(bytes) => send(&sock, &bytes, from).await,
            Reply::Forward => {
                let Some(slot) = asker.forward_slot() else {
                    send(&sock, &servfail(query), from).await;
                    continue;
                };
                let (sock, asker, query) = (sock.clone(), asker.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = asker.forward(&query, Transport::Udp, slot).await;
                    send(&sock, &reply, from).await;
                });
            }
            Reply::Drop => {}
        }
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, to).await {
        tracing::debug!(error = %e, "DNS reply not sent");
    }
}

async fn serve_tcp(listener: TcpListener, asker: Arc<Asker>) {
    let open = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            asker.shared.counters.overloaded();
            continue;
        };
        let asker = asker.clone();
        tokio::spawn(async move {
            serve_connection(stream, from.ip(), &asker).await;
            drop(permit);
        });
    }
}

/// Queries one after another on one connection, each behind its length,
/// until the container closes it, idles or sends what we drop.
async fn serve_connection(mut s: TcpStream, from: IpAddr, asker: &Asker) {
    let mut query = Vec::new();
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else { return };
        query.resize(usize::from(len), 0);
        if !matches!(tokio::time::timeout(TCP_IDLE, s.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let reply = match asker.reply(&query, Transport::Tcp, from) {
            Reply::Answer(bytes) => bytes,
            Reply::Forward => match asker.forward_slot() {
                Some(slot) => asker.forward(&query, Transport::Tcp, slot).await,
                None => servfail(&query),
            },
            Reply::Drop => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
