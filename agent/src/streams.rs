//! TCP push/pull streams. The core speaks in frames addressed by peer and
//! exchange id; this module opens, accepts and frames the streams
//! (4-byte big-endian length, then the frame) and routes frames between
//! them and the core loop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Streams served at once; more are closed on accept.
const MAX_INBOUND: usize = 64;

/// After each peer frame, how long an exchange we opened waits for the
/// core's next one (none comes after a refusal or a cut-off).
const NEXT_FRAME_WAIT: Duration = Duration::from_secs(2);

/// A frame for a stream, and whether it is our last of an exchange we
/// opened.
pub(crate) type Outgoing = (Vec<u8>, bool);

/// Which stream a frame belongs to: one we accepted (the peer's address is
/// unique per connection) or one we opened for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    In(SocketAddr),
    Out(SocketAddr, u64),
}

/// What stream tasks tell the core loop.
#[derive(Debug)]
pub(crate) enum NetMsg {
    /// `budget` holds the frame's share of the byte budget until the core
    /// has handled it.
    Frame {
        from: SocketAddr,
        bytes: Vec<u8>,
        budget: OwnedSemaphorePermit,
    },
    /// A frame announced a length over the limit; the stream was closed.
    Oversized,
    Opened {
        key: Key,
        tx: mpsc::Sender<Outgoing>,
    },
    Closed {
        key: Key,
    },
    /// An exchange we opened could not be carried.
    Failed {
        sync_id: u64,
        /// Why, for the core's log line.
        why: String,
    },
}

/// Bounds shared by every stream: frame size, exchange lifetime, and the
/// bytes of frames read but not yet handled by the core (in KiB permits),
/// so many streams of large frames cannot pile up memory.
#[derive(Clone)]
pub(crate) struct Limits {
    max_frame: usize,
    life: Duration,
    budget: Arc<Semaphore>,
}

impl Limits {
    pub(crate) fn new(max_frame: usize, life: Duration) -> Self {
        let kib = (max_frame.saturating_mul(4) / 1024).max(16 * 1024);
        Limits { max_frame, life, budget: Arc::new(Semaphore::new(kib)) }
    }
}

pub(crate) struct Streams {
    conns: HashMap<Key, mpsc::Sender<Outgoing>>,
    net_tx: mpsc::Sender<NetMsg>,
    limits: Limits,
}

impl Streams {
    pub(crate) fn new(net_tx: mpsc::Sender<NetMsg>, limits: Limits) -> Self {
        Streams { conns: HashMap::new(), net_tx, limits }
    }

    /// Sends a frame the core produced.
    pub(crate) fn route(
        &mut self,
        to: SocketAddr,
        sync_id: u64,
        opens: bool,
        closes: bool,
        payload: Vec<u8>,
    ) {
        let out = Key::Out(to, sync_id);
        if opens {
            let (tx, rx) = mpsc::channel(4);
            let _ = tx.try_send((payload, closes));
            self.conns.insert(out, tx);
            tokio::spawn(outbound(to, sync_id, rx, self.net_tx.clone(), self.limits.clone()));
        } else if closes && let Some(tx) = self.conns.remove(&out) {
            let _ = tx.try_send((payload, true));
        } else if let Some(tx) = self.conns.get(&out).or_else(|| self.conns.get(&Key::In(to))) {
            let _ = tx.try_send((payload, false));
        } else {
            tracing::debug!(peer = %to, sync_id, "push/pull frame for a stream that is gone");
        }
    }

    pub(crate) fn opened(&mut self, key: Key, tx: mpsc::Sender<Outgoing>) {
        self.conns.insert(key, tx);
    }

    pub(crate) fn closed(&mut self, key: Key) {
        self.conns.remove(&key);
    }
}

/// Accepts push/pull streams until the listener fails.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    net_tx: mpsc::Sender<NetMsg>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a push/pull stream failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many push/pull streams; closing this one");
            continue;
        };
        let net_tx = net_tx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let key = Key::In(peer);
            if net_tx.send(NetMsg::Opened { key, tx }).await.is_ok() {
                let _ =
                    tokio::time::timeout(limits.life, inbound(stream, peer, rx, &net_tx, &limits))
                        .await;
                let _ = net_tx.send(NetMsg::Closed { key }).await;
            }
            drop(permit);
        });
    }
}

