//! Prometheus metrics on an opt-in HTTP listener (`--metrics ADDR`):
//! `GET /metrics` reads the counters and state from the core at that
//! moment (`Handle::snapshot`, the same source as `netdb stats`) and
//! encodes them with `prometheus-client` in the text format 0.0.4.
//! Nothing is counted here: between scrapes this module costs nothing.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use netdb::{Histogram, MemberState, SYNC_SECONDS_BOUNDS};
use netdb_dataplane::Kernel;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::engine::{Handle, Snapshot};

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves `/metrics` from `core` in a task of its own.
pub(crate) async fn serve<K: Kernel>(addr: SocketAddr, core: Handle<K>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| bind_error(addr, e))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(accept_loop(listener, core));
    Ok(())
}

fn bind_error(addr: SocketAddr, e: io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "address in use",
        io::ErrorKind::AddrNotAvailable => "no such local address",
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need root)",
        _ => "cannot listen there",
    };
    anyhow!("cannot bind metrics listener {addr}: {e}; {hint}; pick another with --metrics")
}

async fn accept_loop<K: Kernel>(listener: TcpListener, core: Handle<K>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let core = core.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(core.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond<K: Kernel>(
    core: Handle<K>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        r.headers_mut().insert(ALLOW, "GET, HEAD".parse().expect("a valid header value"));
        return Ok(r);
    }
    let text = match core.snapshot().await {
        Ok(s) => encode(&s),
        Err(e) => return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
    };
    let mut r = reply(StatusCode::OK, text);
    r.headers_mut()
        .insert(CONTENT_TYPE, prometheus_text::CONTENT_TYPE.parse().expect("a valid header value"));
    Ok(r)
}

/// The snapshot in the Prometheus text format.
pub(crate) fn encode(s: &Snapshot) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry(s));
    out
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

