//! What the kernel must hold: a pure function of the tables and this
//! host's endpoints. Routing entries from peers are checked here, so a
//! malformed or hostile one never reaches the kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use netdb::ipam::Subnet;
use netdb::netdefs::Effective;
use netdb::{Node, Scope};
use netdb_dataplane as dp;
use netdb_wire as wire;
use prost::Message;

use super::{Overlay, ROUTES_TABLE, saved_def};
use crate::state::SavedEndpoint;

impl Overlay {
    /// What the kernel must hold at `now` (time since the agent started).
    pub(crate) fn desired(&self, node: &Node, now: Duration) -> dp::Desired {
        let mut out = dp::Desired::new();
        let Some(tunnel) = self.tunnel.filter(|_| self.enabled()) else { return out };
        let resolved = Self::resolved(node);
        let networks: BTreeSet<&str> =
            self.state.endpoints.iter().map(|e| e.network.as_str()).collect();
        for name in networks {
            let eff = match resolved.networks.get(name) {
                Some(e) => e.clone(),
                None => match self.state.networks.get(name).and_then(|n| saved_def(name, n)) {
                    Some(def) => Effective { vni: def.vni, subnet: def.subnet, def },
                    None => continue,
                },
            };
            let net = self.kernel_network(node, name, &eff, tunnel, now);
            out.insert(net.vni, net);
        }
        out
    }

    pub(super) fn kernel_network(
        &self,
        node: &Node,
        name: &str,
        eff: &Effective,
        tunnel: Ipv4Addr,
        now: Duration,
    ) -> dp::Network {
        let remotes = node
            .entries(name, ROUTES_TABLE)
            .into_iter()
            .filter(|(_, e)| *e.owner != *self.me)
            .filter_map(|(_, e)| decode_route(&e.value))
            .filter(|r| r.host != tunnel && eff.subnet.contains(r.ip))
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
                        &self.gateway,
                    ),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let gateway = endpoints.values().any(|e| e.docker).then(|| docker_gateway(&eff.subnet));
        dp::Network {
            vni: eff.vni,
            mtu: eff.def.mtu,
            local: tunnel,
            remotes,
            endpoints,
            port: self.vxlan_port,
            prune: holds_every_remote(node, name, now),
            gateway,
        }
    }
}

/// How long after its start an agent keeps remote entries its tables lack
/// while it has not synced their network: enough to join and complete a
/// push/pull, short enough that a host with no peers left soon drops the
/// entries of the ones that went while it was down.
const RESTART_HOLD: Duration = Duration::from_secs(10);

/// Whether the tables hold every remote endpoint of `network` the kernel
/// should: once this host completed a push/pull of the network, or after
/// `RESTART_HOLD`. Until then (an agent restarted under running
/// containers), entries the kernel already holds are its best knowledge
/// and stay, so the containers' traffic goes on.
fn holds_every_remote(node: &Node, network: &str, now: Duration) -> bool {
    now >= RESTART_HOLD || node.scope_stats(Scope::Network(network)).is_some_and(|s| s.synced)
}

/// The kernel's view of one of this host's endpoints; its way out behind
/// the gateway bridge of subnet `gateway`.
pub(super) fn kernel_endpoint(e: &SavedEndpoint, mac: dp::Mac, gateway: &Subnet) -> dp::Endpoint {
    dp::Endpoint {
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        host_ifname: e.host_ifname.clone(),
        ip: e.ip,
        prefix: e.prefix,
        mac,
        egress: e.gateway_ip.map(|ip| dp::Egress {
            ifname: gateway_ifname(&e.ifname),
            ip,
            gateway: gateway.gateway(),
            prefix: gateway.prefix(),
            // Checked when the state file was read and on attach.
            publish: e.publish.iter().filter_map(|p| p.parse().ok()).collect(),
        }),
        docker: e.docker,
    }
}

/// The address a network's bridge holds while Docker's containers are on
/// it: the network's gateway, where they reach the host (and its DNS).
pub(super) fn docker_gateway(subnet: &Subnet) -> (Ipv4Addr, u8) {
    (subnet.gateway(), subnet.prefix())
}

/// The container's interface on the gateway bridge: named after its
/// overlay interface, so two endpoints of one container never clash.
pub(super) fn gateway_ifname(ifname: &str) -> String {
    format!("gw{ifname}")
}

pub(crate) fn parse_mac(s: &str) -> Option<dp::Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(dp::Mac(out))
}

/// A routing entry from the table; `None` if malformed (a peer's bug or
/// hostile input: it never reaches the kernel).
pub(super) fn decode_route(value: &[u8]) -> Option<dp::Remote> {
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
