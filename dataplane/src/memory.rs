//! A kernel in memory, for tests of the code above the data plane that
//! cannot (or should not) need root: it keeps devices, endpoints and
//! entries as the kernel would, refuses what the kernel would refuse (a
//! missing namespace, an interface name taken in the container, a name too
//! long for Linux), and is reconciled by the same [`plan`] as [`Linux`], so
//! what a test sees here is what the agent would make the kernel hold.
//!
//! [`Linux`]: crate::Linux

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::plan::{
    Nftables, Observed, ObservedGateway, ObservedNetwork, Plan, Ruleset, VxlanAttrs,
    gone_namespaces, plan,
};
use crate::{
    Desired, Endpoint, Error, GATEWAY_BRIDGE, Kernel, Mac, Network, ReconcileReport, bridge_name,
    gateway_veth, host_name, host_port_name, peer_name, vxlan_name,
};

/// Longest interface name Linux takes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// The in-memory kernel. Cheap to make; every method takes `&self`, like
/// [`crate::Linux`], so it can be shared the same way.
#[derive(Debug, Default)]
pub struct Memory {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_index: u32,
    /// Links of the agent's and the overlay namespaces by name (ours never
    /// share one): index, bridge (master) and namespace.
    links: BTreeMap<String, Link>,
    /// Our bridge, VXLAN device and host end of each network, and the
    /// VXLAN's entries.
    networks: BTreeMap<u32, Devices>,
    /// Interface names inside each container namespace.
    inside: BTreeMap<PathBuf, BTreeSet<String>>,
    /// Wired endpoints by host-side veth name. A Docker endpoint's peer is
    /// a link of the agent's namespace (Docker never takes it here).
    wired: BTreeMap<String, Endpoint>,
    /// Gateway veths by host-side name: the container's namespace and
    /// interface at the other end.
    gateway_ports: BTreeMap<String, (PathBuf, String)>,
    /// The gateway bridge and its addresses.
    gateway: Option<ObservedGateway>,
    /// netdb's nftables table, as loaded.
    nftables: Option<String>,
    forwarding: bool,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    index: u32,
    master: Option<u32>,
    /// In the overlay namespace, not the agent's.
    overlay: bool,
}

impl Link {
    fn agent(index: u32, master: Option<u32>) -> Link {
        Link { index, master, overlay: false }
    }

    fn overlay(index: u32, master: Option<u32>) -> Link {
        Link { index, master, overlay: true }
    }
}

#[derive(Debug, Default)]
struct Devices {
    bridge: Option<u32>,
    vxlan: Option<u32>,
    /// The host end (`ndhost<VNI>`, whose peer is a port of the bridge).
    host: Option<u32>,
    /// The VXLAN device's MTU, source address and port, as created.
    mtu: u32,
    local: Option<Ipv4Addr>,
    port: u16,
    fdb: BTreeMap<Mac, Ipv4Addr>,
    neigh: BTreeMap<Ipv4Addr, Mac>,
    /// The host end's IPv4 addresses.
    addresses: BTreeSet<(Ipv4Addr, u8)>,
}

impl Memory {
    /// An empty kernel: no devices, no endpoints.
    pub fn new() -> Memory {
        Memory::default()
    }

    /// Our devices and their entries, as [`crate::Linux::observe`] reads
    /// them from a real kernel.
    pub fn observe(&self) -> Observed {
        self.lock().observe()
    }