/// A registry for one scrape; building it from a snapshot keeps the
/// families in one place and the values those of one moment.
fn registry(s: &Snapshot) -> Registry {
    let mut r = Registry::with_prefix("netdb");
    let t = &s.tallies;
    let n = &t.node;

    let gauge = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    let gauges = |r: &mut Registry, name: &str, help: &str, series: Vec<(Labels, u64)>| {
        let f = Family::<Labels, Gauge>::default();
        for (l, v) in series {
            f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        r.register(name, help, f);
    };
    let counters = |r: &mut Registry, name: &str, help: &str, series: Vec<(Labels, u64)>| {
        let f = Family::<Labels, Counter>::default();
        for (l, v) in series {
            f.get_or_create(&l).inc_by(v);
        }
        r.register(name, help, f);
    };

    let states = [
        (MemberState::Alive, "alive"),
        (MemberState::Suspect, "suspect"),
        (MemberState::Failed, "failed"),
        (MemberState::Left, "left"),
    ];
    gauges(
        &mut r,
        "members",
        "Members this node knows, itself included, by state (suspect: suspected by SWIM, not yet failed)",
        states
            .iter()
            .map(|(st, name)| {
                (labels([("state", name)]), s.members.iter().filter(|m| *m == st).count() as u64)
            })
            .collect(),
    );
    gauge(&mut r, "networks", "Networks as netdb network ls lists them", s.networks);
    gauges(
        &mut r,
        "entries",
        "Visible entries per network and table",
        s.entries
            .iter()
            .map(|(net, table, v)| (labels([("network", net), ("table", table)]), *v))
            .collect(),
    );
    gauges(
        &mut r,
        "broadcast_queue_length",
        "Events waiting in a scope's broadcast queue (scope: (cluster) or a network)",
        t.queues.iter().map(|(scope, v)| (labels([("scope", scope)]), *v)).collect(),
    );
    let traffic = [
        ("swim", "in", n.swim_in),
        ("swim", "out", n.swim_out),
        ("gossip", "in", n.gossip_in),
        ("gossip", "out", n.gossip_out),
        ("sync", "in", n.sync_in),
        ("sync", "out", n.sync_out),
    ];
    let by_kind = |v: fn(&netdb::Traffic) -> u64| {
        traffic
            .iter()
            .map(|(kind, dir, tr)| (labels([("kind", kind), ("direction", dir)]), v(tr)))
            .collect()
    };
    counters(
        &mut r,
        "messages",
        "Datagrams (swim, gossip) and push/pull frames (sync) by direction",
        by_kind(|t| t.messages),
    );
    counters(
        &mut r,
        "message_bytes",
        "Bytes of those messages, sealing included",
        by_kind(|t| t.bytes),
    );
    counters(
        &mut r,
        "entries_received",
        "Entries that were news to this node, by how they arrived",
        vec![
            (labels([("via", "gossip")]), n.entries_from_gossip),
            (labels([("via", "sync")]), n.entries_from_sync),
        ],
    );
    counter(
        &mut r,
        "gossip_copies",
        "Entries gossip brought that this node already held: the redundancy of the spread",
        n.gossip_copies,
    );
    let tr = &n.tree;
    let tree = [
        ("ihave", tr.ihave_sent, tr.ihave_received),
        ("graft", tr.graft_sent, tr.graft_received),
        ("prune", tr.prune_sent, tr.prune_received),
    ];
    counters(
        &mut r,
        "tree_messages",
        "Push tree control messages (--push-tree) by kind and direction",
        tree.iter()
            .flat_map(|&(kind, sent, received)| [(kind, "out", sent), (kind, "in", received)])
            .map(|(kind, dir, v)| (labels([("kind", kind), ("direction", dir)]), v))
            .collect(),
    );
    counters(
        &mut r,
        "drops",
        "Inputs dropped without effect, by reason",
        netdb::DropReason::ALL
            .iter()
            .map(|d| (labels([("reason", d.as_str())]), n.dropped(*d)))
            .collect(),
    );
    counter(&mut r, "syncs_started", "Push/pull exchanges this node opened", n.syncs_started);
    counter(&mut r, "syncs_completed", "Opened exchanges that completed", n.syncs_completed);
    counter(
        &mut r,
        "syncs_failed",
        "Opened exchanges that failed (refused, broken, timed out)",
        n.syncs_failed,
    );
    counter(&mut r, "syncs_served", "Exchanges this node served", n.syncs_served);
    r.register(
        "sync_duration_seconds",
        "Duration of completed push/pull exchanges this node opened",
        SyncSeconds(n.sync_seconds.clone()),
    );
    counter(
        &mut r,
        "broadcast_overflow",
        "Events the broadcast queues dropped (over the length bound or larger than a packet); push/pull repairs them",
        n.queue_overflow,
    );
    counter(
        &mut r,
        "broadcast_oversized",
        "Events larger than a packet, left to push/pull",
        n.queue_oversized,
    );
    counter(
        &mut r,
        "own_entries_restated",
        "Entries of this node that peers held newer than it (written before a restart) and that it wrote again with what it holds now",
        n.own_entries_restated,
    );
    counter(
        &mut r,
        "swim_errors",
        "Calls the SWIM layer (foca) refused; each changed nothing",
        n.swim_errors,
    );
    counter(
        &mut r,
        "suspicions_started",
        "Members this node began to suspect because its own probe went unanswered (real failures or false accusations)",
        n.suspicions_started,
    );
    counters(
        &mut r,
        "member_changes",
        "Membership changes this node saw: up, failed, returned (same incarnation), rejoined (newer incarnation), left",
        netdb::MemberChange::ALL
            .iter()
            .map(|c| (labels([("change", c.as_str())]), n.changes(*c)))
            .collect(),
    );
    gauges(
        &mut r,
        "keyring_key_info",
        "Gossip keys held, by fingerprint (never the key); primary=\"true\" seals",
        s.keys
            .iter()
            .enumerate()
            .map(|(i, fp)| {
                (
                    labels([
                        ("fingerprint", fp),
                        ("primary", if i == 0 { "true" } else { "false" }),
                    ]),
                    1,
                )
            })
            .collect(),
    );
    gauge(&mut r, "watchers", "Open watch streams", t.watchers);
    counter(&mut r, "overlay_conflicts", "Overlay network conflicts detected", t.conflicts);
    counter(
        &mut r,
        "endpoints_reaped",
        "Endpoints detached because their network namespace was gone",
        t.reaped,
    );
    let k = &t.kernel;
    counter(
        &mut r,
        "kernel_reconciles",
        "Kernel reconcile passes, failed ones included",
        k.reconciles,
    );
    counter(
        &mut r,
        "kernel_changes",
        "Kernel objects created or removed to match the tables (repairs)",
        k.changes,
    );
    counter(
        &mut r,
        "kernel_failures",
        "Kernel calls that failed, and passes that could not read the kernel",
        k.failures,
    );
    let last: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    last.set(k.last_us as f64 / 1e6);
    r.register("kernel_last_reconcile_seconds", "Duration of the last kernel reconcile pass", last);
    let d = &t.dns;
    counters(
        &mut r,
        "dns_queries",
        "Queries containers sent to the embedded DNS, by outcome",
        [
            ("answered", d.answered),
            ("forwarded", d.forwarded),
            ("rate_limited", d.rate_limited),
            ("overloaded", d.overloaded),
            ("malformed", d.malformed),
            ("not_a_query", d.not_a_query),
            ("questions", d.questions),
            ("oversized", d.oversized),
            ("stranger", d.strangers),
        ]
        .into_iter()
        .map(|(outcome, v)| (labels([("outcome", outcome)]), v))
        .collect(),
    );
    counter(
        &mut r,
        "dns_upstream_failures",
        "Forwarded queries no upstream resolver answered in time (SERVFAIL sent)",
        d.upstream_failed,
    );
    gauge(&mut r, "dns_listeners", "Containers with an embedded DNS listener", d.listeners);
    counter(
        &mut r,
        "dns_listen_errors",
        "Container listeners that could not be opened (retried)",
        d.listen_errors,
    );
    r
}

/// The core's push/pull histogram as read at the scrape; the buckets are
/// counted in the core, so they are encoded as they are.
#[derive(Debug)]
struct SyncSeconds(Histogram);

impl EncodeMetric for SyncSeconds {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let buckets: Vec<(f64, u64)> = SYNC_SECONDS_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum.as_secs_f64(), h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample() -> Snapshot {
        let mut s = Snapshot {
            members: vec![MemberState::Alive, MemberState::Alive, MemberState::Failed],
            networks: 1,
            entries: vec![("blue".into(), "svc \"a\\b\"".into(), 3)],
            keys: vec!["aa11".into(), "bb22".into()],
            ..Snapshot::default()
        };
        let n = &mut s.tallies.node;
        n.gossip_out.add(100);
        n.gossip_out.add(50);
        n.drop(netdb::DropReason::Forged);
        n.syncs_started = 2;
        n.gossip_copies = 9;
        n.tree.graft_received = 3;
        n.syncs_completed = 2;
        n.sync_seconds.observe(Duration::from_millis(3));
        n.sync_seconds.observe(Duration::from_secs(20));
        n.member_changes[netdb::MemberChange::Failed as usize] = 1;
        s.tallies.queues = vec![("(cluster)".into(), 4)];
        s.tallies.kernel.last_us = 1500;
        s.tallies.dns.answered = 7;
        s.tallies.dns.listeners = 2;
        s
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }

    #[test]
    fn the_snapshot_maps_to_families_with_conventional_names() {
        let text = encode(&sample());
        has(&text, "netdb_members{state=\"alive\"} 2");
        has(&text, "netdb_members{state=\"suspect\"} 0");
        has(&text, "netdb_members{state=\"failed\"} 1");
        has(&text, "netdb_messages_total{kind=\"gossip\",direction=\"out\"} 2");
        has(&text, "netdb_message_bytes_total{kind=\"gossip\",direction=\"out\"} 150");
        has(&text, "netdb_drops_total{reason=\"forged\"} 1");
        has(&text, "netdb_gossip_copies_total 9");
        has(&text, "netdb_tree_messages_total{kind=\"graft\",direction=\"in\"} 3");
        has(&text, "netdb_tree_messages_total{kind=\"prune\",direction=\"out\"} 0");
        has(&text, "netdb_drops_total{reason=\"malformed\"} 0");
        has(&text, "netdb_member_changes_total{change=\"failed\"} 1");
        has(&text, "netdb_broadcast_queue_length{scope=\"(cluster)\"} 4");
        has(&text, "netdb_keyring_key_info{fingerprint=\"aa11\",primary=\"true\"} 1");
        has(&text, "netdb_keyring_key_info{fingerprint=\"bb22\",primary=\"false\"} 1");
        has(&text, "netdb_kernel_last_reconcile_seconds 0.0015");
        has(&text, "netdb_dns_queries_total{outcome=\"answered\"} 7");
        has(&text, "netdb_dns_queries_total{outcome=\"malformed\"} 0");
        has(&text, "netdb_dns_listeners 2");
        has(&text, "# TYPE netdb_syncs_completed_total counter");
        has(&text, "# TYPE netdb_sync_duration_seconds histogram");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("netdb_"), "{line}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_up_to_inf() {
        let text = encode(&sample());
        has(&text, "netdb_sync_duration_seconds_bucket{le=\"0.001\"} 0");
        has(&text, "netdb_sync_duration_seconds_bucket{le=\"0.005\"} 1");
        has(&text, "netdb_sync_duration_seconds_bucket{le=\"10\"} 1");
        has(&text, "netdb_sync_duration_seconds_bucket{le=\"+Inf\"} 2");
        has(&text, "netdb_sync_duration_seconds_count 2");
        has(&text, "netdb_sync_duration_seconds_sum 20.003");
    }

    #[test]
    fn label_values_are_escaped() {
        let text = encode(&sample());
        has(&text, r#"netdb_entries{network="blue",table="svc \"a\\b\""} 3"#);
    }

    #[test]
    fn no_keys_no_key_series() {
        let text = encode(&Snapshot::default());
        assert!(!text.contains("fingerprint="), "{text}");
        has(&text, "netdb_networks 0");
    }
}
