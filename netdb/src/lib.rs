//! netdb's core: a sans-IO, deterministic state machine for Docker-style
//! overlay network control: SWIM membership (foca), per-network versioned
//! gossip tables, push/pull anti-entropy, cluster-wide keyring commands,
//! and the shared objects (network definitions, address claims) that the
//! agent's overlay resolves without a coordinator.
//!
//! The agent (`netdb agent`) wraps a [`Node`] with sockets and timers; the
//! simulator (`sim`, behind the `sim` feature) wraps hundreds of them with
//! a virtual network. Nothing in this crate does I/O or reads a clock.

mod broadcast;
mod clock;
mod config;
mod digest;
mod error;
mod event;
mod hash;
mod keyops;
mod membership;
mod node;
mod slots;
mod stats;
mod table;
mod wireref;

pub mod codec;
pub mod ipam;
pub mod keyring;
pub mod names;
pub mod netdefs;
#[cfg(feature = "sim")]
pub mod sim;

/// The netdb release this core belongs to; every node gossips it in its
/// node record, so `netdb members` shows what each member runs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use config::Config;
pub use error::Error;
pub use event::{EntryEventKind, Event, Transmit};
pub use hash::Hasher;
pub use keyops::{ClockSample, KeyOp, KeyReply, KeyReport};
pub use membership::{MemberInfo, MemberState};
pub use names::{Scope, SharedTable};
pub use node::{Node, ScopeStats, SyncCounts};
pub use stats::{
    DropReason, Histogram, MemberChange, SYNC_SECONDS_BOUNDS, Stats, Traffic, TreeCounts,
};
pub use table::Entry;
