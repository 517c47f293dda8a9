//! The plan carried out over rtnetlink.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::InfoBridgePort;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

use crate::netns::{self, Connection};
use crate::nft;
use crate::plan::{
    Nftables, Observed, ObservedGateway, ObservedNetwork, Plan, Ruleset, gone_namespaces, plan,
};
use crate::{
    Desired, DeviceKind, Egress, Endpoint, Error, GATEWAY_BRIDGE, Kernel, Mac, Network,
    ReconcileReport, VxlanAttrs, bridge_name, device_vni, gateway_veth, host_name, host_port_name,
    peer_name, vxlan_name,
};

/// Requests in flight at once on the socket: the kernel answers them in
/// order, so pipelining saves a round trip per entry without reordering.
const IN_FLIGHT: usize = 256;

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

/// The Linux kernel of this host: the agent's network namespace and the
/// overlay namespace.
pub struct Linux {
    /// In the agent's namespace: the gateway bridge and the ways out, the
    /// networks' host ends, a Docker endpoint's peer until Docker takes
    /// it.
    conn: Connection,
    /// The agent's namespace, for devices made from it into it.
    agent_file: File,
    /// In the overlay namespace: the networks' bridges, VXLAN devices and
    /// FDB and neighbor entries, the endpoints' host-side veths.
    overlay: Connection,
    overlay_path: PathBuf,
    overlay_file: File,
    /// The ruleset last loaded and how `nft` lists it back: a listing equal
    /// to it means the table still holds that ruleset (nft prints rules in
    /// its own layout, so the generated text is never compared directly).
    loaded: Mutex<Option<(String, String)>>,
}

type Op = Pin<Box<dyn Future<Output = (Kind, Result<(), Error>)> + Send + 'static>>;

fn op(kind: Kind, f: impl Future<Output = Result<(), Error>> + Send + 'static) -> Op {
    Box::pin(async move { (kind, f.await) })
}

impl Linux {
    /// The kernel, with the overlay namespace pinned at `overlay` (made if
    /// missing, e.g. /run/netns/netdb). Must be called inside a tokio
    /// runtime.
    pub fn new(overlay: &Path) -> Result<Linux, Error> {
        Linux::with_overlay(overlay, netns::overlay(overlay)?)
    }

    /// The kernel, with the overlay namespace `overlay_file` refers to
    /// (`overlay`: its name in messages).
    pub(crate) fn with_overlay(overlay: &Path, overlay_file: File) -> Result<Linux, Error> {
        Ok(Linux {
            conn: netns::here()?,
            agent_file: netns::open(Path::new("/proc/thread-self/ns/net"))?,
            overlay: netns::enter(overlay, &overlay_file)?,
            overlay_path: overlay.to_path_buf(),
            overlay_file,
            loaded: Mutex::new(None),
        })
    }

    fn handle(&self) -> &Handle {
        &self.conn.handle
    }

    fn ov(&self) -> &Handle {
        &self.overlay.handle
    }

    /// One link change in the agent's namespace, its error naming `what`
    /// was done.
    async fn set_link(&self, msg: LinkMessage, what: impl Into<String>) -> Result<(), Error> {
        self.handle().link().set(msg).execute().await.map_err(|e| Error::netlink(what, e))
    }

    /// The same in the overlay namespace.
    async fn set_ov_link(&self, msg: LinkMessage, what: impl Into<String>) -> Result<(), Error> {
        self.ov().link().set(msg).execute().await.map_err(|e| Error::netlink(what, e))
    }

    /// Moves a link of the agent's namespace into the overlay namespace.
    async fn to_overlay(&self, name: &str) -> Result<(), Error> {
        let fd = self.overlay_file.as_raw_fd();
        let moved = LinkUnspec::new_with_name(name).setns_by_fd(fd).build();
        self.set_link(moved, format!("move {name} into the overlay namespace")).await
    }

