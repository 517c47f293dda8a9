//! The network under the overlay: the MTU of the interface towards the
//! peers, and whether the seeds answer.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use netdb_api::{self as api, netdb_client::NetdbClient};
use tonic::transport::Channel;

use netdb::netdefs::{VXLAN_OVERHEAD, overlay_mtu};

use super::{ASK_TIMEOUT, Check, Finding};
use crate::config::Settings;

/// IPv4 (20) and UDP (8) headers around a gossip datagram.
const UDP_OVERHEAD: u32 = 28;

/// The underlay must carry the largest overlay MTU plus the VXLAN
/// headers, or large packets between containers vanish (fail); and
/// gossip's largest datagram, or it is fragmented (warn).
pub(super) async fn mtu(
    s: &Settings,
    dataplane: bool,
    agent: &mut Option<NetdbClient<Channel>>,
) -> Check {
    const NAME: &str = "underlay mtu";
    let Some((ifname, towards)) = underlay_interface(s) else {
        return Check::new(
            NAME,
            Finding::Warn,
            format!("no interface found towards the peers (advertise {})", s.advertise),
        )
        .fix("give --advertise an address of this host, or --join a reachable seed");
    };
    let Some(have) = netdb_dataplane::link_mtu(&ifname) else {
        return Check::new(NAME, Finding::Warn, format!("cannot read the MTU of {ifname}"));
    };
    let gossip = s.core.packet_budget as u32 + UDP_OVERHEAD;
    // The agent derives the default from this same interface.
    let mut overlay = vec![("the default overlay MTU".to_string(), overlay_mtu(have))];
    if dataplane {
        overlay.extend(network_mtus(agent).await);
    }
    let widest = overlay.iter().max_by_key(|(_, m)| *m).cloned().unwrap_or_default();
    let need_overlay = if dataplane { widest.1 + VXLAN_OVERHEAD } else { 0 };
    let subject = format!("{ifname} (towards {towards}) has MTU {have}");
    if dataplane && have < need_overlay {
        return Check::new(
            NAME,
            Finding::Fail,
            format!("{subject}; {} ({}) needs {need_overlay} with VXLAN's {VXLAN_OVERHEAD} bytes", widest.0, widest.1),
        )
        .fix(format!(
            "raise it (ip link set dev {ifname} mtu {need_overlay}, and in the host's network config), or create networks with `netdb network create --mtu {}`",
            have.saturating_sub(VXLAN_OVERHEAD)
        ));
    }
    if have < gossip {
        return Check::new(
            NAME,
            Finding::Fail,
            format!(
                "{subject}; gossip datagrams of --packet-budget {} need {gossip}",
                s.core.packet_budget
            ),
        )
        .fix(format!(
            "lower --packet-budget to {} or raise the MTU of {ifname}",
            have.saturating_sub(UDP_OVERHEAD)
        ));
    }
    let carries = if dataplane {
        format!("carries overlay MTU {} + {VXLAN_OVERHEAD}", widest.1)
    } else {
        format!("carries gossip datagrams of {gossip} bytes")
    };
    Check::new(NAME, Finding::Pass, format!("{subject}: {carries}"))
}

/// The MTUs of the overlay networks the running agent knows.
async fn network_mtus(agent: &mut Option<NetdbClient<Channel>>) -> Vec<(String, u32)> {
    let Some(c) = agent.as_mut() else { return Vec::new() };
    let asked = tokio::time::timeout(ASK_TIMEOUT, c.networks(api::NetworksRequest {})).await;
    let Ok(Ok(reply)) = asked else { return Vec::new() };
    reply
        .into_inner()
        .networks
        .into_iter()
        .filter(|n| !n.subnet.is_empty())
        .map(|n| (format!("network {}", n.name), n.mtu))
        .collect()
}

/// The interface traffic to the peers leaves by: the one the kernel picks
/// towards the first seed, else the one holding the advertise address,
/// else the default route's. With what it was found towards.
fn underlay_interface(s: &Settings) -> Option<(String, String)> {
    if let Some(seed) = s.join.first() {
        let routed = UdpSocket::bind(SocketAddr::new(unspecified(seed.ip()), 0))
            .and_then(|u| u.connect(seed).and_then(|()| u.local_addr()));
        if let Some(ifname) = routed.ok().and_then(|local| interface_of(local.ip())) {
            return Some((ifname, format!("seed {seed}")));
        }
    }
    if let Some(ifname) = interface_of(s.advertise.ip()) {
        return Some((ifname, format!("advertise {}", s.advertise.ip())));
    }
    default_route().map(|ifname| (ifname, "the default route".into()))
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The interface holding `ip`, or else the one whose subnet holds it
/// (127.0.80.2 is lo's, though only 127.0.0.1 is configured).
pub(crate) fn interface_of(ip: IpAddr) -> Option<String> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().ok()?.collect();
    let v4 = |s: Option<nix::sys::socket::SockaddrStorage>| s?.as_sockaddr_in().map(|a| a.ip());
    let v6 = |s: Option<nix::sys::socket::SockaddrStorage>| s?.as_sockaddr_in6().map(|a| a.ip());
    let exact = addrs.iter().find(|a| match ip {
        IpAddr::V4(want) => v4(a.address) == Some(want),
        IpAddr::V6(want) => v6(a.address) == Some(want),
    });
    let within = || {
        let IpAddr::V4(want) = ip else { return None };
        addrs.iter().find(|a| match (v4(a.address), v4(a.netmask)) {
            (Some(have), Some(mask)) => {
                let m = u32::from(mask);
                u32::from(have) & m == u32::from(want) & m
            }
            _ => false,
        })
    };
    exact.or_else(within).map(|a| a.interface_name.clone())
}

