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

use crate::config::Config;
use crate::error::Error;
use crate::keyring::{ID_BYTES, KEY_LEN, KeyId, Keyring, fingerprint, key_id};
use crate::stats::DropReason;

/// A keyring command.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyOp {
    /// Report every member's fingerprints; changes nothing.
    List,
    /// Add a key (its bytes); gossip stays sealed with the primary.
    Install(Vec<u8>),
    /// Make an installed key the primary.
    Use(KeyId),
    /// Remove a key that is not the primary.
    Remove(KeyId),
}

/// As people see it, e.g. `install 3f2a9c01`: the key itself is never
/// printed, only its fingerprint.
impl std::fmt::Display for KeyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOp::List => write!(f, "list"),
            KeyOp::Install(k) => write!(f, "install {}", fingerprint(&key_id(k))),
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
    /// Answers by member name, this node's own included.
    pub replies: BTreeMap<String, KeyReply>,
    /// Members that have not answered (yet, or at all once `done`).
    pub missing: Vec<String>,
    /// Every member answered or the deadline passed: nothing more comes.
    pub done: bool,
}

impl KeyReport {
    /// Every member answered, and none with an error.
    pub fn complete(&self) -> bool {
        self.done && self.missing.is_empty() && self.replies.values().all(|r| r.result.is_ok())
    }
}

/// This node as the protocol sees it when an input arrives.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) name: String,
    pub(crate) incarnation: u64,
    /// Wall-clock Unix ms now: commands carry their send time, and a
    /// receiver refuses one too far from its own clock.
    pub(crate) wall_ms: u64,
    /// Keys derive from a cluster secret by epoch: commands are refused.
    pub(crate) scheduled: bool,
}

/// Who a command goes to.
#[derive(Debug, Default)]
pub(crate) struct Audience {
    /// Live members and where to reach them.
    pub(crate) alive: BTreeMap<String, SocketAddr>,
    /// Failed members: not waited for, but reported missing (they would
    /// come back with the old keyring).
    pub(crate) failed: Vec<String>,
}

/// What the node must do after the protocol took an input.
#[derive(Debug, Default)]
pub(crate) struct KeyEffects {
    /// Datagrams to seal and send.
    pub(crate) send: Vec<(SocketAddr, wire::datagram::Body)>,
    /// This node's keyring changed: the shell writes it back.
    pub(crate) keyring_changed: bool,
    /// Call [`KeyCommands::on_retry`] with this command's id at that time.
    pub(crate) retry: Option<(Duration, u64)>,
}

/// The keyring-command protocol of one node: the commands it sent (with
/// their answers) and, per origin, the last command it obeyed.
#[derive(Debug, Default)]
pub(crate) struct KeyCommands {
    next_seq: u64,
    queries: BTreeMap<u64, Query>,
    seen: BTreeMap<String, Seen>,
}

#[derive(Debug)]
struct Query {
    msg: wire::KeyQuery,
    waiting: BTreeMap<String, SocketAddr>,
    unreachable: Vec<String>,
    replies: BTreeMap<String, KeyReply>,
    deadline: Duration,
    done: bool,
}

impl Query {
    fn report(&self) -> KeyReport {
        KeyReport {
            replies: self.replies.clone(),
            missing: self.waiting.keys().chain(&self.unreachable).cloned().collect(),
            done: self.done,
        }
    }

    fn sends(&self) -> Vec<(SocketAddr, wire::datagram::Body)> {
        let body = wire::datagram::Body::KeyQuery(self.msg.clone());
        self.waiting.values().map(|to| (*to, body.clone())).collect()
    }
}

/// The last command applied from one origin, and the answer given.
#[derive(Debug)]
struct Seen {
    incarnation: u64,
    seq: u64,
    ack: wire::KeyAck,
}

/// Finished commands kept for their report, oldest dropped first.
const MAX_KEPT: usize = 64;

impl KeyCommands {
    /// Applies `op` to this node's keyring and sends it to every live
    /// member; returns the command's id for [`KeyCommands::report`]. Refused
    /// (nothing changed) without a keyring or with scheduled keys.
    pub(crate) fn start(
        &mut self,
        me: &Local,
        ring: Option<&mut Keyring>,
        op: KeyOp,
        to: Audience,
        now: Duration,
        cfg: &Config,
    ) -> Result<(u64, KeyEffects), Error> {
        if me.scheduled {
            return Err(Error::ScheduledKeys);
        }
        let ring = ring.ok_or(Error::NoKeyring)?;
        let (mine, keyring_changed) = apply(ring, &op);
        self.next_seq += 1;
        let seq = self.next_seq;
        let (kind, key, key_id) = to_wire(&op);
        let msg = wire::KeyQuery {
            origin: me.name.clone(),
            incarnation: me.incarnation,
            seq,
            op: kind,
            key: key.into(),
            key_id: key_id.into(),
            sent_ms: me.wall_ms,
        };
        tracing::info!(op = ?op, members = to.alive.len(), "keyring command");
        let mut query = Query {
            msg,
            done: to.alive.is_empty(),
            waiting: to.alive,
            unreachable: to.failed,
            replies: BTreeMap::new(),
            deadline: now + cfg.key_query_timeout,
        };
        query.replies.insert(me.name.clone(), mine);
        let effects = KeyEffects {
            send: query.sends(),
            keyring_changed,
            retry: Some((now + cfg.key_query_retry, seq)),
        };
        self.queries.insert(seq, query);
        while self.queries.len() > MAX_KEPT {
            self.queries.pop_first();
        }
        Ok((seq, effects))
    }