    /// Reads our devices and their entries back from the kernel.
    pub async fn observe(&self) -> Result<Observed, Error> {
        let mut out = Observed::default();
        let mut vxlans: BTreeMap<u32, u32> = BTreeMap::new();
        let mut hosts: BTreeMap<u32, u32> = BTreeMap::new();
        for Link { index, name, master, kind } in links_in(self.ov()).await? {
            // A device of our name but of another kind is someone else's:
            // not ours to repair or remove (creating ours then fails with a
            // clear error).
            match (device_vni(&name), kind) {
                (Some((DeviceKind::Bridge, vni)), LinkKind::Bridge) => {
                    out.networks.entry(vni).or_default().bridge = Some(index);
                }
                (Some((DeviceKind::Vxlan, vni)), LinkKind::Vxlan(attrs)) => {
                    let n = out.networks.entry(vni).or_default();
                    n.vxlan = Some(index);
                    n.vxlan_attrs = Some(attrs);
                    vxlans.insert(index, vni);
                }
                _ => {}
            }
            out.links.insert(name, master);
        }
        for Link { index, name, master, kind } in links_in(self.handle()).await? {
            if name == GATEWAY_BRIDGE {
                out.gateway = Some(ObservedGateway { index, ..Default::default() });
            }
            match (device_vni(&name), kind) {
                (Some((DeviceKind::Host, vni)), LinkKind::Other(kind)) if kind == "veth" => {
                    out.networks.entry(vni).or_default().host = Some(index);
                    hosts.insert(index, vni);
                }
                (Some((DeviceKind::Bridge, _)), LinkKind::Bridge)
                | (Some((DeviceKind::Vxlan, _)), LinkKind::Vxlan(_)) => {
                    out.legacy.insert(name.clone());
                }
                _ => {}
            }
            out.agent_links.insert(name, master);
        }
        let mut fdb =
            self.ov().neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(msg) = fdb.try_next().await.map_err(|e| Error::netlink("dump FDB", e))? {
            let Some(vni) = vxlans.get(&msg.header.ifindex) else { continue };
            if !msg.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            if let (Some(mac), Some(dst)) = (lladdr(&msg), destination(&msg)) {
                network(&mut out, *vni).fdb.insert(mac, dst);
            }
        }
        let mut neigh =
            self.ov().neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(msg) =
            neigh.try_next().await.map_err(|e| Error::netlink("dump neighbors", e))?
        {
            let Some(vni) = vxlans.get(&msg.header.ifindex) else { continue };
            if msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(mac), Some(ip)) = (lladdr(&msg), destination(&msg)) {
                network(&mut out, *vni).neigh.insert(ip, mac);
            }
        }
        self.observe_addresses(&mut out, &hosts).await?;
        out.forwarding = std::fs::read_to_string(FORWARDING).is_ok_and(|v| v.trim() == "1");
        let listed = blocking(nft::list).await?;
        out.nftables = match listed {
            None => Ruleset::Absent,
            Some(listing) => match &*self.loaded.lock().unwrap_or_else(|e| e.into_inner()) {
                Some((ruleset, known)) if *known == listing => Ruleset::Holds(ruleset.clone()),
                _ => Ruleset::Unknown,
            },
        };
        Ok(out)
    }

    /// Reads the IPv4 addresses of the gateway bridge and of our networks'
    /// host ends (`hosts`: index → VNI) into `out`.
    async fn observe_addresses(
        &self,
        out: &mut Observed,
        hosts: &BTreeMap<u32, u32>,
    ) -> Result<(), Error> {
        let gateway = out.gateway.as_ref().map(|g| g.index);
        let mut req = self.handle().address().get();
        req.message_mut().header.family = AddressFamily::Inet;
        let mut addrs = req.execute();
        while let Some(msg) =
            addrs.try_next().await.map_err(|e| Error::netlink("list addresses", e))?
        {
            let ix = msg.header.index;
            let held = match hosts.get(&ix) {
                Some(vni) => &mut network(out, *vni).addresses,
                None if gateway == Some(ix) => match &mut out.gateway {
                    Some(g) => &mut g.addresses,
                    None => continue,
                },
                None => continue,
            };
            for a in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                    held.insert((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(())
    }

    /// Makes the kernel hold `desired` and none of our other devices or
    /// entries. Failed operations are counted and logged; the rest goes on.
    pub async fn reconcile(&self, desired: &Desired) -> Result<ReconcileReport, Error> {
        let started = Instant::now();
        let mut observed = self.observe().await?;
        observed.netns_gone = gone_namespaces(desired);
        let p = plan(desired, &observed);
        let mut report = ReconcileReport::default();
        // br_netfilter, loaded after the namespace was made (Docker loads
        // it), turns the switches on there too.
        let (path, file) = (self.overlay_path.clone(), self.overlay_file.try_clone());
        let hooks = match file {
            Ok(file) => blocking(move || netns::bridge_hooks_off(&path, &file)).await,
            Err(source) => Err(Error::Netns { path: path.display().to_string(), source }),
        };
        match hooks {
            Ok(true) => tracing::info!(
                netns = %self.overlay_path.display(),
                "bridge netfilter turned off in the overlay namespace: its bridges' frames skip iptables"
            ),
            Ok(false) => {}
            Err(e) => fail(&mut report, &e),
        }
        if p.is_empty() {
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        let Plan {
            adopt,
            legacy_remove,
            create,
            remove,
            host_remove,
            fdb_add,
            fdb_del,
            neigh_add,
            neigh_del,
            reattach,
            enslave,
            address_del,
            gateway,
            gateway_remove,
            gateway_enslave,
            forwarding,
            nftables,
            orphaned,
        } = p;
        report.netns_gone = orphaned;
        let mut gateway_ix = observed.gateway.as_ref().map(|g| g.index);
        if let Some((addr, prefix)) = gateway {
            match self.ensure_gateway(addr, prefix).await {
                Ok(ix) => {
                    gateway_ix = Some(ix);
                    report.gateway_changed += 1;
                }
                Err(e) => fail(&mut report, &e),
            }
        }
        if forwarding {
            match enable_forwarding() {
                Ok(()) => report.gateway_changed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for name in &adopt {
            match self.to_overlay(name).await {
                Ok(()) => report.endpoints_repaired += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for name in &legacy_remove {
            match self.remove_link(name).await {
                Ok(()) => report.removed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for vni in &remove {
            match self.remove_network(*vni).await {
                Ok(()) => report.removed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for vni in &host_remove {
            match self.remove_link(&host_name(*vni)).await {
                Ok(()) => report.addresses_changed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        let mut indices: BTreeMap<u32, (u32, u32)> = observed
            .networks
            .iter()
            .filter_map(|(vni, n)| Some((*vni, (n.bridge?, n.vxlan?))))
            .collect();
        for vni in &create {
            match self.ensure_network(&desired[vni]).await {
                Ok(ix) => {
                    indices.insert(*vni, ix);
                    report.created += 1;
                }
                Err(e) => fail(&mut report, &e),
            }
        }
        let vx = |vni: u32| indices.get(&vni).map(|(_, v)| *v);
        let mut ops: Vec<Op> = Vec::new();
        for (vni, mac, host) in fdb_del {
            if let Some(ix) = vx(vni) {
                ops.push(op(Kind::FdbDel, self.fdb_del(ix, mac, host)));
            }
        }
        for (vni, ip, mac) in neigh_del {
            if let Some(ix) = vx(vni) {
                ops.push(op(Kind::NeighDel, self.neigh_del(ix, ip, mac)));
            }
        }
        for (vni, mac, host) in fdb_add {
            if let Some(ix) = vx(vni) {
                ops.push(op(Kind::FdbAdd, self.fdb_add(ix, mac, host)));
            }
        }
        for (vni, ip, mac) in neigh_add {
            if let Some(ix) = vx(vni) {
                ops.push(op(Kind::NeighAdd, self.neigh_add(ix, ip, mac)));
            }
        }
        let results: Vec<(Kind, Result<(), Error>)> =
            stream::iter(ops).buffer_unordered(IN_FLIGHT).collect().await;
        for (kind, r) in results {
            match r {
                Ok(()) => match kind {
                    Kind::FdbAdd => report.fdb_added += 1,
                    Kind::FdbDel => report.fdb_removed += 1,
                    Kind::NeighAdd => report.neigh_added += 1,
                    Kind::NeighDel => report.neigh_removed += 1,
                },
                Err(e) => fail(&mut report, &e),
            }
        }
        for (vni, name) in enslave {
            let Some((br, _)) = indices.get(&vni) else { continue };
            let msg = LinkUnspec::new_with_name(&name).controller(*br).up().build();
            match self.set_ov_link(msg, format!("enslave {name}")).await {
                Ok(()) => report.endpoints_repaired += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        let host = |vni: u32| observed.networks.get(&vni).and_then(|n| n.host);
        for (vni, addr) in address_del {
            let Some(ix) = host(vni) else { continue };
            match self.host_address_del(ix, vni, addr).await {
                Ok(()) => report.addresses_changed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for name in gateway_enslave {
            let Some(br) = gateway_ix else { continue };
            match self.gateway_port(&name, br).await {
                Ok(()) => report.endpoints_repaired += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        for (vni, ep) in reattach {
            // What is left of it (one of its two veths) goes first, or the
            // container's interface would look taken.
            let wired = match self.detach(&ep.host_ifname).await {
                Ok(_) => self.attach(&desired[&vni], &ep).await,
                Err(e) => Err(e),
            };
            match wired {
                Ok(()) => report.endpoints_repaired += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        if let Some(change) = nftables {
            match self.load(change).await {
                Ok(()) => report.nft_changed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        if gateway_remove {
            match self.remove_link(GATEWAY_BRIDGE).await {
                Ok(()) => report.gateway_changed += 1,
                Err(e) => fail(&mut report, &e),
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Creates a network's bridge, VXLAN device and host end (if it has a
    /// gateway address) where missing; returns the bridge's and the VXLAN
    /// device's indices.
    pub async fn ensure_network(&self, net: &Network) -> Result<(u32, u32), Error> {
        let br_ix = self.ensure_bridge(net).await?;
        let vx_ix = self.ensure_vxlan(net, br_ix).await?;
        if let Some(addr) = net.gateway {
            self.ensure_host(net.vni, net.mtu, addr, br_ix).await?;
        }
        Ok((br_ix, vx_ix))
    }

    /// The network's bridge in the overlay namespace, created if missing;
    /// its index. A device of its name that is no bridge is refused.
    pub(crate) async fn ensure_bridge(&self, net: &Network) -> Result<u32, Error> {
        let br = bridge_name(net.vni);
        let bridge = LinkBridge::new(&br).mtu(net.mtu).build();
        ignore(self.ov().link().add(bridge).execute().await, EEXIST)
            .map_err(|e| Error::netlink(format!("create bridge {br}"), e))?;
        let (ix, kind) = link_in(self.ov(), &br).await?.ok_or_else(|| gone(&br))?;
        let LinkKind::Bridge = kind else { return Err(kind.not_ours(br, "bridge")) };
        self.set_ov_link(LinkUnspec::new_with_index(ix).up().build(), format!("set {br} up"))
            .await?;
        Ok(ix)
    }

    /// The network's host end: `ndhost<VNI>` here with the gateway address
    /// and Docker's MAC for it, its peer a port of the bridge `br_ix`.
    /// Made whole again if half of it is missing; an existing one keeps its
    /// addresses (reconcile's to change).
    async fn ensure_host(
        &self,
        vni: u32,
        mtu: u32,
        (addr, prefix): (Ipv4Addr, u8),
        br_ix: u32,
    ) -> Result<(), Error> {
        let (host, port) = (host_name(vni), host_port_name(vni));
        let what = |step: &str| format!("{step} {host}, the host's end of network {vni}");
        let have_host = self.index(&host).await?;
        if have_host.is_none() || index_in(self.ov(), &port).await?.is_none() {
            self.remove_link(&host).await?;
            self.add_veth(&host, Here, &port, Overlay, Some(mtu)).await?;
            let ix = self.index(&host).await?.ok_or_else(|| gone(&host))?;
            // The container's ARP entry for the gateway stays right when
            // the pair is made again.
            let mac =
                LinkUnspec::new_with_index(ix).address(Mac::from_ipv4(addr).0.to_vec()).build();
            self.set_link(mac, what("set the MAC of")).await?;
            self.host_address_add(ix, vni, (addr, prefix)).await?;
        }
        let enslave = LinkUnspec::new_with_name(&port).controller(br_ix).up().build();
        self.set_ov_link(enslave, what("put on the bridge the port of")).await
    }

    /// Gives network `vni`'s host end (index `ix`) an address, and keeps
    /// it up: the containers reach the host through it.
    async fn host_address_add(
        &self,
        ix: u32,
        vni: u32,
        (addr, prefix): (Ipv4Addr, u8),
    ) -> Result<(), Error> {
        let host = host_name(vni);
        ignore(self.handle().address().add(ix, IpAddr::V4(addr), prefix).execute().await, EEXIST)
            .map_err(|e| Error::netlink(format!("add address {addr}/{prefix} to {host}"), e))?;
        self.set_link(LinkUnspec::new_with_index(ix).up().build(), format!("set {host} up")).await
    }

    /// Removes an address from network `vni`'s host end (index `ix`).
    async fn host_address_del(
        &self,
        ix: u32,
        vni: u32,
        (addr, prefix): (Ipv4Addr, u8),
    ) -> Result<(), Error> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = ix;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
        let what = || format!("remove address {addr}/{prefix} from {}", host_name(vni));
        // EADDRNOTAVAIL: removed meanwhile, which is what was wanted.
        ignore(self.handle().address().del(msg).execute().await, EADDRNOTAVAIL)
            .map_err(|e| Error::netlink(what(), e))
    }

    /// The network's VXLAN device, created if missing, enslaved to the
    /// bridge `br_ix` and up (which opens its UDP socket); its index. It is
    /// made from the agent's namespace straight into the overlay one: its
    /// socket stays with the namespace it was made from, the underlay's.
    pub(crate) async fn ensure_vxlan(&self, net: &Network, br_ix: u32) -> Result<u32, Error> {
        let vx = vxlan_name(net.vni);
        let vxlan = LinkVxlan::new(&vx, net.vni)
            .local(net.local)
            .port(net.port)
            .learning(false)
            .proxy(true)
            .mtu(net.mtu)
            .setns_by_fd(self.overlay_file.as_raw_fd())
            .build();
        let want = net.vxlan_attrs();
        // Ours by name, but made with other settings (an earlier run's
        // port or address, a hand edit): made again.
        if let Some((ix, LinkKind::Vxlan(have))) = link_in(self.ov(), &vx).await?
            && have != want
        {
            tracing::warn!(device = %vx, ?have, ?want, "replacing a VXLAN device made with other settings");
            ignore(self.ov().link().del(ix).execute().await, ENODEV)
                .map_err(|e| Error::netlink(format!("delete {vx}"), e))?;
        }
        if link_in(self.ov(), &vx).await?.is_none() {
            self.handle()
                .link()
                .add(vxlan)
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("create VXLAN {vx} (VNI {})", net.vni), e))?;
        }
        let vx_ix = match link_in(self.ov(), &vx).await?.ok_or_else(|| gone(&vx))? {
            (ix, LinkKind::Vxlan(have)) if have == want => ix,
            (_, LinkKind::Vxlan(have)) => {
                return Err(Error::Netlink {
                    what: format!("create VXLAN {vx} (VNI {})", net.vni),
                    source: std::io::Error::other(format!(
                        "the kernel made it with {have:?} instead of {want:?}"
                    )),
                });
            }
            (_, other) => return Err(other.not_ours(vx, "VXLAN device")),
        };
        let up = LinkUnspec::new_with_index(vx_ix).controller(br_ix).up().build();
        self.set_ov_link(up, format!("set {vx} up")).await?;
        Ok(vx_ix)
    }

    /// A network's devices: the VXLAN device and the bridge in the overlay
    /// namespace, the host end here.
    async fn remove_network(&self, vni: u32) -> Result<(), Error> {
        for name in [vxlan_name(vni), bridge_name(vni)] {
            let Some((ix, kind)) = link_in(self.ov(), &name).await? else { continue };
            // Only devices of the kind we make: someone else's of our name
            // stays.
            let ours = matches!(
                (device_vni(&name), kind),
                (Some((DeviceKind::Bridge, _)), LinkKind::Bridge)
                    | (Some((DeviceKind::Vxlan, _)), LinkKind::Vxlan(_))
            );
            if ours {
                ignore(self.ov().link().del(ix).execute().await, ENODEV)
                    .map_err(|e| Error::netlink(format!("delete {name}"), e))?;
            }
        }
        self.remove_link(&host_name(vni)).await
    }

    async fn remove_link(&self, name: &str) -> Result<(), Error> {
        if let Some(ix) = self.index(name).await? {
            ignore(self.handle().link().del(ix).execute().await, ENODEV)
                .map_err(|e| Error::netlink(format!("delete {name}"), e))?;
        }
        Ok(())
    }

    /// The gateway bridge, created if missing, with its address and up; its
    /// index.
    async fn ensure_gateway(&self, addr: Ipv4Addr, prefix: u8) -> Result<u32, Error> {
        let bridge = LinkBridge::new(GATEWAY_BRIDGE).build();
        ignore(self.handle().link().add(bridge).execute().await, EEXIST)
            .map_err(|e| Error::netlink(format!("create bridge {GATEWAY_BRIDGE}"), e))?;
        let ix = self.index(GATEWAY_BRIDGE).await?.ok_or_else(|| gone(GATEWAY_BRIDGE))?;
        ignore(self.handle().address().add(ix, IpAddr::V4(addr), prefix).execute().await, EEXIST)
            .map_err(|e| {
            Error::netlink(format!("add address {addr}/{prefix} to {GATEWAY_BRIDGE}"), e)
        })?;
        self.set_link(
            LinkUnspec::new_with_index(ix).up().build(),
            format!("set {GATEWAY_BRIDGE} up"),
        )
        .await?;
        Ok(ix)
    }

    /// Puts a gateway veth on the gateway bridge, isolated: containers of
    /// different networks must not meet there (Docker's icc=false on
    /// docker_gwbridge); they still reach the bridge, which routes.
    async fn gateway_port(&self, name: &str, bridge: u32) -> Result<(), Error> {
        let what = |step: &str| format!("{step} {name} on {GATEWAY_BRIDGE}");
        let enslave = LinkUnspec::new_with_name(name).controller(bridge).up().build();
        self.set_link(enslave, what("enslave")).await?;
        let ix = self.index(name).await?.ok_or_else(|| gone(name))?;
        let isolated =
            LinkBridgePort::new(ix).append_info_data(InfoBridgePort::Isolated(true)).build();
        self.handle()
            .link()
            .set_port(isolated)
            .execute()
            .await
            .map_err(|e| Error::netlink(what("isolate"), e))
    }

    /// Loads or removes netdb's nftables table, and notes how it lists.
    async fn load(&self, change: Nftables) -> Result<(), Error> {
        let ruleset = match change {
            Nftables::Load(r) => Some(r),
            Nftables::Delete => None,
        };
        let loaded = blocking(move || {
            nft::load(ruleset.as_deref())?;
            Ok(match ruleset {
                Some(r) => nft::list()?.map(|listing| (r, listing)),
                None => None,
            })
        })
        .await?;
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Wires a container's namespace to a network: a veth pair, one end on
    /// the bridge, the other renamed, addressed and up in the container.
    /// A Docker endpoint's other end stays here for Docker
    /// ([`Endpoint::docker`]). On failure nothing of the endpoint is left
    /// behind.
    pub async fn attach(&self, net: &Network, ep: &Endpoint) -> Result<(), Error> {
        if ep.docker {
            return self.attach_docker(net, ep).await;
        }
        let file = netns::open(&ep.netns)?;
        let inside = netns::enter(&ep.netns, &file)?;
        for ifname in std::iter::once(&ep.ifname).chain(ep.egress.as_ref().map(|e| &e.ifname)) {
            if index_in(&inside.handle, ifname).await?.is_some() {
                return Err(Error::IfnameTaken {
                    ifname: ifname.clone(),
                    netns: ep.netns.display().to_string(),
                });
            }
        }
        let (br, _) = self.ensure_network(net).await?;
        self.detach(&ep.host_ifname).await?;
        let peer = peer_name(&ep.host_ifname);
        self.add_veth(&ep.host_ifname, Overlay, &peer, In(&file), Some(net.mtu)).await?;
        let mut wired = self.wire(net, ep, br, &peer, &inside).await;
        if let (Ok(()), Some(egress)) = (&wired, &ep.egress) {
            wired = self.wire_gateway(ep, egress, &file, &inside).await;
        }
        if wired.is_err() {
            let _ = self.detach(&ep.host_ifname).await;
        }
        wired
    }

    /// A Docker endpoint's veth pair: the host side on the bridge and up,
    /// the peer left here with the endpoint's MAC and the network's MTU,
    /// down and unaddressed, for Docker to move into the container.
    async fn attach_docker(&self, net: &Network, ep: &Endpoint) -> Result<(), Error> {
        let (br, _) = self.ensure_network(net).await?;
        // A retry: what an earlier attempt left goes first.
        self.detach(&ep.host_ifname).await?;
        let peer = peer_name(&ep.host_ifname);
        self.add_veth(&ep.host_ifname, Overlay, &peer, Here, Some(net.mtu)).await?;
        let wired = self.wire_docker(net, ep, br, &peer).await;
        if wired.is_err() {
            let _ = self.detach(&ep.host_ifname).await;
        }
        wired
    }

    async fn wire_docker(
        &self,
        net: &Network,
        ep: &Endpoint,
        bridge: u32,
        peer: &str,
    ) -> Result<(), Error> {
        let what = |step: &str| format!("{step} for Docker endpoint {}", ep.host_ifname);
        // The veth's MTU option sets the host side only.
        let setup = LinkUnspec::new_with_name(peer).address(ep.mac.0.to_vec()).mtu(net.mtu).build();
        self.set_link(setup, what("configure the peer")).await?;
        let host_side = LinkUnspec::new_with_name(&ep.host_ifname).controller(bridge).up().build();
        self.set_ov_link(host_side, what("enslave veth")).await
    }

    /// The endpoint's way out: a veth on the gateway bridge, addressed in
    /// the container, and the container's default route through it.
    async fn wire_gateway(
        &self,
        ep: &Endpoint,
        egress: &Egress,
        netns_file: &File,
        inside: &Connection,
    ) -> Result<(), Error> {
        let what = |step: &str| format!("{step} for endpoint {}'s way out", ep.host_ifname);
        let bridge = self.ensure_gateway(egress.gateway, egress.prefix).await?;
        let host = gateway_veth(&ep.host_ifname);
        let peer = peer_name(&host);
        self.remove_link(&peer).await?;
        // The underlay's MTU, not the overlay's: nothing is encapsulated.
        self.add_veth(&host, Here, &peer, In(netns_file), None).await?;
        self.gateway_port(&host, bridge).await?;
        let h = &inside.handle;
        let ix = index_in(h, &peer).await?.ok_or_else(|| gone(&peer))?;
        let setup = LinkUnspec::new_with_index(ix)
            .name(egress.ifname.clone())
            .address(Mac::from_ipv4(egress.ip).0.to_vec())
            .up()
            .build();
        h.link().set(setup).execute().await.map_err(|e| Error::netlink(what("configure"), e))?;
        h.address()
            .add(ix, IpAddr::V4(egress.ip), egress.prefix)
            .execute()
            .await
            .map_err(|e| Error::netlink(what("add address"), e))?;
        // Each of a container's ways out has a default route of its own
        // (the metric is the address's host part, unique on the host), so
        // detaching one endpoint leaves the others' in place.
        let host_part = u32::from(egress.ip)
            & !u32::MAX.checked_shl(32 - u32::from(egress.prefix)).unwrap_or(0);
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(egress.gateway)
            .output_interface(ix)
            .priority(host_part)
            .build();
        ignore(h.route().add(default).execute().await, EEXIST)
            .map_err(|e| Error::netlink(what("add default route"), e))
    }

    async fn wire(
        &self,
        net: &Network,
        ep: &Endpoint,
        bridge: u32,
        peer: &str,
        inside: &Connection,
    ) -> Result<(), Error> {
        let what = |step: &str| format!("{step} for endpoint {}", ep.host_ifname);
        let host_side = LinkUnspec::new_with_name(&ep.host_ifname).controller(bridge).up().build();
        self.set_ov_link(host_side, what("enslave veth")).await?;
        let h = &inside.handle;
        let ix = index_in(h, peer).await?.ok_or_else(|| gone(peer))?;
        let setup = LinkUnspec::new_with_index(ix)
            .name(ep.ifname.clone())
            .address(ep.mac.0.to_vec())
            .mtu(net.mtu)
            .build();
        h.link()
            .set(setup)
            .execute()
            .await
            .map_err(|e| Error::netlink(what("configure eth"), e))?;
        h.address()
            .add(ix, IpAddr::V4(ep.ip), ep.prefix)
            .execute()
            .await
            .map_err(|e| Error::netlink(what("add address"), e))?;
        h.link()
            .set(LinkUnspec::new_with_index(ix).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(what("set up"), e))?;
        if let Some(lo) = index_in(h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|e| Error::netlink(what("set lo up"), e))?;
        }
        Ok(())
    }

    /// A veth pair `host` - `peer`, each end made straight in its
    /// namespace: moving a device costs an RCU grace period (a 100-endpoint
    /// attach took 4.5 times as long with two moves per endpoint); `None`:
    /// the kernel's MTU (the veth's MTU option sets the host side only).
    pub(crate) async fn add_veth(
        &self,
        host: &str,
        host_in: Place<'_>,
        peer: &str,
        peer_in: Place<'_>,
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(self.fd(peer_in)).build();
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .setns_by_fd(self.fd(host_in));
        if let Some(mtu) = mtu {
            veth = veth.mtu(mtu);
        }
        self.handle()
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("create veth {host}"), e))
    }

    fn fd(&self, place: Place<'_>) -> RawFd {
        match place {
            Here => self.agent_file.as_raw_fd(),
            Overlay => self.overlay_file.as_raw_fd(),
            In(file) => file.as_raw_fd(),
        }
    }

    /// Removes an endpoint's veth pairs (overlay and way out) and a peer
    /// of its name still here (a Docker endpoint Docker never took: it
    /// normally goes with its host side, but a device of that name would
    /// make the next attach fail); `Ok(false)` if all were already gone.
    /// The overlay veth's host side is looked for in both namespaces: an
    /// attach that failed before moving it, or an older version, left it
    /// here.
    pub async fn detach(&self, host_ifname: &str) -> Result<bool, Error> {
        let mut found = false;
        let names = [host_ifname.to_string(), gateway_veth(host_ifname), peer_name(host_ifname)];
        let places = std::iter::once((self.ov(), host_ifname.to_string()))
            .chain(names.into_iter().map(|n| (self.handle(), n)));
        for (h, name) in places {
            let Some(ix) = index_in(h, &name).await? else { continue };
            ignore(h.link().del(ix).execute().await, ENODEV)
                .map_err(|e| Error::netlink(format!("delete veth {name}"), e))?;
            found = true;
        }
        Ok(found)
    }

    async fn index(&self, name: &str) -> Result<Option<u32>, Error> {
        index_in(self.handle(), name).await
    }

    fn fdb_add(
        &self,
        vx: u32,
        mac: Mac,
        host: Ipv4Addr,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let req = self
            .ov()
            .neighbours()
            .add_bridge(vx, &mac.0)
            .destination(IpAddr::V4(host))
            .flags(NeighbourFlags::Own)
            .replace();
        async move {
            req.execute().await.map_err(|e| Error::netlink(format!("add FDB {mac} → {host}"), e))
        }
    }

    fn fdb_del(
        &self,
        vx: u32,
        mac: Mac,
        host: Ipv4Addr,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = vx;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(host)));
        let req = self.ov().neighbours().del(msg);
        async move {
            ignore(req.execute().await, ENOENT)
                .map_err(|e| Error::netlink(format!("delete FDB {mac}"), e))
        }
    }

    fn neigh_add(
        &self,
        vx: u32,
        ip: Ipv4Addr,
        mac: Mac,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let req =
            self.ov().neighbours().add(vx, IpAddr::V4(ip)).link_layer_address(&mac.0).replace();
        async move {
            req.execute().await.map_err(|e| Error::netlink(format!("add neighbor {ip} → {mac}"), e))
        }
    }

    fn neigh_del(
        &self,
        vx: u32,
        ip: Ipv4Addr,
        _mac: Mac,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = vx;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let req = self.ov().neighbours().del(msg);
        async move {
            ignore(req.execute().await, ENOENT)
                .map_err(|e| Error::netlink(format!("delete neighbor {ip}"), e))
        }
    }
}

/// Where a device is made: the agent's namespace, the overlay namespace,
/// or a container's.
#[derive(Clone, Copy)]
pub(crate) enum Place<'a> {
    Here,
    Overlay,
    In(&'a File),
}

use Place::{Here, In, Overlay};

/// A link's kind, as far as our devices go.
pub(crate) enum LinkKind {
    Bridge,
    Vxlan(VxlanAttrs),
    /// Any other kind, by the kernel's name for it.
    Other(String),
}

impl LinkKind {
    pub(crate) fn of(msg: &LinkMessage) -> LinkKind {
        let infos = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        });
        let Some(infos) = infos else { return LinkKind::Other("unknown".into()) };
        let kind = infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        });
        match kind {
            Some(InfoKind::Bridge) => LinkKind::Bridge,
            Some(InfoKind::Vxlan) => {
                let mut attrs = VxlanAttrs { vni: 0, local: None, port: 0 };
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(data)) = i {
                        for d in data {
                            match d {
                                InfoVxlan::Id(v) => attrs.vni = *v,
                                InfoVxlan::Local(ip) => attrs.local = Some(*ip),
                                InfoVxlan::Port(p) => attrs.port = *p,
                                _ => {}
                            }
                        }
                    }
                }
                LinkKind::Vxlan(attrs)
            }
            Some(other) => LinkKind::Other(other.to_string()),
            None => LinkKind::Other("unknown".into()),
        }
    }

    fn not_ours(self, name: String, want: &'static str) -> Error {
        let kind = match self {
            LinkKind::Bridge => "bridge".into(),
            LinkKind::Vxlan(_) => "vxlan".into(),
            LinkKind::Other(k) => k,
        };
        Error::NotOurs { name, kind, want }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    FdbAdd,
    FdbDel,
    NeighAdd,
    NeighDel,
}

/// Runs blocking work (the `nft` tool) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Nft(format!("the nft task failed: {e}")))?
}

/// Turns IPv4 forwarding on in this namespace: containers' traffic to the
/// outside is routed from the gateway bridge to the underlay. Never turned
/// off again: other software on the host may rely on it by then.
fn enable_forwarding() -> Result<(), Error> {
    std::fs::write(FORWARDING, "1").map_err(|source| Error::Netlink {
        what: format!("enable IPv4 forwarding ({FORWARDING})"),
        source,
    })?;
    tracing::info!(
        "IPv4 forwarding enabled in this network namespace: endpoints reach the outside \
         through {GATEWAY_BRIDGE}"
    );
    Ok(())
}

fn fail(report: &mut ReconcileReport, e: &Error) {
    report.failed += 1;
    tracing::warn!(error = %e, "data plane operation failed; the next reconcile retries");
}

fn network(o: &mut Observed, vni: u32) -> &mut ObservedNetwork {
    o.networks.entry(vni).or_default()
}

fn gone(name: &str) -> Error {
    Error::Netlink {
        what: format!("find {name}"),
        source: std::io::Error::other("vanished after creation"),
    }
}

async fn index_in(h: &Handle, name: &str) -> Result<Option<u32>, Error> {
    Ok(link_in(h, name).await?.map(|(ix, _)| ix))
}

/// A link's index and kind, if it exists in `h`'s namespace.
async fn link_in(h: &Handle, name: &str) -> Result<Option<(u32, LinkKind)>, Error> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(msg) => Ok(msg.map(|m| (m.header.index, LinkKind::of(&m)))),
        Err(rtnetlink::Error::NetlinkError(m)) if matches!(-m.raw_code(), ENODEV | ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(Error::netlink(format!("look up {name}"), e)),
    }
}

/// `Ok` also when the kernel answers `errno` (already there, already gone).
fn ignore(r: Result<(), rtnetlink::Error>, errno: i32) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == errno => Ok(()),
        other => other,
    }
}

/// A link as a dump lists it.
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// Its bridge's index.
    pub master: Option<u32>,
    pub kind: LinkKind,
}

/// Every named link of `h`'s namespace.
pub(crate) async fn links_in(h: &Handle) -> Result<Vec<Link>, Error> {
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(|e| Error::netlink("list links", e))? {
        let (mut name, mut master) = (None, None);
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Controller(c) => master = Some(*c),
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        out.push(Link { index: msg.header.index, name, master, kind: LinkKind::of(&msg) });
    }
    Ok(out)
}

fn lladdr(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => Mac::from_slice(b),
        _ => None,
    })
}

fn destination(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // FDB dumps (family AF_BRIDGE) carry the VXLAN destination as raw
        // bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(&b[..]).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

impl Kernel for Linux {
    fn attach(
        &self,
        net: &Network,
        ep: &Endpoint,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        Linux::attach(self, net, ep)
    }

    fn detach(&self, host_ifname: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        Linux::detach(self, host_ifname)
    }

    fn reconcile(
        &self,
        desired: &Desired,
    ) -> impl Future<Output = Result<ReconcileReport, Error>> + Send {
        Linux::reconcile(self, desired)
    }
}
