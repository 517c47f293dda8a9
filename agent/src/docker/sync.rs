//! What the plugin learns from Docker and tells it, beside its calls:
//!
//! - names: Docker tells a driver neither a network's name nor a
//!   container's. A network's is read back once Docker has saved it, a
//!   container's once it runs (its endpoint shows in Docker's lock-free
//!   container list; inspecting the container during its start would wait
//!   for the start, which waits for us). The container's name, short ID
//!   and network aliases become the netdb endpoint's aliases, so every
//!   host resolves them.
//! - networks: every netdb overlay network exists in this host's Docker
//!   (created through the Engine API with `-o netdb.network=NAME`, so a
//!   network created once, on any host or with `netdb network create`, is
//!   usable by every Docker), and a Docker network whose netdb network was
//!   removed is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netdb_dataplane::Kernel;

use super::engine::{self, Engine};
use super::plugin::{NETWORK_OPTION, Plugin, bare_ip, short};

/// How often Docker is looked at when nothing wakes the task.
const PERIOD: Duration = Duration::from_secs(2);
/// How soon a container that joined is looked for again while it starts.
const NAMING: Duration = Duration::from_millis(200);

/// Runs for the agent's life.
pub(crate) async fn run<K: Kernel>(plugin: Arc<Plugin<K>>) {
    let engine = &plugin.engine;
    let mut reachable = match engine.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "Docker's API does not answer yet; container names and networks wait for it (--docker-socket)");
            false
        }
    };
    let mut state = Sweep::default();
    loop {
        let busy = match pass(&plugin, engine, &mut state).await {
            Ok(busy) => {
                if !reachable {
                    tracing::info!("Docker's API answers again");
                }
                reachable = true;
                busy
            }
            Err(e) => {
                if reachable {
                    tracing::warn!(error = %e, "cannot reach Docker's API; container names and networks wait for it");
                }
                reachable = false;
                false
            }
        };
        let wait = if busy { NAMING } else { PERIOD };
        let _ = tokio::time::timeout(wait, plugin.wake.notified()).await;
    }
}

/// One look at Docker; true when a container still waits for its names.
async fn pass<K: Kernel>(
    plugin: &Plugin<K>,
    engine: &Engine,
    state: &mut Sweep,
) -> Result<bool, engine::EngineError> {
    name_networks(plugin).await;
    let waiting = name_containers(plugin, engine).await?;
    mirror(plugin, engine, &mut state.refused).await?;
    if state.last.is_none_or(|at| at.elapsed() >= SWEEP) {
        state.last = Some(Instant::now());
        sweep(plugin, engine, &mut state.unused).await?;
    }
    Ok(waiting)
}

/// How often what Docker no longer has is looked for.
const SWEEP: Duration = Duration::from_secs(10);
/// How long an endpoint or address Docker does not have is kept: Docker
/// asks for the address, then creates the endpoint, within milliseconds.
const UNUSED_GRACE: Duration = Duration::from_secs(60);

/// What the task keeps between passes.
#[derive(Default)]
struct Sweep {
    /// Networks Docker refused to create (or remove), reported once each.
    refused: BTreeSet<String>,
    last: Option<Instant>,
    /// Endpoints (Docker's IDs) and reservations (network/ip) Docker does
    /// not have, since when.
    unused: BTreeMap<String, Instant>,
}

