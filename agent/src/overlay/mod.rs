//! Overlay networks on this host: definitions kept as cluster objects,
//! endpoints attached and detached, addresses drawn from claimed blocks,
//! and the desired kernel state derived from the tables.
//!
//! Everything here runs on the core loop (it needs the node) and is
//! synchronous; the slow parts of an attach (waiting for a block claim to
//! settle, the kernel work) happen in the caller between calls, with the
//! endpoint's name and address reserved in `pending` meanwhile. Requests
//! come in as this module's own argument types and are refused with its
//! own [`Error`]; no protocol is known here.
//!
//! - `networks`: create, remove, list.
//! - `attach`: attach and detach, in two halves around the kernel work.
//! - `addresses`: which addresses are taken, block claims, veth names.
//! - `names`: who holds each endpoint name, and who keeps a contested one.
//! - `upkeep`: definitions kept in step, stale claims released, conflicts.
//! - `desired`: what the kernel must hold, from the tables.
//! - `view`: the names the embedded DNS answers from.

mod addresses;
mod attach;
mod desired;
mod error;
mod names;
mod networks;
#[cfg(test)]
mod testing;
mod upkeep;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// The netdb internals the overlay's files use beside ipam and netdefs,
// imported once here.
use netdb::Hasher;
use netdb::SharedTable;
use netdb::ipam::{self, Subnet};
use netdb::names::{owned_key, valid_name};
use netdb::netdefs::{self, NetworkDef, Resolved};
use netdb::{Event, MemberState, Node};
use netdb_dataplane as dp;
use netdb_wire as wire;
use prost::Message;
use tokio::sync::{Notify, watch};

use crate::state::{SavedEndpoint, SavedNetwork, State, Store};

pub(crate) use addresses::{release, reserve};
pub(crate) use attach::{Attach, Host, attach, detach, detach_docker, reap, set_aliases};
pub(crate) use desired::parse_mac;
pub(crate) use error::{Error, Kind};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use names::record_entry;
pub(crate) use names::{Holder, Names};
pub(crate) use networks::{CreateNetwork, NetworkDetail, NetworkInfo, host_routes};
pub(crate) use view::View;

/// Network table of routing entries (Docker: overlay_peer_table).
pub(crate) const ROUTES_TABLE: &str = "routes";
/// Network table of service-discovery entries (Docker: endpoint_table).
pub(crate) const ENDPOINTS_TABLE: &str = "endpoints";

/// The gateway bridge's subnet unless --gateway-subnet says: part of
/// 198.18.0.0/15, reserved for benchmarking (RFC 2544), so neither real
/// networks, cloud VPCs (AWS's default VPC is 172.31.0.0/16), Docker's
/// bridge pools (172.17-31/16, 192.168/16) nor swarm's overlay pool
/// (10.0.0.0/8) use it.
pub(crate) const DEFAULT_GATEWAY_SUBNET: &str = "198.18.0.0/16";

/// Longest endpoint, service and alias names.
const MAX_ENDPOINT_NAME: usize = 64;
const MAX_ALIASES: usize = 16;

/// An endpoint as `netdb endpoint ls` shows it: one of this host's, or one
/// another host published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointInfo {
    pub(crate) network: String,
    pub(crate) name: String,
    pub(crate) host: String,
    /// As published: a peer's text is shown, not trusted.
    pub(crate) ip: String,
    pub(crate) prefix: u32,
    pub(crate) mac: String,
    /// Empty for other hosts' endpoints.
    pub(crate) ifname: String,
    /// Empty for other hosts' endpoints.
    pub(crate) netns: String,
    pub(crate) service: String,
    pub(crate) aliases: Vec<String>,
    pub(crate) local: bool,
    /// This host's endpoints only: the address on the gateway bridge
    /// (`None` on an internal network) and the published ports.
    pub(crate) gateway_ip: Option<Ipv4Addr>,
    pub(crate) publish: Vec<String>,
    /// A local endpoint whose namespace is gone: the next reconcile
    /// detaches it.
    pub(crate) netns_missing: bool,
}

/// An endpoint being attached: its name and address are taken.
struct Pending {
    ip: Ipv4Addr,
    saved: SavedEndpoint,
}

