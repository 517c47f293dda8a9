//! Keyring commands: the protocol lives in [`KeyCommands`]; the node feeds
//! it what it knows (who is alive, the wall clock, the keyring) and carries
//! out what it asks (datagrams, retries, the keyring-changed event).

use std::net::SocketAddr;
use std::time::Duration;

use netdb_wire as wire;

use super::Node;
use super::timers::Wake;
use crate::error::Error;
use crate::event::Event;
use crate::keyops::{Audience, KeyEffects, KeyOp, KeyReport, Local};
use crate::membership::Status;

impl Node {
    /// Sends a keyring command to every live member (and applies it here);
    /// returns its id for [`Node::key_report`].
    pub fn key_command(&mut self, now: Duration, op: KeyOp) -> Result<u64, Error> {
        if self.left {
            return Err(Error::Left);
        }
        let mut to = Audience::default();
        for (name, o) in self.owners.iter().filter(|(n, _)| ***n != *self.name) {
            match (o.status, o.addr) {
                (Status::Alive, Some(addr)) => {
                    to.alive.insert(name.to_string(), addr);
                }
                (Status::Failed { .. }, _) => to.failed.push(name.to_string()),
                _ => {}
            }
        }
        let me = self.local(now);
        let (seq, effects) =
            self.keyops.start(&me, self.keyring.as_mut(), op, to, now, &self.cfg)?;
        self.key_effects(effects);
        Ok(seq)
    }

    /// Where a keyring command stands; `None` once forgotten.
    pub fn key_report(&self, seq: u64) -> Option<KeyReport> {
        self.keyops.report(seq)
    }

    pub(super) fn key_retry(&mut self, now: Duration, seq: u64) {
        let wall_ms = self.local(now).wall_ms;
        let effects = self.keyops.on_retry(now, wall_ms, seq, &self.cfg);
        self.key_effects(effects);
    }

    pub(super) fn handle_key_query(&mut self, now: Duration, from: SocketAddr, q: wire::KeyQuery) {
        let origin_alive = self
            .owners
            .get(q.origin.as_str())
            .is_some_and(|o| o.incarnation == q.incarnation && o.status == Status::Alive);
        let me = self.local(now);
        let max_age = self.cfg.key_query_max_age;
        match self.keyops.on_query(&me, self.keyring.as_mut(), origin_alive, from, q, max_age) {
            Ok(effects) => self.key_effects(effects),
            Err(r) => self.stats.drop(r),
        }
    }

    pub(super) fn handle_key_ack(&mut self, now: Duration, from: SocketAddr, a: wire::KeyAck) {
        let me = self.local(now);
        if let Err(r) = self.keyops.on_ack(&me, from, a) {
            self.stats.drop(r);
        }
    }

    /// This node as the protocol needs it (a copy, so the protocol's state
    /// and the keyring can be borrowed beside it; commands are rare).
    fn local(&self, now: Duration) -> Local {
        Local {
            name: self.name.clone(),
            incarnation: self.incarnation,
            wall_ms: self.wall_origin_ms + now.as_millis() as u64,
            scheduled: self.scheduled_keys,
        }
    }

    fn key_effects(&mut self, effects: KeyEffects) {
        if effects.keyring_changed {
            self.events.push_back(Event::KeyringChanged);
        }
        for (to, body) in effects.send {
            self.send_control(to, body);
        }
        if let Some((at, seq)) = effects.retry {
            self.schedule(at, Wake::KeyRetry(seq));
        }
    }
}
