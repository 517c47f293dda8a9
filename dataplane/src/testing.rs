//! Test fixtures shared by the plan and the in-memory kernel tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::{Egress, Endpoint, Mac, Network, Publish, Remote};

/// 10.0.0.`last`.
pub(crate) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

/// An endpoint 10.0.0.`last` on host 192.168.0.`host`.
pub(crate) fn remote(last: u8, host: u8) -> Remote {
    Remote { ip: ip(last), mac: Mac::from_ipv4(ip(last)), host: Ipv4Addr::new(192, 168, 0, host) }
}

/// Network 4096 (MTU 1450, tunnel 192.168.0.1) with these remotes and no
/// local endpoints.
pub(crate) fn network(remotes: &[Remote]) -> Network {
    Network {
        vni: 4096,
        mtu: 1450,
        local: Ipv4Addr::new(192, 168, 0, 1),
        remotes: remotes.iter().copied().collect(),
        endpoints: BTreeMap::new(),
        port: crate::VXLAN_PORT,
        prune: true,
        gateway: None,
    }
}

/// A local endpoint 10.0.0.`last` (veth `host_ifname`) in namespace
/// `netns`, with no way out (an internal network's).
pub(crate) fn endpoint_at(host_ifname: &str, netns: impl AsRef<Path>, last: u8) -> Endpoint {
    Endpoint {
        netns: netns.as_ref().to_path_buf(),
        ifname: "eth0".into(),
        host_ifname: host_ifname.into(),
        ip: ip(last),
        prefix: 24,
        mac: Mac::from_ipv4(ip(last)),
        egress: None,
        docker: false,
    }
}

/// A Docker endpoint 10.0.0.`last` (veth `host_ifname`), as the agent
/// passes it: no namespace, interface name or way out.
pub(crate) fn docker_endpoint(host_ifname: &str, last: u8) -> Endpoint {
    Endpoint { ifname: String::new(), docker: true, ..endpoint_at(host_ifname, "", last) }
}

/// A local endpoint 10.0.0.`last` with a way out: 198.18.0.`last` behind
/// gateway 198.18.0.1/16, publishing `publish`.
pub(crate) fn egress_endpoint(host_ifname: &str, last: u8, publish: &[Publish]) -> Endpoint {
    Endpoint {
        egress: Some(Egress {
            ifname: "gweth0".into(),
            ip: Ipv4Addr::new(198, 18, 0, last),
            gateway: Ipv4Addr::new(198, 18, 0, 1),
            prefix: 16,
            publish: publish.to_vec(),
        }),
        ..endpoint_at(host_ifname, "/run/netns/x", last)
    }
}
