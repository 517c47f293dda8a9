//! Network definitions: create, remove, list, inspect.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use netdb::SharedTable;
use netdb::ipam::{self, Subnet};
use netdb::netdefs::{self, Effective, NetworkDef};
use netdb::{Node, Scope, ScopeStats};

use super::{EndpointInfo, Error, Overlay, ROUTES_TABLE, valid_name};

/// `netdb network create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreateNetwork {
    pub(crate) name: String,
    /// CIDR text, checked here so every caller gets the same advice; empty:
    /// a free subnet of the default address pool.
    pub(crate) subnet: String,
    /// `None`: the lowest free VNI.
    pub(crate) vni: Option<u32>,
    /// `None`: the default MTU.
    pub(crate) mtu: Option<u32>,
    /// No way out of the overlay.
    pub(crate) internal: bool,
    /// The host's own routes ([`host_routes`]): a pool subnet avoids them,
    /// a given one that overlaps them is warned about.
    pub(crate) routes: Vec<Subnet>,
}

/// A network as `netdb network ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkInfo {
    pub(crate) name: String,
    pub(crate) peers: Vec<String>,
    /// Visible entries of the network's tables on this node.
    pub(crate) entries: u64,
    /// `None` for a plain gossip network (no definition).
    pub(crate) overlay: Option<OverlayInfo>,
}

/// `netdb network inspect`: one network in depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkDetail {
    pub(crate) info: NetworkInfo,
    /// The gateway address (reserved, never handed out); `None` for a
    /// plain gossip network.
    pub(crate) gateway: Option<Ipv4Addr>,
    /// The definition's identity with `origin`: the creator's Lamport time.
    pub(crate) created: u64,
    /// Every endpoint of the network, this host's and the others'.
    pub(crate) endpoints: Vec<EndpointInfo>,
    /// Tables, queue and push/pull figures; `None` when this node has not
    /// joined the network (no endpoint here).
    pub(crate) scope: Option<ScopeStats>,
}

/// What an overlay network adds to a gossip network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverlayInfo {
    pub(crate) subnet: Subnet,
    pub(crate) vni: u32,
    pub(crate) mtu: u32,
    pub(crate) local_endpoints: u32,
    /// Hosts with endpoints on it.
    pub(crate) hosts: Vec<String>,
    pub(crate) conflicts: Vec<String>,
    /// The node that created the definition in force.
    pub(crate) origin: String,
    pub(crate) internal: bool,
    /// What `network create` warns about (a subnet over the host's routes).
    pub(crate) warnings: Vec<String>,
}

impl Overlay {
    /// Defines a network cluster-wide (this node's copy of the definition).
    pub(crate) fn create(
        &mut self,
        node: &mut Node,
        now: Duration,
        r: CreateNetwork,
    ) -> Result<NetworkInfo, Error> {
        if !valid_name(&r.name, netdefs::MAX_NETWORK_NAME) {
            return Err(Error::BadNetworkName(r.name));
        }
        let resolved = Self::resolved(node);
        if let Some(e) = resolved.networks.get(&r.name) {
            return Err(Error::NetworkExists {
                name: r.name,
                subnet: e.subnet,
                vni: e.vni,
                origin: e.def.origin.clone(),
            });
        }
        if node.networks().contains(&r.name.as_str()) {
            return Err(Error::GossipNetwork(r.name));
        }
        let vni = match r.vni {
            None => resolved.next_vni(self.vnis).ok_or(Error::VniRangeFull(self.vnis))?,
            Some(v) if !(netdefs::FIRST_VNI..=netdefs::MAX_VNI).contains(&v) => {
                return Err(Error::VniOutOfRange(v));
            }
            Some(v) if !self.vnis.contains(v) => {
                return Err(Error::VniOutsideRange { vni: v, range: self.vnis });
            }
            Some(v) => {
                if let Some(other) = resolved.vni_in_use(v) {
                    return Err(Error::VniTaken { vni: v, network: other.into() });
                }
                v
            }
        };
        let mtu = r.mtu.unwrap_or(self.default_mtu());
        if !(netdefs::MIN_MTU..=netdefs::MAX_MTU).contains(&mtu) {
            return Err(Error::MtuOutOfRange(mtu));
        }
        let (subnet, pool, warnings) = if r.subnet.is_empty() {
            let (pool, size) = self.pool;
            let mut taken = resolved.subnets();
            taken.extend(&r.routes);
            (ipam::pick_subnet(&pool, size, &r.name, &taken)?, Some(pool), Vec::new())
        } else {
            let subnet: Subnet = r.subnet.parse()?;
            if let Some((network, other)) = resolved.overlapping(&subnet) {
                return Err(Error::SubnetOverlaps { subnet, network: network.into(), other });
            }
            let warnings: Vec<String> = r
                .routes
                .iter()
                .filter(|route| route.overlaps(&subnet))
                .map(|route| {
                    format!(
                        "{subnet} overlaps this host's route to {route}: its containers cannot reach that part of {route}"
                    )
                })
                .collect();
            for w in &warnings {
                tracing::warn!(network = %r.name, "{w}");
            }
            (subnet, None, warnings)
        };
        // Created all the same (other hosts' underlays may carry it), with
        // the warning in the reply.
        let misfit = self.mtu_misfit(&r.name, mtu);
        if let Some(m) = &misfit {
            tracing::warn!("{m}");
        }
        let def = NetworkDef {
            name: r.name.clone(),
            subnet,
            vni,
            mtu,
            origin: self.me.clone(),
            created: node.ltime() + 1,
            internal: r.internal,
            pool,
        };
        node.put_shared(now, SharedTable::NetDefs, &r.name, def.encode())?;
        tracing::info!(network = %r.name, %subnet, vni, mtu, internal = r.internal, from_pool = pool.is_some(), "network created");
        self.dirty = true;
        let mut info = self.network_info(node, &Effective { def, vni, subnet });
        if let Some(o) = &mut info.overlay {
            o.warnings = warnings;
            o.conflicts.extend(misfit);
        }
        Ok(info)
    }