    /// Wired endpoints, by host-side veth name.
    pub fn endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.lock().wired.clone()
    }

    /// Interface names inside a container namespace.
    pub fn links_in(&self, netns: &Path) -> BTreeSet<String> {
        self.lock().inside.get(netns).cloned().unwrap_or_default()
    }

    /// The MTU and tunnel source a network's VXLAN device was made with.
    pub fn vxlan(&self, vni: u32) -> Option<(u32, Ipv4Addr)> {
        let st = self.lock();
        let d = st.networks.get(&vni).filter(|d| d.vxlan.is_some())?;
        Some((d.mtu, d.local?))
    }

    /// netdb's nftables table, as last loaded; `None` when there is none.
    pub fn nftables(&self) -> Option<String> {
        self.lock().nftables.clone()
    }

    /// Whether IPv4 forwarding was turned on.
    pub fn forwarding(&self) -> bool {
        self.lock().forwarding
    }

    /// Replaces netdb's nftables table by hand, as an operator could.
    pub fn set_nftables(&self, ruleset: Option<String>) {
        self.lock().nftables = ruleset;
    }

    /// An interface the container has of its own (not ours), as a runtime
    /// would have made it.
    pub fn add_link_in(&self, netns: &Path, ifname: &str) {
        self.lock().inside.entry(netns.to_path_buf()).or_default().insert(ifname.into());
    }

    /// Deletes a link (of either namespace) by hand, as an operator could;
    /// `false` if there was none.
    pub fn delete_link(&self, name: &str) -> bool {
        self.lock().delete_link(name)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves a state still
        // worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn observe(&self) -> Observed {
        let mut out = Observed::default();
        for (vni, d) in &self.networks {
            out.networks.insert(
                *vni,
                ObservedNetwork {
                    bridge: d.bridge,
                    vxlan: d.vxlan,
                    host: d.host,
                    fdb: d.fdb.clone(),
                    neigh: d.neigh.clone(),
                    vxlan_attrs: d.vxlan.map(|_| VxlanAttrs {
                        vni: *vni,
                        local: d.local,
                        port: d.port,
                    }),
                    addresses: d.addresses.clone(),
                },
            );
        }
        for (name, l) in &self.links {
            let links = if l.overlay { &mut out.links } else { &mut out.agent_links };
            links.insert(name.clone(), l.master);
        }
        out.gateway = self.gateway.clone();
        out.nftables = self.nftables.clone().map_or(Ruleset::Absent, Ruleset::Holds);
        out.forwarding = self.forwarding;
        out
    }

    /// The gateway bridge, made if missing, with this address; its index.
    fn ensure_gateway(&mut self, addr: (Ipv4Addr, u8)) -> u32 {
        let index = match &self.gateway {
            Some(g) => g.index,
            None => {
                let index = self.index();
                self.links.insert(GATEWAY_BRIDGE.into(), Link::agent(index, None));
                index
            }
        };
        self.gateway.get_or_insert_with(|| ObservedGateway { index, ..Default::default() });
        if let Some(g) = &mut self.gateway {
            g.addresses.insert(addr);
        }
        index
    }

    /// The network's devices, made if missing (a new host end with the
    /// network's gateway address); the bridge's index.
    fn ensure_network(&mut self, net: &Network) -> u32 {
        let bridge = match self.networks.get(&net.vni).and_then(|d| d.bridge) {
            Some(ix) => ix,
            None => {
                let ix = self.index();
                self.links.insert(bridge_name(net.vni), Link::overlay(ix, None));
                ix
            }
        };
        self.networks.entry(net.vni).or_default().bridge = Some(bridge);
        if net.gateway.is_some() {
            let port = host_port_name(net.vni);
            let whole = self.networks[&net.vni].host.is_some() && self.links.contains_key(&port);
            if !whole {
                self.delete_link(&host_name(net.vni));
                let ix = self.index();
                self.links.insert(host_name(net.vni), Link::agent(ix, None));
                let port_ix = self.index();
                self.links.insert(port.clone(), Link::overlay(port_ix, None));
                let d = self.networks.entry(net.vni).or_default();
                d.host = Some(ix);
                d.addresses = net.gateway.into_iter().collect();
            }
            if let Some(l) = self.links.get_mut(&port) {
                l.master = Some(bridge);
            }
        }
        // A VXLAN device made with other settings is made again, as Linux
        // does it.
        let stale = self
            .networks
            .get(&net.vni)
            .is_some_and(|d| d.vxlan.is_some() && (d.local, d.port) != (Some(net.local), net.port));
        if stale {
            self.delete_link(&vxlan_name(net.vni));
        }
        if self.networks.get(&net.vni).and_then(|d| d.vxlan).is_none() {
            let ix = self.index();
            self.links.insert(vxlan_name(net.vni), Link::overlay(ix, Some(bridge)));
            let d = self.networks.entry(net.vni).or_default();
            d.vxlan = Some(ix);
            d.mtu = net.mtu;
            d.local = Some(net.local);
            d.port = net.port;
        }
        bridge
    }

    fn attach(&mut self, net: &Network, ep: &Endpoint) -> Result<(), Error> {
        if ep.docker {
            return self.attach_docker(net, ep);
        }
        std::fs::metadata(&ep.netns)
            .map_err(|source| Error::Netns { path: ep.netns.display().to_string(), source })?;
        let gateway_ifname = ep.egress.as_ref().map(|e| &e.ifname);
        for name in [&ep.ifname, &ep.host_ifname].into_iter().chain(gateway_ifname) {
            valid_ifname(ep, name)?;
        }
        for name in std::iter::once(&ep.ifname).chain(gateway_ifname) {
            if self.inside.get(&ep.netns).is_some_and(|names| names.contains(name)) {
                return Err(Error::IfnameTaken {
                    ifname: name.clone(),
                    netns: ep.netns.display().to_string(),
                });
            }
        }
        let bridge = self.ensure_network(net);
        self.detach(&ep.host_ifname);
        let index = self.index();
        self.links.insert(ep.host_ifname.clone(), Link::overlay(index, Some(bridge)));
        self.inside.entry(ep.netns.clone()).or_default().insert(ep.ifname.clone());
        self.wired.insert(ep.host_ifname.clone(), ep.clone());
        if let Some(e) = &ep.egress {
            let master = self.ensure_gateway((e.gateway, e.prefix));
            let port = gateway_veth(&ep.host_ifname);
            let index = self.index();
            self.links.insert(port.clone(), Link::agent(index, Some(master)));
            self.inside.entry(ep.netns.clone()).or_default().insert(e.ifname.clone());
            self.gateway_ports.insert(port, (ep.netns.clone(), e.ifname.clone()));
        }
        Ok(())
    }

    /// A Docker endpoint: the veth pair, its peer left here for Docker.
    fn attach_docker(&mut self, net: &Network, ep: &Endpoint) -> Result<(), Error> {
        valid_ifname(ep, &ep.host_ifname)?;
        let bridge = self.ensure_network(net);
        self.detach(&ep.host_ifname);
        let index = self.index();
        self.links.insert(ep.host_ifname.clone(), Link::overlay(index, Some(bridge)));
        let index = self.index();
        self.links.insert(peer_name(&ep.host_ifname), Link::agent(index, None));
        self.wired.insert(ep.host_ifname.clone(), ep.clone());
        Ok(())
    }

    /// Both veth pairs of an endpoint, and a peer of its name; `false` if
    /// none was there.
    fn detach(&mut self, host_ifname: &str) -> bool {
        let main = self.delete_link(host_ifname);
        let gateway = self.delete_link(&gateway_veth(host_ifname));
        self.delete_link(&peer_name(host_ifname)) || gateway || main
    }

    fn delete_link(&mut self, name: &str) -> bool {
        let Some(link) = self.links.remove(name) else { return false };
        // A veth pair dies whole: the container's end goes too, or the
        // Docker endpoint's peer, or (the peer deleted) its host side.
        match self.wired.remove(name) {
            Some(ep) if ep.docker => {
                self.links.remove(&peer_name(name));
            }
            Some(ep) => {
                if let Some(names) = self.inside.get_mut(&ep.netns) {
                    names.remove(&ep.ifname);
                }
            }
            None => {
                let host =
                    self.wired.values().find(|ep| ep.docker && peer_name(&ep.host_ifname) == name);
                if let Some(host) = host.map(|ep| ep.host_ifname.clone()) {
                    self.delete_link(&host);
                }
            }
        }
        if let Some((netns, ifname)) = self.gateway_ports.remove(name)
            && let Some(names) = self.inside.get_mut(&netns)
        {
            names.remove(&ifname);
        }
        if self.gateway.as_ref().is_some_and(|g| g.index == link.index) {
            self.gateway = None;
        }
        // Ports of a deleted bridge are released, as the kernel does.
        for l in self.links.values_mut() {
            if l.master == Some(link.index) {
                l.master = None;
            }
        }
        let mut pair = None;
        for (vni, d) in &mut self.networks {
            if d.bridge == Some(link.index) && link.overlay {
                d.bridge = None;
            }
            if d.vxlan == Some(link.index) && link.overlay {
                d.vxlan = None;
                d.fdb.clear();
                d.neigh.clear();
            }
            // The host end and its port are a veth pair: one goes, both go.
            if (d.host == Some(link.index) && !link.overlay) || name == host_port_name(*vni) {
                d.host = None;
                d.addresses.clear();
                pair = Some(*vni);
            }
        }
        if let Some(vni) = pair {
            self.links.remove(&host_name(vni));
            self.links.remove(&host_port_name(vni));
        }
        self.networks.retain(|_, d| d.bridge.is_some() || d.vxlan.is_some() || d.host.is_some());
        true
    }

    fn reconcile(&mut self, desired: &Desired) -> ReconcileReport {
        let mut observed = self.observe();
        observed.netns_gone = gone_namespaces(desired);
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
        } = plan(desired, &observed);
        let mut report = ReconcileReport { netns_gone: orphaned, ..Default::default() };
        if let Some(addr) = gateway {
            self.ensure_gateway(addr);
            report.gateway_changed += 1;
        }
        if forwarding {
            self.forwarding = true;
            report.gateway_changed += 1;
        }
        for name in adopt {
            if let Some(l) = self.links.get_mut(&name) {
                l.overlay = true;
                report.endpoints_repaired += 1;
            }
        }
        for name in legacy_remove {
            self.delete_link(&name);
            report.removed += 1;
        }
        for vni in remove {
            self.delete_link(&vxlan_name(vni));
            self.delete_link(&bridge_name(vni));
            self.delete_link(&host_name(vni));
            report.removed += 1;
        }
        for vni in host_remove {
            self.delete_link(&host_name(vni));
            report.addresses_changed += 1;
        }
        for vni in create {
            self.ensure_network(&desired[&vni]);
            report.created += 1;
        }
        for (vni, mac, _) in fdb_del {
            if self.networks.get_mut(&vni).and_then(|d| d.fdb.remove(&mac)).is_some() {
                report.fdb_removed += 1;
            }
        }
        for (vni, ip, _) in neigh_del {
            if self.networks.get_mut(&vni).and_then(|d| d.neigh.remove(&ip)).is_some() {
                report.neigh_removed += 1;
            }
        }
        for (vni, mac, host) in fdb_add {
            if let Some(d) = self.networks.get_mut(&vni).filter(|d| d.vxlan.is_some()) {
                d.fdb.insert(mac, host);
                report.fdb_added += 1;
            }
        }
        for (vni, ip, mac) in neigh_add {
            if let Some(d) = self.networks.get_mut(&vni).filter(|d| d.vxlan.is_some()) {
                d.neigh.insert(ip, mac);
                report.neigh_added += 1;
            }
        }
        for (vni, name) in enslave {
            let bridge = self.networks.get(&vni).and_then(|d| d.bridge);
            if let (Some(br), Some(link)) = (bridge, self.links.get_mut(&name)) {
                link.master = Some(br);
                report.endpoints_repaired += 1;
            }
        }
        for (vni, addr) in address_del {
            if self.networks.get_mut(&vni).is_some_and(|d| d.addresses.remove(&addr)) {
                report.addresses_changed += 1;
            }
        }
        for name in gateway_enslave {
            let bridge = self.gateway.as_ref().map(|g| g.index);
            if let (Some(br), Some(link)) = (bridge, self.links.get_mut(&name)) {
                link.master = Some(br);
                report.endpoints_repaired += 1;
            }
        }
        for (vni, ep) in reattach {
            self.detach(&ep.host_ifname);
            match self.attach(&desired[&vni], &ep) {
                Ok(()) => report.endpoints_repaired += 1,
                Err(_) => report.failed += 1,
            }
        }
        if let Some(change) = nftables {
            self.nftables = match change {
                Nftables::Load(r) => Some(r),
                Nftables::Delete => None,
            };
            report.nft_changed += 1;
        }
        if gateway_remove {
            self.delete_link(GATEWAY_BRIDGE);
            report.gateway_changed += 1;
        }
        report
    }
}