/// This host's overlay networks and endpoints; owned by the core loop.
pub(crate) struct Overlay {
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
    conflicts_seen: u64,
    /// Conflicts found since the last drain, by network: for the watch
    /// streams.
    notices: Vec<(String, String)>,
    /// Definitions or claims changed: `maintain` is due.
    dirty: bool,
    /// Wakes the kernel reconcile loop.
    kernel: Arc<Notify>,
    /// The names the embedded DNS answers from.
    dns: watch::Sender<Arc<View>>,
    /// The gateway bridge's subnet: endpoints' ways out.
    gateway: Subnet,
    /// Endpoints detached because their namespace was gone.
    reaped: u64,
    /// The VXLAN devices' UDP port.
    vxlan_port: u16,
    /// The interface holding the tunnel address and its MTU, if known.
    underlay: Option<(String, u32)>,
    /// The VNIs networks may have here (`--vni-range`).
    vnis: netdefs::VniRange,
    /// Host-side veths of re-addressed endpoints: the reconcile removes
    /// them before it wires the endpoints again under their new address.
    retired: Vec<String>,
    /// Where `network create` without a subnet takes one: the pool and the
    /// prefix of the subnets taken from it.
    pool: (Subnet, u8),
}

impl Overlay {
    /// `store` is `None` without a data dir; `tunnel` is `None` without a
    /// kernel data plane (endpoints are then refused).
    pub(crate) fn new(
        me: &str,
        tunnel: Option<Ipv4Addr>,
        store: Option<(Store, State)>,
        settle: Duration,
        gateway: Subnet,
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
            dns: watch::Sender::new(Arc::default()),
            gateway,
            reaped: 0,
            vxlan_port: dp::VXLAN_PORT,
            underlay: None,
            vnis: netdefs::VniRange::default(),
            retired: Vec::new(),
            pool: (ipam::DEFAULT_POOL, ipam::DEFAULT_POOL_SIZE),
        }
    }

    /// Networks created here take VNIs of `range`; endpoints are refused on
    /// networks outside it.
    pub(crate) fn with_vni_range(mut self, range: netdefs::VniRange) -> Overlay {
        self.vnis = range;
        self
    }

    /// Why this host refuses endpoints on `network` of VNI `vni`.
    fn vni_misfit(&self, network: &str, vni: u32) -> Option<String> {
        (!self.vnis.contains(vni)).then(|| {
            format!(
                "network {network} has VNI {vni}, outside this host's --vni-range {}: \
                 endpoints cannot be attached to it here; give every host the same --vni-range",
                self.vnis
            )
        })
    }

    /// The tunnel address is on interface `ifname` of MTU `mtu`: networks
    /// created here get the largest MTU it carries.
    pub(crate) fn with_underlay(mut self, underlay: Option<(String, u32)>) -> Overlay {
        self.underlay = underlay;
        self
    }

    /// The MTU of a network created here without --mtu.
    fn default_mtu(&self) -> u32 {
        self.underlay.as_ref().map_or(netdefs::DEFAULT_MTU, |(_, mtu)| netdefs::overlay_mtu(*mtu))
    }

    /// Why this host's underlay cannot carry `network` of MTU `mtu`.
    fn mtu_misfit(&self, network: &str, mtu: u32) -> Option<String> {
        let (ifname, have) = self.underlay.as_ref()?;
        (!netdefs::mtu_fits(mtu, *have)).then(|| {
            format!(
                "network {network} has MTU {mtu}, which this host's underlay does not carry: \
                 {ifname} has MTU {have}, room for {} inside VXLAN; raise the MTU of {ifname} or \
                 recreate the network with --mtu {}",
                have.saturating_sub(netdefs::VXLAN_OVERHEAD),
                have.saturating_sub(netdefs::VXLAN_OVERHEAD)
            )
        })
    }

    /// The VXLAN devices use `port` (`--vxlan-port`).
    pub(crate) fn with_vxlan_port(mut self, port: u16) -> Overlay {
        self.vxlan_port = port;
        self
    }

    /// Sets the default address pool (`network create` without a subnet).
    pub(crate) fn set_default_pool(&mut self, pool: Subnet, size: u8) {
        self.pool = (pool, size);
    }

    /// The data plane is on: endpoints can be attached here.
    pub(crate) fn enabled(&self) -> bool {
        self.store.is_some() && self.tunnel.is_some()
    }

    /// True when definitions or claims changed since the last `maintain`.
    pub(crate) fn upkeep_due(&self) -> bool {
        self.dirty
    }

    /// Conflicts found since the last call, as (network, text).
    pub(crate) fn take_notices(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.notices)
    }

    /// Conflicts detected since the start.
    pub(crate) fn conflicts_seen(&self) -> u64 {
        self.conflicts_seen
    }

    /// Endpoints detached since the start because their namespace was
    /// gone.
    pub(crate) fn endpoints_reaped(&self) -> u64 {
        self.reaped
    }

    /// Notified whenever the kernel may need a reconcile.
    pub(crate) fn kernel_changes(&self) -> Arc<Notify> {
        self.kernel.clone()
    }

    fn kernel_changed(&self) {
        self.kernel.notify_one();
    }

    /// Host-side veths to remove before the next reconcile (endpoints
    /// re-addressed since the last call).
    pub(crate) fn take_retired(&mut self) -> Vec<String> {
        std::mem::take(&mut self.retired)
    }

    /// The names the embedded DNS answers from, as they change.
    pub(crate) fn dns_view(&self) -> watch::Receiver<Arc<View>> {
        self.dns.subscribe()
    }

    /// Reads the names of every joined network and publishes them, with
    /// this host's containers, to the embedded DNS; returns them.
    fn publish_names(&mut self, node: &Node) -> BTreeMap<String, Arc<Names>> {
        let names: BTreeMap<String, Arc<Names>> = node
            .networks()
            .into_iter()
            .map(|net| {
                let entries = node.entries(net, ENDPOINTS_TABLE);
                (net.to_string(), Arc::new(Names::from_entries(entries)))
            })
            .collect();
        let mut containers: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        // Docker's containers ask Docker's resolver, not one of ours.
        for ep in self.state.endpoints.iter().filter(|ep| !ep.docker) {
            containers.entry(ep.netns.clone()).or_default().push(ep.network.clone());
        }
        let mut gateways = BTreeMap::new();
        let mut docker: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for ep in self.state.endpoints.iter().filter(|ep| ep.docker) {
            if let Ok(subnet) = Subnet::containing(ep.ip, ep.prefix) {
                gateways.insert(subnet.gateway(), ep.network.clone());
            }
            docker.entry(ep.ip).or_default().push(ep.network.clone());
        }
        let view = View::new(containers, names.clone()).with_docker(gateways, docker);
        self.dns.send_replace(Arc::new(view));
        names
    }

    /// After a restart: the saved definitions, claims and endpoints go out
    /// again (in the same incarnation, peers see an update of what they
    /// hold; in a new one, the old one's entries are purged everywhere as
    /// soon as peers see it).
    pub(crate) fn republish(&mut self, node: &mut Node, now: Duration) {
        node.witness_clock(self.state.ltime);
        for net in &self.state.joined {
            if let Err(e) = node.join_network(now, net) {
                tracing::warn!(network = %net, error = %e, "cannot join again a network joined before the restart");
            }
        }
        let saved: Vec<(String, SavedNetwork)> = self.state.networks.clone().into_iter().collect();
        for (name, n) in saved {
            let Some(def) = saved_def(&name, &n) else {
                tracing::warn!(network = %name, "saved definition is invalid; dropped");
                continue;
            };
            let _ = node.put_shared(now, SharedTable::NetDefs, &name, def.encode());
            // The blocks our endpoints sit in, not the saved list: a state
            // file written by a version that cut subnets otherwise numbers
            // its blocks otherwise, and an empty block is not worth keeping.
            let blocks: BTreeSet<u32> = self
                .state
                .endpoints
                .iter()
                .filter(|ep| ep.network == name)
                .filter_map(|ep| {
                    // The subnet granted may differ from the one asked
                    // (a pool overlap): the endpoint's own prefix says.
                    let subnet = Subnet::containing(ep.ip, ep.prefix).ok()?;
                    subnet.block_of(ep.ip)
                })
                .collect();
            if let Some(saved) = self.state.networks.get_mut(&name) {
                saved.blocks = blocks.clone();
            }
            for b in &blocks {
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
            // Its container keeps the old address and route: the kernel is
            // not asked to renumber a live container.
            if let Some(ip) = ep.gateway_ip.filter(|ip| !self.gateway.usable(*ip)) {
                tracing::warn!(
                    network = %ep.network,
                    endpoint = %ep.name,
                    %ip,
                    gateway_subnet = %self.gateway,
                    "the endpoint's gateway address is outside --gateway-subnet, so it has no way out; detach and attach it again"
                );
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
        self.kernel_changed();
    }

    /// Notes which events concern the overlay.
    pub(crate) fn observe(&mut self, ev: &Event) {
        // Members change the peers to save.
        if let Event::Member { .. } = ev {
            self.dirty = true;
        }
        let relevant = match ev {
            Event::Shared { .. } => true,
            Event::Entry { table, .. } => &**table == ROUTES_TABLE,
            _ => false,
        };
        if relevant {
            self.dirty = true;
            self.kernel_changed();
        }
        // Names are no kernel matter, but a name held twice is a conflict
        // to find, and the route may have arrived before its record.
        if matches!(ev, Event::Entry { table, .. } if &**table == ENDPOINTS_TABLE) {
            self.dirty = true;
        }
    }

    fn resolved(node: &Node) -> Resolved {
        Resolved::from_copies(node.shared_entries(SharedTable::NetDefs))
    }

    /// This host's endpoints (attached, not being attached).
    pub(crate) fn local_endpoints(&self) -> usize {
        self.state.endpoints.len()
    }

    fn local_count(&self, network: &str) -> usize {
        self.state.endpoints.iter().filter(|e| e.network == network).count()
    }

    fn find(&self, network: &str, name: &str) -> Option<&SavedEndpoint> {
        self.state.endpoints.iter().find(|e| e.network == network && e.name == name)
    }

    /// Endpoints of `network` (every network if empty): this host's, and
    /// unless `local_only` those other hosts published.
    pub(crate) fn endpoints(
        &self,
        node: &Node,
        network: &str,
        local_only: bool,
    ) -> Vec<EndpointInfo> {
        let mut out = Vec::new();
        for ep in self.state.endpoints.iter().filter(|e| network.is_empty() || e.network == network)
        {
            out.push(self.info(ep));
        }
        if !local_only {
            for net in node.networks() {
                if !network.is_empty() && net != network {
                    continue;
                }
                for (key, e) in node.entries(net, ENDPOINTS_TABLE) {
                    if *e.owner == *self.me {
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
                    out.push(EndpointInfo {
                        network: net.into(),
                        name: rec.name,
                        host: e.owner.to_string(),
                        ip: rec.ip,
                        prefix,
                        mac,
                        ifname: String::new(),
                        netns: String::new(),
                        service: rec.service,
                        aliases: rec.aliases,
                        local: false,
                        gateway_ip: None,
                        publish: Vec::new(),
                        netns_missing: false,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.network, &a.name, &a.host).cmp(&(&b.network, &b.name, &b.host)));
        out
    }

    fn info(&self, ep: &SavedEndpoint) -> EndpointInfo {
        EndpointInfo {
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
            local: true,
            gateway_ip: ep.gateway_ip,
            publish: ep.publish.clone(),
            netns_missing: dp::netns_gone(&ep.netns),
        }
    }

    /// Addresses of live members to knock on after a restart.
    fn known_peers(&self, node: &Node) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = node
            .members()
            .into_iter()
            .filter(|m| m.name != self.me && m.state == MemberState::Alive)
            .filter_map(|m| m.addr)
            .collect();
        peers.sort_unstable();
        peers.truncate(SAVED_PEERS);
        peers
    }

    /// Saves the members to knock on after a restart when they changed (a
    /// SIGKILL leaves no time to).
    pub(crate) fn save_changed(&mut self, node: &Node) {
        if self.store.is_some() && self.known_peers(node) != self.state.peers {
            self.save(node);
        }
    }

    /// `network` was joined (or left) through the API: joined again by a
    /// restart and kept while no endpoint uses it, until left the same
    /// way. Saved before the answer.
    pub(crate) fn user_joined(&mut self, node: &Node, network: &str, joined: bool) {
        let changed = if joined {
            self.state.joined.insert(network.to_string())
        } else {
            self.state.joined.remove(network)
        };
        if changed {
            self.save(node);
        }
    }

    /// Saves that this host left the cluster: its next start begins a new
    /// incarnation rather than resuming one whose entries peers removed,
    /// and joins no network (the node left them all).
    pub(crate) fn end_life(&mut self, node: &Node) {
        (self.state.incarnation, self.state.generation) = (0, 0);
        self.state.joined.clear();
        self.save(node);
    }

    /// Writes the state file, with the clock to resume from.
    pub(crate) fn save(&mut self, node: &Node) {
        self.state.ltime = node.ltime();
        self.state.peers = self.known_peers(node);
        if let Some(store) = &self.store
            && let Err(e) = store.save(&self.state)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot write the state file; a restart would lose endpoints");
        }
    }
}

/// Members' addresses kept in the state file: enough to find the cluster
/// again, few enough to knock on all at once.
const SAVED_PEERS: usize = 16;

/// The key of an endpoint's entries: unique per host.
fn endpoint_key(host: &str, name: &str) -> String {
    format!("{host}/{name}")
}

fn saved_network(def: &NetworkDef) -> SavedNetwork {
    SavedNetwork {
        subnet: def.subnet.to_string(),
        vni: def.vni,
        mtu: def.mtu,
        origin: def.origin.clone(),
        created: def.created,
        blocks: BTreeSet::new(),
        internal: def.internal,
        pool: def.pool.map(|p| p.to_string()).unwrap_or_default(),
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
        internal: n.internal,
        pool: match n.pool.as_str() {
            "" => None,
            text => Some(text.parse().ok()?),
        },
    };
    NetworkDef::decode(&def.encode())
}

#[cfg(test)]
mod tests {
    use super::testing::{Parts, Temp, TestHost, attach_req, blue};
    use super::*;

    #[test]
    fn a_restarted_overlay_republishes_its_endpoints_from_the_state_dir() {
        let ((dir, h), ns) = (blue("restart"), Temp::netns("restart-ns"));
        let before = h.attach(attach_req("blue", "web", &ns.0)).unwrap();
        let ltime = h.parts().node.ltime();
        drop(h.into_parts());

        // A new process: new incarnation, empty tables, a kernel that lost
        // the veth; only the data dir is left.
        let h = TestHost::new("h1", 1, 2, &dir.0);
        let p = h.parts();
        assert!(p.node.ltime() >= ltime, "the clock resumes from the state file");
        assert_eq!(p.overlay.endpoints(&p.node, "", true), std::slice::from_ref(&before));
        let route = p.node.get("blue", ROUTES_TABLE, "h1/web").expect("route republished");
        assert_eq!(route.incarnation, 2);
        let route = wire::Route::decode(&route.value[..]).unwrap();
        assert_eq!(route.ip, format!("{}/24", before.ip));
        let nets = p.overlay.networks(&p.node);
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].overlay.as_ref().map(|o| o.vni), Some(4096));
        let claims = p.node.shared_entries(SharedTable::Ipam);
        assert!(claims.iter().any(|(k, e)| k.starts_with("blue:") && !e.deleted));
        drop(p);

        let r = h.reconcile();
        assert_eq!((r.created, r.endpoints_repaired, r.failed), (1, 1, 0), "{r:?}");
        let wired = h.kernel.try_lock().unwrap().endpoints();
        assert_eq!(wired.values().map(|e| e.ip.to_string()).collect::<Vec<_>>(), [before.ip]);
        assert_eq!(h.reconcile().changes(), 0);
    }

    /// A network joined through the API alone (no endpoint, no definition)
    /// is joined again by the next start, whether or not its attachment
    /// ever left; one left, or a life ended by a leave, is not.
    #[test]
    fn a_restart_joins_again_the_networks_joined_before_and_not_after_a_leave() {
        let dir = Temp::dir("rejoin");
        let h = TestHost::new("h1", 1, 2, &dir.0);
        {
            let mut p = h.parts();
            let Parts { overlay, node, .. } = &mut *p;
            for net in ["tables", "gone"] {
                node.join_network(Duration::ZERO, net).unwrap();
                overlay.user_joined(node, net, true);
            }
            node.leave_network(Duration::ZERO, "gone").unwrap();
            overlay.user_joined(node, "gone", false);
        }
        drop(h.into_parts());

        let h = TestHost::new("h1", 1, 2, &dir.0);
        {
            let mut p = h.parts();
            assert_eq!(p.node.networks(), ["tables"]);
            let Parts { overlay, node, .. } = &mut *p;
            node.leave(Duration::ZERO);
            overlay.end_life(node);
        }
        drop(h.into_parts());

        let h = TestHost::new("h1", 1, 3, &dir.0);
        assert!(h.parts().node.networks().is_empty(), "a leave ends the joins with the life");
    }
}
