//! Overlay networks on this host: definitions kept as cluster objects,
//! endpoints attached and detached, addresses drawn from claimed blocks,
//! and the desired kernel state derived from the tables.
//!
//! Everything here runs on the core loop (it needs the node); the slow
//! parts of an attach (waiting for a block claim to settle, netlink) happen
//! in the API task between calls, with the endpoint's name and address
//! reserved in `pending` meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netdb::Hasher;
use netdb::ipam::{self, Claims, Subnet};
use netdb::names::{owned_key, valid_name};
use netdb::netdefs::{self, DEFAULT_MTU, Effective, NetworkDef, Resolved};
use netdb::{Event, Node, SharedTable};
use netdb_api as api;
use netdb_dataplane as dp;
use netdb_wire as wire;
use prost::Message;
use tokio::sync::Notify;
use tonic::Status;

use crate::state::{SavedEndpoint, SavedNetwork, State, Store};

/// Network table of routing entries (Docker: overlay_peer_table).
pub const ROUTES_TABLE: &str = "routes";
/// Network table of service-discovery entries (Docker: endpoint_table).
pub const ENDPOINTS_TABLE: &str = "endpoints";

/// Longest interface name Linux takes.
const MAX_IFNAME: usize = 15;
/// Longest endpoint, service and alias names.
const MAX_ENDPOINT_NAME: usize = 64;
const MAX_ALIASES: usize = 16;

/// An attach that may go ahead: the kernel work to do.
pub struct Ready {
    pub network: dp::Network,
    pub endpoint: dp::Endpoint,
    pub reply: api::EndpointInfo,
    key: (String, String),
}

impl Ready {
    pub fn key(&self) -> (String, String) {
        self.key.clone()
    }
}

pub enum Step {
    /// Come back after this long (a block claim is settling).
    Wait(Duration),
    Ready(Box<Ready>),
}

/// An endpoint being attached: its name and address are taken.
struct Pending {
    ip: Ipv4Addr,
    saved: SavedEndpoint,
}

pub struct Overlay {
    me: String,
    tunnel: Option<Ipv4Addr>,
    store: Option<Store>,
    state: State,
    pending: BTreeMap<(String, String), Pending>,
    detaching: BTreeSet<(String, String)>,
    /// This host's block claims not yet settled: when each was made.
    claimed_at: BTreeMap<(String, u32), Duration>,
    settle: Duration,
    /// Conflicts in force, by network.
    conflicts: BTreeMap<String, Vec<String>>,
    reported: BTreeSet<String>,
    pub conflicts_seen: u64,
    /// Conflicts found since the last drain, by network: for the watch
    /// streams.
    pub notices: Vec<(String, String)>,
    /// Definitions or claims changed: run `maintain`.
    pub dirty: bool,
    /// Wakes the kernel reconcile loop.
    pub kernel: Arc<Notify>,
}

