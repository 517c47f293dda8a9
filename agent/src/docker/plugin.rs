//! The network and IPAM drivers Docker calls, both named `netdb`: each
//! call decoded, answered from netdb's networks, endpoints and address
//! reservations, and what must outlive a restart kept in `docker.json`.
//!
//! How Docker's objects map to netdb's:
//! - a Docker network is a netdb network of the same name; Docker gives
//!   each host's copy its own ID, and the IDs of this host's daemon are
//!   kept here (`docker.json`);
//! - a pool is a subnet (`PoolID` is its CIDR), so the IPAM driver keeps no
//!   state of its own: a restarted agent or dockerd finds the same pools;
//! - an address is reserved in netdb's coordinator-free IPAM when Docker
//!   asks for it, and taken by the endpoint Docker creates next;
//! - a Docker endpoint is a netdb endpoint named by the first 12 digits of
//!   Docker's endpoint ID, whose container names become its aliases once
//!   the container runs (see `sync`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use netdb::ipam::{self, Subnet};
use netdb_dataplane::{Kernel, Linux};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Notify};

use super::engine::Engine;
use super::http::{Handler, Reply};
use super::protocol::*;
use super::store::{KnownEndpoint, KnownNetwork, Saved, Store};
use crate::engine::Handle;
use crate::overlay::{
    Attach, CreateNetwork, EndpointInfo, Error as OverlayError, host_routes, parse_mac,
};

/// `-o netdb.network=NAME`: the netdb network a Docker network is, when
/// not the one of its own name (the agent passes it when it creates a
/// network in its Docker, so the driver need not ask Docker for the name).
pub(crate) const NETWORK_OPTION: &str = "netdb.network";
/// `-o netdb.vni=N`: the VNI of a network created from Docker.
const VNI_OPTION: &str = "netdb.vni";
/// Docker's own MTU option, honoured as its bridge driver does.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Docker's `--internal`.
const INTERNAL_OPTION: &str = "com.docker.network.internal";
/// The address spaces the IPAM driver reports: names only, a pool is a
/// subnet whatever its space.
const ADDRESS_SPACE: &str = "netdb";

/// A refusal, worded for the user who ran the docker command.
type Refusal = String;

/// The plugin's state: what docker.json holds, and the file.
pub(crate) struct Known {
    pub(crate) saved: Saved,
    store: Store,
}

impl Known {
    pub(crate) fn new(store: Store, saved: Saved) -> Known {
        Known { saved, store }
    }

    pub(crate) fn save(&self) {
        self.store.save(&self.saved);
    }
}

/// Both drivers.
pub(crate) struct Plugin<K: Kernel = Linux> {
    pub(crate) handle: Handle<K>,
    /// Docker's Engine API, to read network and container names.
    pub(crate) engine: Engine,
    /// Where a pool asked for without a subnet comes from.
    pool: (Subnet, u8),
    /// One call at a time: Docker's calls for one container come in order,
    /// and this keeps a concurrent one from seeing a half-made endpoint.
    pub(crate) known: Mutex<Known>,
    /// Wakes the sync task: a network or a container to name.
    pub(crate) wake: Arc<Notify>,
}

impl<K: Kernel> Handler for Plugin<K> {
    async fn call(&self, method: &str, body: Bytes) -> Reply {
        self.dispatch(method, &body).await
    }
}

impl<K: Kernel> Plugin<K> {
    pub(crate) fn new(
        handle: Handle<K>,
        engine: Engine,
        pool: (Subnet, u8),
        known: Known,
    ) -> Plugin<K> {
        Plugin { handle, engine, pool, known: Mutex::new(known), wake: Arc::new(Notify::new()) }
    }

