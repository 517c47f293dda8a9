//! The way out: sealing with the keyring (when set), the outbox, and the
//! traffic counters of what leaves.

use std::borrow::Cow;
use std::net::SocketAddr;

use netdb_wire as wire;
use rand::RngExt;

use super::Node;
use crate::codec;
use crate::event::Transmit;
use crate::keyring::SEAL_OVERHEAD;

/// Room for a message's contents in a datagram of `budget` bytes, after
/// `header` bytes of its own, the datagram's framing and the seal.
pub(super) fn datagram_room(budget: usize, header: usize) -> usize {
    budget.saturating_sub(header + codec::datagram_overhead(budget) + SEAL_OVERHEAD)
}

impl Node {
    /// Seals an outgoing message when keys are set.
    pub(super) fn seal(&mut self, plain: Vec<u8>) -> Vec<u8> {
        match &self.keyring {
            Some(k) => {
                let mut nonce = [0u8; 12];
                self.rng.fill(&mut nonce);
                k.seal(nonce, &plain)
            }
            None => plain,
        }
    }

    /// Opens an incoming message when keys are set; counts the drop and
    /// returns None if it is plaintext, under an unknown key, or forged.
    pub(super) fn unseal<'a>(&mut self, bytes: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        match &self.keyring {
            Some(k) => match k.open(bytes) {
                Ok(plain) => Some(Cow::Owned(plain)),
                Err(r) => {
                    self.stats.drop(r);
                    None
                }
            },
            None => Some(Cow::Borrowed(bytes)),
        }
    }

    /// A membership or keyring datagram (counted with SWIM's traffic).
    pub(super) fn send_control(&mut self, to: SocketAddr, body: wire::datagram::Body) {
        let payload = self.seal(codec::encode_datagram(body));
        self.stats.swim_out.add(payload.len());
        self.outbox.push_back(Transmit::Datagram { to, payload: payload.into() });
    }

    pub(super) fn send_sync(
        &mut self,
        to: SocketAddr,
        sync_id: u64,
        opens: bool,
        closes: bool,
        plain: Vec<u8>,
    ) {
        let payload = self.seal(plain);
        self.stats.sync_out.add(payload.len());
        self.outbox.push_back(Transmit::Sync { to, sync_id, opens, closes, payload });
    }
}
