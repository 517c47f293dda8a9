//! netdb's data plane: what the kernel must hold for the overlay networks
//! a host takes part in, and the code that makes it hold exactly that.
//!
//! Per network (one VNI) a bridge `ndbr<VNI>` and a VXLAN device
//! `ndvx<VNI>` (UDP 4789, learning off, ARP proxy on) enslaved to it, both
//! in the overlay namespace, a network namespace of netdb's own (as
//! Docker's overlay driver keeps its bridges in one of its own): the
//! host's firewall and its bridge-netfilter setting never see the
//! overlay's frames, and netdb turns bridge netfilter off there without
//! touching the host's. The VXLAN device is made from the agent's
//! namespace, so its UDP socket is on the underlay. Every remote endpoint
//! is one FDB entry on the VXLAN device (MAC → remote host) and one
//! permanent neighbor entry (IP → MAC) from which the device answers ARP.
//! Every local endpoint is a veth pair: one end on the bridge, the other in
//! the container's namespace (or, for a Docker endpoint, left in the
//! agent's namespace for Docker to move there: [`Endpoint::docker`]). The
//! network's gateway address, if it has one ([`Network::gateway`]), is on
//! `ndhost<VNI>` in the agent's namespace, a veth whose peer
//! `ndhport<VNI>` is a port of the bridge: Docker's containers reach the
//! host (netdb's DNS) there.
//!
//! The kernel is never trusted to still hold what was written: [`plan`]
//! compares the desired state with a dump of the kernel and lists only the
//! differences, and [`Linux::reconcile`] applies them, pipelined on one
//! netlink socket. Missed deltas, hand edits and state left over from an
//! earlier run are all repaired the same way.
//!
//! What the agent needs of a kernel is the [`Kernel`] trait: [`Linux`] is
//! the real one, [`memory::Memory`] a model for tests without privilege.

mod kernel;
mod links;
mod linux;
pub mod memory;
mod netns;
mod nft;
mod plan;
mod probe;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use kernel::{Kernel, ReconcileReport};
pub use links::{link_mtu, vxlan_devices};
pub use linux::Linux;
pub use netns::{OverlayPin, inspect_overlay};
pub use nft::{NFT_TABLE, ruleset};
pub use plan::{
    Nftables, Observed, ObservedGateway, ObservedNetwork, Plan, Ruleset, VxlanAttrs, plan,
};
pub use probe::{KernelSupport, probe_kernel};

/// The VXLAN UDP port (IANA), as Docker uses it: the default of the
/// agent's `--vxlan-port`.
pub const VXLAN_PORT: u16 = 4789;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's scheme: 02:42 (locally administered) and the IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// The address in `b`; `None` unless it is exactly 6 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        Some(Mac(b.try_into().ok()?))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An endpoint on another host, reached through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Remote {
    /// The endpoint's address on the overlay network.
    pub ip: Ipv4Addr,
    /// The endpoint's MAC: the FDB entry's key and the neighbor entry's
    /// answer.
    pub mac: Mac,
    /// The other host's tunnel (underlay) address.
    pub host: Ipv4Addr,
}

/// An endpoint on this host: a container's namespace wired to a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Path of the container's network namespace, e.g. /run/netns/c1.
    /// Ignored for a Docker endpoint.
    pub netns: PathBuf,
    /// Interface name inside the container (eth0). Ignored for a Docker
    /// endpoint.
    pub ifname: String,
    /// Host-side veth name (unique on this host, at most 15 bytes).
    pub host_ifname: String,
    /// The container's address on the network.
    pub ip: Ipv4Addr,
    /// The network's prefix length (the subnet route in the container).
    pub prefix: u8,
    /// The container interface's MAC.
    pub mac: Mac,
    /// The way out through the host's gateway bridge; `None` on an
    /// internal network. Ignored for a Docker endpoint.
    pub egress: Option<Egress>,
    /// The container side belongs to Docker (the remote network driver):
    /// the veth's peer [`peer_name`] is left in the agent's namespace with
    /// the endpoint's MAC and the network's MTU, down and unaddressed, for
    /// Docker to move into the container, rename and address. Its
    /// namespace is never looked at: the host-side veth gone means the
    /// container's namespace went, taking the pair with it.
    pub docker: bool,
}

impl Endpoint {
    /// The way out, if the endpoint has one: a Docker endpoint never has.
    pub(crate) fn way_out(&self) -> Option<&Egress> {
        self.egress.as_ref().filter(|_| !self.docker)
    }
}

/// An endpoint's way out (Docker's docker_gwbridge): a second veth on the
/// host's gateway bridge [`GATEWAY_BRIDGE`], whose address is the
/// container's default route, with SNAT behind it. Its host-side name is
/// [`gateway_veth`] of the endpoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// Interface name inside the container.
    pub ifname: String,
    /// The container's address on the gateway bridge (host-local).
    pub ip: Ipv4Addr,
    /// The gateway bridge's own address: the container's default route.
    pub gateway: Ipv4Addr,
    /// Prefix length of the gateway subnet.
    pub prefix: u8,
    /// Host ports forwarded to this endpoint.
    pub publish: Vec<Publish>,
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A port of the host forwarded (DNAT) to a port of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Publish {
    /// TCP or UDP.
    pub proto: Proto,
    /// The port on the host's addresses.
    pub host_port: u16,
    /// The port in the container.
    pub port: u16,
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto)
    }
}

