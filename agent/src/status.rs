//! Client verbs that report on an agent: `health`, `version` and
//! `network inspect`.

use anyhow::anyhow;
use netdb_api::{self as api, netdb_client::NetdbClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cli::Output;
use crate::endpoint::Endpoint;
use crate::output::{dash, endpoint_json, network_json, print_json, print_table, rpc};

/// `netdb health`: the checks, and an error (exit status 1) unless ready.
/// With `live`, an answer is enough: the call runs on the agent's loop.
pub(crate) async fn health(
    c: &mut NetdbClient<Channel>,
    out: Output,
    live: bool,
) -> anyhow::Result<()> {
    let h = c.health(api::HealthRequest {}).await.map_err(rpc)?.into_inner();
    match out {
        Output::Json => print_json(&json!({
            "name": h.name, "version": h.version, "live": true, "ready": h.ready,
            "uptime_ms": h.uptime_ms,
            "checks": h.checks.iter().map(|c| json!({ "name": c.name, "ok": c.ok, "detail": c.detail })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let state = if h.ready { "ready" } else { "not ready" };
            println!("{} (netdb {}): live, {state}", h.name, h.version);
            let rows = h
                .checks
                .iter()
                .map(|c| {
                    let result = if c.ok { "ok" } else { "FAIL" };
                    vec![c.name.clone(), result.into(), c.detail.clone()]
                })
                .collect();
            print_table(&["CHECK", "RESULT", "DETAIL"], rows);
        }
    }
    if live || h.ready {
        return Ok(());
    }
    let failed: Vec<&str> = h.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    Err(anyhow!("agent {} is not ready: {}", h.name, failed.join(", ")))
}

/// `netdb version`: this program's, and the agent's when it answers.
pub(crate) async fn version(
    c: Option<NetdbClient<Channel>>,
    ep: &Endpoint,
    out: Output,
) -> anyhow::Result<()> {
    let agent = match c {
        Some(mut c) => c.health(api::HealthRequest {}).await.map(|r| r.into_inner()).ok(),
        None => None,
    };
    match out {
        Output::Json => print_json(&json!({
            "client": netdb::VERSION,
            "agent": agent.as_ref().map(|h| json!({ "name": h.name, "version": h.version })),
        })),
        Output::Table => {
            println!("netdb {} (client)", netdb::VERSION);
            match agent {
                Some(h) => println!("netdb {} (agent {} at {ep})", h.version, h.name),
                None => println!("no agent answered at {ep}"),
            }
        }
    }
    Ok(())
}

/// `netdb network inspect NET`.
pub(crate) async fn inspect(
    c: &mut NetdbClient<Channel>,
    out: Output,
    name: String,
) -> anyhow::Result<()> {
    let req = api::NetworkRequest { network: name };
    let d = c.inspect_network(req).await.map_err(rpc)?.into_inner();
    let n = d.network.clone().unwrap_or_default();
    match out {
        Output::Json => print_json(&detail_json(&d, &n)),
        Output::Table => print_detail(&d, n),
    }
    Ok(())
}

fn detail_json(d: &api::NetworkDetail, n: &api::Network) -> Value {
    json!({
        "network": network_json(n),
        "gateway": d.gateway,
        "created": d.created,
        "hosts": d.hosts.iter().map(|h| json!({
            "host": h.host,
            "endpoints": h.endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tables": d.tables.iter().map(|t| json!({ "table": t.table, "entries": t.entries })).collect::<Vec<_>>(),
        "kept": d.kept,
        "queue_len": d.queue_len,
        "root": format!("{:016x}", d.root),
        "synced": d.synced,
        "syncs": { "started": d.syncs_started, "completed": d.syncs_completed, "failed": d.syncs_failed },
    })
}

fn print_detail(d: &api::NetworkDetail, n: api::Network) {
    let overlay = !n.subnet.is_empty();
    println!("network   {}", n.name);
    if overlay {
        println!("subnet    {} (gateway {})", n.subnet, d.gateway);
        println!("vni       {}", n.vni);
        println!("mtu       {}", n.mtu);
        println!("created   by {} at ltime {}", n.origin, d.created);
    } else {
        println!("kind      plain gossip network (tables only)");
    }
    println!("peers     {}", dash(n.peers.join(", ")));
    for c in &n.conflicts {
        println!("conflict  {c}");
    }
    if d.tables.is_empty() && d.queue_len == 0 && !d.synced {
        println!("tables    - (this agent has not joined the network: no endpoint here)");
    } else {
        let tables: Vec<String> =
            d.tables.iter().map(|t| format!("{}={}", t.table, t.entries)).collect();
        println!(
            "tables    {} (+{} kept: tombstones, failed owners)",
            dash(tables.join(" ")),
            d.kept
        );
        println!("queue     {} events", d.queue_len);
        println!(
            "push/pull {} started, {} completed, {} failed{}",
            d.syncs_started,
            d.syncs_completed,
            d.syncs_failed,
            if d.synced { "" } else { " (never completed)" }
        );
        println!("digest    {:016x}", d.root);
    }
    let rows: Vec<Vec<String>> = d
        .hosts
        .iter()
        .flat_map(|h| {
            h.endpoints.iter().map(|e| {
                vec![
                    h.host.clone(),
                    e.name.clone(),
                    format!("{}/{}", e.ip, e.prefix),
                    e.mac.clone(),
                    dash(e.service.clone()),
                    dash(e.aliases.join(",")),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        println!("endpoints -");
    } else {
        println!();
        print_table(&["HOST", "ENDPOINT", "IP", "MAC", "SERVICE", "ALIASES"], rows);
    }
}
