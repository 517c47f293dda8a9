//! Forwarding to the upstream resolvers, from the agent's own namespace
//! (so a host resolver on loopback, such as systemd-resolved's, works).
//! The reply is passed through as the upstream sent it, NXDOMAIN and
//! SERVFAIL included; only when no upstream answers in time does the
//! container get a SERVFAIL of ours.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use super::Transport;

/// How long one upstream has to answer before the next is asked.
const ATTEMPT: Duration = Duration::from_secs(2);

/// Longest a forwarded query may take in all: under glibc's 5 s, so the
/// container gets our SERVFAIL rather than its own timeout.
const TOTAL: Duration = Duration::from_millis(4500);

/// Largest UDP reply taken from an upstream (what we announce with EDNS).
const UDP_REPLY: usize = 4096;

/// The resolvers forwarded to, in order.
#[derive(Debug, Clone)]
pub(crate) struct Upstreams {
    servers: Vec<SocketAddr>,
}

impl Upstreams {
    pub(crate) fn new(servers: Vec<SocketAddr>) -> Upstreams {
        Upstreams { servers }
    }

    /// The reply to send back for `query`, as the upstream gave it; or,
    /// when none answers, a SERVFAIL (`Err` carries it, so the caller can
    /// count the failure).
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + TOTAL;
        for server in &self.servers {
            let attempt = (Instant::now() + ATTEMPT).min(deadline);
            let got = match transport {
                Transport::Udp => timeout_at(attempt, udp(*server, query)).await,
                Transport::Tcp => timeout_at(attempt, tcp(*server, query)).await,
            };
            match got {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %server, error = %e, "upstream resolver failed")
                }
                Err(_) => tracing::debug!(upstream = %server, "upstream resolver timed out"),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(servfail(query))
    }
}

/// SERVFAIL for `query`.
pub(crate) fn servfail(query: &[u8]) -> Vec<u8> {
    empty_reply(query, ResponseCode::ServFail, false)
}

/// A reply to `query` (which decoded once already, in the answer path)
/// with no records, `rcode`, and the truncated flag if `truncated`.
fn empty_reply(query: &[u8], rcode: ResponseCode, truncated: bool) -> Vec<u8> {
    let reply = match Message::from_vec(query) {
        Ok(q) => {
            let mut m = Message::error_msg(q.metadata.id, OpCode::Query, rcode);
            m.metadata.truncation = truncated;
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.add_queries(q.queries);
            m
        }
        Err(_) => Message::error_msg(0, OpCode::Query, ResponseCode::ServFail),
    };
    reply.to_vec().unwrap_or_default()
}

/// The query over UDP from a fresh socket (a random source port) with a
/// fresh id; only a reply from the server, with that id and the same
/// question, is taken, so a spoofed one must guess both.
async fn udp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let any = match server.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    let id: u16 = rand::random();
    let mut out = query.to_vec();
    let original = rewrite_id(&mut out, id).ok_or_else(|| io::Error::other("query too short"))?;
    sock.send_to(&out, server).await?;
    let mut buf = vec![0u8; UDP_REPLY + 1];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        if from != server {
            continue;
        }
        let Some(reply) = buf.get(..n) else { continue };
        if !same_exchange(query, reply, id) {
            continue;
        }
        if n > UDP_REPLY {
            // Cut off here: the container is told to ask again over TCP.
            return Ok(empty_reply(query, ResponseCode::NoError, true));
        }
        let mut reply = reply.to_vec();
        rewrite_id(&mut reply, original);
        return Ok(reply);
    }
}

/// The query over TCP (RFC 1035 4.2.2: each message behind its length).
async fn tcp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    let n = usize::from(s.read_u16().await?);
    let mut reply = vec![0u8; n];
    s.read_exact(&mut reply).await?;
    let id = query.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if !same_exchange(query, &reply, id) {
        return Err(io::Error::other("the reply does not match the query"));
    }
    Ok(reply)
}

/// Sets a message's id; the old one, or `None` if it has none.
fn rewrite_id(msg: &mut [u8], id: u16) -> Option<u16> {
    let head = msg.get_mut(..2)?;
    let old = u16::from_be_bytes([head[0], head[1]]);
    head.copy_from_slice(&id.to_be_bytes());
    Some(old)
}

