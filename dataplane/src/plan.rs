//! The difference between what the kernel holds and what it must hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::{Desired, Endpoint, Mac, gateway_veth, host_port_name, netns_gone, ruleset};

/// One network's devices and entries as read from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObservedNetwork {
    /// The bridge's interface index (overlay namespace), if it exists.
    pub bridge: Option<u32>,
    /// The VXLAN device's interface index (overlay namespace), if it
    /// exists.
    pub vxlan: Option<u32>,
    /// The index of the host's end [`crate::host_name`] (agent's
    /// namespace), if it exists.
    pub host: Option<u32>,
    /// FDB entries of the VXLAN device itself (NTF_SELF): MAC → remote host.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    /// Permanent neighbor entries of the VXLAN device: IP → MAC.
    pub neigh: BTreeMap<Ipv4Addr, Mac>,
    /// The VXLAN device's attributes, as the kernel reports them.
    pub vxlan_attrs: Option<VxlanAttrs>,
    /// The host end's IPv4 addresses and prefix lengths.
    pub addresses: BTreeSet<(Ipv4Addr, u8)>,
}

/// What makes a VXLAN device carry a network's traffic: a device of our
/// name with other attributes (an older run's settings, a hand edit) is
/// replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanAttrs {
    /// Its VNI.
    pub vni: u32,
    /// Its tunnel source address, if it has one.
    pub local: Option<Ipv4Addr>,
    /// Its UDP port.
    pub port: u16,
}

/// The kernel as read: our devices by VNI, and every link's bridge (by
/// name, `None` when it has none) in the overlay and the agent's
/// namespaces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Our devices and their entries, by VNI.
    pub networks: BTreeMap<u32, ObservedNetwork>,
    /// Every link of the overlay namespace by name, with its bridge's
    /// index.
    pub links: BTreeMap<String, Option<u32>>,
    /// Every link of the agent's namespace by name, with its bridge's
    /// index.
    pub agent_links: BTreeMap<String, Option<u32>>,
    /// Bridges and VXLAN devices of our names and kinds in the agent's
    /// namespace: an older version's, which kept them there.
    pub legacy: BTreeSet<String>,
    /// The gateway bridge, if it exists.
    pub gateway: Option<ObservedGateway>,
    /// What netdb's nftables table holds.
    pub nftables: Ruleset,
    /// Whether IPv4 forwarding is on in this namespace.
    pub forwarding: bool,
    /// Namespaces of desired endpoints that no longer exist.
    pub netns_gone: BTreeSet<PathBuf>,
}

/// The gateway bridge as read from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObservedGateway {
    /// Its interface index.
    pub index: u32,
    /// Its IPv4 addresses and prefix lengths.
    pub addresses: BTreeSet<(Ipv4Addr, u8)>,
}

/// netdb's nftables table as read from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Ruleset {
    /// There is none.
    #[default]
    Absent,
    /// It holds exactly this ruleset, as [`ruleset`] generated it.
    Holds(String),
    /// It holds something else (edited by hand, or loaded by an earlier
    /// run): to be replaced.
    Unknown,
}

/// A change to netdb's nftables table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nftables {
    /// Replace the table by this ruleset.
    Load(String),
    /// Remove the table: nothing needs it.
    Delete,
}

