use std::collections::BTreeSet;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use netdb::Entry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::sample::{blue, green, names};
use super::{Network, Refusals, Reply, TTL, Transport, answer};
use crate::overlay::Names;
use crate::overlay::record_entry as ep;

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

struct Asker {
    blue: Names,
    green: Names,
    refused: Refusals,
    rng: StdRng,
}

impl Asker {
    fn new() -> Asker {
        Asker {
            blue: blue(),
            green: green(),
            refused: Refusals::default(),
            rng: StdRng::seed_from_u64(7),
        }
    }

    /// What a container on blue only gets for `bytes`.
    fn raw(&mut self, bytes: &[u8], t: Transport) -> Reply {
        let nets = [Network { name: "blue", names: &self.blue }];
        answer(&nets, bytes, t, &mut self.rng, &mut self.refused)
    }

    fn ask(&mut self, name: &str, t: RecordType) -> Option<Message> {
        match self.raw(&query(name, t), Transport::Udp) {
            Reply::Answer(b) => Some(Message::from_vec(&b).unwrap()),
            Reply::Forward => None,
            Reply::Drop => panic!("a query for {name} dropped"),
        }
    }

    /// The A answers for `name`, `None` when forwarded.
    fn a(&mut self, name: &str) -> Option<Vec<String>> {
        let m = self.ask(name, RecordType::A)?;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        Some(
            m.answers
                .iter()
                .map(|r| {
                    assert_eq!(r.ttl, TTL);
                    match &r.data {
                        RData::A(a) => a.0.to_string(),
                        other => panic!("not an A record: {other:?}"),
                    }
                })
                .collect(),
        )
    }
}

#[test]
fn names_and_aliases_answer_a_without_regard_to_case() {
    let mut q = Asker::new();
    assert_eq!(q.a("web.").unwrap(), ["10.1.0.2"]);
    assert_eq!(q.a("WWW").unwrap(), ["10.1.0.2"]);
    assert_eq!(q.a("db").unwrap(), ["10.1.0.3"]);
}

#[test]
fn name_dot_network_answers_only_for_the_containers_networks() {
    let mut q = Asker::new();
    assert_eq!(q.a("web.blue.").unwrap(), ["10.1.0.2"]);
    assert_eq!(q.a("www.BLUE").unwrap(), ["10.1.0.2"]);
    assert_eq!(q.a("web.green."), None, "green is not this container's");
    assert_eq!(q.a("nosuch.blue"), None);

    // Attached to both: the bare name from the first network, each
    // network's own by NAME.NETWORK.
    let nets =
        [Network { name: "green", names: &q.green }, Network { name: "blue", names: &q.blue }];
    let mut ask = |name: &str| match answer(
        &nets,
        &query(name, RecordType::A),
        Transport::Udp,
        &mut q.rng,
        &mut q.refused,
    ) {
        Reply::Answer(b) => Message::from_vec(&b).unwrap().answers.len(),
        _ => 0,
    };
    assert_eq!(ask("web.green"), 1);
    assert_eq!(ask("web.blue"), 1);
}

#[test]
fn a_service_and_its_tasks_answer_every_endpoint_in_the_rngs_order() {
    let mut q = Asker::new();
    let all: BTreeSet<String> = ["10.1.0.11", "10.1.0.12", "10.1.0.13"].map(String::from).into();
    let mut orders = BTreeSet::new();
    for _ in 0..20 {
        let got = q.a("api").unwrap();
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), all);
        orders.insert(got);
    }
    assert!(orders.len() > 1, "always one order: {orders:?}");
    assert_eq!(q.a("tasks.api").unwrap().into_iter().collect::<BTreeSet<_>>(), all);
    assert_eq!(q.a("tasks.nosuch"), None);

    // The same seed gives the same order: tests (and replays) are exact.
    let (mut a, mut b) = (Asker::new(), Asker::new());
    assert_eq!(a.a("api"), b.a("api"));
}

#[test]
fn ptr_names_the_endpoint_and_its_network() {
    let mut q = Asker::new();
    let m = q.ask("2.0.1.10.in-addr.arpa.", RecordType::PTR).unwrap();
    let [r] = &m.answers[..] else { panic!("{m:?}") };
    match &r.data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.blue."),
        other => panic!("{other:?}"),
    }
    assert!(q.ask("99.0.1.10.in-addr.arpa.", RecordType::PTR).is_none(), "unknown: upstream");
    assert!(q.ask("9.0.1.10.in-addr.arpa.", RecordType::PTR).is_none(), "failed host");
    assert!(q.ask("1.10.in-addr.arpa.", RecordType::PTR).is_none(), "not one address");
}

#[test]
fn a_known_name_of_another_type_is_an_empty_noerror() {
    let mut q = Asker::new();
    for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let m = q.ask("web", t).expect("answered here, not forwarded");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }
    assert!(q.ask("example.com", RecordType::AAAA).is_none());
}

#[test]
fn failed_hosts_names_are_not_answered_and_everything_else_goes_upstream() {
    let mut q = Asker::new();
    assert_eq!(q.a("old"), None);
    assert_eq!(q.a("old.blue"), None);
    assert_eq!(q.a("example.com."), None);
    assert_eq!(q.refused, Refusals::default(), "forwarding is no refusal");
}