/// Refuses an interface name Linux would: empty or too long.
fn valid_ifname(ep: &Endpoint, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(Error::Netlink {
            what: format!("create veth {} (interface name {name:?})", ep.host_ifname),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    Ok(())
}

impl Kernel for Memory {
    async fn attach(&self, net: &Network, ep: &Endpoint) -> Result<(), Error> {
        self.lock().attach(net, ep)
    }

    async fn detach(&self, host_ifname: &str) -> Result<bool, Error> {
        Ok(self.lock().detach(host_ifname))
    }

    async fn reconcile(&self, desired: &Desired) -> Result<ReconcileReport, Error> {
        let started = Instant::now();
        let mut report = self.lock().reconcile(desired);
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{docker_endpoint, egress_endpoint, network, remote};

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    /// A file standing in for a namespace: only its existence matters here.
    struct Netns(PathBuf);

    impl Netns {
        fn new(tag: &str) -> Netns {
            let p = std::env::temp_dir().join(format!("netdb-mem-{tag}-{}", std::process::id()));
            std::fs::write(&p, b"").unwrap();
            Netns(p)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn endpoint(netns: &Path, host_ifname: &str, last: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, 0, 0, last);
        Endpoint {
            netns: netns.into(),
            ifname: "eth0".into(),
            host_ifname: host_ifname.into(),
            ip,
            prefix: 24,
            mac: Mac::from_ipv4(ip),
            egress: None,
            docker: false,
        }
    }

    #[test]
    fn attach_makes_the_devices_and_refuses_what_linux_refuses() {
        let ns = Netns::new("attach");
        let k = Memory::new();
        let net = network(&[]);
        run(k.attach(&net, &endpoint(&ns.0, "ndve1", 2))).unwrap();
        let seen = k.observe();
        let devices = &seen.networks[&4096];
        assert!(devices.bridge.is_some() && devices.vxlan.is_some());
        assert_eq!(seen.links["ndve1"], devices.bridge);
        assert_eq!(k.vxlan(4096), Some((1450, Ipv4Addr::new(192, 168, 0, 1))));
        assert_eq!(k.links_in(&ns.0), BTreeSet::from(["eth0".to_string()]));

        let again = run(k.attach(&net, &endpoint(&ns.0, "ndve2", 3)));
        assert!(matches!(again, Err(Error::IfnameTaken { .. })), "{again:?}");
        let missing = endpoint(Path::new("/nonexistent/netns"), "ndve3", 4);
        assert!(matches!(run(k.attach(&net, &missing)), Err(Error::Netns { .. })));
        let long = endpoint(&ns.0, "ndve-far-too-long", 5);
        assert!(matches!(run(k.attach(&net, &long)), Err(Error::Netlink { .. })));
        assert_eq!(k.endpoints().keys().collect::<Vec<_>>(), ["ndve1"]);

        assert!(run(k.detach("ndve1")).unwrap());
        assert!(!run(k.detach("ndve1")).unwrap());
        assert!(k.links_in(&ns.0).is_empty(), "the container's end goes with the veth");
    }

    #[test]
    fn reconcile_installs_entries_repairs_endpoints_and_removes_the_rest() {
        let ns = Netns::new("reconcile");
        let k = Memory::new();
        let far = remote(9, 2);
        let mut net = network(&[far]);
        let ep = endpoint(&ns.0, "ndve1", 2);
        net.endpoints.insert(ep.host_ifname.clone(), ep.clone());
        let desired = Desired::from([(4096, net)]);

        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((r.created, r.fdb_added, r.neigh_added, r.endpoints_repaired), (1, 1, 1, 1));
        let seen = &k.observe().networks[&4096];
        assert_eq!(seen.fdb[&far.mac], far.host);
        assert_eq!(seen.neigh[&far.ip], far.mac);
        assert_eq!(run(k.reconcile(&desired)).unwrap().changes(), 0, "nothing left to do");

        assert!(k.delete_link("ndve1"));
        assert!(k.delete_link(&bridge_name(4096)));
        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((r.created, r.endpoints_repaired), (1, 1), "{r:?}");
        assert_eq!(k.observe().links["ndve1"], k.observe().networks[&4096].bridge);

        let r = run(k.reconcile(&Desired::new())).unwrap();
        assert_eq!(r.removed, 1);
        assert!(k.observe().networks.is_empty());
    }

    #[test]
    fn a_docker_endpoint_leaves_its_peer_and_the_host_end_holds_the_gateway() {
        let k = Memory::new();
        let gw = (Ipv4Addr::new(10, 0, 0, 1), 24);
        let ep = docker_endpoint("ndve1", 2);
        let mut net = network(&[]);
        net.gateway = Some(gw);
        net.endpoints.insert(ep.host_ifname.clone(), ep.clone());
        let mut desired = Desired::from([(4096, net)]);

        run(k.attach(&desired[&4096], &ep)).unwrap();
        run(k.attach(&desired[&4096], &ep)).unwrap();
        let seen = k.observe();
        assert_eq!(seen.links["ndve1"], seen.networks[&4096].bridge);
        assert_eq!(seen.agent_links[&peer_name("ndve1")], None, "left here for Docker");
        assert_eq!(seen.networks[&4096].addresses, BTreeSet::from([gw]));
        assert!(seen.agent_links.contains_key(&host_name(4096)));
        assert_eq!(seen.links[&host_port_name(4096)], seen.networks[&4096].bridge);
        assert_eq!(run(k.reconcile(&desired)).unwrap().changes(), 0);

        let moved = (Ipv4Addr::new(10, 0, 0, 254), 24);
        desired.get_mut(&4096).unwrap().gateway = Some(moved);
        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((r.created, r.addresses_changed), (1, 1), "made again: {r:?}");
        assert_eq!(k.observe().networks[&4096].addresses, BTreeSet::from([moved]));

        // The host end deleted by hand: made again whole, with the address.
        assert!(k.delete_link(&host_port_name(4096)));
        assert!(!k.observe().agent_links.contains_key(&host_name(4096)), "a pair dies whole");
        assert_eq!(run(k.reconcile(&desired)).unwrap().created, 1);
        assert_eq!(k.observe().networks[&4096].addresses, BTreeSet::from([moved]));
        // No gateway any more: the host end goes.
        let mut bare = desired.clone();
        bare.get_mut(&4096).unwrap().gateway = None;
        assert_eq!(run(k.reconcile(&bare)).unwrap().addresses_changed, 1);
        assert!(!k.observe().agent_links.contains_key(&host_name(4096)));
        assert_eq!(run(k.reconcile(&desired)).unwrap().created, 1);

        // The container's namespace destroyed: the pair goes, and the
        // endpoint is left to the agent.
        assert!(k.delete_link(&peer_name("ndve1")));
        assert!(!k.observe().links.contains_key("ndve1"));
        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((&r.netns_gone, r.changes()), (&vec![ep], 0), "{r:?}");
        assert!(!run(k.detach("ndve1")).unwrap());
    }

    #[test]
    fn the_way_out_comes_and_goes_with_its_endpoints() {
        let ns = Netns::new("egress");
        let k = Memory::new();
        let mut ep = egress_endpoint("ndve1", 2, &["8080:80".parse().unwrap()]);
        ep.netns = ns.0.clone();
        let mut net = network(&[]);
        net.endpoints.insert(ep.host_ifname.clone(), ep.clone());
        let desired = Desired::from([(4096, net)]);

        run(k.attach(&desired[&4096], &ep)).unwrap();
        assert_eq!(k.links_in(&ns.0), BTreeSet::from(["eth0".into(), "gweth0".into()]));
        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((r.nft_changed, r.gateway_changed, r.failed), (1, 1, 0), "{r:?}");
        assert!(k.forwarding());
        assert!(k.nftables().unwrap().contains("dnat to 198.18.0.2:80"));
        assert_eq!(run(k.reconcile(&desired)).unwrap().changes(), 0);

        // Edited by hand: put back. The gateway veth lost: wired again.
        k.set_nftables(Some("table ip netdb {}".into()));
        assert!(k.delete_link(&gateway_veth("ndve1")));
        let r = run(k.reconcile(&desired)).unwrap();
        assert_eq!((r.nft_changed, r.endpoints_repaired), (1, 1), "{r:?}");
        assert_eq!(k.nftables(), crate::ruleset(&desired));

        assert!(run(k.detach("ndve1")).unwrap());
        assert!(k.links_in(&ns.0).is_empty(), "both container ends go");
        let r = run(k.reconcile(&Desired::new())).unwrap();
        assert_eq!((r.nft_changed, r.gateway_changed, r.removed), (1, 1, 1), "{r:?}");
        assert_eq!(k.nftables(), None);
        let left = k.observe();
        assert!(left.links.is_empty() && left.agent_links.is_empty(), "{left:?}");
    }
}
