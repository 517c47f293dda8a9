//! netdb's core: a sans-IO, deterministic state machine for Docker-style
//! overlay network control: SWIM membership (foca), per-network versioned
//! gossip tables, push/pull anti-entropy, and a simulator to prove it.
//!
//! The agent (`netdb agent`) wraps a [`Node`] with sockets and timers; the
//! simulator ([`sim`]) wraps hundreds of them with a virtual network.

pub mod broadcast;
pub mod clock;
pub mod codec;
pub mod config;
pub mod digest;
pub mod hash;
pub mod ipam;
pub mod keyops;
pub mod keyring;
pub mod membership;
pub mod netdefs;
pub mod node;
pub mod sim;
pub mod stats;
pub mod table;

pub use config::Config;
pub use membership::{MemberInfo, MemberState};
pub use node::{EntryEventKind, Error, Event, Node, Transmit};
pub use stats::{DropReason, Stats};
pub use table::Entry;
