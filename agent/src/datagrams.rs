//! Gossip datagrams in batches: one `recvmmsg` reads what the socket holds
//! (up to `RECV_BATCH`), one `sendmmsg` sends up to `SEND_BATCH` of what a
//! flush produced. In the 100-agent loopback burst an agent receives and
//! sends some 3,600 datagrams each way, and a system call apiece put about
//! a third of its CPU in the kernel (docs/performance.md). nix wraps both
//! calls, so the crate stays free of unsafe code.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use netdb::codec::MAX_DATAGRAM;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams read in one call, and (about) in one turn of the loop:
/// enough to pay its cost once for many, few enough that timers and API
/// calls wait little.
pub(crate) const RECV_BATCH: usize = 32;

/// Most datagrams in one `sendmmsg`. A flush rarely holds more; the
/// kernel's own cap (UIO_MAXIOV, 1024) is far above, and a header with
/// its address is ~200 bytes, kept for the agent's life.
const SEND_BATCH: usize = 64;

/// The receive side: `RECV_BATCH` buffers of `MAX_DATAGRAM` bytes, made
/// once (zeroed, so pages no datagram reached are never resident), and
/// what the last read put in them.
pub(crate) struct Receiver {
    bufs: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Receiver {
    pub(crate) fn new() -> Self {
        Receiver {
            bufs: vec![0u8; RECV_BATCH * MAX_DATAGRAM],
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Reads the datagrams the socket holds, up to `RECV_BATCH`, in one
    /// call and without waiting (WouldBlock when it holds none, which
    /// also clears tokio's readiness). Returns how many; `datagrams`
    /// hands them out.
    pub(crate) fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let Receiver { bufs, headers, got } = self;
        got.clear();
        let fd = sock.as_raw_fd();
        sock.try_io(Interest::READABLE, || {
            let mut chunks = bufs.chunks_exact_mut(MAX_DATAGRAM);
            // `bufs` is exactly RECV_BATCH chunks: the empty default never
            // shows.
            let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let read = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
            got.extend(read.map(|m| (m.bytes, m.address.as_ref().and_then(socket_addr))));
            Ok(got.len())
        })
    }

    /// The datagrams of the last `recv`, in the order the kernel queued
    /// them, with their senders.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.bufs
            .chunks_exact(MAX_DATAGRAM)
            .zip(&self.got)
            .filter_map(|(buf, &(n, from))| Some((from?, buf.get(..n)?)))
    }
}

/// The send side: the datagrams of one flush, queued, then sent
/// `SEND_BATCH` to a call.
pub(crate) struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
    queue: Vec<(SocketAddr, Bytes)>,
}

impl Sender {
    pub(crate) fn new() -> Self {
        Sender { headers: MultiHeaders::preallocate(SEND_BATCH, None), queue: Vec::new() }
    }

    pub(crate) fn push(&mut self, to: SocketAddr, payload: Bytes) {
        self.queue.push((to, payload));
    }

    /// Sends the queued datagrams in order, waiting while the socket's
    /// buffer is full. The kernel sends a prefix of a batch and keeps
    /// quiet about why it stopped; the next call starts at the datagram
    /// it stopped at and so reports its error. Such a datagram is logged
    /// and skipped, and the rest still go. Returns how many failed.
    pub(crate) async fn send(&mut self, sock: &UdpSocket) -> usize {
        let Sender { headers, queue } = self;
        let fd = sock.as_raw_fd();
        let mut rest = &queue[..];
        let mut failed = 0;
        while let Some(&(to, _)) = rest.first() {
            let batch = &rest[..rest.len().min(SEND_BATCH)];
            match sock.async_io(Interest::WRITABLE, || send_batch(fd, headers, batch)).await {
                Ok(sent) if sent > 0 => rest = rest.get(sent..).unwrap_or_default(),
                r => {
                    // A success that sent nothing would otherwise loop
                    // forever; the kernel fails instead, but be sure.
                    let e = r.err().unwrap_or_else(|| io::Error::other("sendmmsg sent nothing"));
                    tracing::debug!(peer = %to, error = %e, "UDP send failed");
                    failed += 1;
                    rest = &rest[1..];
                }
            }
        }
        queue.clear();
        failed
    }
}