/// The interface of the IPv4 default route (`/proc/net/route`).
fn default_route() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000"))
            .then(|| f.first().map(|s| s.to_string()))
            .flatten()
    })
}

/// Seeds that do not take a TCP connection on their gossip port are
/// probably down or firewalled; a warning, since a cluster's first agent
/// may well start before its seeds.
pub(super) async fn seeds(s: &Settings) -> Check {
    const NAME: &str = "seeds";
    if s.join.is_empty() {
        return Check::new(
            NAME,
            Finding::Skip,
            "no --join: this agent starts a cluster or waits to be joined",
        );
    }
    let mut silent = Vec::new();
    for seed in s.join.iter().take(8) {
        let tried =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(seed))
                .await;
        if !matches!(tried, Ok(Ok(_))) {
            silent.push(seed.to_string());
        }
    }
    if silent.is_empty() {
        return Check::new(
            NAME,
            Finding::Pass,
            format!("{} seed(s) take connections", s.join.len()),
        );
    }
    Check::new(NAME, Finding::Warn, format!("no TCP connection to seed(s) {}", silent.join(", ")))
        .fix(format!(
            "start `netdb agent` there, and let TCP and UDP {} (gossip) and UDP {} (VXLAN) through firewalls between the hosts",
            s.bind.port(),
            s.vxlan_port
        ))
}

/// Where Linux caps the neighbor table: one count for every network
/// namespace of the host (the containers' too).
const GC_THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
/// Linux's default cap: less was set by hand.
const NEIGH_FLOOR: u64 = 1024;
/// Neighbor entries to allow per member: its underlay address in this
/// host's namespace, and the containers' entries besides.
const NEIGH_PER_MEMBER: u64 = 4;

/// A full neighbor table makes every send to a new address fail: gossip
/// to peers goes silent and membership flaps. Warns when the cap is low
/// for the members the running agent knows.
pub(super) async fn neighbors(agent: &mut Option<NetdbClient<Channel>>) -> Check {
    let cap = std::fs::read_to_string(GC_THRESH3).ok().and_then(|t| t.trim().parse().ok());
    let mut members = None;
    if let Some(c) = agent.as_mut() {
        let asked = tokio::time::timeout(ASK_TIMEOUT, c.members(api::MembersRequest {})).await;
        if let Ok(Ok(reply)) = asked {
            members = Some(reply.into_inner().members.len() as u64);
        }
    }
    neighbor_check(cap, members)
}

fn neighbor_check(cap: Option<u64>, members: Option<u64>) -> Check {
    const NAME: &str = "neighbor table";
    let Some(cap) = cap else {
        return Check::new(NAME, Finding::Skip, format!("cannot read {GC_THRESH3}"));
    };
    let need = members.map_or(NEIGH_FLOOR, |m| (m * NEIGH_PER_MEMBER).max(NEIGH_FLOOR));
    let known = match members {
        Some(m) => format!("{m} members x {NEIGH_PER_MEMBER}"),
        None => "no agent answered to count the members".into(),
    };
    let subject = format!(
        "net.ipv4.neigh.default.gc_thresh3 is {cap} (shared by every network namespace of the host; {known})"
    );
    if cap < need {
        return Check::new(NAME, Finding::Warn, format!("{subject}: below {need}; once full, sends to new addresses fail and membership flaps"))
            .fix(format!(
                "sysctl -w net.ipv4.neigh.default.gc_thresh3={need} net.ipv4.neigh.default.gc_thresh2={} (and in /etc/sysctl.d/ to keep it)",
                need / 2
            ));
    }
    Check::new(NAME, Finding::Pass, subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbor_table_low_for_the_cluster_warns_with_the_sysctl() {
        assert_eq!(neighbor_check(Some(1024), Some(40)).status, Finding::Pass);
        assert_eq!(neighbor_check(Some(1024), None).status, Finding::Pass);
        let low = neighbor_check(Some(512), None);
        assert_eq!(low.status, Finding::Warn, "below Linux's default");
        let big = neighbor_check(Some(1024), Some(300));
        assert_eq!(big.status, Finding::Warn, "{}", big.detail);
        assert!(big.detail.contains("300 members x 4"), "{}", big.detail);
        assert_eq!(
            big.fix.as_deref(),
            Some(
                "sysctl -w net.ipv4.neigh.default.gc_thresh3=1200 net.ipv4.neigh.default.gc_thresh2=600 \
                 (and in /etc/sysctl.d/ to keep it)"
            )
        );
        assert_eq!(neighbor_check(None, Some(3)).status, Finding::Skip);
    }
}
