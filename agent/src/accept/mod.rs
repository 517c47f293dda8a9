//! The accept path for the API's Unix socket: every connection is wrapped
//! in `Rewriting`, which fixes the client's HTTP/2 header blocks before
//! tonic reads them.
//!
//! Why: gRPC clients on a Unix socket send the socket path as `:authority`
//! (C-core percent-encodes it, grpc-java sends it raw). h2 parses
//! `:authority` as a URI authority and resets every such stream with
//! PROTOCOL_ERROR before any tower layer runs, and upstream will not relax
//! it. So the client-to-server bytes are parsed here: header blocks are
//! decoded, an `:authority` h2 would refuse becomes `localhost`, and the
//! blocks are encoded again; every other frame, and the whole
//! server-to-client direction, passes unchanged. TCP connections do not
//! come through here.

mod block;
mod frames;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::Connected;

use frames::{Limits, Rewriter};

/// How much is read from the client at a time: one frame of the largest
/// size the server allows, with its header.
const READ_CHUNK: usize = 16_384 + 9;

/// Counters over every connection of one server.
#[derive(Debug, Default)]
pub(crate) struct AcceptStats {
    connections: AtomicU64,
    authorities_replaced: AtomicU64,
    refused: AtomicU64,
}

impl AcceptStats {
    /// Connections accepted, `:authority` values replaced, connections
    /// ended because the client's frames could not be forwarded.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.authorities_replaced.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// The API's Unix socket connections, each wrapped in `Rewriting`.
pub(crate) fn unix_incoming(
    listener: UnixListener,
    stats: Arc<AcceptStats>,
) -> impl Stream<Item = io::Result<Rewriting<UnixStream>>> {
    UnixListenerStream::new(listener).map(move |conn| {
        conn.map(|stream| {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            Rewriting::new(stream, Limits::TONIC_DEFAULTS, stats.clone())
        })
    })
}

/// A client connection whose reads come out rewritten; writes pass
/// straight through.
pub(crate) struct Rewriting<S> {
    inner: S,
    rewriter: Rewriter,
    /// Client bytes not yet rewritten (at most part of one frame, plus one
    /// read).
    input: BytesMut,
    /// Rewritten bytes not yet read by the server.
    out: BytesMut,
    scratch: Box<[u8]>,
    /// The client closed, or the connection was refused: reads end.
    done: bool,
    /// Why the connection is refused, returned once the frames before the
    /// offending one were read.
    refusal: Option<String>,
    counted: u64,
    stats: Arc<AcceptStats>,
}

impl<S> Rewriting<S> {
    fn new(inner: S, limits: Limits, stats: Arc<AcceptStats>) -> Rewriting<S> {
        Rewriting {
            inner,
            rewriter: Rewriter::new(limits),
            input: BytesMut::new(),
            out: BytesMut::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            done: false,
            refusal: None,
            counted: 0,
            stats,
        }
    }

    fn count_replaced(&mut self) {
        let now = self.rewriter.authorities_replaced();
        if now > self.counted {
            if self.counted == 0 {
                tracing::debug!("replacing the :authority of this API connection with localhost");
            }
            self.stats.authorities_replaced.fetch_add(now - self.counted, Ordering::Relaxed);
            self.counted = now;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewriting<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some(refusal) = this.refusal.take() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, refusal)));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.done = true;
                continue;
            }
            this.input.extend_from_slice(read.filled());
            let fed = this.rewriter.feed(&mut this.input, &mut this.out);
            this.count_replaced();
            if let Err(refusal) = fed {
                this.done = true;
                this.input = BytesMut::new();
                let total = this.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    refused_total = total,
                    "closed an API connection: the client sent {refusal}"
                );
                this.refusal = Some(format!("the client sent {refusal}"));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewriting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Rewriting<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_come_out_rewritten_and_refusals_end_the_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        let stats = Arc::new(AcceptStats::default());
        let mut conn = Rewriting::new(server, Limits::TONIC_DEFAULTS, stats.clone());
        let h = [(&b":method"[..], &b"POST"[..]), (&b":authority"[..], &b"a/b"[..])];
        let block = loona_hpack::Encoder::new().encode(h);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&[0, 0, block.len() as u8, 1, 4, 0, 0, 0, 1]);
        input.extend_from_slice(&block);
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            // A frame over the limit ends the connection.
            client.write_all(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]).await.unwrap();
            client
        });
        let mut got = Vec::new();
        let err = loop {
            let mut b = [0u8; 7];
            match conn.read(&mut b).await {
                Ok(0) => panic!("EOF before the refusal"),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("SETTINGS_MAX_FRAME_SIZE"), "{err}");
        let block = got.get(24 + 9..).unwrap();
        let decoded = loona_hpack::Decoder::new().decode(block).unwrap();
        assert_eq!(decoded[1], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(stats.totals(), (0, 1, 1));
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap(), 0, "reads end after a refusal");
        drop(writer.await.unwrap());
    }
}