/// One `sendmmsg` of `batch` (at most `SEND_BATCH`): how many went.
fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    batch: &[(SocketAddr, Bytes)],
) -> io::Result<usize> {
    let iovs: [[IoSlice<'_>; 1]; SEND_BATCH] =
        std::array::from_fn(|i| [IoSlice::new(batch.get(i).map_or(&[], |(_, p)| p))]);
    let addrs: [Option<SockaddrStorage>; SEND_BATCH] =
        std::array::from_fn(|i| batch.get(i).map(|&(to, _)| SockaddrStorage::from(to)));
    let none: [ControlMessage<'_>; 0] = [];
    let sent =
        sendmmsg(fd, headers, iovs.iter().take(batch.len()), addrs, none, MsgFlags::MSG_DONTWAIT)?;
    Ok(sent.count())
}

/// The gossip socket, with buffers large enough to absorb a burst of
/// packets from many peers (the kernel caps them at net.core.rmem_max and
/// wmem_max; a smaller buffer only means more loss for push/pull to mend).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
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

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Payloads saying who sent them and in which order.
    fn payload(sender: u8, i: u32) -> Bytes {
        let mut p = vec![sender];
        p.extend_from_slice(&i.to_be_bytes());
        Bytes::from(p)
    }

    /// Receives `n` datagrams with `Receiver`, in the order they came.
    async fn receive(sock: &UdpSocket, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut rx = Receiver::new();
        let mut got = Vec::new();
        let all = async {
            while got.len() < n {
                sock.readable().await.unwrap();
                match rx.recv(sock) {
                    Ok(_) => got.extend(rx.datagrams().map(|(from, d)| (from, d.to_vec()))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("receive failed: {e}"),
                }
            }
        };
        // A guard against a hang when datagrams are lost, not a timing goal.
        tokio::time::timeout(Duration::from_secs(10), all).await.expect("datagrams lost");
        got
    }

    /// Two senders, each more datagrams than the kernel takes in one
    /// sendmmsg or recvmmsg (UIO_MAXIOV, 1024): all arrive, in order, from
    /// the right address.
    async fn batches_arrive_in_order(a: &str, b: &str, to: &str) {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (a, b, to) = (bind(addr(a)).unwrap(), bind(addr(b)).unwrap(), bind(addr(to)).unwrap());
        let dest = to.local_addr().unwrap();
        let n = 1100;
        let mut tx = Sender::new();
        for (id, sock) in [(1, &a), (2, &b)] {
            for i in 0..n {
                tx.push(dest, payload(id, i));
            }
            assert_eq!(tx.send(sock).await, 0);
        }
        let got = receive(&to, 2 * n as usize).await;
        let want: Vec<_> = [(1, &a), (2, &b)]
            .into_iter()
            .flat_map(|(id, sock)| {
                let from = sock.local_addr().unwrap();
                (0..n).map(move |i| (from, payload(id, i).to_vec()))
            })
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn ipv4_batches_arrive_in_order() {
        batches_arrive_in_order("127.0.7.1:0", "127.0.7.2:0", "127.0.7.3:0").await;
    }

    #[tokio::test]
    async fn ipv6_batches_arrive_in_order() {
        batches_arrive_in_order("[::1]:0", "[::1]:0", "[::1]:0").await;
    }

    /// The kernel stops a batch at a datagram it refuses (too large for
    /// UDP; an IPv6 peer on an IPv4 socket): that one is counted as
    /// failed, and those behind it still go.
    #[tokio::test]
    async fn a_refused_datagram_fails_alone() {
        let from = bind("127.0.7.1:0".parse().unwrap()).unwrap();
        let to = bind("127.0.7.3:0".parse().unwrap()).unwrap();
        let dest = to.local_addr().unwrap();
        let mut tx = Sender::new();
        let mut want = Vec::new();
        for i in 0..30 {
            match i {
                10 => tx.push(dest, Bytes::from(vec![0u8; MAX_DATAGRAM + 1])),
                20 => tx.push("[::1]:9".parse().unwrap(), payload(1, i)),
                _ => {
                    tx.push(dest, payload(1, i));
                    want.push((from.local_addr().unwrap(), payload(1, i).to_vec()));
                }
            }
        }
        assert_eq!(tx.send(&from).await, 2);
        assert_eq!(receive(&to, want.len()).await, want);
        // The queue is spent: a second send sends nothing again.
        assert_eq!(tx.send(&from).await, 0);
        assert_eq!(to.try_recv_from(&mut [0u8; 16]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
