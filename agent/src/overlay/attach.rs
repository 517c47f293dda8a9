//! Attach and detach, each in two halves around the kernel work: the first
//! half reserves (or takes out of the desired state) on the core, the
//! kernel is changed, the second half publishes or forgets. The sequence
//! itself ([`attach`], [`detach`]) runs wherever the caller is, reaching
//! the overlay through a [`Host`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netdb::ipam;
use netdb::netdefs::Effective;
use netdb::{Node, Scope, SharedTable};
use netdb_dataplane::{self as dp, Kernel};
use netdb_wire as wire;
use prost::Message;
use tokio::sync::Mutex;

use super::desired::{docker_gateway, gateway_ifname, kernel_endpoint, parse_mac};
use super::names::{Names, fold};
use super::{
    ENDPOINTS_TABLE, EndpointInfo, Error, MAX_ALIASES, MAX_ENDPOINT_NAME, Overlay, Pending,
    ROUTES_TABLE, endpoint_key, saved_network, valid_name,
};
use crate::state::SavedEndpoint;

/// Longest interface name Linux takes.
const MAX_IFNAME: usize = 15;

/// Settle waits an attach sits through before giving up (each is one
/// claim of a block; losing many races in a row means heavy contention).
const MAX_ATTACH_WAITS: usize = 8;

/// `netdb endpoint attach`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attach {
    pub(crate) network: String,
    pub(crate) name: String,
    /// The container's network namespace (absolute path).
    pub(crate) netns: PathBuf,
    /// `None`: an address from this host's blocks.
    pub(crate) ip: Option<String>,
    /// Empty: no service.
    pub(crate) service: String,
    pub(crate) aliases: Vec<String>,
    /// `None`: eth0.
    pub(crate) ifname: Option<String>,
    /// Host ports to forward to the endpoint: HOSTPORT:PORT[/tcp|udp].
    pub(crate) publish: Vec<String>,
    /// Docker's endpoint: the veth peer is left in this namespace for
    /// Docker to move, rename and address (`netns` and `ifname` unused, no
    /// way out or published ports of netdb's).
    pub(crate) docker: bool,
    /// `None`: derived from the address (02:42 and the IPv4 address).
    pub(crate) mac: Option<dp::Mac>,
}

/// Where the overlay lives and how time passes there: the agent's core
/// loop (reached by message, real time) or a test (direct, virtual time).
pub(crate) trait Host: Sync {
    /// Runs `f` on the overlay and its node at the host's current time;
    /// `None` once the host is shutting down.
    fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Overlay, &mut Node, Duration) -> R + Send + 'static,
    ) -> impl Future<Output = Option<R>> + Send;

    /// Lets `d` pass (a block claim settling).
    fn wait(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

pub(super) async fn on<H: Host, R: Send + 'static>(
    host: &H,
    f: impl FnOnce(&mut Overlay, &mut Node, Duration) -> R + Send + 'static,
) -> Result<R, Error> {
    host.with(f).await.ok_or(Error::Stopped)
}

/// Attaches an endpoint: reserve on the host, wire the kernel, publish on
/// the host. The kernel lock is held from the wiring to the publication,
/// so a reconcile never sees a half-made endpoint; on any failure nothing
/// of the endpoint is left (reservation, veth, joined network).
pub(crate) async fn attach<H: Host, K: Kernel>(
    host: &H,
    kernel: Option<&Mutex<K>>,
    a: Attach,
) -> Result<EndpointInfo, Error> {
    let a = Arc::new(a);
    let mut waits = 0;
    let ready = loop {
        let req = a.clone();
        match on(host, move |o, node, now| o.begin_attach(node, now, &req)).await?? {
            Step::Ready(ready) => break ready,
            Step::Wait(_) if waits >= MAX_ATTACH_WAITS => {
                let net = a.network.clone();
                on(host, move |o, node, now| o.abandon_attach(node, now, &net)).await?;
                return Err(Error::Unsettled { network: a.network.clone(), tries: waits });
            }
            Step::Wait(d) => {
                waits += 1;
                host.wait(d).await;
            }
        }
    };
    let kernel = kernel.ok_or(Error::DataplaneOff)?.lock().await;
    let wired = kernel.attach(&ready.network, &ready.endpoint).await;
    let key = ready.key.clone();
    let ok = wired.is_ok();
    let published =
        on(host, move |o, node, now| o.finish_attach(node, now, &key, ok)).await.and_then(|r| r);
    if ok && published.is_err() {
        let _ = kernel.detach(&ready.endpoint.host_ifname).await;
    }
    published?;
    wired?;
    Ok(ready.reply)
}

/// Detaches an endpoint: out of the desired state, veth removed, entries
/// withdrawn, all under the kernel lock. Without a kernel (data plane off)
/// only the entries go. `gone` is the endpoint's namespace when the
/// detach is a reap (the namespace vanished without one).
pub(crate) async fn detach<H: Host, K: Kernel>(
    host: &H,
    kernel: Option<&Mutex<K>>,
    network: String,
    name: String,
    gone: Option<PathBuf>,
) -> Result<(), Error> {
    detach_with(host, kernel, Detach { network, name, gone, keep_address: false }).await
}

/// Detaches Docker's endpoint; `keep_address`: its address stays reserved
/// for Docker's ReleaseAddress, which follows (taken by no request in
/// between, so the release drops exactly this one).
pub(crate) async fn detach_docker<H: Host, K: Kernel>(
    host: &H,
    kernel: Option<&Mutex<K>>,
    network: String,
    name: String,
    keep_address: bool,
) -> Result<(), Error> {
    detach_with(host, kernel, Detach { network, name, gone: None, keep_address }).await
}