impl Overlay {
    /// `store` is `None` when the data plane is off.
    pub fn new(
        me: &str,
        tunnel: Option<Ipv4Addr>,
        store: Option<(Store, State)>,
        settle: Duration,
    ) -> Overlay {
        let (store, state) = match store {
            Some((s, st)) => (Some(s), st),
            None => (None, State::default()),
        };
        Overlay {
            me: me.into(),
            tunnel,
            store,
            state,
            pending: BTreeMap::new(),
            detaching: BTreeSet::new(),
            claimed_at: BTreeMap::new(),
            settle,
            conflicts: BTreeMap::new(),
            reported: BTreeSet::new(),
            conflicts_seen: 0,
            notices: Vec::new(),
            dirty: true,
            kernel: Arc::new(Notify::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.store.is_some() && self.tunnel.is_some()
    }

    /// After a restart: the saved definitions, claims and endpoints go out
    /// again under this incarnation (the old one's entries are purged
    /// everywhere as soon as peers see the new incarnation).
    pub fn republish(&mut self, node: &mut Node, now: Duration) {
        node.witness_clock(self.state.ltime);
        let saved: Vec<(String, SavedNetwork)> = self.state.networks.clone().into_iter().collect();
        for (name, n) in saved {
            let Some(def) = saved_def(&name, &n) else {
                tracing::warn!(network = %name, "saved definition is invalid; dropped");
                continue;
            };
            let _ = node.put_shared(now, SharedTable::NetDefs, &name, def.encode());
            for b in &n.blocks {
                let _ = node.put_shared(
                    now,
                    SharedTable::Ipam,
                    &ipam::claim_id(&name, *b),
                    ipam::encode_claim(&def.origin, def.created),
                );
            }
        }
        let endpoints = self.state.endpoints.clone();
        for ep in &endpoints {
            if let Err(e) = self.publish(node, now, ep) {
                tracing::warn!(network = %ep.network, endpoint = %ep.name, error = %e, "cannot republish endpoint");
            }
        }
        if !endpoints.is_empty() {
            tracing::info!(
                endpoints = endpoints.len(),
                networks = self.state.networks.len(),
                "republished saved endpoints"
            );
        }
        self.dirty = true;
        self.kernel.notify_one();
    }

    /// Notes which events concern the overlay.
    pub fn observe(&mut self, ev: &Event) {
        let relevant = match ev {
            Event::Shared { .. } => true,
            Event::Entry { table, .. } => table == ROUTES_TABLE,
            _ => false,
        };
        if relevant {
            self.dirty = true;
            self.kernel.notify_one();
        }
    }

    fn resolved(node: &Node) -> Resolved {
        Resolved::from_copies(node.shared_entries(SharedTable::NetDefs))
    }

    // ----- networks ------------------------------------------------------

    pub fn create(
        &mut self,
        node: &mut Node,
        now: Duration,
        r: api::CreateNetworkRequest,
    ) -> Result<api::Network, Status> {
        if !valid_name(&r.name, netdefs::MAX_NETWORK_NAME) {
            return Err(Status::invalid_argument(format!(
                "invalid network name {:?}: use 1-{} of letters, digits and -_.:@",
                r.name,
                netdefs::MAX_NETWORK_NAME
            )));
        }
        let subnet: Subnet = r
            .subnet
            .parse()
            .map_err(|e: ipam::SubnetError| Status::invalid_argument(e.to_string()))?;
        let resolved = Self::resolved(node);
        if let Some(e) = resolved.networks.get(&r.name) {
            return Err(Status::already_exists(format!(
                "network {} already exists (subnet {}, VNI {}, created on {})",
                r.name, e.def.subnet, e.vni, e.def.origin
            )));
        }
        if node.networks().contains(&r.name.as_str()) {
            return Err(Status::already_exists(format!(
                "{} is a plain gossip network this agent joined; pick another name",
                r.name
            )));
        }
        let vni = match r.vni {
            0 => resolved.next_vni(),
            v if !(netdefs::FIRST_VNI..=netdefs::MAX_VNI).contains(&v) => {
                return Err(Status::invalid_argument(format!(
                    "VNI {v} is outside {}-{}",
                    netdefs::FIRST_VNI,
                    netdefs::MAX_VNI
                )));
            }
            v => {
                if let Some(other) = resolved.vni_in_use(v) {
                    return Err(Status::already_exists(format!(
                        "VNI {v} is used by network {other}"
                    )));
                }
                v
            }
        };
        let mtu = if r.mtu == 0 { DEFAULT_MTU } else { r.mtu };
        if !(netdefs::MIN_MTU..=netdefs::MAX_MTU).contains(&mtu) {
            return Err(Status::invalid_argument(format!(
                "MTU {mtu} is outside {}-{}",
                netdefs::MIN_MTU,
                netdefs::MAX_MTU
            )));
        }
        let def = NetworkDef {
            name: r.name.clone(),
            subnet,
            vni,
            mtu,
            origin: self.me.clone(),
            created: node.ltime() + 1,
        };
        node.put_shared(now, SharedTable::NetDefs, &r.name, def.encode()).map_err(node_status)?;
        tracing::info!(network = %r.name, %subnet, vni, mtu, "network created");
        self.dirty = true;
        Ok(self.network_info(node, &Effective { def, vni }))
    }

    pub fn remove(&mut self, node: &mut Node, now: Duration, name: &str) -> Result<(), Status> {
        let resolved = Self::resolved(node);
        let Some(eff) = resolved.networks.get(name) else {
            return Err(Status::not_found(format!("no network {name}; see `netdb network ls`")));
        };
        let mut hosts = node.network_hosts(name);
        if self.local_count(name) > 0 || self.pending.keys().any(|(n, _)| n == name) {
            hosts.insert(0, self.me.clone());
        }
        if !hosts.is_empty() {
            return Err(Status::failed_precondition(format!(
                "network {name} still has endpoints on {}; detach them first",
                hosts.join(", ")
            )));
        }
        // Ours may not exist yet (a definition learned a moment ago).
        node.put_shared(now, SharedTable::NetDefs, name, eff.def.encode()).map_err(node_status)?;
        node.delete_shared(now, SharedTable::NetDefs, name).map_err(node_status)?;
        tracing::info!(network = %name, "network removed");
        self.dirty = true;
        Ok(())
    }

    pub fn networks(&self, node: &Node) -> Vec<api::Network> {
        let resolved = Self::resolved(node);
        let mut out: Vec<api::Network> =
            resolved.networks.values().map(|e| self.network_info(node, e)).collect();
        for name in node.networks() {
            if !resolved.networks.contains_key(name) {
                out.push(api::Network {
                    name: name.into(),
                    peers: node.network_peers(name),
                    entries: visible_entries(node, name),
                    ..Default::default()
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn network_info(&self, node: &Node, e: &Effective) -> api::Network {
        let name = &e.def.name;
        let local = self.local_count(name);
        let mut hosts: BTreeSet<String> =
            node.entries(name, ROUTES_TABLE).iter().map(|(_, en)| en.owner.clone()).collect();
        if local > 0 {
            hosts.insert(self.me.clone());
        }
        let conflicts = self.conflicts.get(name).cloned().unwrap_or_default();
        api::Network {
            name: name.clone(),
            peers: node.network_peers(name),
            entries: visible_entries(node, name),
            subnet: e.def.subnet.to_string(),
            vni: e.vni,
            mtu: e.def.mtu,
            local_endpoints: local as u32,
            hosts: hosts.into_iter().collect(),
            conflicts,
            origin: e.def.origin.clone(),
        }
    }

    pub fn local_endpoints(&self) -> usize {
        self.state.endpoints.len()
    }

    fn local_count(&self, network: &str) -> usize {
        self.state.endpoints.iter().filter(|e| e.network == network).count()
    }

    // ----- endpoints -----------------------------------------------------

    /// First half of an attach: checks, address, reservation.
    pub fn begin_attach(
        &mut self,
        node: &mut Node,
        now: Duration,
        r: &api::AttachRequest,
    ) -> Result<Step, Status> {
        let Some(tunnel) = self.tunnel.filter(|_| self.store.is_some()) else {
            return Err(Status::failed_precondition(
                "the data plane is off on this agent (--no-dataplane, no CAP_NET_ADMIN, or an IPv6 --advertise)",
            ));
        };
        let resolved = Self::resolved(node);
        let Some(eff) = resolved.networks.get(&r.network).cloned() else {
            return Err(Status::not_found(format!(
                "no network {}; create it with `netdb network create {} --subnet CIDR`",
                r.network, r.network
            )));
        };
        check_name("endpoint name", &r.name)?;
        if !r.service.is_empty() {
            check_name("service name", &r.service)?;
        }
        if r.aliases.len() > MAX_ALIASES {
            return Err(Status::invalid_argument(format!("at most {MAX_ALIASES} aliases")));
        }
        for a in &r.aliases {
            check_name("alias", a)?;
        }
        let ifname = if r.ifname.is_empty() { "eth0".to_string() } else { r.ifname.clone() };
        if ifname.len() > MAX_IFNAME
            || !ifname.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Status::invalid_argument(format!(
                "invalid interface name {ifname:?}: 1-15 of letters, digits and -_."
            )));
        }
        let netns = PathBuf::from(&r.netns);
        if r.netns.is_empty() || !netns.is_absolute() {
            return Err(Status::invalid_argument(
                "--netns needs the absolute path of a network namespace (e.g. /run/netns/c1)",
            ));
        }
        if !netns.exists() {
            return Err(Status::not_found(format!(
                "network namespace {} does not exist",
                netns.display()
            )));
        }
        let key = (r.network.clone(), r.name.clone());
        if self.pending.contains_key(&key) || self.find(&r.network, &r.name).is_some() {
            return Err(Status::already_exists(format!(
                "endpoint {} already exists on network {} on this host",
                r.name, r.network
            )));
        }
        if let Some(other) =
            self.state.endpoints.iter().find(|e| e.netns == netns && e.ifname == ifname)
        {
            return Err(Status::already_exists(format!(
                "{} in {} is already endpoint {} of network {}; use --ifname",
                ifname,
                netns.display(),
                other.name,
                other.network
            )));
        }
        let subnet = eff.def.subnet;
        let explicit = if r.ip.is_empty() {
            None
        } else {
            let ip: Ipv4Addr = r.ip.parse().map_err(|_| {
                Status::invalid_argument(format!("invalid IPv4 address {:?}", r.ip))
            })?;
            if !subnet.contains(ip) {
                return Err(Status::invalid_argument(format!(
                    "{ip} is outside network {}'s subnet {subnet}",
                    r.network
                )));
            }
            if !subnet.usable(ip) {
                return Err(Status::invalid_argument(format!(
                    "{ip} is reserved in {subnet} (network, gateway or broadcast address)"
                )));
            }
            Some(ip)
        };
        // Joined only now that the request is valid; whatever fails below
        // leaves the network again if nothing else holds it.
        node.join_network(now, &r.network).map_err(node_status)?;
        let picked = match explicit {
            Some(ip) => match self.used_addresses(node, &r.network).get(&ip) {
                Some(who) => Err(Status::already_exists(format!("{ip} is already used by {who}"))),
                None => Ok(Some(ip)),
            },
            None => {
                let used = self.used_addresses(node, &r.network);
                self.allocate(node, now, &eff, &used)
            }
        };
        let ip = match picked {
            Ok(Some(ip)) => ip,
            Ok(None) => return Ok(Step::Wait(self.settle)),
            Err(e) => {
                self.leave_if_unused(node, now, &r.network);
                return Err(e);
            }
        };
        let mac = dp::Mac::from_ipv4(ip);
        let saved = SavedEndpoint {
            network: r.network.clone(),
            name: r.name.clone(),
            netns,
            ifname,
            host_ifname: self.host_ifname(&r.network, &r.name),
            ip,
            prefix: subnet.prefix(),
            mac: mac.to_string(),
            service: r.service.clone(),
            aliases: r.aliases.clone(),
        };
        self.state.networks.entry(r.network.clone()).or_insert_with(|| saved_network(&eff.def));
        let network = self.kernel_network(node, &r.network, &eff, tunnel);
        let endpoint = kernel_endpoint(&saved, mac);
        let reply = self.info(&saved, true);
        self.pending.insert(key.clone(), Pending { ip, saved });
        Ok(Step::Ready(Box::new(Ready { network, endpoint, reply, key })))
    }

    /// An attach that gave up waiting for an address: undo its join.
    pub fn abandon_attach(&mut self, node: &mut Node, now: Duration, network: &str) {
        self.leave_if_unused(node, now, network);
    }

    /// Second half: publish (the kernel work succeeded) or forget.
    pub fn finish_attach(
        &mut self,
        node: &mut Node,
        now: Duration,
        key: &(String, String),
        wired: bool,
    ) -> Result<(), Status> {
        let Some(p) = self.pending.remove(key) else { return Ok(()) };
        if !wired {
            self.leave_if_unused(node, now, &key.0);
            return Ok(());
        }
        if let Err(e) = self.publish(node, now, &p.saved) {
            self.leave_if_unused(node, now, &key.0);
            return Err(node_status(e));
        }
        tracing::info!(network = %key.0, endpoint = %key.1, ip = %p.ip, "endpoint attached");
        self.state.endpoints.push(p.saved);
        self.save(node);
        self.kernel.notify_one();
        Ok(())
    }

    /// First half of a detach: the endpoint leaves the desired state.
    pub fn begin_detach(&mut self, network: &str, name: &str) -> Result<String, Status> {
        let key = (network.to_string(), name.to_string());
        if self.detaching.contains(&key) {
            return Err(Status::aborted(format!("endpoint {name} is being detached already")));
        }
        let ep = self.find(network, name).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint {name} on network {network} on this host; see `netdb endpoint ls`"
            ))
        })?;
        let host_ifname = ep.host_ifname.clone();
        self.detaching.insert(key);
        Ok(host_ifname)
    }

    /// Second half: withdraw the entries (the veth is gone) or keep it.
    pub fn finish_detach(
        &mut self,
        node: &mut Node,
        now: Duration,
        network: &str,
        name: &str,
        removed: bool,
    ) {
        let key = (network.to_string(), name.to_string());
        self.detaching.remove(&key);
        if !removed {
            return;
        }
        let id = endpoint_key(&self.me, name);
        for table in [ROUTES_TABLE, ENDPOINTS_TABLE] {
            let _ = node.delete(now, network, table, &id);
        }
        self.state.endpoints.retain(|e| !(e.network == network && e.name == name));
        self.leave_if_unused(node, now, network);
        tracing::info!(%network, endpoint = %name, "endpoint detached");
        self.save(node);
        self.kernel.notify_one();
    }

    fn leave_if_unused(&mut self, node: &mut Node, now: Duration, network: &str) {
        if self.local_count(network) > 0 || self.pending.keys().any(|(n, _)| n == network) {
            return;
        }
        let _ = node.leave_network(now, network);
        if let Some(saved) = self.state.networks.remove(network) {
            for b in saved.blocks {
                let _ = node.delete_shared(now, SharedTable::Ipam, &ipam::claim_id(network, b));
            }
            self.claimed_at.retain(|(n, _), _| n != network);
        }
        self.save(node);
    }

    pub fn endpoints(
        &self,
        node: &Node,
        network: &str,
        local_only: bool,
    ) -> Vec<api::EndpointInfo> {
        let mut out = Vec::new();
        for ep in self.state.endpoints.iter().filter(|e| network.is_empty() || e.network == network)
        {
            out.push(self.info(ep, true));
        }
        if !local_only {
            for net in node.networks() {
                if !network.is_empty() && net != network {
                    continue;
                }
                for (key, e) in node.entries(net, ENDPOINTS_TABLE) {
                    if e.owner == self.me {
                        continue;
                    }
                    let Ok(rec) = wire::ServiceRecord::decode(&e.value[..]) else { continue };
                    let route = node
                        .get(net, ROUTES_TABLE, key)
                        .and_then(|r| wire::Route::decode(&r.value[..]).ok());
                    let (prefix, mac) = route
                        .map(|r| {
                            let prefix =
                                r.ip.split_once('/').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
                            (
                                prefix,
                                dp::Mac::from_slice(&r.mac)
                                    .map(|m| m.to_string())
                                    .unwrap_or_default(),
                            )
                        })
                        .unwrap_or_default();
                    out.push(api::EndpointInfo {
                        network: net.into(),
                        name: rec.name,
                        host: e.owner.clone(),
                        ip: rec.ip,
                        prefix,
                        mac,
                        service: rec.service,
                        aliases: rec.aliases,
                        local: false,
                        ..Default::default()
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.network, &a.name, &a.host).cmp(&(&b.network, &b.name, &b.host)));
        out
    }

    fn info(&self, ep: &SavedEndpoint, local: bool) -> api::EndpointInfo {
        api::EndpointInfo {
            network: ep.network.clone(),
            name: ep.name.clone(),
            host: self.me.clone(),
            ip: ep.ip.to_string(),
            prefix: u32::from(ep.prefix),
            mac: ep.mac.clone(),
            ifname: ep.ifname.clone(),
            netns: ep.netns.display().to_string(),
            service: ep.service.clone(),
            aliases: ep.aliases.clone(),
            local,
        }
    }

    fn find(&self, network: &str, name: &str) -> Option<&SavedEndpoint> {
        self.state.endpoints.iter().find(|e| e.network == network && e.name == name)
    }

    /// Writes an endpoint's routing and service entries.
    fn publish(
        &mut self,
        node: &mut Node,
        now: Duration,
        ep: &SavedEndpoint,
    ) -> Result<(), netdb::Error> {
        let tunnel = self.tunnel.map(|t| t.to_string()).unwrap_or_default();
        let mac = parse_mac(&ep.mac).unwrap_or_else(|| dp::Mac::from_ipv4(ep.ip));
        let route = wire::Route {
            ip: format!("{}/{}", ep.ip, ep.prefix),
            mac: mac.0.to_vec().into(),
            host: tunnel,
        };
        let record = wire::ServiceRecord {
            name: ep.name.clone(),
            service: ep.service.clone(),
            aliases: ep.aliases.clone(),
            ip: ep.ip.to_string(),
        };
        let id = endpoint_key(&self.me, &ep.name);
        node.join_network(now, &ep.network)?;
        node.put(now, &ep.network, ROUTES_TABLE, &id, Bytes::from(route.encode_to_vec()))?;
        node.put(now, &ep.network, ENDPOINTS_TABLE, &id, Bytes::from(record.encode_to_vec()))?;
        Ok(())
    }

    /// Addresses taken on a network, with who holds them.
    fn used_addresses(&self, node: &Node, network: &str) -> BTreeMap<Ipv4Addr, String> {
        let mut used = BTreeMap::new();
        for (key, e) in node.entries(network, ROUTES_TABLE) {
            if let Some(r) = decode_route(&e.value) {
                used.insert(r.ip, format!("endpoint {key}"));
            }
        }
        for ep in self.state.endpoints.iter().filter(|e| e.network == network) {
            used.insert(ep.ip, format!("endpoint {} on this host", ep.name));
        }
        for ((n, name), p) in &self.pending {
            if n == network {
                used.insert(p.ip, format!("endpoint {name} being attached on this host"));
            }
        }
        used
    }

    /// The lowest free address of a settled block this host owns; claims a
    /// new block when there is none (`None`: wait for the claim to settle).
    fn allocate(
        &mut self,
        node: &mut Node,
        now: Duration,
        eff: &Effective,
        used: &BTreeMap<Ipv4Addr, String>,
    ) -> Result<Option<Ipv4Addr>, Status> {
        let def = &eff.def;
        let subnet = def.subnet;
        let claims = Claims::collect(
            &def.name,
            def.id(),
            subnet.blocks(),
            node.shared_entries(SharedTable::Ipam),
        );
        let settled: Vec<u32> = claims
            .owned_by(&self.me)
            .filter(|b| {
                self.claimed_at
                    .get(&(def.name.clone(), *b))
                    .is_none_or(|at| now >= *at + self.settle)
            })
            .collect();
        let taken: BTreeSet<Ipv4Addr> = used.keys().copied().collect();
        if let Some(ip) = ipam::allocate(&subnet, settled, &taken) {
            return Ok(Some(ip));
        }
        let unsettled = self.claimed_at.iter().any(|((n, b), at)| {
            *n == def.name && now < *at + self.settle && claims.owner(*b) == Some(&self.me)
        });
        // A claim needs the cluster's claims first, or it could take a
        // block another node holds.
        if unsettled || !node.cluster_synced() {
            return Ok(None);
        }
        let Some(block) = claims.free_block(&subnet, &self.me) else {
            return Err(Status::resource_exhausted(format!(
                "network {}: no free address in {subnet} (every block is claimed and this host's are full)",
                def.name
            )));
        };
        node.put_shared(
            now,
            SharedTable::Ipam,
            &ipam::claim_id(&def.name, block),
            ipam::encode_claim(&def.origin, def.created),
        )
        .map_err(node_status)?;
        self.claimed_at.insert((def.name.clone(), block), now);
        self.state
            .networks
            .entry(def.name.clone())
            .or_insert_with(|| saved_network(def))
            .blocks
            .insert(block);
        self.save(node);
        tracing::info!(network = %def.name, block, "claimed an address block");
        Ok(None)
    }

    fn host_ifname(&self, network: &str, name: &str) -> String {
        let taken: BTreeSet<&str> = self
            .state
            .endpoints
            .iter()
            .map(|e| e.host_ifname.as_str())
            .chain(self.pending.values().map(|p| p.saved.host_ifname.as_str()))
            .collect();
        (0u64..)
            .map(|salt| {
                let h = Hasher::default()
                    .bytes(network.as_bytes())
                    .bytes(name.as_bytes())
                    .u64(salt)
                    .finish();
                format!("ndve{:08x}", h as u32)
            })
            .find(|n| !taken.contains(n.as_str()))
            .unwrap_or_default()
    }

    // ----- upkeep ----------------------------------------------------------

    /// Keeps this host's copies of the definitions in step, follows
    /// removals, drops claims that lost or belong to a removed network, and
    /// reports conflicts.
    pub fn maintain(&mut self, node: &mut Node, now: Duration) {
        self.dirty = false;
        let resolved = Self::resolved(node);
        let mine: BTreeMap<String, (bool, Option<NetworkDef>)> = node
            .shared_entries(SharedTable::NetDefs)
            .into_iter()
            .filter_map(|(k, e)| {
                let (name, owner) = owned_key(k)?;
                (owner == self.me)
                    .then(|| (name.to_string(), (e.deleted, NetworkDef::decode(&e.value))))
            })
            .collect();
        let mut resave = false;
        for (name, eff) in &resolved.networks {
            let in_step = matches!(mine.get(name), Some((false, Some(d))) if d == &eff.def);
            if !in_step {
                let _ = node.put_shared(now, SharedTable::NetDefs, name, eff.def.encode());
            }
            if let Some(saved) = self.state.networks.get_mut(name)
                && (saved.created, saved.origin.as_str()) == eff.def.id()
                && saved.vni != eff.vni
            {
                saved.vni = eff.vni;
                resave = true;
            }
        }
        if resave {
            self.save(node);
        }
        for (name, (deleted, def)) in &mine {
            let gone = def.as_ref().is_some_and(|d| {
                resolved.removed.contains(&(d.name.clone(), d.created, d.origin.clone()))
            });
            if !deleted && gone && !resolved.networks.contains_key(name) {
                let _ = node.delete_shared(now, SharedTable::NetDefs, name);
            }
        }
        self.drop_stale_claims(node, now, &resolved);
        self.find_conflicts(node, &resolved);
        self.kernel.notify_one();
    }

    fn drop_stale_claims(&mut self, node: &mut Node, now: Duration, resolved: &Resolved) {
        let mut drop: Vec<(String, u32)> = Vec::new();
        // Each network's claims, read once however many of ours it holds.
        let mut claims_of: BTreeMap<&str, Claims> = BTreeMap::new();
        for (key, e) in node.shared_entries(SharedTable::Ipam) {
            let Some((id, owner)) = owned_key(key) else { continue };
            if owner != self.me || e.deleted {
                continue;
            }
            let Some((net, block)) = ipam::parse_claim_id(id) else { continue };
            let current = resolved.networks.get(net).is_some_and(|eff| {
                wire::BlockClaim::decode(&e.value[..])
                    .is_ok_and(|c| (c.created, c.origin.as_str()) == eff.def.id())
            });
            let lost = resolved.networks.get(net).is_some_and(|eff| {
                let claims = claims_of.entry(net).or_insert_with(|| {
                    let def = &eff.def;
                    Claims::collect(
                        net,
                        def.id(),
                        def.subnet.blocks(),
                        node.shared_entries(SharedTable::Ipam),
                    )
                });
                claims.owner(block).is_some_and(|o| o != self.me)
                    && !self.state.endpoints.iter().any(|ep| {
                        ep.network == net && eff.def.subnet.block_of(ep.ip) == Some(block)
                    })
            });
            if !current || lost {
                drop.push((net.to_string(), block));
            }
        }
        for (net, block) in drop {
            let _ = node.delete_shared(now, SharedTable::Ipam, &ipam::claim_id(&net, block));
            self.claimed_at.remove(&(net.clone(), block));
            if let Some(saved) = self.state.networks.get_mut(&net) {
                saved.blocks.remove(&block);
            }
            tracing::info!(network = %net, block, "released an address block claim");
        }
    }

    fn find_conflicts(&mut self, node: &Node, resolved: &Resolved) {
        let mut now: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (net, text) in &resolved.conflicts {
            now.entry(net.clone()).or_default().push(text.clone());
        }
        for net in node.networks() {
            let Some(eff) = resolved.networks.get(net) else { continue };
            let mut list = Vec::new();
            let claims = Claims::collect(
                net,
                eff.def.id(),
                eff.def.subnet.blocks(),
                node.shared_entries(SharedTable::Ipam),
            );
            for (block, claimers) in claims.contested() {
                list.push(format!(
                    "address block {block} of network {net} is claimed by {}",
                    claimers.join(" and ")
                ));
            }
            let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
            for (key, e) in node.entries(net, ROUTES_TABLE) {
                if let Some(r) = decode_route(&e.value) {
                    by_ip.entry(r.ip).or_default().push(key.to_string());
                }
            }
            for (ip, keys) in by_ip.into_iter().filter(|(_, k)| k.len() > 1) {
                list.push(format!(
                    "address {ip} of network {net} is used by {}",
                    keys.join(" and ")
                ));
            }
            if !list.is_empty() {
                now.entry(net.to_string()).or_default().extend(list);
            }
        }
        for (net, list) in &now {
            for c in list {
                if self.reported.insert(c.clone()) {
                    self.conflicts_seen += 1;
                    tracing::warn!(conflict = %c, "conflict detected");
                    self.notices.push((net.clone(), c.clone()));
                }
            }
        }
        // Forget conflicts that are over, so the set stays as small as
        // the conflicts in force.
        let current: BTreeSet<&String> = now.values().flatten().collect();
        self.reported.retain(|c| current.contains(c));
        self.conflicts = now;
    }

    /// What the kernel must hold now.
    pub fn desired(&self, node: &Node) -> dp::Desired {
        let mut out = dp::Desired::new();
        let Some(tunnel) = self.tunnel.filter(|_| self.enabled()) else { return out };
        let resolved = Self::resolved(node);
        let networks: BTreeSet<&str> =
            self.state.endpoints.iter().map(|e| e.network.as_str()).collect();
        for name in networks {
            let eff = match resolved.networks.get(name) {
                Some(e) => e.clone(),
                None => match self.state.networks.get(name).and_then(|n| saved_def(name, n)) {
                    Some(def) => Effective { vni: def.vni, def },
                    None => continue,
                },
            };
            let net = self.kernel_network(node, name, &eff, tunnel);
            out.insert(net.vni, net);
        }
        out
    }

    fn kernel_network(
        &self,
        node: &Node,
        name: &str,
        eff: &Effective,
        tunnel: Ipv4Addr,
    ) -> dp::Network {
        let remotes = node
            .entries(name, ROUTES_TABLE)
            .into_iter()
            .filter(|(_, e)| e.owner != self.me)
            .filter_map(|(_, e)| decode_route(&e.value))
            .filter(|r| r.host != tunnel && eff.def.subnet.contains(r.ip))
            .collect();
        let endpoints = self
            .state
            .endpoints
            .iter()
            .filter(|e| {
                e.network == name && !self.detaching.contains(&(e.network.clone(), e.name.clone()))
            })
            .map(|e| {
                (
                    e.host_ifname.clone(),
                    kernel_endpoint(
                        e,
                        parse_mac(&e.mac).unwrap_or_else(|| dp::Mac::from_ipv4(e.ip)),
                    ),
                )
            })
            .collect();
        dp::Network { vni: eff.vni, mtu: eff.def.mtu, local: tunnel, remotes, endpoints }
    }

    /// Writes the state file, with the clock to resume from.
    pub fn save(&mut self, node: &Node) {
        self.state.ltime = node.ltime();
        if let Some(store) = &self.store
            && let Err(e) = store.save(&self.state)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot write the state file; a restart would lose endpoints");
        }
    }
}

/// The key of an endpoint's entries: unique per host.
pub fn endpoint_key(host: &str, name: &str) -> String {
    format!("{host}/{name}")
}

fn check_name(what: &str, s: &str) -> Result<(), Status> {
    if valid_name(s, MAX_ENDPOINT_NAME) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid {what} {s:?}: use 1-{MAX_ENDPOINT_NAME} of letters, digits and -_.:@"
        )))
    }
}

