//! Why an overlay request was refused, in words a user can act on. The API
//! layer maps each kind to a gRPC code; nothing here knows about gRPC.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use netdb::ipam::{Subnet, SubnetError};
use netdb::netdefs;

use super::{MAX_ALIASES, MAX_ENDPOINT_NAME};

/// An overlay request refused, or failed half-way and undone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(
        "invalid network name {0:?}: use 1-{max} of letters, digits and -_.:@",
        max = netdefs::MAX_NETWORK_NAME
    )]
    BadNetworkName(String),
    #[error(transparent)]
    BadSubnet(#[from] SubnetError),
    #[error(transparent)]
    Pool(#[from] netdb::ipam::PoolError),
    #[error(
        "{subnet} overlaps network {network} ({other}); pick another subnet, or leave --subnet out to take a free one"
    )]
    SubnetOverlaps { subnet: Subnet, network: String, other: Subnet },
    #[error("network {name} already exists (subnet {subnet}, VNI {vni}, created on {origin})")]
    NetworkExists { name: String, subnet: Subnet, vni: u32, origin: String },
    #[error("{0} is a plain gossip network this agent joined; pick another name")]
    GossipNetwork(String),
    #[error("VNI {0} is outside {first}-{max}", first = netdefs::FIRST_VNI, max = netdefs::MAX_VNI)]
    VniOutOfRange(u32),
    #[error("VNI {vni} is used by network {network}")]
    VniTaken { vni: u32, network: String },
    #[error("VNI {vni} is outside this host's --vni-range {range}")]
    VniOutsideRange { vni: u32, range: netdefs::VniRange },
    #[error(
        "every VNI of this host's --vni-range {0} is taken; remove a network or widen the range on every host"
    )]
    VniRangeFull(netdefs::VniRange),
    /// The network's VNI is outside this host's range (the text says so).
    #[error("{0}")]
    NetworkOutsideVniRange(String),
    #[error("MTU {0} is outside {min}-{max}", min = netdefs::MIN_MTU, max = netdefs::MAX_MTU)]
    MtuOutOfRange(u32),
    #[error("no network {0}; see `netdb network ls`")]
    NoNetwork(String),
    #[error("network {network} still has endpoints on {}; detach them first", hosts.join(", "))]
    NetworkInUse { network: String, hosts: Vec<String> },

    #[error(
        "the data plane is off on this agent (--no-dataplane, no CAP_NET_ADMIN, or an IPv6 --advertise)"
    )]
    DataplaneOff,
    #[error("no network {0}; create it with `netdb network create {0} --subnet CIDR`")]
    AttachToUnknown(String),
    #[error("invalid {what} {value:?}: use 1-{MAX_ENDPOINT_NAME} of letters, digits and -_.:@")]
    BadName { what: &'static str, value: String },
    #[error("at most {MAX_ALIASES} aliases")]
    TooManyAliases,
    #[error("invalid interface name {0:?}: 1-15 of letters, digits and -_.")]
    BadIfname(String),
    #[error("--netns needs the absolute path of a network namespace (e.g. /run/netns/c1)")]
    NetnsNotAbsolute,
    #[error("network namespace {} does not exist", .0.display())]
    NoNetns(PathBuf),
    #[error("endpoint {name} already exists on network {network} on this host")]
    EndpointExists { network: String, name: String },
    /// The name, or one of the aliases, is held by another endpoint of the
    /// network somewhere in the cluster.
    #[error(
        "name {name} is taken on network {network} by endpoint {endpoint}{alias} on host {host}{failed}; pick another name or detach it there",
        alias = if *.alias { " (as an alias)" } else { "" },
        failed = if *.failed { ", which is failed (its names are kept while it may return)" } else { "" }
    )]
    NameTaken {
        name: String,
        network: String,
        endpoint: String,
        host: String,
        alias: bool,
        failed: bool,
    },
    #[error("{ifname} in {} is already endpoint {endpoint} of network {network}; use --ifname", netns.display())]
    IfnameInUse { ifname: String, netns: PathBuf, endpoint: String, network: String },
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    #[error("{ip} is outside network {network}'s subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, network: String, subnet: Subnet },
    #[error("{ip} is reserved in {subnet} (network, gateway or broadcast address)")]
    ReservedAddress { ip: Ipv4Addr, subnet: Subnet },
    #[error("{ip} is already used by {holder}")]
    AddressTaken { ip: Ipv4Addr, holder: String },
    #[error(
        "network {network}: no free address in {subnet}; detach endpoints or create a network with a larger subnet"
    )]
    SubnetFull { network: String, subnet: Subnet },
    #[error(
        "network {network}: no address block settled after {tries} tries (other hosts claiming, or the cluster not synced yet); try again"
    )]
    Unsettled { network: String, tries: usize },
    #[error("endpoint {0} is being detached already")]
    DetachInProgress(String),
    #[error("no endpoint {name} on network {network} on this host; see `netdb endpoint ls`")]
    NoEndpoint { network: String, name: String },
    #[error(transparent)]
    BadPublish(#[from] netdb_dataplane::BadPublish),
    #[error("network {0} is internal (no way out of the overlay): it cannot publish ports")]
    PublishOnInternal(String),
    #[error(
        "port {port} is published already by endpoint {endpoint} of network {network} on this host; pick another host port"
    )]
    PortPublished { port: String, endpoint: String, network: String },
    #[error("{0} is VXLAN's port on this host; pick another host port")]
    PortReserved(String),
    #[error(
        "interface name {0:?} is too long for its gateway interface gw{0} (15 bytes at most); use a shorter --ifname"
    )]
    IfnameTooLongForGateway(String),
    #[error(
        "no free address left in the gateway subnet {0}; detach endpoints or give a larger --gateway-subnet"
    )]
    GatewayFull(Subnet),
    #[error(
        "network {network}'s subnet {subnet} overlaps this host's gateway subnet {gateway}: its endpoints could not tell the two apart; create the network --internal, or give the agent another --gateway-subnet"
    )]
    GatewayOverlap { network: String, subnet: Subnet, gateway: Subnet },
    /// The host of the overlay (the agent's core loop) is going away.
    #[error("the agent is shutting down")]
    Stopped,

    /// The kernel refused or failed the wiring (the endpoint was undone).
    #[error(transparent)]
    Kernel(#[from] netdb_dataplane::Error),
    /// The node refused a write.
    #[error(transparent)]
    Node(#[from] netdb::Error),
}

/// What kind of refusal an [`Error`] is, for callers that answer in a
/// protocol of their own (the API maps each to a gRPC code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The request itself is wrong; fix the arguments.
    Invalid,
    /// Something it names does not exist.
    NotFound,
    /// Something it would create exists already.
    Exists,
    /// The agent or network is not in a state that allows it now.
    Precondition,
    /// No room left (addresses).
    Exhausted,
    /// Try again later.
    Unavailable,
    /// Another request on the same thing is under way.
    Busy,
    /// The kernel failed in a way the request cannot fix.
    Internal,
}