struct Detach {
    network: String,
    name: String,
    gone: Option<PathBuf>,
    keep_address: bool,
}

async fn detach_with<H: Host, K: Kernel>(
    host: &H,
    kernel: Option<&Mutex<K>>,
    d: Detach,
) -> Result<(), Error> {
    let kernel = match kernel {
        Some(k) => Some(k.lock().await),
        None => None,
    };
    let (net, ep) = (d.network.clone(), d.name.clone());
    let host_ifname = on(host, move |o, _, _| o.begin_detach(&net, &ep)).await??;
    let removed = match &kernel {
        Some(k) => k.detach(&host_ifname).await.map(|_| ()),
        None => Ok(()),
    };
    let ok = removed.is_ok();
    on(host, move |o, node, now| o.finish_detach(node, now, &d, ok)).await?;
    Ok(removed?)
}

/// Sets the aliases of a local endpoint (see `Overlay::set_aliases`).
pub(crate) async fn set_aliases<H: Host>(
    host: &H,
    network: String,
    name: String,
    aliases: Vec<String>,
) -> Result<bool, Error> {
    on(host, move |o, node, now| o.set_aliases(node, now, &network, &name, aliases)).await?
}

/// Detaches a local endpoint whose namespace the reconcile found gone,
/// through the normal detach; returns its network and the notice for the
/// watch streams, or `None` if it was detached (or attached anew in
/// another namespace) meanwhile.
pub(crate) async fn reap<H: Host, K: Kernel>(
    host: &H,
    kernel: Option<&Mutex<K>>,
    gone: dp::Endpoint,
) -> Result<Option<(String, String)>, Error> {
    let netns = gone.netns.clone();
    let found = on(host, move |o, _, _| {
        o.state
            .endpoints
            .iter()
            .find(|e| e.host_ifname == gone.host_ifname && e.netns == gone.netns)
            .map(|e| (e.network.clone(), e.name.clone()))
    })
    .await?;
    let Some((network, name)) = found else { return Ok(None) };
    detach(host, kernel, network.clone(), name.clone(), Some(netns.clone())).await?;
    Ok(Some((network.clone(), reaped_text(&network, &name, &netns))))
}

fn reaped_text(network: &str, name: &str, netns: &Path) -> String {
    format!(
        "endpoint {name} of network {network} detached: its namespace {} is gone",
        netns.display()
    )
}

/// An attach that may go ahead: the kernel work to do.
struct Ready {
    network: dp::Network,
    endpoint: dp::Endpoint,
    reply: EndpointInfo,
    key: (String, String),
}

/// What the first half of an attach decided.
enum Step {
    /// Come back after this long (a block claim is settling).
    Wait(Duration),
    Ready(Box<Ready>),
}

