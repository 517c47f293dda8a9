//! Test fixtures shared by the plan and the in-memory kernel tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::{Mac, Network, Remote};

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
    }
}