    /// Removes a network cluster-wide; refused while any host (this one
    /// included, attaches under way too) has endpoints on it.
    pub(crate) fn remove(
        &mut self,
        node: &mut Node,
        now: Duration,
        name: &str,
    ) -> Result<(), Error> {
        let resolved = Self::resolved(node);
        let Some(eff) = resolved.networks.get(name) else {
            return Err(Error::NoNetwork(name.into()));
        };
        let mut hosts = node.network_hosts(name);
        if self.local_count(name) > 0 || self.pending.keys().any(|(n, _)| n == name) {
            hosts.insert(0, self.me.clone());
        }
        if !hosts.is_empty() {
            return Err(Error::NetworkInUse { network: name.into(), hosts });
        }
        // Ours may not exist yet (a definition learned a moment ago).
        node.put_shared(now, SharedTable::NetDefs, name, eff.def.encode())?;
        node.delete_shared(now, SharedTable::NetDefs, name)?;
        tracing::info!(network = %name, "network removed");
        self.dirty = true;
        Ok(())
    }

    /// Every overlay network in force and every gossip network joined, by
    /// name.
    pub(crate) fn networks(&self, node: &Node) -> Vec<NetworkInfo> {
        let resolved = Self::resolved(node);
        let mut out: Vec<NetworkInfo> =
            resolved.networks.values().map(|e| self.network_info(node, e)).collect();
        for name in node.networks() {
            if !resolved.networks.contains_key(name) {
                out.push(NetworkInfo {
                    name: name.into(),
                    peers: node.network_peers(name),
                    entries: visible_entries(node, name),
                    overlay: None,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One network in depth: an overlay network defined in the cluster, or
    /// a plain gossip network this node joined.
    pub(crate) fn inspect(&self, node: &Node, name: &str) -> Result<NetworkDetail, Error> {
        let resolved = Self::resolved(node);
        let (info, gateway, created) = match resolved.networks.get(name) {
            Some(e) => (self.network_info(node, e), Some(e.subnet.gateway()), e.def.created),
            None if node.check_joined(name).is_ok() => {
                let info = NetworkInfo {
                    name: name.into(),
                    peers: node.network_peers(name),
                    entries: visible_entries(node, name),
                    overlay: None,
                };
                (info, None, 0)
            }
            None => return Err(Error::NoNetwork(name.into())),
        };
        Ok(NetworkDetail {
            info,
            gateway,
            created,
            endpoints: self.endpoints(node, name, false),
            scope: node.scope_stats(Scope::Network(name)),
        })
    }

    fn network_info(&self, node: &Node, e: &Effective) -> NetworkInfo {
        let name = &e.def.name;
        let local = self.local_count(name);
        let mut hosts: BTreeSet<String> =
            node.entries(name, ROUTES_TABLE).iter().map(|(_, en)| en.owner.to_string()).collect();
        if local > 0 {
            hosts.insert(self.me.clone());
        }
        NetworkInfo {
            name: name.clone(),
            peers: node.network_peers(name),
            entries: visible_entries(node, name),
            overlay: Some(OverlayInfo {
                subnet: e.subnet,
                vni: e.vni,
                mtu: e.def.mtu,
                local_endpoints: local as u32,
                hosts: hosts.into_iter().collect(),
                conflicts: self.conflicts.get(name).cloned().unwrap_or_default(),
                origin: e.def.origin.clone(),
                internal: e.def.internal,
                warnings: Vec::new(),
            }),
        }
    }
}

/// The host's IPv4 routes (from /proc/net/route, the agent's namespace),
/// default routes left out; none when the file cannot be read.
pub(crate) fn host_routes() -> Vec<Subnet> {
    std::fs::read_to_string("/proc/net/route").map(|t| parse_routes(&t)).unwrap_or_default()
}

fn parse_routes(text: &str) -> Vec<Subnet> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_le_bytes()));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u32::from(mask).count_ones() as u8;
            (prefix >= ipam::MIN_PREFIX).then(|| Subnet::containing(dest, prefix).ok()).flatten()
        })
        .collect()
}