/// `reply` is a response with id `id` to the question `query` asked.
fn same_exchange(query: &[u8], reply: &[u8], id: u16) -> bool {
    let (Ok(q), Ok(r)) = (Message::from_vec(query), Message::from_vec(reply)) else {
        return false;
    };
    r.metadata.id == id
        && r.metadata.message_type == MessageType::Response
        && r.queries == q.queries
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn query(name: &str, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    /// A reply to `q` with `rcode`, and 192.0.2.53 for NOERROR.
    fn reply_to(q: &[u8], rcode: ResponseCode) -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_queries(q.queries.clone());
        if rcode == ResponseCode::NoError {
            let name = q.queries[0].name().clone();
            m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 53))));
        }
        m.to_vec().unwrap()
    }

    /// A UDP resolver on loopback: first a reply with the wrong id and
    /// one with another question (both must be ignored), then the real
    /// one; NXDOMAIN for names under `missing.`.
    async fn stub() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let q = buf[..n].to_vec();
                let name = Message::from_vec(&q).unwrap().queries[0].name().to_ascii();
                let rcode = if name.ends_with("missing.") {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                // The forgeries say REFUSED: taking either shows.
                let mut wrong_id = reply_to(&q, ResponseCode::Refused);
                wrong_id[0] ^= 0xff;
                sock.send_to(&wrong_id, from).await.unwrap();
                let mut other = query("other.example.", 0);
                other[..2].copy_from_slice(&q[..2]);
                sock.send_to(&reply_to(&other, ResponseCode::Refused), from).await.unwrap();
                sock.send_to(&reply_to(&q, rcode), from).await.unwrap();
            }
        });
        addr
    }

    fn decoded(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap()
    }

    #[tokio::test]
    async fn replies_pass_through_with_the_containers_id_and_spoofs_are_ignored() {
        let up = Upstreams::new(vec![stub().await]);
        let m = decoded(&up.forward(&query("www.example.", 4242), Transport::Udp).await.unwrap());
        assert_eq!(m.metadata.id, 4242, "the container's id is restored");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "a forgery was taken");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "www.example.");

        let m = decoded(&up.forward(&query("x.missing.", 7), Transport::Udp).await.unwrap());
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "NXDOMAIN passes through");
    }

    #[tokio::test]
    async fn a_silent_upstream_is_skipped_and_none_answering_is_servfail() {
        // Bound and never read: queries to it go unanswered.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead = silent.local_addr().unwrap();
        let up = Upstreams::new(vec![dead, stub().await]);
        let start = Instant::now();
        let m = decoded(&up.forward(&query("www.example.", 9), Transport::Udp).await.unwrap());
        assert_eq!(m.answers.len(), 1, "the second upstream answered");
        assert!(start.elapsed() >= ATTEMPT, "after the first one's attempt ran out");

        let up = Upstreams::new(vec![dead]);
        let failed = up.forward(&query("www.example.", 11), Transport::Udp).await.unwrap_err();
        let m = decoded(&failed);
        assert_eq!((m.metadata.id, m.metadata.response_code), (11, ResponseCode::ServFail));
        assert_eq!(m.queries.len(), 1);
        let none = Upstreams::new(Vec::new()).forward(&query("a.", 1), Transport::Udp).await;
        assert_eq!(decoded(&none.unwrap_err()).metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn an_oversized_upstream_reply_becomes_a_truncated_one_for_tcp() {
        let m = decoded(&empty_reply(&query("big.example.", 5), ResponseCode::NoError, true));
        assert!(m.metadata.truncation);
        assert_eq!((m.metadata.id, m.metadata.response_code), (5, ResponseCode::NoError));
        assert_eq!((m.queries.len(), m.answers.len()), (1, 0));
        let m = decoded(&servfail(&query("big.example.", 6)));
        assert!(!m.metadata.truncation);
        assert_eq!((m.metadata.id, m.metadata.response_code), (6, ResponseCode::ServFail));
    }

    #[tokio::test]
    async fn tcp_queries_go_upstream_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let n = usize::from(s.read_u16().await.unwrap());
            let mut q = vec![0u8; n];
            s.read_exact(&mut q).await.unwrap();
            let r = reply_to(&q, ResponseCode::NoError);
            s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&r).await.unwrap();
        });
        let up = Upstreams::new(vec![addr]);
        let m = decoded(&up.forward(&query("big.example.", 77), Transport::Tcp).await.unwrap());
        assert_eq!((m.metadata.id, m.answers.len()), (77, 1));
    }
}
