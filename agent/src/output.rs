//! How client verbs print: aligned columns for people, one JSON value for
//! scripts; and API errors as one line a user can read.

use anyhow::anyhow;
use netdb_api as api;
use serde_json::{Value, json};

/// Turns an API error into a one-line message.
pub(crate) fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

/// Prints rows as aligned columns under a header.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn print_json(v: &Value) {
    println!("{v}");
}

pub(crate) fn network_json(n: &api::Network) -> Value {
    json!({ "name": n.name, "subnet": n.subnet, "vni": n.vni, "mtu": n.mtu, "origin": n.origin,
            "hosts": n.hosts, "local_endpoints": n.local_endpoints, "peers": n.peers,
            "entries": n.entries, "conflicts": n.conflicts, "internal": n.internal,
            "warnings": n.warnings })
}

pub(crate) fn dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

pub(crate) fn endpoint_json(e: &api::EndpointInfo) -> Value {
    json!({ "network": e.network, "name": e.name, "host": e.host, "ip": e.ip, "prefix": e.prefix,
            "mac": e.mac, "ifname": e.ifname, "netns": e.netns, "service": e.service,
            "aliases": e.aliases, "local": e.local, "gateway_ip": e.gateway_ip,
            "publish": e.publish, "netns_missing": e.netns_missing })
}
