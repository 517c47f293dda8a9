//! The CLI side: one call to the agent's API per command, printed as a
//! table for people or JSON for scripts.

use std::io::{Read, Write};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use netdb_api::{self as api, netdb_client::NetdbClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cli::{Command, EndpointCmd, KeysCmd, NetworkCmd, Output, TableCmd};
use crate::endpoint::{self, Endpoint};
use crate::output::{dash, endpoint_json, network_json, print_json, print_table, rpc};
use crate::status;

/// Runs a client verb against the agent at `ep`.
pub(crate) async fn run(ep: Option<Endpoint>, cmd: Command) -> anyhow::Result<()> {
    let ep = match ep {
        Some(e) => e,
        None => endpoint::DEFAULT.parse().map_err(anyhow::Error::msg)?,
    };
    let Some(opts) = cmd.client() else {
        return Err(anyhow!("`netdb agent` runs an agent; it is not a client command"));
    };
    let out = opts.output;
    let channel = endpoint::connect(&ep, &opts.tls.files()).await;
    if let Command::Version { .. } = cmd {
        // The client's own version needs no agent.
        return status::version(channel.ok().map(NetdbClient::new), &ep, out).await;
    }
    let mut c = NetdbClient::new(channel?);
    match cmd {
        Command::Agent(_)
        | Command::Doctor { .. }
        | Command::Version { .. }
        | Command::Completions { .. }
        | Command::Man => Ok(()),
        Command::Health { live, .. } => status::health(&mut c, out, live).await,
        Command::Members { .. } => members(&mut c, out).await,
        Command::Network { cmd, .. } => network(&mut c, out, cmd).await,
        Command::Endpoint { cmd, .. } => endpoint_cmd(&mut c, out, cmd).await,
        Command::Table { cmd, .. } => table(&mut c, out, cmd).await,
        Command::Watch { network, table, .. } => {
            watch(&mut c, out, network, table.unwrap_or_default()).await
        }
        Command::Stats { .. } => stats(&mut c, out).await,
        Command::Keys { cmd, .. } => keys(&mut c, out, cmd).await,
        Command::LogLevel { filter, .. } => log_level(&mut c, out, filter).await,
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn entry_json(network: &str, e: &api::Entry) -> Value {
    json!({ "network": network, "table": e.table, "key": e.key, "value": text(&e.value), "owner": e.owner, "ltime": e.ltime })
}

async fn members(c: &mut NetdbClient<Channel>, out: Output) -> anyhow::Result<()> {
    let ms = c.members(api::MembersRequest {}).await.map_err(rpc)?.into_inner().members;
    match out {
        Output::Json => print_json(&Value::Array(
            ms.iter()
                .map(|m| {
                    json!({ "name": m.name, "addr": m.addr, "state": m.state,
                            "incarnation": m.incarnation, "generation": m.generation,
                            "version": m.version })
                })
                .collect(),
        )),
        Output::Table => print_table(
            &["NAME", "ADDRESS", "STATE", "VERSION", "INCARNATION", "GENERATION"],
            ms.into_iter()
                .map(|m| {
                    vec![
                        m.name,
                        m.addr,
                        m.state,
                        dash(m.version),
                        m.incarnation.to_string(),
                        m.generation.to_string(),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}

async fn network(c: &mut NetdbClient<Channel>, out: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    let (network, done) = match cmd {
        NetworkCmd::Ls => {
            let ns = c.networks(api::NetworksRequest {}).await.map_err(rpc)?.into_inner().networks;
            match out {
                Output::Json => print_json(&Value::Array(ns.iter().map(network_json).collect())),
                Output::Table => {
                    let conflicts: Vec<String> =
                        ns.iter().flat_map(|n| n.conflicts.iter().cloned()).collect();
                    print_table(
                        &["NETWORK", "SUBNET", "VNI", "MTU", "LOCAL", "HOSTS", "PEERS", "ENTRIES"],
                        ns.into_iter()
                            .map(|n| {
                                let overlay = !n.subnet.is_empty();
                                vec![
                                    n.name,
                                    dash(n.subnet),
                                    if overlay { n.vni.to_string() } else { "-".into() },
                                    if overlay { n.mtu.to_string() } else { "-".into() },
                                    n.local_endpoints.to_string(),
                                    dash(n.hosts.join(",")),
                                    dash(n.peers.join(",")),
                                    n.entries.to_string(),
                                ]
                            })
                            .collect(),
                    );
                    for c in conflicts {
                        println!("conflict: {c}");
                    }
                }
            }
            return Ok(());
        }
        NetworkCmd::Create { name, subnet, vni, mtu, internal } => {
            let req = api::CreateNetworkRequest {
                name,
                subnet: subnet.unwrap_or_default(),
                vni: vni.unwrap_or(0),
                mtu: mtu.unwrap_or(0),
                internal,
            };
            let n = c.create_network(req).await.map_err(rpc)?.into_inner();
            for w in &n.warnings {
                eprintln!("warning: {w}");
            }
            match out {
                Output::Json => print_json(&network_json(&n)),
                Output::Table => {
                    println!(
                        "created {} (subnet {}, VNI {}, MTU {})",
                        n.name, n.subnet, n.vni, n.mtu
                    );
                    for w in &n.conflicts {
                        println!("warning: {w}");
                    }
                }
            }
            return Ok(());
        }
        NetworkCmd::Inspect { name } => return status::inspect(c, out, name).await,
        NetworkCmd::Rm { name } => {
            c.remove_network(api::NetworkRequest { network: name.clone() }).await.map_err(rpc)?;
            (name, "removed")
        }
        NetworkCmd::Join { network } => {
            c.join_network(api::NetworkRequest { network: network.clone() }).await.map_err(rpc)?;
            (network, "joined")
        }
        NetworkCmd::Leave { network } => {
            c.leave_network(api::NetworkRequest { network: network.clone() }).await.map_err(rpc)?;
            (network, "left")
        }
    };
    match out {
        Output::Json => print_json(&json!({ "network": network, "status": done })),
        Output::Table => println!("{done} {network}"),
    }
    Ok(())
}

async fn endpoint_cmd(
    c: &mut NetdbClient<Channel>,
    out: Output,
    cmd: EndpointCmd,
) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Attach { network, name, netns, ip, aliases, service, ifname, publish } => {
            let req = api::AttachRequest {
                network,
                name,
                netns,
                ip: ip.unwrap_or_default(),
                aliases,
                service: service.unwrap_or_default(),
                ifname: ifname.unwrap_or_default(),
                publish,
            };
            let e = c.attach(req).await.map_err(rpc)?.into_inner();
            match out {
                Output::Json => print_json(&endpoint_json(&e)),
                Output::Table => println!(
                    "attached {} to {}: {} ip {}/{} mac {}",
                    e.name, e.network, e.ifname, e.ip, e.prefix, e.mac
                ),
            }
        }
        EndpointCmd::Detach { network, name } => {
            c.detach(api::DetachRequest { network: network.clone(), name: name.clone() })
                .await
                .map_err(rpc)?;
            match out {
                Output::Json => {
                    print_json(&json!({ "network": network, "name": name, "status": "detached" }))
                }
                Output::Table => println!("detached {name} from {network}"),
            }
        }
        EndpointCmd::Ls { network, local } => {
            let req = api::EndpointsRequest { network: network.unwrap_or_default(), local };
            let es = c.endpoints(req).await.map_err(rpc)?.into_inner().endpoints;
            match out {
                Output::Json => print_json(&Value::Array(es.iter().map(endpoint_json).collect())),
                Output::Table => print_table(
                    &["NETWORK", "NAME", "HOST", "IP", "MAC", "SERVICE", "ALIASES", "NETNS"],
                    es.into_iter()
                        .map(|e| {
                            vec![
                                e.network,
                                e.name,
                                e.host,
                                format!("{}/{}", e.ip, e.prefix),
                                dash(e.mac),
                                dash(e.service),
                                dash(e.aliases.join(",")),
                                if e.netns_missing {
                                    format!("{} (missing)", e.netns)
                                } else {
                                    dash(e.netns)
                                },
                            ]
                        })
                        .collect(),
                ),
            }
        }
    }
    Ok(())
}

async fn table(c: &mut NetdbClient<Channel>, out: Output, cmd: TableCmd) -> anyhow::Result<()> {
    match cmd {
        TableCmd::Put { network, table, key, value, file } => {
            let entries = match (file, key, value) {
                (Some(path), _, _) => read_bulk(&path)?,
                (None, Some(key), Some(value)) => {
                    vec![api::KeyValue { key, value: value.into_bytes().into() }]
                }
                _ => return Err(anyhow!("give KEY VALUE or --file F")),
            };
            let n = c
                .put(api::PutRequest { network, table, entries })
                .await
                .map_err(rpc)?
                .into_inner()
                .written;
            wrote(out, n);
        }
        TableCmd::Import { network, table, file, generate, key_prefix, value_size, batch } => {
            let entries: Box<dyn Iterator<Item = api::KeyValue> + Send> = match (file, generate) {
                (Some(path), _) => Box::new(read_bulk(&path)?.into_iter()),
                (None, Some(count)) => Box::new(generated(key_prefix, value_size, count)),
                (None, None) => return Err(anyhow!("give --file F or --generate N")),
            };
            let n = c
                .import(tokio_stream::iter(batches(network, table, entries, batch as usize)))
                .await
                .map_err(rpc)?
                .into_inner()
                .written;
            wrote(out, n);
        }
        TableCmd::Get { network, table, key } => {
            let e = c
                .get(api::KeyRequest { network: network.clone(), table, key })
                .await
                .map_err(rpc)?
                .into_inner();
            match out {
                Output::Json => print_json(&entry_json(&network, &e)),
                Output::Table => print_table(
                    &["KEY", "VALUE", "OWNER", "LTIME"],
                    vec![vec![e.key.clone(), text(&e.value), e.owner.clone(), e.ltime.to_string()]],
                ),
            }
        }
        TableCmd::Delete { network, table, key } => {
            c.delete(api::KeyRequest { network, table, key: key.clone() }).await.map_err(rpc)?;
            match out {
                Output::Json => print_json(&json!({ "deleted": key })),
                Output::Table => println!("deleted {key}"),
            }
        }
        TableCmd::Dump { network, table } => {
            let es = c
                .dump(api::TableRequest { network: network.clone(), table })
                .await
                .map_err(rpc)?
                .into_inner()
                .entries;
            match out {
                Output::Json => {
                    print_json(&Value::Array(es.iter().map(|e| entry_json(&network, e)).collect()))
                }
                Output::Table => print_table(
                    &["KEY", "VALUE", "OWNER"],
                    es.iter()
                        .map(|e| vec![e.key.clone(), text(&e.value), e.owner.clone()])
                        .collect(),
                ),
            }
        }
    }
    Ok(())
}

async fn watch(
    c: &mut NetdbClient<Channel>,
    out: Output,
    network: String,
    table: String,
) -> anyhow::Result<()> {
    let mut stream = c.watch(api::WatchRequest { network, table }).await.map_err(rpc)?.into_inner();
    let stdout = std::io::stdout();
    while let Some(ev) = stream.message().await.map_err(rpc)? {
        let e = ev.entry.unwrap_or_default();
        let mut lock = stdout.lock();
        match out {
            Output::Json => {
                let mut v = entry_json(&ev.network, &e);
                v["event"] = Value::String(ev.event);
                if let Some(o) = v.as_object_mut() {
                    o.remove("ltime");
                }
                writeln!(lock, "{v}")?;
            }
            Output::Table if matches!(ev.event.as_str(), "conflict" | "detached") => {
                writeln!(lock, "{} {}", ev.event.to_uppercase(), text(&e.value))?
            }
            Output::Table => writeln!(
                lock,
                "{:<6} {}/{} = {} (owner {})",
                ev.event,
                e.table,
                e.key,
                text(&e.value),
                e.owner
            )?,
        }
        lock.flush()?;
    }
    Ok(())
}

async fn stats(c: &mut NetdbClient<Channel>, out: Output) -> anyhow::Result<()> {
    let cs = c.stats(api::StatsRequest {}).await.map_err(rpc)?.into_inner().counters;
    match out {
        Output::Json => print_json(&Value::Object(
            cs.into_iter().map(|c| (c.name, Value::from(c.value))).collect(),
        )),
        Output::Table => print_table(
            &["COUNTER", "VALUE"],
            cs.into_iter().map(|c| vec![c.name, c.value.to_string()]).collect(),
        ),
    }
    Ok(())
}

/// Shows the agent's log filter, or sets it and says what it was.
async fn log_level(
    c: &mut NetdbClient<Channel>,
    out: Output,
    filter: Option<String>,
) -> anyhow::Result<()> {
    let setting = filter.is_some();
    let req = api::LogLevelRequest { filter: filter.unwrap_or_default() };
    let r = c.set_log_level(req).await.map_err(rpc)?.into_inner();
    match out {
        Output::Json => print_json(&json!({ "previous": r.previous, "current": r.current })),
        Output::Table if setting => println!("{} (was {})", r.current, r.previous),
        Output::Table => println!("{}", r.current),
    }
    Ok(())
}

/// The first non-comment line of a key file or of standard input.
fn read_key(from: Option<std::path::PathBuf>) -> anyhow::Result<String> {
    let text = match from {
        Some(p) if p.as_os_str() != "-" => std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read key from {}", p.display()))?,
        _ => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the key from stdin")?;
            s
        }
    };
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "no key given: pipe one in (head -c 32 /dev/urandom | base64 | netdb keys install)"
            )
        })
}

async fn keys(c: &mut NetdbClient<Channel>, out: Output, cmd: KeysCmd) -> anyhow::Result<()> {
    let list = matches!(cmd, KeysCmd::List);
    let (op, key) = match cmd {
        KeysCmd::List => ("list", String::new()),
        KeysCmd::Install { from } => ("install", read_key(from)?),
        KeysCmd::Use { key } => ("use", key),
        KeysCmd::Remove { key } => ("remove", key),
        KeysCmd::Rotate => ("rotate", String::new()),
    };
    let reply = c.keys(api::KeysRequest { op: op.into(), key }).await.map_err(rpc)?.into_inner();
    match out {
        Output::Json => print_json(&json!({
            "complete": reply.complete,
            "steps": reply.steps.iter().map(|s| json!({
                "action": s.action, "complete": s.complete, "missing": s.missing,
                "results": s.results.iter().map(|r| json!({
                    "node": r.node, "ok": r.ok, "error": r.error, "fingerprints": r.fingerprints,
                    "skew_ms": r.skew_ms, "rtt_ms": r.rtt_ms,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            for s in &reply.steps {
                println!(
                    "== {}: {}",
                    s.action,
                    if s.complete { "confirmed by every live member" } else { "NOT CONFIRMED" }
                );
                let mut rows: Vec<Vec<String>> = s
                    .results
                    .iter()
                    .map(|r| {
                        let result =
                            if r.ok { "ok".to_string() } else { format!("error: {}", r.error) };
                        let mut row = vec![r.node.clone(), result, r.fingerprints.join(" ")];
                        if list {
                            row.insert(2, r.skew_ms.map_or_else(|| "-".into(), show_skew));
                        }
                        row
                    })
                    .collect();
                rows.extend(s.missing.iter().map(|m| {
                    let mut row = vec![m.clone(), "no answer".into(), String::new()];
                    if list {
                        row.insert(2, "-".into());
                    }
                    row
                }));
                let mut header = vec!["NODE", "RESULT", "KEYS (primary first)"];
                if list {
                    header.insert(2, "CLOCK SKEW");
                }
                print_table(&header, rows);
            }
        }
    }
    if reply.complete {
        Ok(())
    } else {
        Err(anyhow!("not every live member confirmed; see the report above"))
    }
}

/// A member's clock skew as people read it: +12ms, -3.4s.
pub(crate) fn show_skew(ms: i64) -> String {
    if ms.unsigned_abs() < 1000 {
        format!("{ms:+}ms")
    } else {
        format!("{:+.1}s", ms as f64 / 1000.0)
    }
}

/// Reports how many entries a put or an import wrote.
fn wrote(out: Output, n: u32) {
    match out {
        Output::Json => print_json(&json!({ "written": n })),
        Output::Table => println!("wrote {n} entr{}", if n == 1 { "y" } else { "ies" }),
    }
}

/// "KEY VALUE" lines from a file, or stdin for `-`.
fn read_bulk(path: &std::path::Path) -> anyhow::Result<Vec<api::KeyValue>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading entries from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    parse_bulk(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `count` entries for loads and benchmarks: keys numbered after `prefix`,
/// values of `size` bytes that carry the number, so each differs. Made as
/// they are sent, not all held first (a million is 150 MB).
fn generated(
    prefix: String,
    size: usize,
    count: u32,
) -> impl Iterator<Item = api::KeyValue> + Send + 'static {
    (0..count).map(move |i| {
        let mut value = format!("{i:010}-").into_bytes();
        value.resize(size, b'v');
        api::KeyValue { key: format!("{prefix}{i:010}"), value: value.into() }
    })
}

/// The stream of an import: `per` entries a request.
fn batches(
    network: String,
    table: String,
    entries: impl Iterator<Item = api::KeyValue>,
    per: usize,
) -> impl Iterator<Item = api::PutRequest> {
    let mut entries = entries.peekable();
    std::iter::from_fn(move || {
        entries.peek()?;
        let batch: Vec<_> = entries.by_ref().take(per).collect();
        Some(api::PutRequest { network: network.clone(), table: table.clone(), entries: batch })
    })
}

/// Parses "KEY VALUE" lines for bulk puts: the key is the first word, the
/// value the rest of the line; blank lines and lines starting with # are
/// skipped.
fn parse_bulk(text: &str) -> Result<Vec<api::KeyValue>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(char::is_whitespace) else {
            return Err(format!("line {}: expected \"KEY VALUE\"", n + 1));
        };
        out.push(api::KeyValue {
            key: key.into(),
            value: Bytes::from(value.trim_start().to_string()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_go_in_batches_of_generated_entries() {
        let kv: Vec<_> = generated("k-".into(), 16, 5).collect();
        assert_eq!(kv[3].key, "k-0000000003");
        assert_eq!(kv[3].value, Bytes::from("0000000003-vvvvv"));
        let sizes: Vec<usize> =
            batches("n".into(), "t".into(), kv.into_iter(), 2).map(|r| r.entries.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(batches("n".into(), "t".into(), std::iter::empty(), 2).count(), 0);
    }

    #[test]
    fn bulk_lines_split_at_the_first_space() {
        let kv = parse_bulk("a 1\n\n# note\nb two words\n").unwrap();
        assert_eq!(kv.len(), 2);
        assert_eq!(kv[1].key, "b");
        assert_eq!(kv[1].value, Bytes::from("two words"));
        assert!(parse_bulk("lonely").unwrap_err().contains("line 1"));
    }

    #[test]
    fn skews_read_in_ms_below_a_second() {
        assert_eq!(show_skew(0), "+0ms");
        assert_eq!(show_skew(-999), "-999ms");
        assert_eq!(show_skew(45_300), "+45.3s");
        assert_eq!(show_skew(-1_000), "-1.0s");
    }
}
