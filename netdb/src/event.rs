//! What a node hands its shell: packets to send and events to act on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::membership::MemberState;
use crate::names::SharedTable;

/// A packet or frame for the shell to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A UDP datagram.
    Datagram {
        /// Where to send it.
        to: SocketAddr,
        /// The datagram, sealed when keys are set. Shared: a gossip packet
        /// goes to several peers, and copies of a tick's packets were most
        /// of an agent's heap during a burst.
        payload: Bytes,
    },
    /// A push/pull frame. `opens` frames start an exchange (the shell opens
    /// a stream to `to`); the others go on the stream that carried the same
    /// `sync_id` from `to`. Frames alternate: each side sends one, then
    /// waits for the other's, until the opener's `closes` frame.
    Sync {
        /// The peer of the exchange.
        to: SocketAddr,
        /// The exchange, as chosen by the node that opened it.
        sync_id: u64,
        /// This frame starts the exchange.
        opens: bool,
        /// The opener's last frame: the shell ends the stream after it.
        closes: bool,
        /// The frame, sealed when keys are set.
        payload: Vec<u8>,
    },
}

/// How a visible entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryEventKind {
    /// It appeared (written, or its owner came back).
    Create,
    /// Its value changed.
    Update,
    /// It went away (deleted, or its owner failed, left or was replaced).
    Delete,
}

impl EntryEventKind {
    /// The name watchers see: `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryEventKind::Create => "create",
            EntryEventKind::Update => "update",
            EntryEventKind::Delete => "delete",
        }
    }
}

/// Something the shell may act on; drained with `Node::poll_event`.
///
/// An entry event's names (network, table, owner) are the node's own,
/// shared: an event costs one allocation, for its key, where a copy of
/// each name cost four, most of storing an entry's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A visible entry of a joined network appeared, changed or went away
    /// (deleted, or its owner failed, left or was replaced).
    Entry {
        /// The network.
        network: Arc<str>,
        /// The table.
        table: Arc<str>,
        /// The entry's key.
        key: String,
        /// What happened.
        kind: EntryEventKind,
        /// The node that owns the entry.
        owner: Arc<str>,
        /// The value (the last one, for a delete).
        value: Bytes,
    },
    /// A copy of a shared cluster object appeared, changed or went away.
    Shared {
        /// Which objects.
        table: SharedTable,
        /// The copy's key, `ID/NODE`.
        key: String,
        /// What happened.
        kind: EntryEventKind,
        /// The node whose copy it is.
        owner: Arc<str>,
        /// The value (the last one, for a delete).
        value: Bytes,
    },
    /// A member's state changed.
    Member {
        /// The member's name.
        name: String,
        /// Where it is reachable, if known.
        addr: Option<SocketAddr>,
        /// Its new state.
        state: MemberState,
    },
    /// This node's keyring changed (a keyring command, local or from a
    /// peer): the shell should write it back to its file.
    KeyringChanged,
}

impl Event {
    /// The event for an entry of a network (`network`) or a shared table
    /// (`None`: the cluster scope); `None` for the cluster scope's own
    /// bookkeeping (node records, attachments).
    pub(crate) fn entry(
        network: Option<Arc<str>>,
        table: Arc<str>,
        key: &str,
        owner: Arc<str>,
        value: Bytes,
        kind: EntryEventKind,
    ) -> Option<Event> {
        Some(match network {
            Some(network) => Event::Entry { network, table, key: key.into(), kind, owner, value },
            None => Event::Shared {
                table: SharedTable::from_name(&table)?,
                key: key.into(),
                kind,
                owner,
                value,
            },
        })
    }
}
