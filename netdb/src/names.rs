//! Names, keys and scopes: what nodes, networks, tables and keys may be
//! called, how the cluster scope's keys are built, and which tables that
//! scope holds. The codec, the node and the shared objects (`netdefs`,
//! `ipam`) all take these rules from here, so each is written once.

use std::fmt;

/// Names of nodes, networks and tables: ASCII letters, digits and `-_.:@`.
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// Keys: any UTF-8 without control characters.
pub fn valid_key(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// Splits the key of a node's copy of a shared cluster object, `ID/NODE`,
/// into (ID, NODE).
pub fn owned_key(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once('/')
}

/// The key of a node's copy of a shared cluster object.
pub(crate) fn shared_key(id: &str, node: &str) -> String {
    format!("{id}/{node}")
}

/// The key of a node's attachment to a network in the cluster scope.
pub(crate) fn attachment_key(network: &str, node: &str) -> String {
    format!("{network}/{node}")
}

/// Splits an attachment key into (network, node).
pub(crate) fn parse_attachment_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// Where entries live: the cluster scope, which every member receives, or
/// one user network, which only the nodes that joined it receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope<'a> {
    /// Node records, network attachments and shared cluster objects.
    Cluster,
    /// A user network's tables.
    Network(&'a str),
}

impl<'a> Scope<'a> {
    /// The scope a gossip or push/pull message names. On the wire the
    /// cluster scope is the empty name, which no user network can take.
    pub(crate) fn from_wire(network: &'a str) -> Scope<'a> {
        if network.is_empty() { Scope::Cluster } else { Scope::Network(network) }
    }

    /// The name a message carries for this scope.
    pub(crate) fn wire_name(self) -> &'a str {
        match self {
            Scope::Cluster => "",
            Scope::Network(n) => n,
        }
    }

    /// An owned copy, for timers and exchanges that outlive the input.
    pub(crate) fn to_id(self) -> ScopeId {
        match self {
            Scope::Cluster => ScopeId::Cluster,
            Scope::Network(n) => ScopeId::Network(n.into()),
        }
    }
}

/// As people read it: the network's name, or `(cluster)`.
impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("(cluster)"),
            Scope::Network(n) => f.write_str(n),
        }
    }
}

/// An owned [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ScopeId {
    Cluster,
    Network(String),
}

impl ScopeId {
    pub(crate) fn as_scope(&self) -> Scope<'_> {
        match self {
            ScopeId::Cluster => Scope::Cluster,
            ScopeId::Network(n) => Scope::Network(n),
        }
    }
}

/// The cluster scope's table of node records (key: the node's name).
pub(crate) const NODES_TABLE: &str = "nodes";
/// The cluster scope's table of network attachments (key: `NET/NODE`).
pub(crate) const NETWORKS_TABLE: &str = "networks";

/// A cluster table of shared objects: every node keeps its own copy of each
/// object, keyed `ID/NODE`, and readers resolve the copies (see `netdefs`
/// and `ipam`). These are the only cluster tables besides the node records
/// and attachments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharedTable {
    /// Overlay network definitions (`netdefs`).
    NetDefs,
    /// Address block claims (`ipam`).
    Ipam,
}

impl SharedTable {
    /// Every shared table.
    pub const ALL: [SharedTable; 2] = [SharedTable::NetDefs, SharedTable::Ipam];

    /// The table's name in the cluster scope and on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            SharedTable::NetDefs => "netdefs",
            SharedTable::Ipam => "ipam",
        }
    }

    /// The shared table of that name, if it is one.
    pub fn from_name(name: &str) -> Option<SharedTable> {
        SharedTable::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A table of the cluster scope, by the rule its keys follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterTable {
    /// Key: the owner's name.
    Nodes,
    /// Key: `NET/OWNER`.
    Networks,
    /// Key: `ID/OWNER`.
    Shared(SharedTable),
}

impl ClusterTable {
    /// `None` for a name no cluster table has.
    pub(crate) fn from_name(name: &str) -> Option<ClusterTable> {
        match name {
            NODES_TABLE => Some(ClusterTable::Nodes),
            NETWORKS_TABLE => Some(ClusterTable::Networks),
            _ => SharedTable::from_name(name).map(ClusterTable::Shared),
        }
    }

    /// The node a key of this table belongs to; `None` if the key does not
    /// have the table's shape or names an invalid network.
    pub(crate) fn key_owner(self, key: &str, max_name: usize) -> Option<&str> {
        match self {
            ClusterTable::Nodes => Some(key),
            ClusterTable::Networks => {
                let (net, node) = parse_attachment_key(key)?;
                valid_name(net, max_name).then_some(node)
            }
            ClusterTable::Shared(_) => owned_key(key).map(|(_, node)| node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(valid_name("net-1_a.b:c@d", 64));
        assert!(!valid_name("", 64));
        assert!(!valid_name("a/b", 64));
        assert!(!valid_name("é", 64));
        assert!(!valid_name(&"a".repeat(65), 64));
        assert!(valid_key("any key/with é", 64));
        assert!(!valid_key("bell\u{7}", 64));
        assert_eq!(owned_key("10.0.0.0/24/n1"), Some(("10.0.0.0/24", "n1")));
        assert_eq!(parse_attachment_key(&attachment_key("net", "n1")), Some(("net", "n1")));
    }

    #[test]
    fn the_cluster_scope_is_the_empty_name_on_the_wire_only() {
        assert_eq!(Scope::from_wire(""), Scope::Cluster);
        assert_eq!(Scope::from_wire("net"), Scope::Network("net"));
        assert_eq!(Scope::Cluster.wire_name(), "");
        assert_eq!(Scope::Cluster.to_string(), "(cluster)");
        assert_eq!(Scope::Network("net").to_id().as_scope(), Scope::Network("net"));
        assert!(Scope::Cluster < Scope::Network(""));
    }

    #[test]
    fn cluster_tables_and_their_key_owners() {
        assert_eq!(ClusterTable::from_name("nodes"), Some(ClusterTable::Nodes));
        assert_eq!(ClusterTable::from_name("ipam"), Some(ClusterTable::Shared(SharedTable::Ipam)));
        assert_eq!(ClusterTable::from_name("other"), None);
        assert_eq!(ClusterTable::Networks.key_owner("net/n1", 64), Some("n1"));
        assert_eq!(ClusterTable::Networks.key_owner("bad name/n1", 64), None);
        assert_eq!(ClusterTable::Networks.key_owner("nokey", 64), None);
        let shared = ClusterTable::Shared(SharedTable::NetDefs);
        assert_eq!(shared.key_owner("web/n2", 64), Some("n2"));
        for t in SharedTable::ALL {
            assert_eq!(SharedTable::from_name(t.name()), Some(t));
        }
    }
}