/// Work to do, in the order [`crate::Linux`] does it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Endpoints' veths an older version left in the agent's namespace:
    /// moved into the overlay namespace (and enslaved, `enslave`).
    pub adopt: Vec<String>,
    /// An older version's bridges and VXLAN devices in the agent's
    /// namespace, removed once their veths are adopted.
    pub legacy_remove: Vec<String>,
    /// Networks whose bridge, VXLAN device or host end is missing.
    pub create: Vec<u32>,
    /// Our devices of networks no longer wanted.
    pub remove: Vec<u32>,
    /// Host ends of networks that no longer have a gateway address, or
    /// have another one (made again by `create`).
    pub host_remove: Vec<u32>,
    /// FDB entries to add or replace: (VNI, MAC, remote host).
    pub fdb_add: Vec<(u32, Mac, Ipv4Addr)>,
    /// FDB entries to remove: (VNI, MAC, remote host).
    pub fdb_del: Vec<(u32, Mac, Ipv4Addr)>,
    /// Neighbor entries to add or replace: (VNI, IP, MAC).
    pub neigh_add: Vec<(u32, Ipv4Addr, Mac)>,
    /// Neighbor entries to remove: (VNI, IP, MAC).
    pub neigh_del: Vec<(u32, Ipv4Addr, Mac)>,
    /// Local endpoints whose host-side veth is gone: wire them again.
    pub reattach: Vec<(u32, Endpoint)>,
    /// Local endpoints' veths (and host ends' ports) that left the
    /// bridge: enslave them again.
    pub enslave: Vec<(u32, String)>,
    /// Addresses besides the gateway's a network's host end must lose:
    /// (VNI, (address, prefix length)).
    pub address_del: Vec<(u32, (Ipv4Addr, u8))>,
    /// The gateway bridge is missing or lacks its address (address,
    /// prefix length): make it so.
    pub gateway: Option<(Ipv4Addr, u8)>,
    /// The gateway bridge exists but no endpoint needs it: remove it.
    pub gateway_remove: bool,
    /// Gateway veths that left the gateway bridge: enslave them again.
    pub gateway_enslave: Vec<String>,
    /// IPv4 forwarding is off but the gateway needs it.
    pub forwarding: bool,
    /// netdb's nftables table differs from what it must hold.
    pub nftables: Option<Nftables>,
    /// Local endpoints whose namespace is gone (for a Docker endpoint:
    /// whose host-side veth is gone): nothing to wire them to again, so
    /// they are left to the agent to detach.
    pub orphaned: Vec<Endpoint>,
}

impl Plan {
    /// True when the kernel already holds what it must.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// What to change so that the kernel holds `desired` and nothing else of
/// ours. Remotes sharing a MAC (an address conflict) keep the first host in
/// order, so every reconcile picks the same one.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut p = Plan::default();
    let empty = ObservedNetwork::default();
    let way_out = desired
        .values()
        .flat_map(|n| n.endpoints.values())
        .find_map(Endpoint::way_out)
        .map(|e| (e.gateway, e.prefix));
    let gateway = observed.gateway.as_ref();
    match way_out {
        Some(addr) => {
            if !gateway.is_some_and(|g| g.addresses.contains(&addr)) {
                p.gateway = Some(addr);
            }
            p.forwarding = !observed.forwarding;
        }
        None => p.gateway_remove = gateway.is_some(),
    }
    p.legacy_remove = observed.legacy.iter().cloned().collect();
    for (&vni, net) in desired {
        let seen = observed.networks.get(&vni).unwrap_or(&empty);
        let replacing = seen.vxlan.is_some() && seen.vxlan_attrs != Some(net.vxlan_attrs());
        let port = host_port_name(vni);
        // A host end whose address is not the gateway's is made again: its
        // MAC is Docker's for the address.
        let host_ok = seen.host.is_some()
            && observed.links.contains_key(&port)
            && net.gateway.is_some_and(|g| seen.addresses.contains(&g));
        let creating = seen.bridge.is_none()
            || seen.vxlan.is_none()
            || replacing
            || (net.gateway.is_some() && !host_ok);
        if creating {
            p.create.push(vni);
        }
        // A VXLAN device made again starts without entries.
        let seen_entries = if replacing { &empty } else { seen };
        let mut fdb: BTreeMap<Mac, Ipv4Addr> = BTreeMap::new();
        let mut neigh: BTreeMap<Ipv4Addr, Mac> = BTreeMap::new();
        for r in &net.remotes {
            fdb.entry(r.mac).or_insert(r.host);
            neigh.entry(r.ip).or_insert(r.mac);
        }
        let (mut kept_fdb, mut kept_neigh) = (Vec::new(), Vec::new());
        let (fdb_del, neigh_del) = match net.prune {
            true => (&mut p.fdb_del, &mut p.neigh_del),
            false => (&mut kept_fdb, &mut kept_neigh),
        };
        diff(vni, &fdb, &seen_entries.fdb, &mut p.fdb_add, fdb_del);
        diff(vni, &neigh, &seen_entries.neigh, &mut p.neigh_add, neigh_del);
        // A host end made now gets its address as it is made, and its
        // port on the bridge.
        match (net.gateway, seen.host) {
            (Some(gateway), Some(_)) if host_ok => {
                let extra = seen.addresses.iter().filter(|a| **a != gateway);
                p.address_del.extend(extra.map(|a| (vni, *a)));
                if !creating && observed.links.get(&port) != Some(&seen.bridge) {
                    p.enslave.push((vni, port));
                }
            }
            (_, Some(_)) => p.host_remove.push(vni),
            _ => {}
        }
        for (name, ep) in &net.endpoints {
            endpoint(vni, name, ep, seen, creating, observed, &mut p);
        }
    }
    p.remove = observed.networks.keys().filter(|v| !desired.contains_key(v)).copied().collect();
    p.nftables = match (ruleset(desired), &observed.nftables) {
        (Some(want), Ruleset::Holds(have)) if want == *have => None,
        (Some(want), _) => Some(Nftables::Load(want)),
        (None, Ruleset::Absent) => None,
        (None, _) => Some(Nftables::Delete),
    };
    p
}