/// Why a `--publish` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot publish {text:?}: expected HOSTPORT:PORT[/tcp|udp] with ports 1-65535, e.g. 8080:80/tcp"
)]
pub struct BadPublish {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for Publish {
    type Err = BadPublish;

    fn from_str(text: &str) -> Result<Publish, BadPublish> {
        let bad = || BadPublish { text: text.into() };
        let (ports, proto) = match text.split_once('/') {
            None => (text, Proto::Tcp),
            Some((ports, "tcp")) => (ports, Proto::Tcp),
            Some((ports, "udp")) => (ports, Proto::Udp),
            Some(_) => return Err(bad()),
        };
        let (host, inner) = ports.split_once(':').ok_or_else(bad)?;
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(Publish { proto, host_port: port(host)?, port: port(inner)? })
    }
}

/// The host's gateway bridge: every endpoint's way out, whatever its
/// network, so overlapping subnets of different networks never meet in
/// the host's routing table (only the host-local gateway subnet does).
pub const GATEWAY_BRIDGE: &str = "ndgw0";

/// The host-side name of an endpoint's gateway veth, from its overlay
/// veth's name (unique on the host, at most 15 bytes).
pub fn gateway_veth(host_ifname: &str) -> String {
    match host_ifname.strip_prefix("ndve") {
        Some(rest) => format!("ndge{rest}"),
        None => format!("{}ge", cut(host_ifname, 13)),
    }
}

/// The container-side name of an endpoint's veth while it is still in the
/// agent's namespace (before it moves, or for Docker to move): unique on
/// the host, at most 15 bytes (a Linux interface name).
pub fn peer_name(host_ifname: &str) -> String {
    match host_ifname.strip_prefix("ndve") {
        Some(rest) => format!("ndvp{}", cut(rest, 11)),
        None => format!("{}p", cut(host_ifname, 14)),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.split_at(end).0
}

/// One network as this host must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The VXLAN network identifier; names the devices too.
    pub vni: u32,
    /// MTU of the devices and the container interfaces.
    pub mtu: u32,
    /// This host's tunnel address (the VXLAN source).
    pub local: Ipv4Addr,
    /// Endpoints on other hosts: one FDB and one neighbor entry each.
    pub remotes: BTreeSet<Remote>,
    /// Endpoints of this host on the network, by host-side veth name.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The VXLAN device's UDP port (the same on every host).
    pub port: u16,
    /// Whether FDB and neighbor entries missing from `remotes` are
    /// removed. Off while the tables may still lack remotes the kernel
    /// rightly holds (an agent restarted under running containers, before
    /// it synced the network): removing them would cut live traffic.
    pub prune: bool,
    /// The network's gateway address and prefix length, held by
    /// [`host_name`] in the agent's namespace: Docker containers reach the
    /// host (netdb's DNS listens there) through it. `None`: the host has
    /// no address on the network.
    pub gateway: Option<(Ipv4Addr, u8)>,
}

impl Network {
    /// What the network's VXLAN device must be.
    pub fn vxlan_attrs(&self) -> VxlanAttrs {
        VxlanAttrs { vni: self.vni, local: Some(self.local), port: self.port }
    }
}

/// Everything this host's kernel must hold, by VNI.
pub type Desired = BTreeMap<u32, Network>;

/// The bridge of network `vni`.
pub fn bridge_name(vni: u32) -> String {
    format!("ndbr{vni}")
}

/// The VXLAN device of network `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("ndvx{vni}")
}

/// The host's end of network `vni`, in the agent's namespace: a veth
/// holding the network's gateway address, its MAC Docker's for that
/// address (the same after every re-creation, so containers' ARP entries
/// for it stay right).
pub fn host_name(vni: u32) -> String {
    format!("ndhost{vni}")
}

/// The peer of [`host_name`]: a port of the network's bridge.
pub fn host_port_name(vni: u32) -> String {
    format!("ndhport{vni}")
}

/// The VNI of a device this crate made, from its name.
pub fn device_vni(name: &str) -> Option<(DeviceKind, u32)> {
    let (kind, rest) = if let Some(r) = name.strip_prefix("ndbr") {
        (DeviceKind::Bridge, r)
    } else if let Some(r) = name.strip_prefix("ndhost") {
        (DeviceKind::Host, r)
    } else {
        (DeviceKind::Vxlan, name.strip_prefix("ndvx")?)
    };
    if rest.is_empty() || rest.starts_with('0') || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, rest.parse().ok()?))
}