fn visible_entries(node: &Node, network: &str) -> u64 {
    node.raw_entries(network).iter().filter(|(_, _, e)| e.visible()).count() as u64
}

fn saved_network(def: &NetworkDef) -> SavedNetwork {
    SavedNetwork {
        subnet: def.subnet.to_string(),
        vni: def.vni,
        mtu: def.mtu,
        origin: def.origin.clone(),
        created: def.created,
        blocks: BTreeSet::new(),
    }
}

fn saved_def(name: &str, n: &SavedNetwork) -> Option<NetworkDef> {
    let def = NetworkDef {
        name: name.into(),
        subnet: n.subnet.parse().ok()?,
        vni: n.vni,
        mtu: n.mtu,
        origin: n.origin.clone(),
        created: n.created,
    };
    NetworkDef::decode(&def.encode())
}

fn kernel_endpoint(e: &SavedEndpoint, mac: dp::Mac) -> dp::Endpoint {
    dp::Endpoint {
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        host_ifname: e.host_ifname.clone(),
        ip: e.ip,
        prefix: e.prefix,
        mac,
    }
}

fn parse_mac(s: &str) -> Option<dp::Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(dp::Mac(out))
}

/// A routing entry from the table; `None` if malformed (a peer's bug or
/// hostile input: it never reaches the kernel).
fn decode_route(value: &[u8]) -> Option<dp::Remote> {
    let r = wire::Route::decode(value).ok()?;
    let ip: Ipv4Addr = r.ip.split_once('/').map_or(r.ip.as_str(), |(ip, _)| ip).parse().ok()?;
    let host: Ipv4Addr = r.host.parse().ok()?;
    let mac = dp::Mac::from_slice(&r.mac)?;
    // A zero MAC would become the VXLAN default (flood) entry, a multicast
    // one is no endpoint: both refused.
    if mac.0 == [0; 6] || mac.0[0] & 1 == 1 {
        return None;
    }
    (!host.is_unspecified() && !host.is_multicast() && !host.is_broadcast()).then_some(dp::Remote {
        ip,
        mac,
        host,
    })
}