    async fn dispatch(&self, method: &str, body: &[u8]) -> Reply {
        match method {
            "Plugin.Activate" => Reply::json(&ActivateResponse::network_and_ipam()),
            "NetworkDriver.GetCapabilities" => Reply::json(&CapabilitiesResponse {
                // "global" is refused outside Swarm; the connectivity
                // scope is what makes Docker treat it as multi-host.
                scope: Scope::Local,
                connectivity_scope: Some(Scope::Global),
            }),
            "NetworkDriver.CreateNetwork" => call(method, body, |r| self.create_network(r)).await,
            "NetworkDriver.DeleteNetwork" => call(method, body, |r| self.delete_network(r)).await,
            "NetworkDriver.CreateEndpoint" => call(method, body, |r| self.create_endpoint(r)).await,
            "NetworkDriver.DeleteEndpoint" => call(method, body, |r| self.delete_endpoint(r)).await,
            "NetworkDriver.EndpointOperInfo" => call(method, body, |r| self.oper_info(r)).await,
            "NetworkDriver.Join" => call(method, body, |r| self.join(r)).await,
            "NetworkDriver.Leave" => call(method, body, |r| self.leave(r)).await,
            // Docker's docker_gwbridge gives the container its way out and
            // its published ports, as for Swarm's overlay networks.
            "NetworkDriver.ProgramExternalConnectivity" => {
                call(method, body, |_: ProgramExternalConnectivityRequest| async { Ok(Empty {}) })
                    .await
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                call(method, body, |_: EndpointRequest| async { Ok(Empty {}) }).await
            }
            // Swarm's node discovery: netdb has its own membership.
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
                call(method, body, |_: DiscoveryNotification| async { Ok(Empty {}) }).await
            }
            "IpamDriver.GetCapabilities" => Reply::json(&IpamCapabilitiesResponse::default()),
            "IpamDriver.GetDefaultAddressSpaces" => Reply::json(&AddressSpacesResponse {
                local_default_address_space: ADDRESS_SPACE.into(),
                global_default_address_space: ADDRESS_SPACE.into(),
            }),
            "IpamDriver.RequestPool" => call(method, body, |r| self.request_pool(r)).await,
            "IpamDriver.ReleasePool" => {
                call(method, body, |_: ReleasePoolRequest| async { Ok(Empty {}) }).await
            }
            "IpamDriver.RequestAddress" => call(method, body, |r| self.request_address(r)).await,
            "IpamDriver.ReleaseAddress" => call(method, body, |r| self.release_address(r)).await,
            _ => Reply::status(404, &format!("netdb: no method {method}")),
        }
    }

    async fn request_pool(&self, r: RequestPoolRequest) -> Result<RequestPoolResponse, Refusal> {
        if r.v6 {
            return Err("netdb networks are IPv4 only: create the network without --ipv6".into());
        }
        if !r.sub_pool.is_empty() {
            return Err(format!(
                "netdb hands out addresses of the whole subnet from every host; --ip-range {} is not supported",
                r.sub_pool
            ));
        }
        let subnet = match r.pool.as_str() {
            "" => self.free_subnet().await?,
            text => text.parse::<Subnet>().map_err(|e| format!("--subnet {text}: {e}"))?,
        };
        let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix());
        Ok(RequestPoolResponse {
            pool_id: subnet.to_string(),
            pool: subnet.to_string(),
            data: [(GATEWAY_ADDRESS.to_string(), gateway)].into(),
        })
    }

    /// A subnet of the default pool that no netdb network and no route of
    /// this host uses: Docker asks for the pool before it names the
    /// network, so the pick is salted at random rather than by name.
    async fn free_subnet(&self) -> Result<Subnet, Refusal> {
        let mut taken = host_routes();
        taken.extend(self.netdb_subnets().await?.into_iter().map(|(_, s, _)| s));
        let salt = format!("docker-{:016x}", rand::random::<u64>());
        ipam::pick_subnet(&self.pool.0, self.pool.1, &salt, &taken).map_err(|e| e.to_string())
    }

    /// Every netdb overlay network: name, subnet, internal.
    pub(crate) async fn netdb_subnets(&self) -> Result<Vec<(String, Subnet, bool)>, Refusal> {
        let nets = self.handle.networks().await.map_err(|e| e.to_string())?;
        Ok(nets
            .into_iter()
            .filter_map(|n| n.overlay.map(|o| (n.name, o.subnet, o.internal)))
            .collect())
    }

    async fn request_address(
        &self,
        r: RequestAddressRequest,
    ) -> Result<RequestAddressResponse, Refusal> {
        let subnet = pool_subnet(&r.pool_id)?;
        if r.is_gateway() {
            check_gateway(&subnet, &r.address)?;
            return Ok(address(subnet.gateway(), &subnet));
        }
        let mut known = self.known.lock().await;
        let network = self.network_of_subnet(&mut known, &subnet).await?;
        let want = (!r.address.is_empty()).then(|| r.address.clone());
        let ip = self.handle.reserve(network, want).await.map_err(|e| e.to_string())?;
        Ok(address(ip, &subnet))
    }

    async fn release_address(&self, r: ReleaseAddressRequest) -> Result<Empty, Refusal> {
        let subnet = pool_subnet(&r.pool_id)?;
        let Ok(ip) = bare_ip(&r.address).parse::<Ipv4Addr>() else {
            return Err(format!("ReleaseAddress: {:?} is not an IPv4 address", r.address));
        };
        if ip == subnet.gateway() {
            return Ok(Empty {});
        }
        let nets = self.netdb_subnets().await?;
        if let Some((network, _, _)) = nets.into_iter().find(|(_, s, _)| *s == subnet) {
            self.handle.release(network, ip).await.map_err(|e| e.to_string())?;
        }
        Ok(Empty {})
    }

    /// The netdb network of `subnet`, naming a network Docker created
    /// whose name the sync has not read yet.
    async fn network_of_subnet(
        &self,
        known: &mut Known,
        subnet: &Subnet,
    ) -> Result<String, Refusal> {
        if let Some((name, _, _)) =
            self.netdb_subnets().await?.into_iter().find(|(_, s, _)| s == subnet)
        {
            return Ok(name);
        }
        let pending: Vec<String> = known
            .saved
            .networks
            .iter()
            .filter(|(_, n)| n.name.is_empty() && n.subnet == subnet.to_string())
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            if let Some(name) = self.name_network(known, &id).await? {
                return Ok(name);
            }
        }
        Err(format!(
            "no netdb network has subnet {subnet}: netdb hands out addresses only on networks it knows \
             (aux addresses are not supported)"
        ))
    }

    async fn create_network(&self, r: CreateNetworkRequest) -> Result<Empty, Refusal> {
        if !r.ipv6_data.is_empty() {
            return Err("netdb networks are IPv4 only: create the network without --ipv6".into());
        }
        let Some(data) = r.ipv4_data.first() else {
            return Err(
                "netdb needs the network's subnet: give --subnet or --ipam-driver netdb".into()
            );
        };
        if r.ipv4_data.len() > 1 {
            return Err("a netdb network has one subnet: give one --subnet".into());
        }
        let subnet: Subnet = data.pool.parse().map_err(|e| format!("subnet {}: {e}", data.pool))?;
        check_gateway(&subnet, &data.gateway)?;
        let generic = r.generic_options();
        let number = |key: &str| -> Result<Option<u32>, Refusal> {
            generic
                .get(key)
                .map(|v| v.parse().map_err(|_| format!("-o {key}={v}: expected a number")))
                .transpose()
        };
        let mut net = KnownNetwork {
            name: generic.get(NETWORK_OPTION).cloned().unwrap_or_default(),
            subnet: subnet.to_string(),
            internal: r.options.get(INTERNAL_OPTION).and_then(|v| v.as_bool()).unwrap_or(false),
            mtu: number(MTU_OPTION)?,
            vni: number(VNI_OPTION)?,
            origin: false,
            netdb_ipam: data.address_space == ADDRESS_SPACE,
        };
        let mut known = self.known.lock().await;
        if known.saved.networks.get(&r.network_id) == Some(&net) {
            return Ok(Empty {});
        }
        if !net.name.is_empty() {
            net.origin = self.ensure_network(&net).await?;
            known.saved.declined.remove(&net.name);
        }
        tracing::info!(docker_id = %r.network_id, network = %net.name, subnet = %net.subnet, "Docker network created");
        known.saved.networks.insert(r.network_id, net);
        known.save();
        self.wake.notify_one();
        Ok(Empty {})
    }

    /// Makes `net` a netdb network (it may exist: then it must agree);
    /// true if this call created it.
    pub(crate) async fn ensure_network(&self, net: &KnownNetwork) -> Result<bool, Refusal> {
        let nets = self.handle.networks().await.map_err(|e| e.to_string())?;
        if let Some(found) = nets.iter().find(|n| n.name == net.name) {
            return match &found.overlay {
                Some(o) if o.subnet.to_string() == net.subnet => Ok(false),
                Some(o) => Err(format!(
                    "netdb network {} has subnet {}, not {}: create the Docker network with --subnet {}",
                    net.name, o.subnet, net.subnet, o.subnet
                )),
                None => Err(format!(
                    "{} is a plain netdb gossip network (tables only): pick another name",
                    net.name
                )),
            };
        }
        let create = CreateNetwork {
            name: net.name.clone(),
            subnet: net.subnet.clone(),
            vni: net.vni,
            mtu: net.mtu,
            internal: net.internal,
            routes: host_routes(),
        };
        self.handle.create_network(create).await.map_err(|e| e.to_string())?;
        tracing::info!(network = %net.name, subnet = %net.subnet, "netdb network created from Docker");
        Ok(true)
    }

    /// Reads the name of Docker network `id` from Docker and makes it a
    /// netdb network; `None` while Docker has not saved it yet.
    pub(crate) async fn name_network(
        &self,
        known: &mut Known,
        id: &str,
    ) -> Result<Option<String>, Refusal> {
        let Some(net) = known.saved.networks.get(id).cloned() else { return Ok(None) };
        if !net.name.is_empty() {
            return Ok(Some(net.name));
        }
        let found = self.engine.network_inspect(id).await.map_err(|e| {
            format!("{e}; or create the network with -o {NETWORK_OPTION}=NAME, which needs no name from Docker")
        })?;
        let Some(docker) = found else { return Ok(None) };
        let mut named = KnownNetwork { name: docker.name.clone(), ..net };
        named.origin = self.ensure_network(&named).await?;
        known.saved.declined.remove(&named.name);
        known.saved.networks.insert(id.into(), named);
        known.save();
        Ok(Some(docker.name))
    }

    /// Never refused: Docker marks the network deleted before it asks, and
    /// a refusal would leave it half gone. Removing the copy the user made
    /// here removes the netdb network everywhere (unless a host still has
    /// containers on it: then it stays, and comes back in this Docker);
    /// removing another host's copy (`docker network rm`, prune) only takes
    /// it out of this host's Docker.
    async fn delete_network(&self, r: DeleteNetworkRequest) -> Result<Empty, Refusal> {
        let mut known = self.known.lock().await;
        let Some(net) = known.saved.networks.remove(&r.network_id) else { return Ok(Empty {}) };
        known.save();
        let subnets = self.netdb_subnets().await?;
        let live = subnets.iter().any(|(n, s, _)| *n == net.name && s.to_string() == net.subnet);
        if net.name.is_empty() || !live {
            return Ok(Empty {});
        }
        if !net.origin {
            tracing::info!(network = %net.name, "netdb network taken out of this host's Docker only (another host made it); `docker network create -d netdb --subnet {} {}` puts it back", net.subnet, net.name);
            known.saved.declined.insert(net.name);
            known.save();
            return Ok(Empty {});
        }
        match self.handle.remove_network(net.name.clone()).await {
            Ok(()) => {
                tracing::info!(network = %net.name, "netdb network removed from every host through Docker")
            }
            Err(e) => {
                tracing::warn!(network = %net.name, error = %e, "netdb network stays (and comes back in Docker): remove the containers other hosts have on it, then docker network rm it again")
            }
        }
        Ok(Empty {})
    }

    async fn create_endpoint(
        &self,
        r: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse, Refusal> {
        let name = endpoint_name(&r.endpoint_id)?;
        let mut known = self.known.lock().await;
        let iface = r.interface.clone().unwrap_or_default();
        if let Some(ep) = known.saved.endpoints.get(&r.endpoint_id) {
            // Sent again (Docker retried after an error of ours): the
            // endpoint stands.
            let found = self.local_docker_endpoint(&ep.network, &ep.name).await?;
            return Ok(endpoint_reply(&iface, found.map(|e| e.mac)));
        }
        let network = self.network_of(&mut known, &r.network_id).await?;
        if !iface.address_ipv6.is_empty() {
            return Err("netdb networks are IPv4 only".into());
        }
        let ip = bare_ip(&iface.address).to_string();
        if ip.is_empty() {
            return Err("Docker gave the endpoint no IPv4 address: create the network with --ipam-driver netdb or --subnet".into());
        }
        let mac = match iface.mac_address.as_str() {
            "" => None,
            text => {
                Some(parse_mac(text).ok_or_else(|| format!("MAC address {text} is malformed"))?)
            }
        };
        let attach = Attach {
            network: network.clone(),
            name: name.clone(),
            netns: Default::default(),
            ip: Some(ip.clone()),
            service: String::new(),
            aliases: Vec::new(),
            ifname: None,
            publish: Vec::new(),
            docker: true,
            mac,
        };
        let info = match self.handle.attach(attach).await {
            Ok(info) => info,
            // Made before the agent died, unsaved here: Docker asks again.
            Err(crate::engine::Error::Overlay(OverlayError::EndpointExists { .. })) => self
                .local_docker_endpoint(&network, &name)
                .await?
                .filter(|e| e.ip == ip)
                .ok_or_else(|| format!("netdb endpoint {name} exists with another address"))?,
            Err(crate::engine::Error::Overlay(e @ OverlayError::AddressTaken { .. })) => {
                return Err(format!(
                    "{e}; Docker's default IPAM hands out addresses per host: create the network with --ipam-driver netdb"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let ep = KnownEndpoint {
            network_id: r.network_id.clone(),
            network,
            name,
            ifname: info.ifname.clone(),
            joined: false,
            named: false,
        };
        tracing::info!(docker_id = %r.endpoint_id, network = %ep.network, endpoint = %ep.name, ip = %info.ip, "Docker endpoint created");
        known.saved.endpoints.insert(r.endpoint_id, ep);
        known.save();
        Ok(endpoint_reply(&iface, Some(info.mac)))
    }

    /// The netdb network Docker network `id` is.
    async fn network_of(&self, known: &mut Known, id: &str) -> Result<String, Refusal> {
        if !known.saved.networks.contains_key(id) {
            return Err(format!(
                "netdb does not know Docker network {id}: it was created while the agent's data dir was \
                 elsewhere; remove it and create it again"
            ));
        }
        self.name_network(known, id)
            .await?
            .ok_or_else(|| format!("Docker does not know network {id} yet; try again"))
    }

    /// This host's Docker endpoint `name` of `network`, if it exists.
    pub(crate) async fn local_docker_endpoint(
        &self,
        network: &str,
        name: &str,
    ) -> Result<Option<EndpointInfo>, Refusal> {
        let eps = self.handle.endpoints(network.into(), true).await.map_err(|e| e.to_string())?;
        // Docker's endpoints have no namespace of netdb's.
        Ok(eps.into_iter().find(|e| e.name == name && e.netns.is_empty()))
    }

    /// The endpoint goes; with netdb's IPAM its address stays reserved
    /// until Docker's ReleaseAddress, which follows, so that no request in
    /// between takes it and has the release drop the wrong reservation.
    async fn delete_endpoint(&self, r: EndpointRequest) -> Result<Empty, Refusal> {
        let name = endpoint_name(&r.endpoint_id)?;
        let mut known = self.known.lock().await;
        let saved = known.saved.endpoints.get(&r.endpoint_id).cloned();
        let net = known.saved.networks.get(&r.network_id).cloned().unwrap_or_default();
        // Unsaved (the agent died between making and saving it): found by
        // its name.
        let network = match &saved {
            Some(ep) => ep.network.clone(),
            None if net.name.is_empty() => return Ok(Empty {}),
            None => match self.local_docker_endpoint(&net.name, &name).await? {
                Some(_) => net.name.clone(),
                None => return Ok(Empty {}),
            },
        };
        // Docker's own IPAM releases addresses there, not here.
        match self.handle.detach_docker(network.clone(), name.clone(), net.netdb_ipam).await {
            Ok(()) | Err(crate::engine::Error::Overlay(OverlayError::NoEndpoint { .. })) => {}
            Err(e) => return Err(e.to_string()),
        }
        tracing::info!(docker_id = %r.endpoint_id, %network, endpoint = %name, "Docker endpoint deleted");
        known.saved.endpoints.remove(&r.endpoint_id);
        known.save();
        Ok(Empty {})
    }

    async fn oper_info(&self, r: EndpointRequest) -> Result<EndpointOperInfoResponse, Refusal> {
        let known = self.known.lock().await;
        let mut value = Options::new();
        if let Some(ep) = known.saved.endpoints.get(&r.endpoint_id) {
            value.insert("netdb.network".into(), ep.network.clone().into());
            value.insert("netdb.endpoint".into(), ep.name.clone().into());
        }
        Ok(EndpointOperInfoResponse { value })
    }

    async fn join(&self, r: JoinRequest) -> Result<JoinResponse, Refusal> {
        let mut known = self.known.lock().await;
        let Some(ep) = known.saved.endpoints.get_mut(&r.endpoint_id) else {
            return Err(format!("netdb has no endpoint {}: create it again", r.endpoint_id));
        };
        ep.joined = true;
        let src_name = ep.ifname.clone();
        known.save();
        self.wake.notify_one();
        // No gateway: Docker puts the container on docker_gwbridge for its
        // way out and its published ports, as it does for Swarm overlays.
        Ok(JoinResponse {
            interface_name: Some(InterfaceName { src_name, dst_prefix: "eth".into() }),
            ..Default::default()
        })
    }

    async fn leave(&self, r: EndpointRequest) -> Result<Empty, Refusal> {
        let mut known = self.known.lock().await;
        if let Some(ep) = known.saved.endpoints.get_mut(&r.endpoint_id) {
            ep.joined = false;
            known.save();
        }
        Ok(Empty {})
    }
}

/// Decodes the request, runs `f`, encodes its answer or its refusal in the
/// field Docker reads for that method.
async fn call<T, R, F, Fut>(method: &str, body: &[u8], f: F) -> Reply
where
    T: DeserializeOwned,
    R: Serialize,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<R, Refusal>>,
{
    let req: T = match serde_json::from_slice(if body.is_empty() { b"{}" } else { body }) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(method, error = %e, "undecodable Docker plugin request");
            // Not 200: Docker then reads `Err`, whatever the interface.
            return Reply::status(400, &format!("netdb: cannot decode {method}: {e}"));
        }
    };
    match f(req).await {
        Ok(answer) => Reply::json(&answer),
        Err(why) => {
            tracing::warn!(method, error = %why, "Docker plugin call refused");
            Reply::error(method, &format!("netdb: {why}"))
        }
    }
}

/// An address as Docker writes it, with or without its prefix length,
/// without.
pub(crate) fn bare_ip(text: &str) -> &str {
    text.split_once('/').map_or(text, |(ip, _)| ip)
}

/// Refuses a gateway other than the subnet's first address (netdb's, on
/// every host); none given is fine.
fn check_gateway(subnet: &Subnet, given: &str) -> Result<(), Refusal> {
    let given = bare_ip(given);
    if given.is_empty() || given.parse::<Ipv4Addr>().ok() == Some(subnet.gateway()) {
        return Ok(());
    }
    Err(format!(
        "netdb networks use the subnet's first address, {}, as gateway: drop --gateway {given}",
        subnet.gateway()
    ))
}

fn pool_subnet(pool_id: &str) -> Result<Subnet, Refusal> {
    pool_id.parse().map_err(|_| format!("pool {pool_id:?} is not one of netdb's"))
}

fn address(ip: Ipv4Addr, subnet: &Subnet) -> RequestAddressResponse {
    RequestAddressResponse {
        address: format!("{ip}/{}", subnet.prefix()),
        data: Default::default(),
    }
}

/// Docker's reply fills only what Docker left empty.
fn endpoint_reply(asked: &EndpointInterface, mac: Option<String>) -> CreateEndpointResponse {
    match mac.filter(|_| asked.mac_address.is_empty()) {
        Some(mac_address) => CreateEndpointResponse {
            interface: Some(EndpointInterface { mac_address, ..Default::default() }),
        },
        None => CreateEndpointResponse { interface: None },
    }
}

/// The first 12 characters, as Docker shortens its IDs.
pub(crate) fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The netdb name of Docker's endpoint `id`: its short form. Docker's IDs
/// are 64 hex digits; anything else is not Docker's.
fn endpoint_name(id: &str) -> Result<String, Refusal> {
    if id.len() < 12 || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{id:?} is not a Docker endpoint ID"));
    }
    Ok(short(id))
}