/// Forgets what Docker no longer has, which a call lost while the agent
/// was down would have removed: networks removed from Docker, endpoints
/// whose DeleteEndpoint never came, addresses whose ReleaseAddress never
/// came (each after `UNUSED_GRACE`; until then a network Docker no longer
/// lists is not made again there, see `mirror`).
async fn sweep<K: Kernel>(
    plugin: &Plugin<K>,
    engine: &Engine,
    unused: &mut BTreeMap<String, Instant>,
) -> Result<(), engine::EngineError> {
    let networks: Vec<(String, String)> = {
        let known = plugin.known.lock().await;
        known.saved.networks.iter().map(|(id, n)| (id.clone(), n.name.clone())).collect()
    };
    let now = Instant::now();
    let mut still: BTreeSet<String> = BTreeSet::new();
    // True once `key` has been unused for the grace; it counts as still
    // unused either way.
    let mut overdue = |key: String| {
        let since = *unused.entry(key.clone()).or_insert(now);
        still.insert(key);
        now.duration_since(since) >= UNUSED_GRACE
    };
    let mut seen_endpoints: BTreeSet<String> = BTreeSet::new();
    let mut seen_ips: BTreeSet<(String, String)> = BTreeSet::new();
    let mut looked: BTreeSet<String> = BTreeSet::new();
    for (id, name) in networks.into_iter().filter(|(_, n)| !n.is_empty()) {
        match engine.network_inspect(&id).await? {
            // Docker drops a network before it calls DeleteNetwork, which
            // needs to find it here to remove the netdb network: forgotten
            // only once the call is surely lost.
            None if !overdue(format!("network/{id}")) => {}
            None => {
                tracing::info!(network = %name, docker_id = %id, "Docker no longer has this network; forgotten");
                let mut known = plugin.known.lock().await;
                known.saved.networks.remove(&id);
                known.save();
            }
            Some(d) => {
                for c in d.containers.values() {
                    seen_endpoints.insert(c.endpoint_id.clone());
                    seen_ips.insert((name.clone(), bare_ip(&c.ipv4_address).to_string()));
                }
                looked.insert(name);
            }
        }
    }
    let stale_endpoints: Vec<(String, String, String)> = {
        let known = plugin.known.lock().await;
        known
            .saved
            .endpoints
            .iter()
            .filter(|(id, ep)| looked.contains(&ep.network) && !seen_endpoints.contains(*id))
            .map(|(id, ep)| (id.clone(), ep.network.clone(), ep.name.clone()))
            .collect()
    };
    for (id, network, name) in stale_endpoints {
        if !overdue(id.clone()) {
            continue;
        }
        match plugin.handle.detach(network.clone(), name.clone()).await {
            Ok(())
            | Err(crate::engine::Error::Overlay(crate::overlay::Error::NoEndpoint { .. })) => {
                tracing::warn!(%network, endpoint = %name, "Docker no longer has this endpoint (its DeleteEndpoint was lost); removed");
                let mut known = plugin.known.lock().await;
                known.saved.endpoints.remove(&id);
                known.save();
            }
            Err(e) => {
                tracing::warn!(%network, endpoint = %name, error = %e, "cannot remove an endpoint Docker no longer has")
            }
        }
    }
    let reservations = plugin.handle.reservations().await.unwrap_or_default();
    for (network, ip) in reservations.into_iter().filter(|(n, _)| looked.contains(n)) {
        if seen_ips.contains(&(network.clone(), ip.to_string()))
            || !overdue(format!("{network}/{ip}"))
        {
            continue;
        }
        if let Ok(true) = plugin.handle.release(network.clone(), ip).await {
            tracing::warn!(%network, %ip, "an address reserved for Docker was never used nor released; released");
        }
    }
    unused.retain(|k, _| still.contains(k));
    Ok(())
}

/// Reads the names of networks Docker created here and makes them netdb
/// networks.
async fn name_networks<K: Kernel>(plugin: &Plugin<K>) {
    let mut known = plugin.known.lock().await;
    let pending: Vec<String> = known
        .saved
        .networks
        .iter()
        .filter(|(_, n)| n.name.is_empty())
        .map(|(id, _)| id.clone())
        .collect();
    for id in pending {
        if let Err(e) = plugin.name_network(&mut known, &id).await {
            tracing::warn!(docker_id = %id, error = %e, "cannot make a Docker network a netdb network");
        }
    }
}

/// Gives joined containers' endpoints their names; true while one still
/// waits (its container is starting).
async fn name_containers<K: Kernel>(
    plugin: &Plugin<K>,
    engine: &Engine,
) -> Result<bool, engine::EngineError> {
    let unnamed: Vec<(String, String)> = {
        let known = plugin.known.lock().await;
        known
            .saved
            .endpoints
            .iter()
            .filter(|(_, ep)| ep.joined && !ep.named)
            .map(|(id, ep)| (id.clone(), ep.network_id.clone()))
            .collect()
    };
    if unnamed.is_empty() {
        return Ok(false);
    }
    // By endpoint ID: the container's ID and names.
    let mut names: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let networks: BTreeSet<&String> = unnamed.iter().map(|(_, n)| n).collect();
    for network_id in networks {
        for c in engine.containers_in_network(network_id).await? {
            for attached in c.network_settings.networks.values() {
                if attached.endpoint_id.is_empty() {
                    continue;
                }
                let mut aliases: Vec<String> =
                    c.names.iter().map(|n| n.trim_start_matches('/').to_string()).collect();
                aliases.push(short(&c.id));
                names.insert(attached.endpoint_id.clone(), (c.id.clone(), aliases));
            }
        }
    }
    let mut waiting = false;
    for (endpoint_id, _) in unnamed {
        let Some((container, mut aliases)) = names.remove(&endpoint_id) else {
            waiting = true;
            continue;
        };
        // Network aliases (--network-alias, compose's service names) are
        // only in the container's own record.
        if let Some(full) = engine.container_inspect(&container).await? {
            for attached in full.network_settings.networks.values() {
                if attached.endpoint_id == endpoint_id {
                    aliases.extend(attached.aliases.iter().cloned());
                }
            }
        }
        let mut known = plugin.known.lock().await;
        let Some(ep) = known.saved.endpoints.get(&endpoint_id).cloned() else { continue };
        match plugin.handle.set_aliases(ep.network.clone(), ep.name.clone(), aliases).await {
            Ok(_) => {
                if let Some(ep) = known.saved.endpoints.get_mut(&endpoint_id) {
                    ep.named = true;
                }
                known.save();
            }
            Err(e) => {
                tracing::warn!(network = %ep.network, endpoint = %ep.name, error = %e, "cannot publish a container's names")
            }
        }
    }
    Ok(waiting)
}