fn node_status(e: netdb::Error) -> Status {
    crate::api::status(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_through_text() {
        let m = dp::Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(parse_mac(&m.to_string()), Some(m));
        for bad in ["", "02:42", "02:42:0a:00:00:07:01", "zz:42:0a:00:00:07"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_routes_never_reach_the_kernel() {
        let good = wire::Route {
            ip: "10.0.0.5/24".into(),
            mac: vec![2, 0x42, 10, 0, 0, 5].into(),
            host: "192.0.2.1".into(),
        };
        assert!(decode_route(&good.encode_to_vec()).is_some());
        for bad in [
            wire::Route { mac: vec![1, 2].into(), ..good.clone() },
            wire::Route { host: "0.0.0.0".into(), ..good.clone() },
            wire::Route { host: "255.255.255.255".into(), ..good.clone() },
            wire::Route { ip: "10.0.0.500/24".into(), ..good.clone() },
            wire::Route { host: "::1".into(), ..good.clone() },
            wire::Route { mac: vec![0; 6].into(), ..good.clone() },
            wire::Route { mac: vec![1, 0, 0x5e, 0, 0, 1].into(), ..good.clone() },
        ] {
            assert!(decode_route(&bad.encode_to_vec()).is_none(), "{bad:?}");
        }
        assert!(decode_route(b"\xff\xff\xff").is_none());
    }
}
