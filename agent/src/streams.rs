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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// Streams served at once; more are closed on accept.
const MAX_INBOUND: usize = 64;

/// Which stream a frame belongs to: one we accepted (the peer's address is
/// unique per connection) or one we opened for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    In(SocketAddr),
    Out(SocketAddr, u64),
}

/// What stream tasks tell the core loop.
#[derive(Debug)]
pub enum NetMsg {
    Frame {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A frame announced a length over the limit; the stream was closed.
    Oversized,
    Opened {
        key: Key,
        tx: mpsc::Sender<Vec<u8>>,
    },
    Closed {
        key: Key,
    },
    /// An exchange we opened could not be carried.
    Failed {
        sync_id: u64,
    },
}

#[derive(Clone, Copy)]
struct Limits {
    max_frame: usize,
    life: Duration,
}

pub struct Streams {
    conns: HashMap<Key, mpsc::Sender<Vec<u8>>>,
    net_tx: mpsc::Sender<NetMsg>,
    limits: Limits,
}

impl Streams {
    /// `life` bounds a whole exchange, connect included.
    pub fn new(net_tx: mpsc::Sender<NetMsg>, max_frame: usize, life: Duration) -> Self {
        Streams { conns: HashMap::new(), net_tx, limits: Limits { max_frame, life } }
    }

    /// Sends a frame the core produced.
    pub fn route(&mut self, to: SocketAddr, sync_id: u64, opens: bool, payload: Vec<u8>) {
        if opens {
            let (tx, rx) = mpsc::channel(4);
            let _ = tx.try_send(payload);
            self.conns.insert(Key::Out(to, sync_id), tx);
            tokio::spawn(outbound(to, sync_id, rx, self.net_tx.clone(), self.limits));
        } else if let Some(tx) = self.conns.remove(&Key::Out(to, sync_id)) {
            // Our last frame of an exchange we opened: dropping the sender
            // closes our side after it is written.
            let _ = tx.try_send(payload);
        } else if let Some(tx) = self.conns.get(&Key::In(to)) {
            let _ = tx.try_send(payload);
        } else {
            tracing::debug!(peer = %to, sync_id, "push/pull frame for a stream that is gone");
        }
    }

    pub fn opened(&mut self, key: Key, tx: mpsc::Sender<Vec<u8>>) {
        self.conns.insert(key, tx);
    }

    pub fn closed(&mut self, key: Key) {
        self.conns.remove(&key);
    }
}

/// Accepts push/pull streams until the listener fails.
pub async fn accept_loop(
    listener: TcpListener,
    net_tx: mpsc::Sender<NetMsg>,
    max_frame: usize,
    life: Duration,
) {
    let limits = Limits { max_frame, life };
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
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let key = Key::In(peer);
            if net_tx.send(NetMsg::Opened { key, tx }).await.is_ok() {
                let _ = tokio::time::timeout(limits.life, serve(stream, peer, rx, &net_tx, limits))
                    .await;
                let _ = net_tx.send(NetMsg::Closed { key }).await;
            }
            drop(permit);
        });
    }
}

async fn outbound(
    to: SocketAddr,
    sync_id: u64,
    rx: mpsc::Receiver<Vec<u8>>,
    net_tx: mpsc::Sender<NetMsg>,
    limits: Limits,
) {
    let run = async {
        let stream = TcpStream::connect(to).await?;
        serve(stream, to, rx, &net_tx, limits).await
    };
    let ok = matches!(tokio::time::timeout(limits.life, run).await, Ok(Ok(())));
    if !ok {
        tracing::debug!(peer = %to, sync_id, "push/pull stream failed");
        let _ = net_tx.send(NetMsg::Failed { sync_id }).await;
    }
    let _ = net_tx.send(NetMsg::Closed { key: Key::Out(to, sync_id) }).await;
}

/// Reads frames to the core and writes the core's frames, until the peer
/// closes its side.
async fn serve(
    stream: TcpStream,
    from: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    net_tx: &mpsc::Sender<NetMsg>,
    limits: Limits,
) -> io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    let reader = async {
        loop {
            let len = match r.read_u32().await {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if len > limits.max_frame {
                let _ = net_tx.send(NetMsg::Oversized).await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame over the size limit",
                ));
            }
            let mut bytes = vec![0u8; len];
            r.read_exact(&mut bytes).await?;
            if net_tx.send(NetMsg::Frame { from, bytes }).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some(frame) = rx.recv().await {
            let len =
                u32::try_from(frame.len()).map_err(|_| io::Error::other("frame too large"))?;
            w.write_u32(len).await?;
            w.write_all(&frame).await?;
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