/// Counted from the scope's figures, which scan without sorting: a listing
/// sorted a million entries (0.4 s) to count them.
fn visible_entries(node: &Node, network: &str) -> u64 {
    let stats = node.scope_stats(Scope::Network(network));
    stats.map_or(0, |s| s.tables.iter().map(|(_, n)| *n as u64).sum())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Temp, TestHost, attach_req, blue, exchange};
    use super::*;
    use crate::overlay::Kind;

    #[test]
    fn the_mtu_default_follows_the_underlay_and_a_network_too_wide_for_it_is_reported() {
        let (dir, ns) = (Temp::dir("mtu"), Temp::netns("mtu-ns"));
        let h = TestHost::new("h1", 1, 1, &dir.0);
        h.parts().overlay.underlay = Some(("eth0".into(), 1400));
        let derived = h.create("blue", "10.1.0.0/24").unwrap().overlay.unwrap();
        assert_eq!(derived.mtu, 1350, "1400 less VXLAN's 50");
        let wide = {
            let mut guard = h.parts();
            let p = &mut *guard;
            let r = CreateNetwork {
                name: "jumbo".into(),
                subnet: "10.2.0.0/24".into(),
                vni: None,
                mtu: Some(8950),
                internal: false,
                routes: Vec::new(),
            };
            p.overlay.create(&mut p.node, p.now, r).unwrap().overlay.unwrap()
        };
        assert_eq!(wide.mtu, 8950, "created: other hosts may carry it");
        assert_eq!(wide.conflicts.len(), 1, "with the warning: {:?}", wide.conflicts);
        h.attach(attach_req("jumbo", "web", &ns.0)).unwrap();
        let mut guard = h.parts();
        let p = &mut *guard;
        p.overlay.maintain(&mut p.node, p.now);
        let text = "network jumbo has MTU 8950, which this host's underlay does not carry: \
                    eth0 has MTU 1400, room for 1350 inside VXLAN; raise the MTU of eth0 or \
                    recreate the network with --mtu 1350";
        assert_eq!(wide.conflicts, [text]);
        assert_eq!(p.overlay.take_notices(), [("jumbo".to_string(), text.to_string())]);
    }

    #[test]
    fn networks_take_vnis_of_the_range_and_one_outside_it_is_refused_and_reported() {
        let (dir, ns) = (Temp::dir("vnis"), Temp::netns("vnis-ns"));
        let h = TestHost::new("h1", 1, 1, &dir.0);
        // Created before this host's range changed (or on a host with
        // another range).
        assert_eq!(h.create("blue", "10.1.0.0/24").unwrap().overlay.unwrap().vni, 4096);
        h.parts().overlay.vnis = "5000-5000".parse().unwrap();
        assert_eq!(h.create("red", "10.2.0.0/24").unwrap().overlay.unwrap().vni, 5000);
        let full = h.create("green", "10.3.0.0/24").unwrap_err();
        assert_eq!(full.kind(), Kind::Exhausted);
        let outside = {
            let mut guard = h.parts();
            let p = &mut *guard;
            let r = CreateNetwork {
                name: "green".into(),
                subnet: "10.3.0.0/24".into(),
                vni: Some(4100),
                mtu: None,
                internal: false,
                routes: Vec::new(),
            };
            p.overlay.create(&mut p.node, p.now, r).unwrap_err()
        };
        assert_eq!(outside.to_string(), "VNI 4100 is outside this host's --vni-range 5000-5000");

        let text = "network blue has VNI 4096, outside this host's --vni-range 5000-5000: \
                    endpoints cannot be attached to it here; give every host the same --vni-range";
        let refused = h.attach(attach_req("blue", "web", &ns.0)).unwrap_err();
        assert_eq!((refused.kind(), refused.to_string()), (Kind::Precondition, text.to_string()));
        let mut guard = h.parts();
        let p = &mut *guard;
        p.overlay.maintain(&mut p.node, p.now);
        assert_eq!(p.overlay.take_notices(), [("blue".to_string(), text.to_string())]);
    }

    #[test]
    fn create_defines_a_network_and_refuses_bad_or_taken_ones() {
        let dir = Temp::dir("create");
        let h = TestHost::new("h1", 1, 1, &dir.0);
        let n = h.create("blue", "10.1.0.0/24").unwrap();
        let o = n.overlay.unwrap();
        assert_eq!((o.vni, o.mtu, o.origin.as_str()), (4096, netdefs::DEFAULT_MTU, "h1"));
        assert_eq!(o.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(h.create("red", "10.2.0.0/24").unwrap().overlay.unwrap().vni, 4097);

        let dup = h.create("blue", "10.3.0.0/24").unwrap_err();
        assert_eq!(dup.kind(), Kind::Exists);
        assert_eq!(
            dup.to_string(),
            "network blue already exists (subnet 10.1.0.0/24, VNI 4096, created on h1)"
        );
        assert_eq!(h.create("bad name", "10.3.0.0/24").unwrap_err().kind(), Kind::Invalid);
        let bad = h.create("green", "10.3.0.1/24").unwrap_err();
        assert!(bad.to_string().contains("did you mean 10.3.0.0/24"), "{bad}");

        let p = &mut *h.parts();
        let req = |vni, mtu| CreateNetwork {
            name: "green".into(),
            subnet: "10.3.0.0/24".into(),
            vni,
            mtu,
            internal: false,
            routes: Vec::new(),
        };
        let e = p.overlay.create(&mut p.node, p.now, req(Some(4096), None)).unwrap_err();
        assert_eq!(e.to_string(), "VNI 4096 is used by network blue");
        let e = p.overlay.create(&mut p.node, p.now, req(Some(7), None)).unwrap_err();
        assert_eq!(e.kind(), Kind::Invalid);
        let e = p.overlay.create(&mut p.node, p.now, req(None, Some(100))).unwrap_err();
        assert_eq!(e.kind(), Kind::Invalid);
        let names: Vec<_> = p.overlay.networks(&p.node).into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["blue", "red"]);
    }

    #[test]
    fn remove_is_refused_while_endpoints_exist_then_done() {
        let ((_dir, h), ns) = (blue("remove"), Temp::netns("remove-ns"));
        h.attach(attach_req("blue", "web", &ns.0)).unwrap();
        {
            let p = &mut *h.parts();
            let e = p.overlay.remove(&mut p.node, p.now, "blue").unwrap_err();
            assert_eq!(e.kind(), Kind::Precondition);
            assert_eq!(e.to_string(), "network blue still has endpoints on h1; detach them first");
        }
        h.detach("blue", "web").unwrap();
        let p = &mut *h.parts();
        p.overlay.remove(&mut p.node, p.now, "blue").unwrap();
        assert!(p.overlay.networks(&p.node).is_empty());
        let e = p.overlay.remove(&mut p.node, p.now, "blue").unwrap_err();
        assert_eq!(e.to_string(), "no network blue; see `netdb network ls`");
    }

    fn create_with(
        h: &TestHost,
        name: &str,
        subnet: &str,
        routes: &[&str],
    ) -> Result<NetworkInfo, Error> {
        let p = &mut *h.parts();
        let r = CreateNetwork {
            name: name.into(),
            subnet: subnet.into(),
            vni: None,
            mtu: None,
            internal: false,
            routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
        };
        p.overlay.create(&mut p.node, p.now, r)
    }

    #[test]
    fn without_a_subnet_a_free_one_of_the_pool_is_taken_and_overlaps_are_refused_or_warned() {
        let dir = Temp::dir("pool");
        let h = TestHost::new("h1", 1, 1, &dir.0);
        let blue = create_with(&h, "blue", "10.1.0.0/16", &[]).unwrap().overlay.unwrap();
        assert!(blue.warnings.is_empty());
        // The pool skips the networks and the host's routes.
        let pool: Subnet = "10.0.0.0/14".parse().unwrap();
        h.parts().overlay.set_default_pool(pool, 24);
        let red = create_with(&h, "red", "", &["10.0.0.0/16", "10.2.0.0/24"]).unwrap();
        let red = red.overlay.unwrap().subnet;
        assert_eq!(red.prefix(), 24);
        assert!(pool.overlaps(&red), "{red}");
        for taken in [blue.subnet, "10.0.0.0/16".parse().unwrap(), "10.2.0.0/24".parse().unwrap()] {
            assert!(!red.overlaps(&taken), "{red} overlaps {taken}");
        }

        let e = create_with(&h, "green", "10.1.0.0/24", &[]).unwrap_err();
        assert_eq!(e.kind(), Kind::Exists);
        assert_eq!(
            e.to_string(),
            "10.1.0.0/24 overlaps network blue (10.1.0.0/16); pick another subnet, or leave --subnet out to take a free one"
        );
        let warned = create_with(&h, "green", "192.168.7.0/24", &["192.168.0.0/16"]).unwrap();
        assert_eq!(
            warned.overlay.unwrap().warnings,
            [
                "192.168.7.0/24 overlaps this host's route to 192.168.0.0/16: its containers cannot reach that part of 192.168.0.0/16"
            ]
        );
        // A full pool says so.
        h.parts().overlay.set_default_pool("10.1.0.0/24".parse().unwrap(), 24);
        let full = create_with(&h, "grey", "", &[]).unwrap_err();
        assert_eq!(full.kind(), Kind::Exhausted);
        assert!(full.to_string().contains("has no free /24 left"), "{full}");
    }

    #[test]
    fn two_networks_created_at_once_from_the_pool_end_with_different_subnets() {
        let (da, db) = (Temp::dir("pool-a"), Temp::dir("pool-b"));
        let (a, b) = (TestHost::new("h1", 1, 1, &da.0), TestHost::new("h2", 2, 1, &db.0));
        let pool: Subnet = "10.5.0.0/22".parse().unwrap();
        let first = ipam::pick_subnet(&pool, 24, "blue", &[]).unwrap();
        // A name whose search starts where blue's does: both hosts, blind
        // to each other, take the same /24.
        let other = (0..)
            .map(|i| format!("net{i}"))
            .find(|n| ipam::pick_subnet(&pool, 24, n, &[]).unwrap() == first)
            .unwrap();
        for h in [&a, &b] {
            h.parts().overlay.set_default_pool(pool, 24);
        }
        assert_eq!(create_with(&a, "blue", "", &[]).unwrap().overlay.unwrap().subnet, first);
        assert_eq!(create_with(&b, &other, "", &[]).unwrap().overlay.unwrap().subnet, first);

        let (mut pa, mut pb) = (a.into_parts(), b.into_parts());
        pb.node.join(pb.now, &[pa.node.addr()]);
        exchange(&mut pa, &mut pb, Duration::from_secs(5));
        let mut seen = Vec::new();
        for p in [&mut pa, &mut pb] {
            p.overlay.maintain(&mut p.node, p.now);
            let subnets: Vec<Subnet> = p
                .overlay
                .networks(&p.node)
                .into_iter()
                .map(|n| n.overlay.unwrap().subnet)
                .collect();
            assert_eq!(subnets.len(), 2);
            assert!(!subnets[0].overlaps(&subnets[1]), "{subnets:?}");
            assert!(subnets.iter().all(|s| pool.overlaps(s)));
            let notices = p.overlay.take_notices();
            assert!(
                notices.iter().any(|(_, t)| t.contains("from its pool, which overlaps")),
                "{notices:?}"
            );
            seen.push(subnets);
        }
        assert_eq!(seen[0], seen[1], "both hosts grant the same subnets");
    }

    #[test]
    fn the_hosts_routes_are_read_from_proc_net_route_without_default_or_host_routes() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth1\t0000C90A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            eth1\t0500C90A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            bad line\n";
        let routes: Vec<String> = parse_routes(text).iter().map(|s| s.to_string()).collect();
        assert_eq!(routes, ["192.168.0.0/24", "10.201.0.0/16"]);
    }
}