    /// Where a command stands; `None` once forgotten.
    pub(crate) fn report(&self, seq: u64) -> Option<KeyReport> {
        self.queries.get(&seq).map(Query::report)
    }

    /// Resends a command to the members that have not answered, until its
    /// deadline; then it is done and they are reported missing.
    pub(crate) fn on_retry(&mut self, now: Duration, seq: u64, cfg: &Config) -> KeyEffects {
        let Some(q) = self.queries.get_mut(&seq) else { return KeyEffects::default() };
        if q.done {
            return KeyEffects::default();
        }
        if now >= q.deadline {
            q.done = true;
            tracing::warn!(missing = ?q.waiting.keys().collect::<Vec<_>>(), "keyring command: members did not answer");
            return KeyEffects::default();
        }
        KeyEffects {
            send: q.sends(),
            keyring_changed: false,
            retry: Some((now + cfg.key_query_retry, seq)),
        }
    }

    /// A peer's command. `origin_alive` says whether its origin is a live
    /// member in exactly the incarnation the command names: only such a
    /// member may command. A command is applied once; a repeat is answered
    /// from the cache, an older one refused. On `Err` nothing changed.
    pub(crate) fn on_query(
        &mut self,
        me: &Local,
        ring: Option<&mut Keyring>,
        origin_alive: bool,
        from: SocketAddr,
        q: wire::KeyQuery,
        max_age: Duration,
    ) -> Result<KeyEffects, DropReason> {
        if me.wall_ms.abs_diff(q.sent_ms) > max_age.as_millis() as u64 {
            return Err(DropReason::Replayed);
        }
        // A plaintext command is never obeyed: only key holders may send one.
        let ring = ring.ok_or(DropReason::Plaintext)?;
        if q.origin == me.name {
            return Err(DropReason::FromSelf);
        }
        if !origin_alive {
            return Err(DropReason::StaleIncarnation);
        }
        let mut keyring_changed = false;
        let ack = match self.seen.get(&q.origin) {
            Some(s) if s.incarnation == q.incarnation && s.seq == q.seq => s.ack.clone(),
            Some(s) if (s.incarnation, s.seq) > (q.incarnation, q.seq) => {
                return Err(DropReason::Replayed);
            }
            _ => {
                let op = from_wire(&q).ok_or(DropReason::Malformed)?;
                let reply = if me.scheduled {
                    KeyReply {
                        result: Err(Error::ScheduledKeys.to_string()),
                        fingerprints: ring.fingerprints(),
                    }
                } else {
                    let (reply, changed) = apply(ring, &op);
                    keyring_changed = changed;
                    reply
                };
                if keyring_changed {
                    tracing::info!(op = ?op, origin = %q.origin, "keyring changed by a cluster command");
                }
                let ack = wire::KeyAck {
                    origin: q.origin.clone(),
                    incarnation: q.incarnation,
                    seq: q.seq,
                    node: me.name.clone(),
                    ok: reply.result.is_ok(),
                    error: reply.result.err().unwrap_or_default(),
                    fingerprints: reply.fingerprints,
                };
                let seen = Seen { incarnation: q.incarnation, seq: q.seq, ack: ack.clone() };
                self.seen.insert(q.origin, seen);
                ack
            }
        };
        // Sealed with the primary after the command: after `use`, every
        // member holds it already (that is what `install` made sure of).
        let send = vec![(from, wire::datagram::Body::KeyAck(ack))];
        Ok(KeyEffects { send, keyring_changed, retry: None })
    }

    /// A member's answer to one of this node's commands; taken only from
    /// the address the command went to, once.
    pub(crate) fn on_ack(
        &mut self,
        me: &Local,
        from: SocketAddr,
        a: wire::KeyAck,
    ) -> Result<(), DropReason> {
        if a.origin != me.name || a.incarnation != me.incarnation {
            return Err(DropReason::Malformed);
        }
        let q = self.queries.get_mut(&a.seq).ok_or(DropReason::Replayed)?;
        if q.waiting.get(&a.node) != Some(&from) {
            return Err(DropReason::Replayed);
        }
        q.waiting.remove(&a.node);
        let reply = KeyReply {
            result: if a.ok { Ok(()) } else { Err(a.error) },
            fingerprints: a.fingerprints,
        };
        q.replies.insert(a.node, reply);
        q.done = q.waiting.is_empty();
        Ok(())
    }
}