/// Keeps this host's Docker holding exactly the netdb overlay networks.
async fn mirror<K: Kernel>(
    plugin: &Plugin<K>,
    engine: &Engine,
    refused: &mut BTreeSet<String>,
) -> Result<(), engine::EngineError> {
    let docker = engine.networks(super::DRIVER).await?;
    let (netdb, mapped, declined) = {
        let mut known = plugin.known.lock().await;
        // Read under the lock, after Docker's list: DeleteNetwork forgets
        // the Docker network and removes the netdb network under it, so a
        // network Docker no longer lists is either still known here
        // (`leaving` below) or gone from netdb too.
        let Ok(netdb) = plugin.netdb_subnets().await else { return Ok(()) };
        // A declined network that is gone may come back as a new one.
        let before = known.saved.declined.len();
        known.saved.declined.retain(|n| netdb.iter().any(|(name, _, _)| name == n));
        if known.saved.declined.len() != before {
            known.save();
        }
        let mapped: BTreeMap<String, String> =
            known.saved.networks.iter().map(|(id, n)| (id.clone(), n.name.clone())).collect();
        (netdb, mapped, known.saved.declined.clone())
    };
    let present: BTreeSet<&str> = docker
        .iter()
        .filter_map(|d| mapped.get(&d.id))
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    // Docker drops a network from its list before it calls DeleteNetwork,
    // which removes the netdb network: a network known here by a Docker ID
    // that Docker no longer lists is on its way out (or went while the
    // agent was down, which the sweep forgets after its grace), and is not
    // made again meanwhile.
    let listed: BTreeSet<&str> = docker.iter().map(|d| d.id.as_str()).collect();
    let leaving: BTreeSet<&str> = mapped
        .iter()
        .filter(|(id, _)| !listed.contains(id.as_str()))
        .map(|(_, name)| name.as_str())
        .collect();
    for (name, subnet, internal) in &netdb {
        if present.contains(name.as_str())
            || declined.contains(name)
            || leaving.contains(name.as_str())
        {
            continue;
        }
        let create = engine::CreateNetworkRequest {
            name: name.clone(),
            driver: super::DRIVER.into(),
            internal: *internal,
            ipam: engine::Ipam {
                driver: super::DRIVER.into(),
                config: vec![engine::IpamConfig {
                    subnet: subnet.to_string(),
                    gateway: subnet.gateway().to_string(),
                }],
            },
            options: [(NETWORK_OPTION.to_string(), name.clone())].into(),
            labels: Default::default(),
        };
        match engine.create_network(&create).await {
            Ok(id) => {
                refused.remove(name);
                tracing::info!(network = %name, docker_id = %id, "netdb network created in Docker")
            }
            Err(e) => {
                if refused.insert(name.clone()) {
                    tracing::warn!(network = %name, error = %e, "cannot create the netdb network in Docker (a Docker network of that name exists?); Docker's containers here cannot use it");
                }
            }
        }
    }
    // Until this node holds the cluster's definitions (just started), a
    // network missing here may well exist.
    if !plugin.handle.cluster_synced().await.unwrap_or(false) {
        return Ok(());
    }
    let live: BTreeSet<&str> = netdb.iter().map(|(n, _, _)| n.as_str()).collect();
    for d in &docker {
        let Some(name) = mapped.get(&d.id).filter(|n| !n.is_empty()) else { continue };
        if live.contains(name.as_str()) {
            continue;
        }
        match engine.remove_network(&d.id).await {
            Ok(()) => {
                tracing::info!(network = %name, docker_id = %d.id, "netdb network removed from Docker")
            }
            Err(e) => {
                if refused.insert(format!("rm {name}")) {
                    tracing::warn!(network = %name, error = %e, "the netdb network is gone but Docker keeps it (containers attached?)");
                }
            }
        }
    }
    Ok(())
}
