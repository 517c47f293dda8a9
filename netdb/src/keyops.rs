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
    /// The member's wall clock against this node's, measured on this
    /// answer; `None` when the member does not send its clock (an older
    /// version).
    pub clock: Option<ClockSample>,
}

/// A member's clock as one query and its answer measured it, NTP-style:
/// the member stamped its answer at some moment between our send and our
/// receipt, so its offset is its stamp minus the midpoint of the two, give
/// or take half the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Member's clock minus ours, in ms (positive: the member is ahead).
    pub skew_ms: i64,
    /// Our send to our receipt, in ms; the skew is exact to ± half of it.
    pub rtt_ms: u64,
}

impl ClockSample {
    /// The sample of an answer stamped `member_ms` by the member, to a
    /// query we sent at `sent_ms` and whose answer came at `received_ms`
    /// (all Unix ms); `None` when the member gave no stamp.
    pub fn measure(sent_ms: u64, received_ms: u64, member_ms: u64) -> Option<ClockSample> {
        if member_ms == 0 {
            return None;
        }
        // Our own wall clock may step backwards between send and receipt:
        // then the round trip is unknown, taken as zero.
        let rtt_ms = received_ms.saturating_sub(sent_ms);
        let midpoint = i128::from(sent_ms) + i128::from(rtt_ms / 2);
        let skew = i128::from(member_ms) - midpoint;
        let skew_ms = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
        Some(ClockSample { skew_ms, rtt_ms })
    }
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
    /// Keys derive from a cluster secret by epoch: commands that change a
    /// keyring are refused (`list` is still answered).
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
    /// Our wall clock (Unix ms) at the last send to the waiting members:
    /// an answer's skew is measured against it. An answer to an earlier
    /// copy makes the round trip look shorter than it was, by at most one
    /// retry period.
    last_sent_ms: u64,
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
    /// (nothing changed) without a keyring, and with scheduled keys unless
    /// it is `list`, which changes nothing.
    pub(crate) fn start(
        &mut self,
        me: &Local,
        ring: Option<&mut Keyring>,
        op: KeyOp,
        to: Audience,
        now: Duration,
        cfg: &Config,
    ) -> Result<(u64, KeyEffects), Error> {
        if me.scheduled && op != KeyOp::List {
            return Err(Error::ScheduledKeys);
        }
        let ring = ring.ok_or(Error::NoKeyring)?;
        let (mut mine, keyring_changed) = apply(ring, &op);
        mine.clock = Some(ClockSample { skew_ms: 0, rtt_ms: 0 });
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
            last_sent_ms: me.wall_ms,
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
    /// deadline; then it is done and they are reported missing. `wall_ms`
    /// is our wall clock now (Unix ms).
    pub(crate) fn on_retry(
        &mut self,
        now: Duration,
        wall_ms: u64,
        seq: u64,
        cfg: &Config,
    ) -> KeyEffects {
        let Some(q) = self.queries.get_mut(&seq) else { return KeyEffects::default() };
        if q.done {
            return KeyEffects::default();
        }
        if now >= q.deadline {
            q.done = true;
            tracing::warn!(missing = ?q.waiting.keys().collect::<Vec<_>>(), "keyring command: members did not answer");
            return KeyEffects::default();
        }
        q.last_sent_ms = wall_ms;
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
        let mut ack = match self.seen.get(&q.origin) {
            Some(s) if s.incarnation == q.incarnation && s.seq == q.seq => s.ack.clone(),
            Some(s) if (s.incarnation, s.seq) > (q.incarnation, q.seq) => {
                return Err(DropReason::Replayed);
            }
            _ => {
                let op = from_wire(&q).ok_or(DropReason::Malformed)?;
                let reply = if me.scheduled && op != KeyOp::List {
                    KeyReply {
                        result: Err(Error::ScheduledKeys.to_string()),
                        fingerprints: ring.fingerprints(),
                        clock: None,
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
                    wall_ms: 0,
                };
                let seen = Seen { incarnation: q.incarnation, seq: q.seq, ack: ack.clone() };
                self.seen.insert(q.origin, seen);
                ack
            }
        };
        // Stamped now, a repeat too: the querier measures our clock against
        // the send it is answered for.
        ack.wall_ms = me.wall_ms;
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
            clock: ClockSample::measure(q.last_sent_ms, me.wall_ms, a.wall_ms),
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
        clock: None,
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
        let fx = a.on_retry(t + cfg.key_query_retry, 1_000_300, seq, &cfg);
        assert_eq!(fx.send.len(), 1, "resent to the silent member");
        assert!(fx.retry.is_some());
        let fx = a.on_retry(t + cfg.key_query_timeout, 1_005_000, seq, &cfg);
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
            wall_ms: 1_000_000,
        };
        assert_eq!(a.on_ack(&me("a"), A.parse().unwrap(), ack.clone()), Err(DropReason::Replayed));
        ack.incarnation = 2;
        assert_eq!(a.on_ack(&me("a"), B.parse().unwrap(), ack), Err(DropReason::Malformed));
    }

    #[test]
    fn refused_without_keys_and_with_scheduled_keys_unless_list() {
        let cfg = Config::default();
        let mut a = KeyCommands::default();
        let t = Duration::ZERO;
        let no_ring = a.start(&me("a"), None, KeyOp::List, Audience::default(), t, &cfg);
        assert_eq!(no_ring.err(), Some(Error::NoKeyring));
        let scheduled = Local { scheduled: true, ..me("a") };
        let mut r = ring(1);
        let install = KeyOp::Install(vec![2; KEY_LEN]);
        let refused = a.start(&scheduled, Some(&mut r), install, Audience::default(), t, &cfg);
        assert_eq!(refused.err(), Some(Error::ScheduledKeys));
        assert_eq!(r.fingerprints().len(), 1, "keyring untouched");
        let (seq, _) =
            a.start(&scheduled, Some(&mut r), KeyOp::List, Audience::default(), t, &cfg).unwrap();
        assert!(a.report(seq).unwrap().complete(), "list changes nothing: allowed, alone done");
        // A scheduled member answers a list, and refuses what would change
        // its keyring.
        let mut b = KeyCommands::default();
        let mut ring_b = ring(1);
        let from: SocketAddr = A.parse().unwrap();
        let (_, fx) =
            a.start(&me("a"), Some(&mut r), KeyOp::List, audience(&[("b", B)]), t, &cfg).unwrap();
        let sched_b = Local { scheduled: true, ..me("b") };
        let max_age = cfg.key_query_max_age;
        let fx = b.on_query(&sched_b, Some(&mut ring_b), true, from, query_of(&fx), max_age);
        let ack = ack_of(&fx.unwrap());
        assert!(ack.ok, "list answered: {}", ack.error);
        let op = KeyOp::Install(vec![3; KEY_LEN]);
        let (_, fx) = a.start(&me("a"), Some(&mut r), op, audience(&[("b", B)]), t, &cfg).unwrap();
        let fx = b.on_query(&sched_b, Some(&mut ring_b), true, from, query_of(&fx), max_age);
        let ack = ack_of(&fx.unwrap());
        assert!(!ack.ok && ack.error.contains("rotate on schedule"), "{}", ack.error);
        assert_eq!(ring_b.fingerprints().len(), 1, "keyring untouched");
    }

    /// A member whose clock reads `ahead_ms` more than ours answers a list
    /// sent at our wall time `sent`, `one_way` ms after it left; the answer
    /// takes as long back. Times are passed in, so any skew is testable.
    fn measured_skew(ahead_ms: i64, one_way: u64) -> (Result<KeyReply, DropReason>, u64) {
        let cfg = Config::default();
        let sent = 1_000_000u64;
        let mut a = KeyCommands::default();
        let mut ring_a = ring(1);
        let here = Local { wall_ms: sent, ..me("a") };
        let to = audience(&[("b", B)]);
        let (seq, fx) =
            a.start(&here, Some(&mut ring_a), KeyOp::List, to, Duration::ZERO, &cfg).unwrap();
        let b_now = (sent + one_way).checked_add_signed(ahead_ms).unwrap();
        let there = Local { wall_ms: b_now, ..me("b") };
        let mut b = KeyCommands::default();
        let mut ring_b = ring(1);
        let from: SocketAddr = A.parse().unwrap();
        let answered =
            b.on_query(&there, Some(&mut ring_b), true, from, query_of(&fx), cfg.key_query_max_age);
        let ack = match answered {
            Ok(fx) => ack_of(&fx),
            Err(e) => return (Err(e), seq),
        };
        let back = Local { wall_ms: sent + 2 * one_way, ..me("a") };
        a.on_ack(&back, B.parse().unwrap(), ack).unwrap();
        (Ok(a.report(seq).unwrap().replies["b"].clone()), seq)
    }

    #[test]
    fn clock_skew_is_the_members_stamp_minus_the_round_trips_midpoint() {
        for (ahead, one_way) in
            [(0i64, 0u64), (5_000, 40), (-5_000, 40), (45_000, 250), (-59_000, 1)]
        {
            let (reply, _) = measured_skew(ahead, one_way);
            let clock = reply.unwrap().clock.expect("the member sends its clock");
            assert_eq!(clock, ClockSample { skew_ms: ahead, rtt_ms: 2 * one_way }, "{ahead} ms");
        }
        // Beyond key_query_max_age the member refuses the query itself: it
        // goes missing rather than reporting a skew.
        let (reply, _) = measured_skew(61_000, 0);
        assert_eq!(reply.err(), Some(DropReason::Replayed));
        // This node's own answer has no skew.
        let cfg = Config::default();
        let mut a = KeyCommands::default();
        let mut r = ring(1);
        let (seq, _) = a
            .start(&me("a"), Some(&mut r), KeyOp::List, Audience::default(), Duration::ZERO, &cfg)
            .unwrap();
        let own = a.report(seq).unwrap().replies["a"].clock;
        assert_eq!(own, Some(ClockSample { skew_ms: 0, rtt_ms: 0 }));
    }

    #[test]
    fn a_resent_query_is_measured_from_the_last_send_and_cached_answers_are_restamped() {
        let cfg = Config::default();
        let mut a = KeyCommands::default();
        let mut ring_a = ring(1);
        let sent = 1_000_000u64;
        let here = Local { wall_ms: sent, ..me("a") };
        let to = audience(&[("b", B)]);
        let (seq, fx) =
            a.start(&here, Some(&mut ring_a), KeyOp::List, to, Duration::ZERO, &cfg).unwrap();
        let q = query_of(&fx);
        let mut b = KeyCommands::default();
        let mut ring_b = ring(1);
        let from: SocketAddr = A.parse().unwrap();
        let max_age = cfg.key_query_max_age;
        // b (2 s ahead) answers the first copy; that answer is lost.
        let b_first = Local { wall_ms: sent + 2_010, ..me("b") };
        b.on_query(&b_first, Some(&mut ring_b), true, from, q.clone(), max_age).unwrap();
        // The retry at +300 ms is answered from b's cache, stamped anew.
        a.on_retry(cfg.key_query_retry, sent + 300, seq, &cfg);
        let b_again = Local { wall_ms: sent + 2_320, ..me("b") };
        let fx = b.on_query(&b_again, Some(&mut ring_b), true, from, q, max_age).unwrap();
        let back = Local { wall_ms: sent + 340, ..me("a") };
        a.on_ack(&back, B.parse().unwrap(), ack_of(&fx)).unwrap();
        let clock = a.report(seq).unwrap().replies["b"].clock;
        assert_eq!(clock, Some(ClockSample { skew_ms: 2_000, rtt_ms: 40 }));
    }

    #[test]
    fn a_sample_needs_the_members_stamp_and_survives_our_clock_stepping_back() {
        assert_eq!(ClockSample::measure(1_000, 1_100, 0), None, "an older member");
        let stepped = ClockSample::measure(1_000, 900, 1_000).unwrap();
        assert_eq!(stepped, ClockSample { skew_ms: 0, rtt_ms: 0 });
        let far = ClockSample::measure(u64::MAX, u64::MAX, 1).unwrap();
        assert_eq!(far.skew_ms, i64::MIN, "saturates instead of wrapping");
    }
}