/// An exchange we opened: frames alternate, ours then the peer's, until
/// the core's last one, or until the core has no answer to the peer's
/// (after a refusal). The peer closing before it answered is a failure,
/// so the core retries at once.
async fn outbound(
    to: SocketAddr,
    sync_id: u64,
    mut rx: mpsc::Receiver<Outgoing>,
    net_tx: mpsc::Sender<NetMsg>,
    limits: Limits,
) {
    let run = async {
        let stream = TcpStream::connect(to).await?;
        let (mut r, mut w) = stream.into_split();
        let mut next = rx.recv().await;
        while let Some((frame, last)) = next {
            write_frame(&mut w, &frame).await?;
            if last {
                break;
            }
            let Some((bytes, budget)) = read_frame(&mut r, &limits, &net_tx).await? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed before answering",
                ));
            };
            if net_tx.send(NetMsg::Frame { from: to, bytes, budget }).await.is_err() {
                return Ok(());
            }
            next = tokio::time::timeout(NEXT_FRAME_WAIT, rx.recv()).await.ok().flatten();
        }
        w.shutdown().await
    };
    let why = match tokio::time::timeout(limits.life, run).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("stream failed: {e}")),
        Err(_) => Some(format!("stream outlived {:?}", limits.life)),
    };
    if let Some(why) = why {
        let _ = net_tx.send(NetMsg::Failed { sync_id, why }).await;
    }
    let _ = net_tx.send(NetMsg::Closed { key: Key::Out(to, sync_id) }).await;
}

/// An exchange a peer opened: its frames go to the core and the core's
/// answers go back, until the peer closes its side.
async fn inbound(
    stream: TcpStream,
    from: SocketAddr,
    mut rx: mpsc::Receiver<Outgoing>,
    net_tx: &mpsc::Sender<NetMsg>,
    limits: &Limits,
) -> io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    let reader = async {
        while let Some((bytes, budget)) = read_frame(&mut r, limits, net_tx).await? {
            if net_tx.send(NetMsg::Frame { from, bytes, budget }).await.is_err() {
                break;
            }
        }
        Ok::<_, io::Error>(())
    };
    let writer = async {
        while let Some((frame, _)) = rx.recv().await {
            write_frame(&mut w, &frame).await?;
        }
        w.shutdown().await
    };
    tokio::pin!(reader, writer);
    let mut writer_done = false;
    loop {
        tokio::select! {
            r = &mut reader => return r,
            w = &mut writer, if !writer_done => {
                writer_done = true;
                w?;
            }
        }
    }
}

async fn write_frame(w: &mut OwnedWriteHalf, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame too large"))?;
    w.write_u32(len).await?;
    w.write_all(frame).await
}

/// Reads one frame, or None at a clean end of stream. Its bytes are taken
/// from the shared budget before they are allocated.
async fn read_frame(
    r: &mut OwnedReadHalf,
    limits: &Limits,
    net_tx: &mpsc::Sender<NetMsg>,
) -> io::Result<Option<(Vec<u8>, OwnedSemaphorePermit)>> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > limits.max_frame {
        let _ = net_tx.send(NetMsg::Oversized).await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame over the size limit"));
    }
    let kib = u32::try_from(len / 1024 + 1).unwrap_or(u32::MAX);
    let budget = limits.budget.clone().acquire_many_owned(kib).await.map_err(io::Error::other)?;
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes).await?;
    Ok(Some((bytes, budget)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that answers every frame but the opener's last, and returns
    /// what it read once the opener closes.
    async fn answering_peer(listener: TcpListener) -> Vec<Vec<u8>> {
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, mut w) = stream.into_split();
        let mut got = Vec::new();
        while let Ok(len) = r.read_u32().await {
            let mut frame = vec![0u8; len as usize];
            r.read_exact(&mut frame).await.expect("frame");
            if frame != b"last" {
                write_frame(&mut w, b"answer").await.expect("answer");
            }
            got.push(frame);
        }
        got
    }

    #[tokio::test]
    async fn an_opened_exchange_alternates_frames_until_the_last() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let to = listener.local_addr().expect("addr");
        let peer = tokio::spawn(answering_peer(listener));
        let (net_tx, mut net_rx) = mpsc::channel(16);
        let mut streams = Streams::new(net_tx, Limits::new(1 << 20, Duration::from_secs(5)));
        streams.route(to, 1, true, false, b"open".to_vec());
        for (next, last) in [(&b"ask"[..], false), (b"last", true)] {
            match net_rx.recv().await {
                Some(NetMsg::Frame { from, bytes, .. }) => {
                    assert_eq!((from, &bytes[..]), (to, &b"answer"[..]))
                }
                other => panic!("expected the peer's answer, got {other:?}"),
            }
            streams.route(to, 1, false, last, next.to_vec());
        }
        let got = peer.await.expect("peer");
        assert_eq!(got, vec![b"open".to_vec(), b"ask".to_vec(), b"last".to_vec()]);
        match net_rx.recv().await {
            Some(NetMsg::Closed { key }) => assert_eq!(key, Key::Out(to, 1)),
            other => panic!("expected a clean close, got {other:?}"),
        }
    }
}