/// True when a container's namespace file is gone: removed (`ip netns
/// del`), or the process whose `/proc/PID/ns/net` it was has exited. Only
/// "not found" counts: a path this process cannot read says nothing about
/// the namespace, and detaching on a doubt would cut a live container off.
pub fn netns_gone(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// True when this process holds CAP_NET_ADMIN, which everything in this
/// crate needs.
pub fn has_net_admin() -> bool {
    has_capability(CAP_NET_ADMIN)
}

/// True when this process holds CAP_SYS_ADMIN, which wiring an endpoint
/// needs besides CAP_NET_ADMIN: entering the container's namespace
/// (setns) requires it.
pub fn has_sys_admin() -> bool {
    has_capability(CAP_SYS_ADMIN)
}

/// True when this process holds CAP_NET_BIND_SERVICE, which the embedded
/// DNS needs to listen on port 53 in the containers' namespaces.
pub fn has_net_bind_service() -> bool {
    has_capability(CAP_NET_BIND_SERVICE)
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Reads the capability's bit in this process's effective set (CapEff).
fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

/// The devices of a network, by the names that say their VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `ndbr<VNI>`: the local endpoints' veths and the VXLAN device.
    Bridge,
    /// `ndvx<VNI>`: the tunnel to the other hosts.
    Vxlan,
    /// `ndhost<VNI>`: the host's address on the network ([`host_name`]).
    Host,
}

/// Why the kernel could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No netlink socket: not Linux, or no privilege.
    #[error("cannot open a netlink socket: {0}; netdb needs Linux and CAP_NET_ADMIN (run as root)")]
    Socket(#[source] std::io::Error),
    /// A namespace (a container's, or the overlay's) could not be opened,
    /// made or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Netlink {
        /// The step that failed, naming the device or entry.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// `nft` could not be run or refused netdb's ruleset.
    #[error(
        "nftables: {0}; netdb needs the nft tool (apt-get install nftables) for egress and published ports"
    )]
    Nft(String),
    /// A device has one of our names but is not the kind we make: someone
    /// else's, never used or removed by us.
    #[error(
        "{name} exists but is a {kind} device, not a {want}; netdb neither uses nor removes it: \
         rename or delete it (ip link del {name})"
    )]
    NotOurs {
        /// The device's name.
        name: String,
        /// The kind the kernel reports ("dummy", "vxlan", ...; "unknown" if none).
        kind: String,
        /// The kind netdb makes under that name.
        want: &'static str,
    },
    /// The container already has an interface of that name.
    #[error("interface {ifname} already exists in {netns}; pick another with --ifname")]
    IfnameTaken {
        /// The interface name asked for.
        ifname: String,
        /// The container's namespace.
        netns: String,
    },
}

impl Error {
    fn netlink(what: impl Into<String>, e: rtnetlink::Error) -> Error {
        let source = match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        Error::Netlink { what: what.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_docker() {
        let m = Mac::from_ipv4(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(m.to_string(), "02:42:0a:00:00:05");
        assert_eq!(Mac::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn only_our_device_names_parse() {
        assert_eq!(device_vni("ndbr4096"), Some((DeviceKind::Bridge, 4096)));
        assert_eq!(device_vni(&vxlan_name(16777215)), Some((DeviceKind::Vxlan, 16777215)));
        assert_eq!(device_vni(&host_name(16777215)), Some((DeviceKind::Host, 16777215)));
        assert!(host_port_name(16777215).len() <= 15);
        for other in ["ndbr", "ndbr04096", "ndvx12a", "eth0", "ndve1234", "ndbr99999999999"] {
            assert_eq!(device_vni(other), None, "{other}");
        }
    }

    #[test]
    fn peers_are_named_after_the_endpoint_and_fit() {
        assert_eq!(peer_name("ndve0a1b2c3d"), "ndvp0a1b2c3d");
        assert_eq!(peer_name("custom-long-name"), "custom-long-nap");
        for long in ["ndve0a1b2c3d4e5f6", "ééééééééé", "ndveééééééé"] {
            assert!(peer_name(long).len() <= 15, "{long}");
        }
    }

    #[test]
    fn gateway_veths_are_named_after_the_endpoint_and_fit() {
        assert_eq!(gateway_veth("ndve0a1b2c3d"), "ndge0a1b2c3d");
        assert_eq!(gateway_veth("custom-long-name"), "custom-long-nge");
        assert!(gateway_veth("ééééééééé").len() <= 15);
    }

    #[test]
    fn publishes_parse_with_tcp_by_default() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(p, Publish { proto: Proto::Tcp, host_port: 8080, port: 80 });
        assert_eq!(p.to_string(), "8080:80/tcp");
        let u: Publish = "53:5353/udp".parse().unwrap();
        assert_eq!((u.proto, u.host_port, u.port), (Proto::Udp, 53, 5353));
        for bad in ["", "80", "0:80", "8080:80/sctp", "70000:80", "a:b", "8080:80/", ":80"] {
            let e = bad.parse::<Publish>().unwrap_err();
            assert!(e.to_string().contains("HOSTPORT:PORT"), "{bad}: {e}");
        }
    }
}
