//! The embedded DNS: every container with an endpoint here asks
//! 127.0.0.11:53 inside its own namespace and is answered from the names
//! of the networks it is attached to; other names go to the upstream
//! resolvers.
//!
//! - `service`: the responder's thread; listeners and resolv.conf files
//!   follow the containers.
//! - `listener`: one container's sockets, and serving them.
//! - `upstream`: forwarding.
//! - `resolv`: the host's resolv.conf, and the containers'.
//! - `limit`: the per-container rate limit.
//! - `counters`: for `netdb stats` and `/metrics`.
//!
//! This file holds the answers, as a pure function: from the query bytes a
//! container sent and the endpoint names of the networks it is attached
//! to, the reply to send, or word that the query is for the upstream
//! resolvers. No sockets or clocks here; the listener calls [`answer`].
//!
//! What is answered: an endpoint's name or alias (A), `NAME.NETWORK`, a
//! service name and `tasks.SERVICE` (every live endpoint of the service,
//! in an order drawn from the caller's RNG), and PTR for endpoint
//! addresses (`name.network.`). A name known here but asked for another
//! type (AAAA, MX...) gets an empty NOERROR, so the resolver does not go
//! on to search domains or upstream. Everything else is forwarded.

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::overlay::{Holder, Names};

mod counters;
mod limit;
mod listener;
mod resolv;
mod service;
mod upstream;

pub(crate) use counters::DnsTallies;
pub(crate) use resolv::{HOST_FILE, HostResolv, NETNS_ETC, parse_upstream};
pub(crate) use service::{Dns, Settings};

/// TTL of every answer, in seconds. A detach or a failed host reaches
/// every host within a few seconds (three gossip rounds, or failure
/// detection's ~3 s); a cache may add at most this much on top, so a
/// name that went away stops resolving within about 5 s. Containers ask
/// again often, but the asking stays inside the host.
pub(crate) const TTL: u32 = 2;

/// Largest UDP message without EDNS (RFC 1035).
pub(crate) const UDP_LIMIT: usize = 512;

/// Largest UDP payload we announce and accept with EDNS.
pub(crate) const EDNS_LIMIT: u16 = 4096;

/// How the query came: UDP replies are bounded in size, TCP ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a name of these networks: ask the upstream resolvers.
    Forward,
    /// Send nothing (not a query, or too broken to carry an id).
    Drop,
}

/// Why a query was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Does not decode as a DNS message (FORMERR if it has an id).
    Malformed,
    /// A response, or a message that is not a standard query.
    NotAQuery,
    /// Other than exactly one question (FORMERR).
    Questions,
    /// Larger than UDP allows without EDNS, or than its EDNS says.
    Oversized,
}

/// Refused queries, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Refusals {
    pub(crate) malformed: u64,
    pub(crate) not_a_query: u64,
    pub(crate) questions: u64,
    pub(crate) oversized: u64,
    /// Asked at a gateway by none of the network's containers on this
    /// host: dropped, the gateway is no open resolver.
    pub(crate) strangers: u64,
}

impl Refusals {
    fn count(&mut self, why: Refusal) {
        let n = match why {
            Refusal::Malformed => &mut self.malformed,
            Refusal::NotAQuery => &mut self.not_a_query,
            Refusal::Questions => &mut self.questions,
            Refusal::Oversized => &mut self.oversized,
        };
        *n += 1;
    }
}

/// One network the asking container is attached to, with the names its
/// hosts hold (from the visible `endpoints` entries: failed hosts' names
/// are not answered).
pub(crate) struct Network<'a> {
    pub(crate) name: &'a str,
    pub(crate) names: &'a Names,
}

