//! Why a command to the core was refused.

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A node, network or table name is empty, too long or has forbidden
    /// characters.
    #[error("invalid {what} {value:?}: use 1-{max} of letters, digits and -_.:@")]
    BadName {
        /// What was named: "network", "table", ...
        what: &'static str,
        /// The name given.
        value: String,
        /// The longest name allowed.
        max: usize,
    },
    /// A key is empty, too long or has control characters.
    #[error("invalid key: use 1-{max} bytes without control characters")]
    BadKey {
        /// The longest key allowed, in bytes.
        max: usize,
    },
    /// A value is larger than `max_value_len`.
    #[error("value of {len} bytes is larger than the limit of {max}")]
    ValueTooLarge {
        /// The value's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The network is not joined on this node.
    #[error("network {0:?} is not joined on this node; join it first")]
    NotJoined(String),
    /// This node joined `max_networks` networks already.
    #[error("this node already joined the limit of {0} networks")]
    TooManyNetworks(usize),
    /// The entry belongs to another node.
    #[error("entry {key:?} belongs to node {owner:?}; only its owner may change it")]
    NotOwner {
        /// The entry's key.
        key: String,
        /// The node that owns it.
        owner: String,
    },
    /// No visible entry of that key.
    #[error("no entry {key:?} in table {table:?}")]
    NotFound {
        /// The table asked.
        table: String,
        /// The key asked.
        key: String,
    },
    /// This node left the cluster; it takes no more commands.
    #[error("this node has left the cluster")]
    Left,
    /// A keyring command on a node without keys.
    #[error("gossip is not encrypted on this node; start every agent with keys (--key-file)")]
    NoKeyring,
    /// A keyring command that would change the keyring while keys rotate on
    /// schedule.
    #[error(
        "keys are derived from the cluster secret and rotate on schedule here; keyring commands other than list do not apply"
    )]
    ScheduledKeys,
}