impl Error {
    /// What kind of refusal this is. Node errors have kinds of their own
    /// (see the API's mapping of [`netdb::Error`]), so they are not asked.
    pub(crate) fn kind(&self) -> Kind {
        use netdb_dataplane::Error as Dp;
        match self {
            Error::BadNetworkName(_)
            | Error::BadSubnet(_)
            | Error::VniOutOfRange(_)
            | Error::VniOutsideRange { .. }
            | Error::MtuOutOfRange(_)
            | Error::BadName { .. }
            | Error::TooManyAliases
            | Error::BadIfname(_)
            | Error::NetnsNotAbsolute
            | Error::BadAddress(_)
            | Error::OutsideSubnet { .. }
            | Error::ReservedAddress { .. }
            | Error::BadPublish(_)
            | Error::PublishOnInternal(_)
            | Error::PortReserved(_)
            | Error::IfnameTooLongForGateway(_) => Kind::Invalid,
            Error::GatewayOverlap { .. } => Kind::Precondition,
            Error::NoNetwork(_)
            | Error::AttachToUnknown(_)
            | Error::NoNetns(_)
            | Error::NoEndpoint { .. } => Kind::NotFound,
            Error::NetworkExists { .. }
            | Error::GossipNetwork(_)
            | Error::VniTaken { .. }
            | Error::EndpointExists { .. }
            | Error::NameTaken { .. }
            | Error::IfnameInUse { .. }
            | Error::AddressTaken { .. }
            | Error::PortPublished { .. }
            | Error::Kernel(Dp::IfnameTaken { .. }) => Kind::Exists,
            Error::NetworkInUse { .. }
            | Error::DataplaneOff
            | Error::NetworkOutsideVniRange(_)
            | Error::Kernel(Dp::Netns { .. } | Dp::NotOurs { .. }) => Kind::Precondition,
            Error::GatewayFull(_) | Error::VniRangeFull(_) => Kind::Exhausted,
            Error::SubnetFull { .. } | Error::Pool(netdb::ipam::PoolError::Exhausted { .. }) => {
                Kind::Exhausted
            }
            Error::Pool(netdb::ipam::PoolError::Size { .. }) => Kind::Invalid,
            Error::SubnetOverlaps { .. } => Kind::Exists,
            Error::Unsettled { .. } | Error::Stopped => Kind::Unavailable,
            Error::DetachInProgress(_) => Kind::Busy,
            Error::Kernel(_) | Error::Node(_) => Kind::Internal,
        }
    }
}
