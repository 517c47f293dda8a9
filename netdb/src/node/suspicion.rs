//! What this node makes of SWIM suspicions around foca: the ones it raised
//! itself (counted; refuted ones mean its own probes misjudge), the downs
//! it did not raise (held while the member is asked directly), and Lifeguard's
//! local health score, which stretches the suspicions it raises while the
//! node itself is slow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use foca::Timer;

use crate::membership::Identity;

#[derive(Debug, Default)]
pub(super) struct Suspicions {
    /// Members this node suspects because its own probe failed.
    pub(super) own: BTreeSet<Identity>,
    /// Members declared down by others, by name: their entries stay
    /// visible while they are asked whether they live.
    pub(super) held: BTreeMap<String, Held>,
    /// Lifeguard's local health multiplier: 0 when healthy.
    health: u32,
}

/// A member declared down by others, not yet hidden here.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) id: Identity,
    /// It sent this node something since the hold began: it lives, and
    /// renews its identity once it hears it was declared down.
    pub(super) answered: bool,
    /// The hold was extended to wait for the renewal.
    pub(super) extended: bool,
}

impl Suspicions {
    /// A datagram came from `from`: a held member there answered.
    pub(super) fn heard_from(&mut self, from: SocketAddr) {
        for h in self.held.values_mut() {
            if h.id.addr == from {
                h.answered = true;
            }
        }
    }

    /// This node showed a sign of being slow (a late timer, a refuted
    /// suspicion, being declared down itself).
    pub(super) fn worse(&mut self, max: u32) {
        self.health = (self.health + 1).min(max);
    }

    /// A probe was judged on time and accused no one.
    pub(super) fn better(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    pub(super) fn health(&self) -> u32 {
        self.health
    }

    /// The delay foca asked for; a suspicion's timeout is stretched by
    /// local health, so a member this node accuses while it is itself slow
    /// gets longer to refute. Lifeguard also stretches the probe interval
    /// and timeout; foca ties the indirect probes' window to the probe
    /// period, so that would slow probing as a whole, and the recovery
    /// with it (one step per on-time round): after a busy moment failures
    /// were found in 3 to 4 s instead of 2. A late probe is judged again
    /// instead (`judges_a_probe`).
    pub(super) fn stretch(&self, timer: &Timer<Identity>, after: Duration) -> Duration {
        match timer {
            Timer::ChangeSuspectToDown { .. } => after * (1 + self.health),
            _ => after,
        }
    }
}

/// A foca timer that ends a wait for acks: judged late, it may blame a
/// member for this node's own delay.
pub(super) fn judges_a_probe(timer: &Timer<Identity>) -> bool {
    matches!(timer, Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity::placeholder("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn local_health_stretches_suspicions_only_and_is_bounded() {
        let mut s = Suspicions::default();
        let probe = Timer::ProbeRandomMember(0);
        let down = Timer::ChangeSuspectToDown { member_id: id(), incarnation: 0, token: 0 };
        let second = Duration::from_secs(1);
        assert_eq!(s.stretch(&down, second), second, "healthy: as foca asked");
        for _ in 0..10 {
            s.worse(3);
        }
        assert_eq!(s.health(), 3);
        assert_eq!(s.stretch(&down, second), second * 4);
        assert_eq!(s.stretch(&probe, second), second, "probing keeps its pace");
        s.better();
        assert_eq!(s.stretch(&down, second), second * 3);
        for _ in 0..10 {
            s.better();
        }
        assert_eq!(s.health(), 0);
        assert!(judges_a_probe(&probe) && !judges_a_probe(&down));
    }
}