/// The reply to `query`, asked over `transport` by a container attached to
/// `networks` (in the container's order: the first that knows a bare name
/// answers for it). Refusals are counted in `refused`.
pub(crate) fn answer<R: Rng + ?Sized>(
    networks: &[Network<'_>],
    query: &[u8],
    transport: Transport,
    rng: &mut R,
    refused: &mut Refusals,
) -> Reply {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            refused.count(Refusal::Malformed);
            // The id is the first two bytes; without them there is
            // nobody to answer.
            return match query.get(..2) {
                Some(&[hi, lo]) => {
                    let id = u16::from_be_bytes([hi, lo]);
                    encode(&Message::error_msg(id, OpCode::Query, ResponseCode::FormErr))
                }
                _ => Reply::Drop,
            };
        }
    };
    let meta = &msg.metadata;
    if meta.message_type != MessageType::Query {
        // Never answer an answer: two responders would bounce forever.
        refused.count(Refusal::NotAQuery);
        return Reply::Drop;
    }
    if meta.op_code != OpCode::Query {
        refused.count(Refusal::NotAQuery);
        return encode(&Message::error_msg(meta.id, meta.op_code, ResponseCode::NotImp));
    }
    let limit = reply_limit(&msg, transport);
    if transport == Transport::Udp && query.len() > limit {
        refused.count(Refusal::Oversized);
        return encode(&Message::error_msg(meta.id, meta.op_code, ResponseCode::FormErr));
    }
    let [q] = &msg.queries[..] else {
        refused.count(Refusal::Questions);
        return encode(&Message::error_msg(meta.id, meta.op_code, ResponseCode::FormErr));
    };
    if q.query_class != DNSClass::IN {
        return Reply::Forward;
    }
    let records = match q.query_type {
        RecordType::PTR => match ptr(networks, &q.name) {
            Some(target) => vec![Record::from_rdata(q.name.clone(), TTL, RData::PTR(PTR(target)))],
            None => return Reply::Forward,
        },
        t => {
            let Some(mut ips) = lookup(networks, &key(&q.name)) else { return Reply::Forward };
            ips.shuffle(rng);
            if t != RecordType::A {
                ips.clear();
            }
            ips.into_iter()
                .map(|ip| Record::from_rdata(q.name.clone(), TTL, RData::A(A(ip))))
                .collect()
        }
    };
    let mut reply = Message::response(meta.id, OpCode::Query);
    reply.metadata.recursion_desired = meta.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    reply.add_answers(records);
    if msg.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_LIMIT);
        reply.set_edns(edns);
    }
    match reply.to_vec() {
        Ok(bytes) if transport == Transport::Udp && bytes.len() > limit => {
            encode(&reply.truncate())
        }
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => encode(&Message::error_msg(meta.id, OpCode::Query, ResponseCode::ServFail)),
    }
}

fn encode(m: &Message) -> Reply {
    m.to_vec().map_or(Reply::Drop, Reply::Answer)
}

/// The largest UDP message the asker takes: 512 B, or what its EDNS
/// record says (up to ours).
fn reply_limit(msg: &Message, transport: Transport) -> usize {
    match (transport, &msg.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().min(EDNS_LIMIT)).max(UDP_LIMIT),
        (Transport::Udp, None) => UDP_LIMIT,
    }
}

/// A queried name as the tables spell names: lower case, no final dot.
fn key(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// The addresses a name stands for; `None`: not a name of these networks.
fn lookup(networks: &[Network<'_>], name: &str) -> Option<Vec<Ipv4Addr>> {
    let one = |h: &Holder| h.ip.parse::<Ipv4Addr>().ok().map(|ip| vec![ip]);
    if let Some(h) = networks.iter().find_map(|n| n.names.answering(name)) {
        return one(h);
    }
    if let Some((ep, net)) = name.rsplit_once('.')
        && let Some(n) = networks.iter().find(|n| n.name.eq_ignore_ascii_case(net))
        && let Some(h) = n.names.answering(ep)
    {
        return one(h);
    }
    let service = name.strip_prefix("tasks.").unwrap_or(name);
    let ips: Vec<Ipv4Addr> = networks
        .iter()
        .flat_map(|n| n.names.endpoints())
        .filter(|h| !h.failed && !h.service.is_empty() && h.service.eq_ignore_ascii_case(service))
        .filter_map(|h| h.ip.parse().ok())
        .collect();
    (!ips.is_empty()).then_some(ips)
}

/// `name.network.` of the endpoint holding the address a PTR name asks
/// for (the oldest, should two hold it).
fn ptr(networks: &[Network<'_>], name: &Name) -> Option<Name> {
    let net = name.parse_arpa_name().ok()?;
    let IpAddr::V4(ip) = net.addr() else { return None };
    if net.prefix_len() != 32 {
        return None;
    }
    let ip = ip.to_string();
    networks.iter().find_map(|n| {
        let h = n
            .names
            .endpoints()
            .filter(|h| !h.failed && h.ip == ip)
            .min_by(|a, b| (a.ltime, &a.host).cmp(&(b.ltime, &b.host)))?;
        Name::from_ascii(format!("{}.{}.", h.endpoint, n.name)).ok()
    })
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod sample;
#[cfg(test)]
mod tests;
