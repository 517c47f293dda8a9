//! Entry points for the fuzz targets in `agent/fuzz`: code that takes bytes
//! from outside, run against fixed tables, with the properties that must
//! hold whatever the bytes. A broken property panics, which the fuzzer
//! reports as a crash.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::dns::{self, Network, Refusals, Reply, Transport, sample};
use crate::overlay::Names;

/// The networks asked of, and what their answers may contain.
struct Tables {
    blue: Names,
    green: Names,
    /// Every live endpoint's address.
    addresses: BTreeSet<Ipv4Addr>,
    /// `name.network.` of every live endpoint, as PTR answers spell it.
    ptr_targets: BTreeSet<String>,
}

/// Built once: the fuzzer calls [`dns_query`] millions of times.
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let (blue, green) = (sample::blue(), sample::green());
        let mut addresses = BTreeSet::new();
        let mut ptr_targets = BTreeSet::new();
        for (net, names) in [("blue", &blue), ("green", &green)] {
            for h in names.endpoints().filter(|h| !h.failed) {
                addresses.insert(h.ip.parse().expect("the sample tables hold IPv4 addresses"));
                ptr_targets.insert(format!("{}.{net}.", h.endpoint));
            }
        }
        Tables { blue, green, addresses, ptr_targets }
    })
}

/// Answers `data` as the embedded DNS answers a container's query, and
/// panics if the reply breaks a property every reply must have.
///
/// The first byte says how the query came: bit 0 set, over TCP (else
/// UDP); bit 1 set, from a container attached to blue and green (else to
/// blue only). The rest is the query. The tables are the DNS tests'
/// sample networks: endpoints with aliases, a service of three, and an
/// endpoint of a failed host.
///
/// The properties: a reply decodes, is a response, carries the query's
/// id (when the query is long enough to have one), fits in 512 bytes over
/// UDP (4096 when the query has EDNS), and answers only A and PTR records
/// naming live endpoints of the tables.
pub fn dns_query(data: &[u8]) {
    let Some((&how, query)) = data.split_first() else { return };
    let transport = if how & 1 == 0 { Transport::Udp } else { Transport::Tcp };
    let t = tables();
    let both =
        [Network { name: "blue", names: &t.blue }, Network { name: "green", names: &t.green }];
    let networks = if how & 2 == 0 { &both[..1] } else { &both[..] };
    // Seeded from the input: a crash replays exactly.
    let mut rng = StdRng::seed_from_u64(u64::from(how));
    let mut refused = Refusals::default();
    let reply = dns::answer(networks, query, transport, &mut rng, &mut refused);
    if let Reply::Answer(bytes) = reply {
        check(t, query, transport, &bytes);
    }
}

fn check(t: &Tables, query: &[u8], transport: Transport, bytes: &[u8]) {
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(e) => panic!("the reply does not decode ({e}): {bytes:02x?}"),
    };
    let meta = &msg.metadata;
    assert_eq!(meta.message_type, MessageType::Response, "{msg:?}");
    if let Some(&[hi, lo]) = query.get(..2) {
        assert_eq!(meta.id, u16::from_be_bytes([hi, lo]), "{msg:?}");
    }
    if transport == Transport::Udp {
        let edns = Message::from_vec(query).is_ok_and(|q| q.edns.is_some());
        let limit = if edns { usize::from(dns::EDNS_LIMIT) } else { dns::UDP_LIMIT };
        assert!(bytes.len() <= limit, "{} bytes over UDP (edns: {edns})", bytes.len());
    }
    for r in &msg.answers {
        match &r.data {
            RData::A(a) => assert!(t.addresses.contains(&a.0), "not a live address: {r:?}"),
            RData::PTR(p) => {
                assert!(t.ptr_targets.contains(&p.0.to_ascii()), "not a live endpoint: {r:?}")
            }
            _ => panic!("an answer of a kind never given: {r:?}"),
        }
    }
}