impl Overlay {
    /// First half of an attach: checks, address, reservation.
    fn begin_attach(&mut self, node: &mut Node, now: Duration, r: &Attach) -> Result<Step, Error> {
        let (tunnel, eff) = self.attachable(node, &r.network)?;
        check_name("endpoint name", &r.name)?;
        if !r.service.is_empty() {
            check_name("service name", &r.service)?;
        }
        if r.aliases.len() > MAX_ALIASES {
            return Err(Error::TooManyAliases);
        }
        for a in &r.aliases {
            check_name("alias", a)?;
        }
        let internal = eff.def.internal;
        let publish = self.check_publish(r, internal)?;
        let key = (r.network.clone(), r.name.clone());
        if self.pending.contains_key(&key) || self.find(&r.network, &r.name).is_some() {
            return Err(Error::EndpointExists { network: r.network.clone(), name: r.name.clone() });
        }
        // Docker wires the container side and gives it a way out itself.
        let (netns, ifname, egress) = if r.docker {
            (PathBuf::new(), String::new(), false)
        } else {
            (
                self.check_container(r, &eff)?,
                r.ifname.clone().unwrap_or_else(|| "eth0".into()),
                !internal,
            )
        };
        let subnet = eff.subnet;
        let explicit =
            r.ip.as_deref().map(|text| explicit_ip(&r.network, &subnet, text)).transpose()?;
        // Joined only now that the request is valid; whatever fails below
        // leaves the network again if nothing else holds it.
        node.join_network(now, &r.network)?;
        let picked = match explicit {
            Some(ip) => self.take_explicit(node, &r.network, ip).map(Some),
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
        // A host that just joined holds none of the network's endpoints
        // yet: names (and the address) are checked against the tables
        // once a push/pull has brought them.
        if !network_synced(node, &r.network) {
            return Ok(Step::Wait(self.settle));
        }
        if let Err(e) = self.check_names_free(node, r) {
            self.leave_if_unused(node, now, &r.network);
            return Err(e);
        }
        let gateway_ip = if egress {
            let Some(ip) = self.gateway_address() else {
                self.leave_if_unused(node, now, &r.network);
                return Err(Error::GatewayFull(self.gateway));
            };
            Some(ip)
        } else {
            None
        };
        let mac = r.mac.unwrap_or_else(|| dp::Mac::from_ipv4(ip));
        let host_ifname = self.host_ifname(&r.network, &r.name);
        // Docker's endpoint is known by the veth end Docker takes.
        let ifname = if r.docker { dp::peer_name(&host_ifname) } else { ifname };
        let saved = SavedEndpoint {
            network: r.network.clone(),
            name: r.name.clone(),
            netns,
            ifname,
            host_ifname,
            ip,
            prefix: subnet.prefix(),
            mac: mac.to_string(),
            service: r.service.clone(),
            aliases: r.aliases.clone(),
            gateway_ip,
            publish,
            docker: r.docker,
        };
        self.state.networks.entry(r.network.clone()).or_insert_with(|| saved_network(&eff.def));
        let mut network = self.kernel_network(node, &r.network, &eff, tunnel, now);
        if r.docker {
            network.gateway = Some(docker_gateway(&eff.subnet));
        }
        let endpoint = kernel_endpoint(&saved, mac, &self.gateway);
        let reply = self.info(&saved);
        self.pending.insert(key.clone(), Pending { ip, saved });
        Ok(Step::Ready(Box::new(Ready { network, endpoint, reply, key })))
    }

    /// The network an endpoint or an address is asked of, if this host
    /// can have endpoints on it; with this host's tunnel address.
    pub(super) fn attachable(
        &self,
        node: &Node,
        network: &str,
    ) -> Result<(Ipv4Addr, Effective), Error> {
        let Some(tunnel) = self.tunnel.filter(|_| self.store.is_some()) else {
            return Err(Error::DataplaneOff);
        };
        let Some(eff) = Self::resolved(node).networks.get(network).cloned() else {
            return Err(Error::AttachToUnknown(network.into()));
        };
        if let Some(why) = self.vni_misfit(network, eff.vni) {
            return Err(Error::NetworkOutsideVniRange(why));
        }
        Ok((tunnel, eff))
    }

    /// The checks of an endpoint whose container side netdb wires: its
    /// namespace and interface names; the namespace.
    fn check_container(&self, r: &Attach, eff: &Effective) -> Result<PathBuf, Error> {
        let ifname = r.ifname.clone().unwrap_or_else(|| "eth0".to_string());
        if ifname.len() > MAX_IFNAME
            || !ifname.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::BadIfname(ifname));
        }
        if !eff.def.internal {
            if gateway_ifname(&ifname).len() > MAX_IFNAME {
                return Err(Error::IfnameTooLongForGateway(ifname));
            }
            if eff.subnet.overlaps(&self.gateway) {
                return Err(Error::GatewayOverlap {
                    network: r.network.clone(),
                    subnet: eff.subnet,
                    gateway: self.gateway,
                });
            }
        }
        let netns = r.netns.clone();
        if !netns.is_absolute() {
            return Err(Error::NetnsNotAbsolute);
        }
        if !netns.exists() {
            return Err(Error::NoNetns(netns));
        }
        if let Some(other) =
            self.state.endpoints.iter().find(|e| e.netns == netns && e.ifname == ifname)
        {
            return Err(Error::IfnameInUse {
                ifname,
                netns,
                endpoint: other.name.clone(),
                network: other.network.clone(),
            });
        }
        Ok(netns)
    }

    /// `ip` for a new endpoint, unless something else holds it; an address
    /// this host reserved for Docker is the endpoint's to take.
    fn take_explicit(&self, node: &Node, network: &str, ip: Ipv4Addr) -> Result<Ipv4Addr, Error> {
        let mut used = self.used_addresses(node, network);
        if self.is_reserved(network, ip) {
            used.remove(&ip);
        }
        free(&used, ip)
    }

    /// This host's endpoints, attached and being attached.
    fn local_and_pending(&self) -> impl Iterator<Item = &SavedEndpoint> {
        self.state.endpoints.iter().chain(self.pending.values().map(|p| &p.saved))
    }

    /// The attach's publishes, in canonical form; refused when malformed,
    /// on an internal network, on VXLAN's port, or already published by an
    /// endpoint of this host (the host port is the host's, whatever the
    /// network).
    fn check_publish(&self, r: &Attach, internal: bool) -> Result<Vec<String>, Error> {
        if internal && !r.publish.is_empty() {
            return Err(Error::PublishOnInternal(r.network.clone()));
        }
        let mut out: Vec<dp::Publish> = Vec::new();
        for text in &r.publish {
            let p: dp::Publish = text.parse()?;
            let port = |p: &dp::Publish| format!("{}/{}", p.host_port, p.proto);
            if p.proto == dp::Proto::Udp && p.host_port == dp::VXLAN_PORT {
                return Err(Error::PortReserved(port(&p)));
            }
            let same = |q: &dp::Publish| (q.proto, q.host_port) == (p.proto, p.host_port);
            if out.iter().any(same) {
                return Err(Error::PortPublished {
                    port: port(&p),
                    endpoint: r.name.clone(),
                    network: r.network.clone(),
                });
            }
            for ep in self.local_and_pending() {
                if ep.publish.iter().filter_map(|t| t.parse::<dp::Publish>().ok()).any(|q| same(&q))
                {
                    return Err(Error::PortPublished {
                        port: port(&p),
                        endpoint: ep.name.clone(),
                        network: ep.network.clone(),
                    });
                }
            }
            out.push(p);
        }
        Ok(out.iter().map(|p| p.to_string()).collect())
    }

    /// The lowest address of the gateway subnet no endpoint of this host
    /// holds; `None` when it is full.
    fn gateway_address(&self) -> Option<Ipv4Addr> {
        let used: std::collections::BTreeSet<Ipv4Addr> =
            self.local_and_pending().filter_map(|e| e.gateway_ip).collect();
        let first = u32::from(self.gateway.gateway()) + 1;
        (first..=u32::MAX)
            .map(Ipv4Addr::from)
            .take_while(|ip| self.gateway.contains(*ip))
            .find(|ip| self.gateway.usable(*ip) && !used.contains(ip))
    }

    /// Refuses an attach whose name or an alias is held by an endpoint of
    /// the network on any host (failed hosts included: they may return
    /// with their endpoints) or by one being attached here.
    fn check_names_free(&self, node: &Node, r: &Attach) -> Result<(), Error> {
        let held = Names::from_entries(
            node.raw_entries(&r.network)
                .into_iter()
                .filter(|(table, _, _)| *table == ENDPOINTS_TABLE)
                .map(|(_, key, e)| (key, e)),
        );
        let taken =
            |name: &str, endpoint: &str, host: &str, alias: bool, failed: bool| Error::NameTaken {
                name: name.into(),
                network: r.network.clone(),
                endpoint: endpoint.into(),
                host: host.into(),
                alias,
                failed,
            };
        for name in std::iter::once(&r.name).chain(&r.aliases) {
            let holders = held.holders(name);
            if let Some(h) = holders.iter().find(|h| !h.failed).or(holders.first()) {
                return Err(taken(name, &h.endpoint, &h.host, h.alias, h.failed));
            }
            let folded = fold(name);
            for ((net, _), p) in &self.pending {
                let ep = &p.saved;
                if *net != r.network {
                    continue;
                }
                if fold(&ep.name) == folded {
                    return Err(taken(name, &ep.name, &self.me, false, false));
                }
                if ep.aliases.iter().any(|a| fold(a) == folded) {
                    return Err(taken(name, &ep.name, &self.me, true, false));
                }
            }
        }
        Ok(())
    }

    /// An attach that gave up waiting for an address: undo its join.
    fn abandon_attach(&mut self, node: &mut Node, now: Duration, network: &str) {
        self.leave_if_unused(node, now, network);
    }

    /// Second half: publish (the kernel work succeeded) or forget.
    fn finish_attach(
        &mut self,
        node: &mut Node,
        now: Duration,
        key: &(String, String),
        wired: bool,
    ) -> Result<(), Error> {
        let Some(p) = self.pending.remove(key) else { return Ok(()) };
        if !wired {
            self.leave_if_unused(node, now, &key.0);
            return Ok(());
        }
        if let Err(e) = self.publish(node, now, &p.saved) {
            self.leave_if_unused(node, now, &key.0);
            return Err(e.into());
        }
        tracing::info!(network = %key.0, endpoint = %key.1, ip = %p.ip, "endpoint attached");
        // A Docker endpoint takes the address its IPAM request reserved.
        self.state.reserved.retain(|r| !(r.network == p.saved.network && r.ip == p.saved.ip));
        self.state.endpoints.push(p.saved);
        self.save(node);
        self.publish_names(node);
        self.kernel_changed();
        Ok(())
    }

    /// First half of a detach: the endpoint leaves the desired state; its
    /// host-side veth, to remove.
    fn begin_detach(&mut self, network: &str, name: &str) -> Result<String, Error> {
        let key = (network.to_string(), name.to_string());
        if self.detaching.contains(&key) {
            return Err(Error::DetachInProgress(name.into()));
        }
        let ep = self
            .find(network, name)
            .ok_or_else(|| Error::NoEndpoint { network: network.into(), name: name.into() })?;
        let host_ifname = ep.host_ifname.clone();
        self.detaching.insert(key);
        Ok(host_ifname)
    }

    /// Second half: withdraw the entries (the veth is gone) or keep it.
    fn finish_detach(&mut self, node: &mut Node, now: Duration, d: &Detach, removed: bool) {
        let (network, name, gone) = (d.network.as_str(), d.name.as_str(), d.gone.as_deref());
        let key = (network.to_string(), name.to_string());
        self.detaching.remove(&key);
        if !removed {
            return;
        }
        if d.keep_address
            && let Some(ep) = self.find(network, name)
        {
            let ip = ep.ip;
            self.state.reserved.push(crate::state::Reserved { network: network.into(), ip });
        }
        let id = endpoint_key(&self.me, name);
        for table in [ROUTES_TABLE, ENDPOINTS_TABLE] {
            let _ = node.delete(now, network, table, &id);
        }
        self.state.endpoints.retain(|e| !(e.network == network && e.name == name));
        self.leave_if_unused(node, now, network);
        match gone {
            Some(netns) => {
                self.reaped += 1;
                tracing::warn!("{}", reaped_text(network, name, netns));
            }
            None => tracing::info!(%network, endpoint = %name, "endpoint detached"),
        }
        self.save(node);
        self.publish_names(node);
        self.kernel_changed();
    }

    /// Leaves `network` (and gives its address blocks back) once nothing
    /// here holds it: no endpoint, none being attached, no address handed
    /// to Docker, and no join through the API.
    pub(super) fn leave_if_unused(&mut self, node: &mut Node, now: Duration, network: &str) {
        if self.local_count(network) > 0
            || self.pending.keys().any(|(n, _)| n == network)
            || self.state.reserved.iter().any(|r| r.network == network)
            || self.state.joined.contains(network)
        {
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

    /// Gives a local endpoint these aliases, published at once: Docker
    /// tells a container's names only once it runs. Names that are not
    /// valid DNS labels are left out; false if nothing changed.
    fn set_aliases(
        &mut self,
        node: &mut Node,
        now: Duration,
        network: &str,
        name: &str,
        mut aliases: Vec<String>,
    ) -> Result<bool, Error> {
        aliases.retain(|a| check_name("alias", a).is_ok() && a != name);
        aliases.sort();
        aliases.dedup();
        aliases.truncate(MAX_ALIASES);
        let ep = self
            .state
            .endpoints
            .iter_mut()
            .find(|e| e.network == network && e.name == name)
            .ok_or_else(|| Error::NoEndpoint { network: network.into(), name: name.into() })?;
        if ep.aliases == aliases {
            return Ok(false);
        }
        ep.aliases = aliases;
        let ep = ep.clone();
        self.publish(node, now, &ep)?;
        tracing::info!(%network, endpoint = %name, aliases = ?ep.aliases, "endpoint aliases set");
        self.save(node);
        self.publish_names(node);
        Ok(true)
    }

    /// Writes an endpoint's routing and service entries.
    pub(super) fn publish(
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
}

/// True once this host holds what the network's peers hold: it completed a
/// push/pull of the network, or no live peer is attached to it.
pub(super) fn network_synced(node: &Node, network: &str) -> bool {
    node.network_peers(network).is_empty()
        || node.scope_stats(Scope::Network(network)).is_some_and(|s| s.synced)
}

/// `ip`, unless something in `used` holds it.
pub(super) fn free(used: &BTreeMap<Ipv4Addr, String>, ip: Ipv4Addr) -> Result<Ipv4Addr, Error> {
    match used.get(&ip) {
        Some(holder) => Err(Error::AddressTaken { ip, holder: holder.clone() }),
        None => Ok(ip),
    }
}

/// An address asked for on `network`: in its subnet, and neither its
/// network, gateway nor broadcast address.
pub(super) fn explicit_ip(
    network: &str,
    subnet: &ipam::Subnet,
    text: &str,
) -> Result<Ipv4Addr, Error> {
    let ip: Ipv4Addr = text.parse().map_err(|_| Error::BadAddress(text.into()))?;
    if !subnet.contains(ip) {
        return Err(Error::OutsideSubnet { ip, network: network.into(), subnet: *subnet });
    }
    if !subnet.usable(ip) {
        return Err(Error::ReservedAddress { ip, subnet: *subnet });
    }
    Ok(ip)
}

fn check_name(what: &'static str, s: &str) -> Result<(), Error> {
    if valid_name(s, MAX_ENDPOINT_NAME) {
        Ok(())
    } else {
        Err(Error::BadName { what, value: s.into() })
    }
}

#[cfg(test)]
mod tests {
    use netdb::SharedTable;
    use netdb_wire as wire;
    use prost::Message;

    use std::time::Duration;

    use super::super::testing::{
        Parts, SETTLE, Temp, attach_req, block_on, blue, exchange, isolate, pair,
    };
    use super::super::{ENDPOINTS_TABLE, Error, Kind, ROUTES_TABLE};

    #[test]
    fn attach_takes_an_address_from_a_settled_claim_wires_and_publishes() {
        let ((_dir, h), ns) = (blue("attach"), Temp::netns("attach-ns"));

        let info = h.attach(attach_req("blue", "web", &ns.0)).unwrap();
        // The first pass claimed a block and waited for it to settle.
        assert_eq!(h.now(), SETTLE);
        let ip: std::net::Ipv4Addr = info.ip.parse().unwrap();
        assert!(ip.octets()[..3] == [10, 1, 0] && ip.octets()[3] > 1, "{ip}");
        assert_eq!((info.prefix, info.local, info.host.as_str()), (24, true, "h1"));

        let p = h.parts();
        let claims: Vec<_> = p.node.shared_entries(SharedTable::Ipam);
        assert_eq!(claims.len(), 1);
        assert!(claims[0].0.starts_with("blue:") && &*claims[0].1.owner == "h1");

        let route = p.node.get("blue", ROUTES_TABLE, "h1/web").expect("route published");
        let route = wire::Route::decode(&route.value[..]).unwrap();
        assert_eq!((route.ip, route.host), (format!("{ip}/24"), "192.0.2.1".to_string()));
        let rec = p.node.get("blue", ENDPOINTS_TABLE, "h1/web").expect("record published");
        assert_eq!(wire::ServiceRecord::decode(&rec.value[..]).unwrap().ip, ip.to_string());
        drop(p);

        let kernel = h.kernel.try_lock().unwrap();
        let wired: Vec<_> = kernel.endpoints().into_values().collect();
        assert_eq!(wired.len(), 1);
        assert_eq!((wired[0].ip, wired[0].ifname.as_str()), (ip, "eth0"));
        assert_eq!(kernel.vxlan(4096), Some((1450, "192.0.2.1".parse().unwrap())));
        assert!(kernel.links_in(&ns.0).contains("eth0"));
    }

    #[test]
    fn a_second_attach_reuses_the_settled_block_and_refuses_taken_names() {
        let (_dir, h) = blue("second");
        let (ns1, ns2, ns3) =
            (Temp::netns("second-a"), Temp::netns("second-b"), Temp::netns("second-c"));
        let a = h.attach(attach_req("blue", "web", &ns1.0)).unwrap();
        let b = h.attach(attach_req("blue", "db", &ns2.0)).unwrap();
        assert_eq!(h.now(), SETTLE, "no second claim, no second wait");
        assert_ne!(a.ip, b.ip);

        let again = h.attach(attach_req("blue", "web", &ns2.0)).unwrap_err();
        assert!(matches!(again, Error::EndpointExists { .. }), "{again}");
        let same_if = h.attach(attach_req("blue", "cache", &ns1.0)).unwrap_err();
        assert_eq!(same_if.kind(), Kind::Exists);
        assert!(
            same_if.to_string().ends_with("is already endpoint web of network blue; use --ifname")
        );
        let taken = h
            .attach(super::Attach { ip: Some(a.ip.clone()), ..attach_req("blue", "x", &ns3.0) })
            .unwrap_err();
        assert_eq!(
            taken.to_string(),
            format!("{} is already used by endpoint web on this host", a.ip)
        );
        let unknown = h.attach(attach_req("green", "x", &ns3.0)).unwrap_err();
        assert_eq!(unknown.kind(), Kind::NotFound);
    }

    #[test]
    fn names_and_aliases_held_on_another_host_are_refused_there() {
        let nss: Vec<Temp> = (0..5).map(|i| Temp::netns(&format!("taken-{i}"))).collect();
        let web =
            super::Attach { aliases: vec!["www".into()], ..attach_req("blue", "web", &nss[0].0) };
        let (_da, _db, a, b) = pair("taken", |a| {
            a.attach(web).unwrap();
        });
        // h2 stays on blue through the refusals below.
        b.attach(attach_req("blue", "db", &nss[1].0)).unwrap();

        let by_name = b.attach(attach_req("blue", "web", &nss[2].0)).unwrap_err();
        assert_eq!(by_name.kind(), Kind::Exists);
        assert_eq!(
            by_name.to_string(),
            "name web is taken on network blue by endpoint web on host h1; \
             pick another name or detach it there"
        );
        let by_alias = b.attach(attach_req("blue", "WWW", &nss[2].0)).unwrap_err();
        assert_eq!(
            by_alias.to_string(),
            "name WWW is taken on network blue by endpoint web (as an alias) on host h1; \
             pick another name or detach it there"
        );
        let alias_on_name = b
            .attach(super::Attach {
                aliases: vec!["web".into()],
                ..attach_req("blue", "x", &nss[2].0)
            })
            .unwrap_err();
        assert!(alias_on_name.to_string().starts_with("name web is taken"), "{alias_on_name}");
        // And the other way round: h1 cannot take h2's name either.
        let mut pa = a.parts();
        let mut pb = b.parts();
        let until = pa.now.max(pb.now) + Duration::from_secs(5);
        exchange(&mut pa, &mut pb, until);
        drop((pa, pb));
        let back = a.attach(attach_req("blue", "db", &nss[3].0)).unwrap_err();
        assert!(back.to_string().contains("by endpoint db on host h2;"), "{back}");

        // Nothing of the refused attaches is left on h2.
        let p = b.parts();
        assert_eq!(p.overlay.local_endpoints(), 1);
        assert!(p.overlay.pending.is_empty());
        assert!(p.node.get("blue", ENDPOINTS_TABLE, "h2/web").is_none());
        drop(p);

        // The same name on another network is another name.
        a.create("green", "10.2.0.0/24").unwrap();
        a.attach(attach_req("green", "web", &nss[4].0)).unwrap();

        // A failed host's endpoints keep their names: it may return.
        let now = b.now() + Duration::from_secs(30);
        isolate(&mut b.parts(), now);
        let failed = b.attach(attach_req("blue", "web", &nss[2].0)).unwrap_err();
        assert!(
            failed.to_string().contains("on host h1, which is failed (its names are kept"),
            "{failed}"
        );
    }

    #[test]
    fn a_refused_wiring_leaves_nothing_behind() {
        let ((_dir, h), ns) = (blue("refused"), Temp::netns("refused-ns"));
        // The container has an eth0 of its own: the kernel refuses ours.
        h.kernel.try_lock().unwrap().add_link_in(&ns.0, "eth0");

        let e = h.attach(attach_req("blue", "web", &ns.0)).unwrap_err();
        assert!(matches!(e, Error::Kernel(netdb_dataplane::Error::IfnameTaken { .. })), "{e}");
        assert_eq!(e.kind(), Kind::Exists);
        let p = h.parts();
        assert_eq!(p.overlay.local_endpoints(), 0);
        assert!(p.overlay.pending.is_empty());
        assert!(!p.node.networks().contains(&"blue"), "the join is undone");
        assert!(p.node.get("blue", ROUTES_TABLE, "h1/web").is_none());
        drop(p);
        assert!(h.kernel.try_lock().unwrap().endpoints().is_empty());
    }

    #[test]
    fn detach_unwires_withdraws_and_releases_the_claims() {
        let ((_dir, h), ns) = (blue("detach"), Temp::netns("detach-ns"));
        h.attach(attach_req("blue", "web", &ns.0)).unwrap();

        h.detach("blue", "web").unwrap();
        assert!(h.kernel.try_lock().unwrap().endpoints().is_empty());
        assert!(h.kernel.try_lock().unwrap().links_in(&ns.0).is_empty());
        let p = h.parts();
        assert_eq!(p.overlay.local_endpoints(), 0);
        assert!(!p.node.networks().contains(&"blue"), "left with the last endpoint");
        let live_claims =
            p.node.shared_entries(SharedTable::Ipam).iter().filter(|(_, e)| !e.deleted).count();
        assert_eq!(live_claims, 0);
        drop(p);

        let e = h.detach("blue", "web").unwrap_err();
        assert_eq!(e.kind(), Kind::NotFound);
        assert!(e.to_string().contains("see `netdb endpoint ls`"), "{e}");
    }

    /// `netdb network join` is the user's: the overlay leaves the network
    /// with its last endpoint only when it alone had joined it.
    #[test]
    fn a_network_joined_through_the_api_stays_joined_after_its_last_endpoint() {
        let ((_dir, h), ns) = (blue("user-join"), Temp::netns("user-join-ns"));
        // What the API's `network join` (true) and `leave` (false) do.
        let user = |join: bool| {
            let mut p = h.parts();
            let Parts { overlay, node, now, .. } = &mut *p;
            let r = if join {
                node.join_network(*now, "blue")
            } else {
                node.leave_network(*now, "blue")
            };
            r.unwrap();
            overlay.user_joined(node, "blue", join);
        };
        let attached_and_detached = || {
            h.attach(attach_req("blue", "web", &ns.0)).unwrap();
            h.detach("blue", "web").unwrap();
            h.parts().node.networks().contains(&"blue")
        };
        user(true);
        assert!(attached_and_detached(), "joined by the user: still joined");
        user(false);
        assert!(!attached_and_detached(), "left with the last endpoint");
    }

    #[test]
    fn an_endpoint_gets_a_way_out_and_its_published_ports_until_detached() {
        let (_dir, h) = blue("egress");
        let (ns1, ns2, ns3) =
            (Temp::netns("egress-a"), Temp::netns("egress-b"), Temp::netns("egress-c"));
        let publish = vec!["8080:80".to_string(), "5353:53/udp".to_string()];
        let a = h.attach(super::Attach { publish, ..attach_req("blue", "web", &ns1.0) }).unwrap();
        assert_eq!(a.gateway_ip, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(a.publish, ["8080:80/tcp", "5353:53/udp"]);
        let b = h.attach(attach_req("blue", "db", &ns2.0)).unwrap();
        assert_eq!(b.gateway_ip, Some("198.18.0.3".parse().unwrap()), "one address each");

        let taken = h
            .attach(super::Attach {
                publish: vec!["8080:8080/tcp".into()],
                ..attach_req("blue", "x", &ns3.0)
            })
            .unwrap_err();
        assert_eq!(taken.kind(), Kind::Exists);
        assert_eq!(
            taken.to_string(),
            "port 8080/tcp is published already by endpoint web of network blue on this host; \
             pick another host port"
        );
        let vxlan = h
            .attach(super::Attach {
                publish: vec!["4789:1/udp".into()],
                ..attach_req("blue", "x", &ns3.0)
            })
            .unwrap_err();
        assert_eq!(vxlan.kind(), Kind::Invalid);
        let bad = h
            .attach(super::Attach { publish: vec!["80".into()], ..attach_req("blue", "x", &ns3.0) })
            .unwrap_err();
        assert!(bad.to_string().contains("HOSTPORT:PORT"), "{bad}");

        let r = h.reconcile();
        assert_eq!((r.nft_changed, r.failed), (1, 0), "{r:?}");
        {
            let k = h.kernel.try_lock().unwrap();
            assert!(k.links_in(&ns1.0).contains("gweth0"));
            let rules = k.nftables().expect("netdb's table");
            assert!(rules.contains("tcp dport 8080 dnat to 198.18.0.2:80"), "{rules}");
            assert!(rules.contains("udp dport 5353 dnat to 198.18.0.2:53"), "{rules}");
            assert!(k.forwarding());
        }

        h.detach("blue", "web").unwrap();
        h.reconcile();
        let rules = h.kernel.try_lock().unwrap().nftables().unwrap();
        assert!(!rules.contains("dnat"), "the ports went with the endpoint: {rules}");
        h.detach("blue", "db").unwrap();
        h.reconcile();
        let k = h.kernel.try_lock().unwrap();
        assert_eq!(k.nftables(), None, "nothing needs the table");
        assert!(k.observe().gateway.is_none() && k.links_in(&ns2.0).is_empty());
    }

    #[test]
    fn a_network_overlapping_the_gateway_subnet_attaches_only_internal() {
        let (_dir, h) = blue("overlap");
        let ns = Temp::netns("overlap-ns");
        h.create("clash", "198.18.7.0/24").unwrap();
        let e = h.attach(attach_req("clash", "web", &ns.0)).unwrap_err();
        assert_eq!(e.kind(), Kind::Precondition);
        assert!(e.to_string().contains("overlaps this host's gateway subnet 198.18.0.0/16"), "{e}");
        h.create_with("quiet", "198.18.8.0/24", true).unwrap();
        h.attach(attach_req("quiet", "web", &ns.0)).unwrap();
    }

    #[test]
    fn an_internal_network_has_no_way_out_and_publishes_nothing() {
        let (_dir, h) = blue("internal");
        let ns = Temp::netns("internal-ns");
        h.create_with("secret", "10.9.0.0/24", true).unwrap();
        let refused = h
            .attach(super::Attach {
                publish: vec!["8080:80".into()],
                ..attach_req("secret", "web", &ns.0)
            })
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "network secret is internal (no way out of the overlay): it cannot publish ports"
        );
        let e = h.attach(attach_req("secret", "web", &ns.0)).unwrap();
        assert_eq!(e.gateway_ip, None);
        h.reconcile();
        let k = h.kernel.try_lock().unwrap();
        assert_eq!(k.links_in(&ns.0).into_iter().collect::<Vec<_>>(), ["eth0"]);
        assert_eq!(k.nftables(), None);
        assert!(!k.forwarding(), "no forwarding when nothing needs it");
    }

    #[test]
    fn an_endpoint_whose_namespace_is_gone_is_reaped_and_a_lost_veth_repaired() {
        let (_dir, h) = blue("reap");
        let (kept, lost) = (Temp::netns("reap-kept"), Temp::netns("reap-lost"));
        h.attach(attach_req("blue", "db", &kept.0)).unwrap();
        let web = h.attach(attach_req("blue", "web", &lost.0)).unwrap();
        let wired = h.kernel.try_lock().unwrap().endpoints();
        let db_veth = wired.into_iter().find(|(_, e)| e.netns == kept.0).unwrap().0;
        // db's veth lost, its namespace still there; web's namespace deleted.
        assert!(h.kernel.try_lock().unwrap().delete_link(&db_veth));
        drop(lost);
        let listed = {
            let p = h.parts();
            p.overlay.endpoints(&p.node, "", true)
        };
        let missing: Vec<_> = listed.iter().map(|e| (e.name.as_str(), e.netns_missing)).collect();
        assert_eq!(missing, [("db", false), ("web", true)]);

        let r = h.reconcile();
        assert_eq!((r.endpoints_repaired, r.failed), (1, 0), "db wired again: {r:?}");
        assert_eq!(r.netns_gone.len(), 1);
        assert_eq!(r.netns_gone[0].ip.to_string(), web.ip);
        let notice = block_on(super::reap(&h, Some(&h.kernel), r.netns_gone[0].clone())).unwrap();
        let text = format!(
            "endpoint web of network blue detached: its namespace {} is gone",
            r.netns_gone[0].netns.display()
        );
        assert_eq!(notice, Some(("blue".to_string(), text)));
        // Reaped once: a second report of it finds nothing to do.
        assert_eq!(
            block_on(super::reap(&h, Some(&h.kernel), r.netns_gone[0].clone())).unwrap(),
            None
        );

        let p = h.parts();
        assert_eq!(p.overlay.local_endpoints(), 1);
        assert_eq!(p.overlay.endpoints_reaped(), 1);
        assert!(p.node.get("blue", ROUTES_TABLE, "h1/web").is_none(), "withdrawn");
        assert!(p.node.get("blue", ENDPOINTS_TABLE, "h1/web").is_none(), "withdrawn");
        drop(p);
        assert_eq!(h.reconcile().changes(), 0);
        // The address is free again.
        let ns = Temp::netns("reap-new");
        let again = super::Attach { ip: Some(web.ip.clone()), ..attach_req("blue", "api", &ns.0) };
        assert_eq!(h.attach(again).unwrap().ip, web.ip);
    }

    /// The live block claims of `owner`, as `p`'s node holds them.
    fn live_claims(p: &Parts, owner: &str) -> Vec<String> {
        p.node
            .shared_entries(SharedTable::Ipam)
            .into_iter()
            .filter(|(_, e)| !e.deleted && &*e.owner == owner)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    #[test]
    fn a_host_claims_blocks_as_it_fills_them_and_releases_the_ones_it_empties() {
        let (_dir, h) = blue("fill");
        let nss: Vec<Temp> = (0..6).map(|i| Temp::netns(&format!("fill-{i}"))).collect();
        let mut ips = std::collections::BTreeSet::new();
        for (i, ns) in nss.iter().enumerate() {
            let ep = h.attach(attach_req("blue", &format!("c{i}"), &ns.0)).unwrap();
            assert!(ips.insert(ep.ip.clone()), "{} twice", ep.ip);
        }
        // Blocks of a /24 hold 4 addresses (2 or 3 at its ends): 6
        // endpoints need two or three claims, each waited for once.
        let claims = live_claims(&h.parts(), "h1");
        assert!((2..=3).contains(&claims.len()), "{claims:?}");
        assert_eq!(h.now(), SETTLE * claims.len() as u32);

        for i in 2..6 {
            h.detach("blue", &format!("c{i}")).unwrap();
        }
        let p = &mut *h.parts();
        p.now += 2 * SETTLE;
        p.overlay.maintain(&mut p.node, p.now);
        let kept = live_claims(p, "h1");
        assert!(kept.len() < claims.len(), "an emptied block goes back: {kept:?}");
        let subnet: netdb::ipam::Subnet = "10.1.0.0/24".parse().unwrap();
        let in_use: std::collections::BTreeSet<String> = p
            .overlay
            .state
            .endpoints
            .iter()
            .map(|ep| format!("blue:{}/h1", subnet.block_of(ep.ip).unwrap()))
            .collect();
        assert_eq!(kept.into_iter().collect::<std::collections::BTreeSet<_>>(), in_use);
        let saved = &p.overlay.state.networks["blue"].blocks;
        assert_eq!(saved.len(), in_use.len(), "the state file follows");
    }

    #[test]
    fn with_every_block_claimed_a_host_borrows_free_addresses_until_the_subnet_is_full() {
        let nss: Vec<Temp> = (0..6).map(|i| Temp::netns(&format!("borrow-{i}"))).collect();
        // 10.9.0.0/29: two blocks (.2-.3 and .4-.6), five usable addresses.
        let (_da, _db, a, b) = pair("borrow", |a| {
            a.create("tiny", "10.9.0.0/29").unwrap();
            a.attach(attach_req("tiny", "one", &nss[0].0)).unwrap();
        });
        {
            let (mut pa, mut pb) = (a.parts(), b.parts());
            let now = pb.now;
            pb.node.join_network(now, "tiny").unwrap();
            let until = pa.now.max(pb.now) + Duration::from_secs(10);
            exchange(&mut pa, &mut pb, until);
        }
        let mut ips = vec![a.parts().overlay.state.endpoints[0].ip];
        for (i, ns) in nss.iter().enumerate().take(5).skip(1) {
            let ep = b.attach(attach_req("tiny", &format!("b{i}"), &ns.0)).unwrap();
            ips.push(ep.ip.parse().unwrap());
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 5, "h2 borrowed from h1's block: {ips:?}");
        let full = b.attach(attach_req("tiny", "b5", &nss[5].0)).unwrap_err();
        assert_eq!(full.kind(), Kind::Exhausted);
        assert_eq!(
            full.to_string(),
            "network tiny: no free address in 10.9.0.0/29; detach endpoints or create a network with a larger subnet"
        );
    }
}