#[test]
fn a_name_held_twice_is_answered_by_the_oldest_holder() {
    let dup = names(&[
        ep("h2", 9, "web", "10.1.0.20", "", &[]),
        ep("h1", 9, "other", "10.1.0.21", "", &["web"]),
        ep("h3", 4, "web", "10.1.0.22", "", &[]),
    ]);
    let nets = [Network { name: "blue", names: &dup }];
    let (mut rng, mut refused) = (StdRng::seed_from_u64(1), Refusals::default());
    let Reply::Answer(b) =
        answer(&nets, &query("web", RecordType::A), Transport::Udp, &mut rng, &mut refused)
    else {
        panic!("not answered")
    };
    let m = Message::from_vec(&b).unwrap();
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "10.1.0.22"));
}

#[test]
fn bad_queries_are_refused_counted_and_never_panic() {
    let mut q = Asker::new();
    assert_eq!(q.raw(&[], Transport::Udp), Reply::Drop);
    assert_eq!(q.raw(&[7], Transport::Udp), Reply::Drop);
    assert_eq!(q.refused.malformed, 2);

    let formerr = |r: Reply| match r {
        Reply::Answer(b) => Message::from_vec(&b).unwrap().metadata.response_code,
        other => panic!("{other:?}"),
    };
    // Truncated at every length: FORMERR (or, with the header whole but
    // no question, a refusal for the count of questions).
    let whole = query("web.blue.", RecordType::A);
    for n in 2..whole.len() {
        assert_eq!(formerr(q.raw(&whole[..n], Transport::Udp)), ResponseCode::FormErr, "{n}");
    }

    // Two questions.
    let mut two = Message::query();
    two.add_query(Query::query(Name::from_ascii("web").unwrap(), RecordType::A));
    two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
    let before = q.refused.questions;
    assert_eq!(formerr(q.raw(&two.to_vec().unwrap(), Transport::Udp)), ResponseCode::FormErr);
    assert_eq!(q.refused.questions, before + 1);

    // Over 512 bytes on UDP without EDNS; the same over TCP, or with an
    // EDNS record allowing it, is answered.
    let mut big = query("web", RecordType::A);
    big.extend(std::iter::repeat_n(0u8, 600));
    assert_eq!(formerr(q.raw(&big, Transport::Udp)), ResponseCode::FormErr);
    assert_eq!(q.refused.oversized, 1);
    assert!(matches!(q.raw(&big, Transport::Tcp), Reply::Answer(_)));
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii("web").unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let mut padded = m.to_vec().unwrap();
    padded.extend(std::iter::repeat_n(0u8, 600));
    assert!(matches!(q.raw(&padded, Transport::Udp), Reply::Answer(_)));
    assert_eq!(q.refused.oversized, 1);

    // A label longer than the message, a compression pointer to itself.
    let mut bad = whole.clone();
    bad[12] = 63;
    bad.truncate(20);
    assert_eq!(formerr(q.raw(&bad, Transport::Udp)), ResponseCode::FormErr);
    let mut pointer = whole[..12].to_vec();
    pointer.extend([0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(formerr(q.raw(&pointer, Transport::Udp)), ResponseCode::FormErr);

    // A response is never answered; another opcode is NOTIMP.
    let mut resp = Message::response(9, OpCode::Query);
    resp.add_query(Query::query(Name::from_ascii("web").unwrap(), RecordType::A));
    assert_eq!(q.raw(&resp.to_vec().unwrap(), Transport::Udp), Reply::Drop);
    let mut status = Message::new(9, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(Name::from_ascii("web").unwrap(), RecordType::A));
    assert_eq!(formerr(q.raw(&status.to_vec().unwrap(), Transport::Udp)), ResponseCode::NotImp);
    assert_eq!(q.refused.not_a_query, 2);

    // Noise, and valid queries with bytes flipped: whatever comes out,
    // the function returns.
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..5000 {
        let len = rng.random_range(0..700);
        let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = q.raw(&noise, Transport::Udp);
        let mut flipped = whole.clone();
        let i = rng.random_range(0..flipped.len());
        flipped[i] = rng.random();
        let _ = q.raw(&flipped, Transport::Tcp);
    }
}

#[test]
fn a_udp_answer_too_large_is_truncated_for_tcp() {
    let many: Vec<Entry> = (0..60)
        .map(|i| ep("h1", i + 1, &format!("t{i}"), &format!("10.1.0.{}", i + 2), "big", &[]))
        .collect();
    let big = names(&many);
    let nets = [Network { name: "blue", names: &big }];
    let (mut rng, mut refused) = (StdRng::seed_from_u64(1), Refusals::default());
    let ask = query("big", RecordType::A);
    let Reply::Answer(udp) = answer(&nets, &ask, Transport::Udp, &mut rng, &mut refused) else {
        panic!()
    };
    assert!(udp.len() <= 512);
    assert!(Message::from_vec(&udp).unwrap().metadata.truncation);
    let Reply::Answer(tcp) = answer(&nets, &ask, Transport::Tcp, &mut rng, &mut refused) else {
        panic!()
    };
    assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 60);
}