/// What one local endpoint `name` of network `vni` needs; `creating`: the
/// network's devices are made (again) by this plan.
fn endpoint(
    vni: u32,
    name: &str,
    ep: &Endpoint,
    seen: &ObservedNetwork,
    creating: bool,
    observed: &Observed,
    p: &mut Plan,
) {
    if !ep.docker && observed.netns_gone.contains(&ep.netns) {
        p.orphaned.push(ep.clone());
        return;
    }
    let gateway = observed.gateway.as_ref();
    let gateway_port = ep.way_out().map(|_| gateway_veth(name));
    let gateway_master = gateway_port.as_ref().map(|g| observed.agent_links.get(g));
    match observed.links.get(name) {
        // Where an older version kept it: moved into the overlay
        // namespace, whole (a Docker endpoint's too).
        None if observed.agent_links.contains_key(name) => {
            p.adopt.push(name.to_string());
            p.enslave.push((vni, name.to_string()));
        }
        // Its pair went with the container's namespace: Docker made the
        // container side, so there is nothing here to wire again.
        None if ep.docker => p.orphaned.push(ep.clone()),
        None => p.reattach.push((vni, ep.clone())),
        // Half an endpoint (its way out lost): wired again whole.
        Some(_) if gateway_master == Some(None) => p.reattach.push((vni, ep.clone())),
        // A new bridge (deleted by hand, or the VNI changed) gets every
        // veth of the network back.
        Some(_) if creating => p.enslave.push((vni, name.to_string())),
        Some(master) if *master != seen.bridge => p.enslave.push((vni, name.to_string())),
        Some(_) => {}
    }
    if let (Some(port), Some(Some(master))) = (gateway_port, gateway_master)
        && (gateway.is_none() || *master != gateway.map(|g| g.index))
    {
        p.gateway_enslave.push(port);
    }
}

/// The namespaces of `desired`'s endpoints that are gone. A Docker
/// endpoint's is never looked at: Docker owns it.
pub(crate) fn gone_namespaces(desired: &Desired) -> BTreeSet<PathBuf> {
    let paths: BTreeSet<&PathBuf> = desired
        .values()
        .flat_map(|n| n.endpoints.values())
        .filter(|ep| !ep.docker)
        .map(|ep| &ep.netns)
        .collect();
    paths.into_iter().filter(|p| netns_gone(p)).cloned().collect()
}

fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    vni: u32,
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    add: &mut Vec<(u32, K, V)>,
    del: &mut Vec<(u32, K, V)>,
) {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            add.push((vni, *k, *v));
        }
    }
    let wanted: BTreeSet<&K> = want.keys().collect();
    for (k, v) in have {
        if !wanted.contains(k) {
            del.push((vni, *k, *v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Remote;
    use crate::testing::{docker_endpoint, egress_endpoint, endpoint_at, ip, network, remote};

    fn observed_from(desired: &Desired) -> Observed {
        let mut o = Observed::default();
        for (vni, net) in desired {
            let mut n = ObservedNetwork {
                bridge: Some(10),
                vxlan: Some(11),
                vxlan_attrs: Some(net.vxlan_attrs()),
                ..Default::default()
            };
            for r in &net.remotes {
                n.fdb.insert(r.mac, r.host);
                n.neigh.insert(r.ip, r.mac);
            }
            o.networks.insert(*vni, n);
        }
        o
    }

    #[test]
    fn an_empty_kernel_gets_everything() {
        let desired: Desired = [(4096, network(&[remote(5, 2), remote(6, 3)]))].into();
        let p = plan(&desired, &Observed::default());
        assert_eq!(p.create, vec![4096]);
        assert_eq!(p.fdb_add.len(), 2);
        assert_eq!(p.neigh_add.len(), 2);
        assert!(p.fdb_del.is_empty() && p.neigh_del.is_empty() && p.remove.is_empty());
    }

    #[test]
    fn a_kernel_in_step_needs_nothing() {
        let desired: Desired = [(4096, network(&[remote(5, 2), remote(6, 3)]))].into();
        assert!(plan(&desired, &observed_from(&desired)).is_empty());
    }

    #[test]
    fn drift_is_repaired_both_ways() {
        let desired: Desired = [(4096, network(&[remote(5, 2), remote(6, 3)]))].into();
        let mut o = observed_from(&desired);
        let n = o.networks.get_mut(&4096).unwrap();
        // Deleted by hand, added by hand, and moved to another host.
        n.fdb.remove(&remote(5, 2).mac);
        n.neigh.insert(ip(99), Mac::from_ipv4(ip(99)));
        n.fdb.insert(remote(6, 3).mac, Ipv4Addr::new(192, 168, 0, 9));
        o.networks.insert(5000, ObservedNetwork { bridge: Some(20), ..Default::default() });
        let p = plan(&desired, &o);
        assert_eq!(
            p.fdb_add,
            vec![
                (4096, remote(5, 2).mac, remote(5, 2).host),
                (4096, remote(6, 3).mac, remote(6, 3).host)
            ]
        );
        assert_eq!(p.neigh_del, vec![(4096, ip(99), Mac::from_ipv4(ip(99)))]);
        assert_eq!(p.remove, vec![5000]);
        assert!(p.create.is_empty() && p.fdb_del.is_empty() && p.neigh_add.is_empty());
    }

    #[test]
    fn an_unpruned_network_keeps_what_the_tables_do_not_hold_yet() {
        let kernel: Desired = [(4096, network(&[remote(5, 2), remote(6, 3)]))].into();
        let o = observed_from(&kernel);
        // Just restarted: the tables know one of the two remotes, and a
        // third one that moved to another host meanwhile.
        let moved = Remote { host: Ipv4Addr::new(192, 168, 0, 9), ..remote(6, 3) };
        let mut desired: Desired = [(4096, network(&[remote(5, 2), moved]))].into();
        desired.get_mut(&4096).unwrap().prune = false;
        desired.get_mut(&4096).unwrap().remotes.remove(&remote(5, 2));
        let p = plan(&desired, &o);
        assert!(p.fdb_del.is_empty() && p.neigh_del.is_empty(), "{p:?}");
        assert_eq!(p.fdb_add, vec![(4096, moved.mac, moved.host)]);

        desired.get_mut(&4096).unwrap().prune = true;
        let p = plan(&desired, &o);
        assert_eq!(p.fdb_del, vec![(4096, remote(5, 2).mac, remote(5, 2).host)]);
        assert_eq!(p.neigh_del, vec![(4096, remote(5, 2).ip, remote(5, 2).mac)]);
    }

    #[test]
    fn one_mac_on_two_hosts_resolves_the_same_way_every_time() {
        let a = remote(5, 2);
        let b = Remote { host: Ipv4Addr::new(192, 168, 0, 7), ..a };
        let desired: Desired = [(4096, network(&[b, a]))].into();
        let p = plan(&desired, &Observed::default());
        assert_eq!(p.fdb_add, vec![(4096, a.mac, a.host)]);
    }

    #[test]
    fn lost_and_detached_veths_are_wired_again() {
        let mut net = network(&[]);
        for name in ["ndve1", "ndve2", "ndve3"] {
            net.endpoints.insert(name.into(), endpoint_at(name, "/run/netns/x", 2));
        }
        let desired: Desired = [(4096, net)].into();
        let mut o = observed_from(&desired);
        o.links.insert("ndve1".into(), Some(10));
        o.links.insert("ndve2".into(), None);
        let p = plan(&desired, &o);
        assert_eq!(p.enslave, vec![(4096, "ndve2".to_string())]);
        assert_eq!(p.reattach.len(), 1);
        assert_eq!(p.reattach[0].1.host_ifname, "ndve3");
        // The bridge itself gone: created again, and both veths return.
        o.networks.get_mut(&4096).unwrap().bridge = None;
        let p = plan(&desired, &o);
        assert_eq!(p.create, vec![4096]);
        assert_eq!(p.enslave.len(), 2);
    }

    /// A kernel holding everything `desired` needs, the way out included.
    fn in_step(desired: &Desired) -> Observed {
        let mut o = observed_from(desired);
        o.gateway = Some(ObservedGateway {
            index: 30,
            addresses: [(Ipv4Addr::new(198, 18, 0, 1), 16)].into(),
        });
        for net in desired.values() {
            for name in net.endpoints.keys() {
                o.links.insert(name.clone(), Some(10));
                o.agent_links.insert(gateway_veth(name), Some(30));
            }
        }
        o.forwarding = true;
        o.nftables = Ruleset::Holds(ruleset(desired).unwrap());
        o
    }

    #[test]
    fn the_way_out_is_made_kept_and_repaired() {
        let mut net = network(&[]);
        let ep = egress_endpoint("ndve1", 2, &["8080:80".parse().unwrap()]);
        net.endpoints.insert("ndve1".into(), ep);
        let desired: Desired = [(4096, net)].into();

        let p = plan(&desired, &Observed::default());
        assert_eq!(p.gateway, Some((Ipv4Addr::new(198, 18, 0, 1), 16)));
        assert!(p.forwarding && !p.gateway_remove);
        assert_eq!(p.nftables, Some(Nftables::Load(ruleset(&desired).unwrap())));
        assert_eq!(p.reattach.len(), 1);

        let o = in_step(&desired);
        assert!(plan(&desired, &o).is_empty(), "{:?}", plan(&desired, &o));

        // The table edited by hand, the bridge's address removed, the
        // gateway veth off its bridge: all put back.
        let mut drift = o.clone();
        drift.nftables = Ruleset::Unknown;
        drift.gateway.as_mut().unwrap().addresses.clear();
        drift.agent_links.insert(gateway_veth("ndve1"), None);
        let p = plan(&desired, &drift);
        assert!(matches!(p.nftables, Some(Nftables::Load(_))));
        assert_eq!(p.gateway, Some((Ipv4Addr::new(198, 18, 0, 1), 16)));
        assert_eq!(p.gateway_enslave, vec![gateway_veth("ndve1")]);
        assert!(p.reattach.is_empty());

        // The gateway veth gone: the endpoint is wired again whole.
        let mut lost = o.clone();
        lost.agent_links.remove(&gateway_veth("ndve1"));
        assert_eq!(plan(&desired, &lost).reattach.len(), 1);

        // Nothing needs a way out any more: bridge and table go.
        let p = plan(&Desired::new(), &o);
        assert!(p.gateway_remove);
        assert_eq!(p.nftables, Some(Nftables::Delete));
        assert!(!p.forwarding, "forwarding is left as it is");
    }

    #[test]
    fn internal_endpoints_need_no_way_out() {
        let mut net = network(&[]);
        let mut ep = egress_endpoint("ndve1", 2, &[]);
        ep.egress = None;
        net.endpoints.insert("ndve1".into(), ep);
        let desired: Desired = [(4096, net)].into();
        let mut o = observed_from(&desired);
        o.links.insert("ndve1".into(), Some(10));
        assert!(plan(&desired, &o).is_empty());
    }

    #[test]
    fn a_vxlan_device_with_other_attributes_is_made_again() {
        let desired: Desired = [(4096, network(&[remote(5, 2)]))].into();
        let mut o = observed_from(&desired);
        let want = desired[&4096].vxlan_attrs();
        for other in [
            VxlanAttrs { vni: 4097, ..want },
            VxlanAttrs { port: 8472, ..want },
            VxlanAttrs { local: None, ..want },
            VxlanAttrs { local: Some(Ipv4Addr::new(192, 168, 0, 9)), ..want },
        ] {
            o.networks.get_mut(&4096).unwrap().vxlan_attrs = Some(other);
            let p = plan(&desired, &o);
            assert_eq!(p.create, vec![4096], "{other:?}");
            assert_eq!((p.fdb_add.len(), p.neigh_add.len()), (1, 1), "entries written again");
            assert!(p.fdb_del.is_empty() && p.neigh_del.is_empty(), "they go with the device");
        }
    }

    #[test]
    fn a_gone_namespace_is_orphaned_and_a_lost_veth_is_repaired() {
        let mut net = network(&[]);
        for (name, netns) in [("ndve1", "/run/netns/alive"), ("ndve2", "/run/netns/gone")] {
            net.endpoints.insert(name.into(), endpoint_at(name, netns, 2));
        }
        let desired: Desired = [(4096, net)].into();
        // Both veths lost; one namespace still there, the other deleted.
        let mut o = observed_from(&desired);
        o.netns_gone.insert("/run/netns/gone".into());
        let p = plan(&desired, &o);
        assert_eq!(p.reattach.len(), 1);
        assert_eq!(p.reattach[0].1.host_ifname, "ndve1");
        assert_eq!(p.orphaned.len(), 1);
        assert_eq!(p.orphaned[0].host_ifname, "ndve2");
        // A gone namespace whose veth is still there (the namespace kept
        // alive by a process) is orphaned too, not enslaved.
        o.links.insert("ndve2".into(), None);
        let p = plan(&desired, &o);
        assert!(p.enslave.is_empty(), "{p:?}");
        assert_eq!(p.orphaned.len(), 1);
    }

    #[test]
    fn a_docker_endpoint_whose_veth_is_gone_is_orphaned_and_its_netns_never_consulted() {
        let mut net = network(&[]);
        let mut ep = docker_endpoint("ndve1", 2);
        // Whatever the agent passes as its namespace, nothing looks at it.
        ep.netns = "/run/netns/gone".into();
        // Nor at a way out, which a Docker endpoint never has.
        ep.egress = egress_endpoint("ndve1", 2, &[]).egress;
        net.endpoints.insert("ndve1".into(), ep.clone());
        let desired: Desired = [(4096, net)].into();
        assert!(gone_namespaces(&desired).is_empty());

        let mut o = observed_from(&desired);
        o.netns_gone.insert("/run/netns/gone".into());
        o.links.insert("ndve1".into(), Some(10));
        assert!(plan(&desired, &o).is_empty(), "{:?}", plan(&desired, &o));

        // Off its bridge: enslaved again, like any endpoint's.
        o.links.insert("ndve1".into(), None);
        assert_eq!(plan(&desired, &o).enslave, vec![(4096, "ndve1".to_string())]);

        // The container's namespace went, and the pair with it.
        o.links.remove("ndve1");
        let p = plan(&desired, &o);
        assert!(p.reattach.is_empty(), "{p:?}");
        assert_eq!(p.orphaned, vec![ep]);
    }

    #[test]
    fn the_host_end_holds_exactly_the_gateway_address() {
        let gw = (Ipv4Addr::new(10, 0, 0, 1), 24);
        let mut net = network(&[]);
        net.gateway = Some(gw);
        let desired: Desired = [(4096, net)].into();
        let mut o = observed_from(&desired);
        // No host end yet: the network's devices are made (again), with it.
        assert_eq!(plan(&desired, &o).create, vec![4096]);
        o.networks.get_mut(&4096).unwrap().host = Some(12);
        assert_eq!(plan(&desired, &o).create, vec![4096], "its port is missing");
        o.links.insert(host_port_name(4096), Some(10));
        // Another address: made again, with the gateway's.
        let stale = (Ipv4Addr::new(10, 0, 0, 254), 24);
        o.networks.get_mut(&4096).unwrap().addresses = [stale].into();
        let p = plan(&desired, &o);
        assert_eq!((p.host_remove, p.create), (vec![4096], vec![4096]));

        // One besides it: removed.
        o.networks.get_mut(&4096).unwrap().addresses = [gw, stale].into();
        assert_eq!(plan(&desired, &o).address_del, vec![(4096, stale)]);
        o.networks.get_mut(&4096).unwrap().addresses = [gw].into();
        assert!(plan(&desired, &o).is_empty());

        // Its port off the bridge: put back.
        o.links.insert(host_port_name(4096), None);
        assert_eq!(plan(&desired, &o).enslave, vec![(4096, host_port_name(4096))]);
        o.links.insert(host_port_name(4096), Some(10));

        // No gateway: the host end goes.
        let mut bare = desired.clone();
        bare.get_mut(&4096).unwrap().gateway = None;
        let p = plan(&bare, &o);
        assert_eq!(p.host_remove, vec![4096]);
        assert!(p.address_del.is_empty() && p.create.is_empty(), "{p:?}");

        // A bridge made by this plan: the host end stays as it is.
        o.networks.get_mut(&4096).unwrap().bridge = None;
        let p = plan(&desired, &o);
        assert_eq!(p.create, vec![4096]);
        assert!(p.host_remove.is_empty() && p.address_del.is_empty(), "{p:?}");
    }

    #[test]
    fn an_older_versions_devices_are_replaced_and_its_veths_adopted() {
        let mut net = network(&[]);
        net.endpoints.insert("ndve1".into(), endpoint_at("ndve1", "/run/netns/x", 2));
        net.endpoints.insert("ndve2".into(), docker_endpoint("ndve2", 3));
        let desired: Desired = [(4096, net)].into();
        // Everything in the agent's namespace, as an older version made it.
        let mut o = Observed::default();
        for name in ["ndbr4096", "ndvx4096"] {
            o.legacy.insert(name.into());
            o.agent_links.insert(name.into(), None);
        }
        o.agent_links.insert("ndve1".into(), Some(7));
        o.agent_links.insert("ndve2".into(), Some(7));
        let p = plan(&desired, &o);
        assert_eq!(p.adopt, vec!["ndve1".to_string(), "ndve2".to_string()]);
        assert_eq!(p.legacy_remove, vec!["ndbr4096".to_string(), "ndvx4096".to_string()]);
        assert_eq!(p.create, vec![4096]);
        assert_eq!(p.enslave.len(), 2);
        assert!(p.reattach.is_empty() && p.orphaned.is_empty(), "{p:?}");
    }

    #[test]
    fn only_a_missing_namespace_file_counts_as_gone() {
        let here = std::env::temp_dir().join(format!("netdb-plan-ns-{}", std::process::id()));
        std::fs::write(&here, b"").unwrap();
        let gone = here.with_extension("gone");
        let mut net = network(&[]);
        for (name, netns) in [("ndve1", &here), ("ndve2", &gone)] {
            net.endpoints.insert(name.into(), endpoint_at(name, netns, 2));
        }
        let desired: Desired = [(4096, net)].into();
        assert_eq!(gone_namespaces(&desired), BTreeSet::from([gone]));
        std::fs::remove_file(&here).unwrap();
    }
}
