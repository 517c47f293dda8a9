//! Keyring commands for the whole cluster (like `serf keys`): a node sends
//! the command to every live member, each applies it to its own keyring and
//! answers with its fingerprints; the sender resends to the silent ones
//! until a deadline and then reports who answered what.
//!
//! Commands travel sealed like all traffic, so only key holders can send
//! them. Each is identified by (origin, incarnation, seq): a receiver
//! applies a command once, answers a repeat from its cache, and refuses an
//! older one, so a captured command replayed later changes nothing; and once
//! a rotation removed the key that sealed it, it no longer even opens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use netdb_wire as wire;

use crate::keyring::{ID_BYTES, KEY_LEN, KeyId, Keyring, fingerprint};

/// A keyring command.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyOp {
    List,
    Install(Vec<u8>),
    Use(KeyId),
    Remove(KeyId),
}

/// As people see it, e.g. `install 3f2a9c01`: the key itself is never
/// printed, only its fingerprint.
impl std::fmt::Display for KeyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOp::List => write!(f, "list"),
            KeyOp::Install(k) => write!(f, "install {}", fingerprint(&crate::keyring::key_id(k))),
            KeyOp::Use(id) => write!(f, "use {}", fingerprint(id)),
            KeyOp::Remove(id) => write!(f, "remove {}", fingerprint(id)),
        }
    }
}

impl std::fmt::Debug for KeyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// One member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReply {
    /// `Err` carries the member's error message.
    pub result: Result<(), String>,
    /// The member's fingerprints after the command, primary first.
    pub fingerprints: Vec<String>,
}

/// Where a command stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    pub replies: BTreeMap<String, KeyReply>,
    /// Members that have not answered (yet, or at all once `done`).
    pub missing: Vec<String>,
    pub done: bool,
}

impl KeyReport {
    /// Every member answered, and none with an error.
    pub fn complete(&self) -> bool {
        self.done && self.missing.is_empty() && self.replies.values().all(|r| r.result.is_ok())
    }
}

pub(crate) struct Query {
    pub msg: wire::KeyQuery,
    pub waiting: BTreeMap<String, SocketAddr>,
    /// Members failed when the command went out: not waited for, but
    /// reported missing (they would come back with the old keyring).
    pub unreachable: Vec<String>,
    pub replies: BTreeMap<String, KeyReply>,
    pub deadline: Duration,
    pub done: bool,
}

impl Query {
    pub fn report(&self) -> KeyReport {
        KeyReport {
            replies: self.replies.clone(),
            missing: self.waiting.keys().chain(&self.unreachable).cloned().collect(),
            done: self.done,
        }
    }
}

/// The last command applied from one origin, and the answer given.
pub(crate) struct Seen {
    pub incarnation: u64,
    pub seq: u64,
    pub ack: wire::KeyAck,
}

#[derive(Default)]
pub(crate) struct KeyOps {
    pub next_seq: u64,
    pub queries: BTreeMap<u64, Query>,
    pub seen: BTreeMap<String, Seen>,
}

/// Finished commands kept for their report, oldest dropped first.
pub(crate) const MAX_KEPT: usize = 64;

pub(crate) fn to_wire(op: &KeyOp) -> (i32, Vec<u8>, Vec<u8>) {
    match op {
        KeyOp::List => (wire::KeyOp::KeyList as i32, Vec::new(), Vec::new()),
        KeyOp::Install(k) => (wire::KeyOp::KeyInstall as i32, k.clone(), Vec::new()),
        KeyOp::Use(id) => (wire::KeyOp::KeyUse as i32, Vec::new(), id.to_vec()),
        KeyOp::Remove(id) => (wire::KeyOp::KeyRemove as i32, Vec::new(), id.to_vec()),
    }
}

/// The command a query carries; `None` if malformed.
pub(crate) fn from_wire(q: &wire::KeyQuery) -> Option<KeyOp> {
    let id = || -> Option<KeyId> { q.key_id.as_ref().try_into().ok() };
    match wire::KeyOp::try_from(q.op).ok()? {
        wire::KeyOp::KeyList => Some(KeyOp::List),
        wire::KeyOp::KeyInstall => (q.key.len() == KEY_LEN).then(|| KeyOp::Install(q.key.to_vec())),
        wire::KeyOp::KeyUse => (q.key_id.len() == ID_BYTES).then(id).flatten().map(KeyOp::Use),
        wire::KeyOp::KeyRemove => {
            (q.key_id.len() == ID_BYTES).then(id).flatten().map(KeyOp::Remove)
        }
    }
}

/// Applies a command to a keyring; the bool says whether it changed.
pub(crate) fn apply(ring: &mut Keyring, op: &KeyOp) -> (KeyReply, bool) {
    let r = match op {
        KeyOp::List => Ok(false),
        KeyOp::Install(k) => ring.install(k),
        KeyOp::Use(id) => ring.use_key(id),
        KeyOp::Remove(id) => ring.remove(id),
    };
    let changed = *r.as_ref().unwrap_or(&false);
    let reply = KeyReply {
        result: r.map(|_| ()).map_err(|e| e.to_string()),
        fingerprints: ring.fingerprints(),
    };
    (reply, changed)
}

pub(crate) fn reply_from_ack(a: &wire::KeyAck) -> KeyReply {
    KeyReply {
        result: if a.ok { Ok(()) } else { Err(a.error.clone()) },
        fingerprints: a.fingerprints.clone(),
    }
}