fn to_wire(op: &KeyOp) -> (i32, Vec<u8>, Vec<u8>) {
    match op {
        KeyOp::List => (wire::KeyOp::KeyList as i32, Vec::new(), Vec::new()),
        KeyOp::Install(k) => (wire::KeyOp::KeyInstall as i32, k.clone(), Vec::new()),
        KeyOp::Use(id) => (wire::KeyOp::KeyUse as i32, Vec::new(), id.to_vec()),
        KeyOp::Remove(id) => (wire::KeyOp::KeyRemove as i32, Vec::new(), id.to_vec()),
    }
}

/// The command a query carries; `None` if malformed.
fn from_wire(q: &wire::KeyQuery) -> Option<KeyOp> {
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
fn apply(ring: &mut Keyring, op: &KeyOp) -> (KeyReply, bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:7946";
    const B: &str = "127.0.0.2:7946";

    fn me(name: &str) -> Local {
        Local { name: name.into(), incarnation: 1, wall_ms: 1_000_000, scheduled: false }
    }

    fn ring(seed: u8) -> Keyring {
        Keyring::new(&[vec![seed; KEY_LEN]]).unwrap()
    }

    fn audience(peers: &[(&str, &str)]) -> Audience {
        let alive = peers.iter().map(|(n, a)| (n.to_string(), a.parse().unwrap())).collect();
        Audience { alive, failed: vec!["down".into()] }
    }

    fn query_of(effects: &KeyEffects) -> wire::KeyQuery {
        match &effects.send[0].1 {
            wire::datagram::Body::KeyQuery(q) => q.clone(),
            other => panic!("not a query: {other:?}"),
        }
    }

    fn ack_of(effects: &KeyEffects) -> wire::KeyAck {
        match &effects.send[0].1 {
            wire::datagram::Body::KeyAck(a) => a.clone(),
            other => panic!("not an ack: {other:?}"),
        }
    }

    #[test]
    fn a_command_is_applied_once_answered_and_reported() {
        let cfg = Config::default();
        let t = Duration::from_secs(1);
        let (mut a, mut b) = (KeyCommands::default(), KeyCommands::default());
        let (mut ring_a, mut ring_b) = (ring(1), ring(1));
        let install = KeyOp::Install(vec![2; KEY_LEN]);
        let to = audience(&[("b", B)]);
        let (seq, fx) = a.start(&me("a"), Some(&mut ring_a), install, to, t, &cfg).unwrap();
        assert!(fx.keyring_changed);
        assert_eq!(fx.send.len(), 1);
        assert_eq!(fx.retry, Some((t + cfg.key_query_retry, seq)));
        let q = query_of(&fx);
        let max_age = cfg.key_query_max_age;
        let from_a: SocketAddr = A.parse().unwrap();
        let fx = b.on_query(&me("b"), Some(&mut ring_b), true, from_a, q.clone(), max_age).unwrap();
        assert!(fx.keyring_changed);
        assert_eq!(ring_b.fingerprints().len(), 2);
        let ack = ack_of(&fx);
        // A repeat is answered from the cache and changes nothing.
        let again = b.on_query(&me("b"), Some(&mut ring_b), true, from_a, q, max_age).unwrap();
        assert!(!again.keyring_changed);
        assert_eq!(ack_of(&again), ack);
        assert!(!a.report(seq).unwrap().done);
        a.on_ack(&me("a"), B.parse().unwrap(), ack.clone()).unwrap();
        let report = a.report(seq).unwrap();
        assert!(report.done);
        assert_eq!(report.replies.len(), 2);
        assert_eq!(report.missing, vec!["down".to_string()], "failed members are missing");
        assert!(!report.complete());
        // The same answer again is not news.
        assert_eq!(a.on_ack(&me("a"), B.parse().unwrap(), ack), Err(DropReason::Replayed));
    }

    #[test]
    fn stale_foreign_and_unauthorised_commands_change_nothing() {
        let cfg = Config::default();
        let t = Duration::from_secs(1);
        let mut a = KeyCommands::default();
        let mut ring_a = ring(1);
        let to = audience(&[("b", B)]);
        let op = KeyOp::Install(vec![2; KEY_LEN]);
        let (_, fx) = a.start(&me("a"), Some(&mut ring_a), op, to, t, &cfg).unwrap();
        let q = query_of(&fx);
        let from: SocketAddr = A.parse().unwrap();
        let max_age = cfg.key_query_max_age;
        let check = |local: Local, alive: bool, q: wire::KeyQuery, with_ring: bool| {
            let mut b = KeyCommands::default();
            let mut ring_b = ring(1);
            let r = b.on_query(&local, with_ring.then_some(&mut ring_b), alive, from, q, max_age);
            assert_eq!(ring_b.fingerprints().len(), 1, "keyring untouched");
            r.err()
        };
        let late = Local { wall_ms: q.sent_ms + max_age.as_millis() as u64 + 1, ..me("b") };
        assert_eq!(check(late, true, q.clone(), true), Some(DropReason::Replayed));
        assert_eq!(check(me("b"), true, q.clone(), false), Some(DropReason::Plaintext));
        assert_eq!(check(me("a"), true, q.clone(), true), Some(DropReason::FromSelf));
        assert_eq!(check(me("b"), false, q.clone(), true), Some(DropReason::StaleIncarnation));
        let bad = wire::KeyQuery { key: vec![0; 3].into(), ..q.clone() };
        assert_eq!(check(me("b"), true, bad, true), Some(DropReason::Malformed));
        let scheduled = Local { scheduled: true, ..me("b") };
        assert_eq!(check(scheduled, true, q, true), None, "answered with a refusal");
    }

    #[test]
    fn an_older_command_than_one_applied_is_refused() {
        let cfg = Config::default();
        let t = Duration::from_secs(1);
        let mut a = KeyCommands::default();
        let mut ring_a = ring(1);
        let mut queries = Vec::new();
        for k in [2u8, 3] {
            let to = audience(&[("b", B)]);
            let op = KeyOp::Install(vec![k; KEY_LEN]);
            let (_, fx) = a.start(&me("a"), Some(&mut ring_a), op, to, t, &cfg).unwrap();
            queries.push(query_of(&fx));
        }
        let mut b = KeyCommands::default();
        let mut ring_b = ring(1);
        let from: SocketAddr = A.parse().unwrap();
        let max_age = cfg.key_query_max_age;
        b.on_query(&me("b"), Some(&mut ring_b), true, from, queries[1].clone(), max_age).unwrap();
        let old = b.on_query(&me("b"), Some(&mut ring_b), true, from, queries[0].clone(), max_age);
        assert_eq!(old.err(), Some(DropReason::Replayed));
        assert_eq!(ring_b.fingerprints().len(), 2, "only the newer key installed");
    }

    #[test]
    fn silent_members_get_retries_until_the_deadline() {
        let cfg = Config::default();
        let t = Duration::from_secs(1);
        let mut a = KeyCommands::default();
        let mut ring_a = ring(1);
        let to = audience(&[("b", B)]);
        let (seq, _) = a.start(&me("a"), Some(&mut ring_a), KeyOp::List, to, t, &cfg).unwrap();
        let fx = a.on_retry(t + cfg.key_query_retry, seq, &cfg);
        assert_eq!(fx.send.len(), 1, "resent to the silent member");
        assert!(fx.retry.is_some());
        let fx = a.on_retry(t + cfg.key_query_timeout, seq, &cfg);
        assert!(fx.send.is_empty() && fx.retry.is_none());
        let report = a.report(seq).unwrap();
        assert!(report.done);
        assert_eq!(report.missing, vec!["b".to_string(), "down".to_string()]);
        // An answer from an address the command did not go to is refused.
        let mut ack = wire::KeyAck {
            origin: "a".into(),
            incarnation: 1,
            seq,
            node: "b".into(),
            ok: true,
            error: String::new(),
            fingerprints: Vec::new(),
        };
        assert_eq!(a.on_ack(&me("a"), A.parse().unwrap(), ack.clone()), Err(DropReason::Replayed));
        ack.incarnation = 2;
        assert_eq!(a.on_ack(&me("a"), B.parse().unwrap(), ack), Err(DropReason::Malformed));
    }

    #[test]
    fn refused_without_keys_or_with_scheduled_keys() {
        let cfg = Config::default();
        let mut a = KeyCommands::default();
        let t = Duration::ZERO;
        let no_ring = a.start(&me("a"), None, KeyOp::List, Audience::default(), t, &cfg);
        assert_eq!(no_ring.err(), Some(Error::NoKeyring));
        let scheduled = Local { scheduled: true, ..me("a") };
        let mut r = ring(1);
        let refused = a.start(&scheduled, Some(&mut r), KeyOp::List, Audience::default(), t, &cfg);
        assert_eq!(refused.err(), Some(Error::ScheduledKeys));
        let (seq, _) =
            a.start(&me("a"), Some(&mut r), KeyOp::List, Audience::default(), t, &cfg).unwrap();
        assert!(a.report(seq).unwrap().complete(), "alone: done at once");
    }
}
