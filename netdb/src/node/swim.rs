//! Glue to foca, the SWIM implementation: announcing to seeds and known
//! nodes, moving foca's effects (packets, timers, notifications) into the
//! node, and keeping foca's settings in step with the cluster size.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use foca::{AccumulatingRuntime, OwnedNotification, Timer};
use netdb_wire as wire;
use rand::RngExt;

use super::Node;
use super::send::datagram_room;
use super::suspicion::{Held, judges_a_probe};
use super::timers::Wake;
use crate::config::Config;
use crate::membership::{Identity, Status};

/// Known nodes (besides the seeds) an announce round knocks on.
const KNOCK_KNOWN: usize = 3;

/// Effects drained at once past which foca's runtime queues are renewed.
const IDLE_RUNTIME: usize = 256;

impl Node {
    /// Knocks on the seeds' doors and on a few other nodes this node has
    /// known, then retries with backoff until foca reports us active.
    ///
    /// Known nodes matter after a rejoin: when many nodes renew their SWIM
    /// identity at once (a healed partition), each addresses the others'
    /// old identities, which foca ignores; only an announce is accepted by
    /// address alone, so it is what reconnects them.
    pub(super) fn announce(&mut self, now: Duration) {
        let mut targets = self.seeds.clone();
        let mut known: Vec<SocketAddr> = self
            .owners
            .iter()
            .filter(|(name, o)| ***name != *self.name && o.status != Status::Left)
            .filter_map(|(_, o)| o.addr)
            .filter(|a| !targets.contains(a))
            .collect();
        for i in 0..known.len().min(KNOCK_KNOWN) {
            let j = self.rng.random_range(i..known.len());
            known.swap(i, j);
            targets.push(known[i]);
        }
        for to in targets {
            let r = self.swim.announce(Identity::placeholder(to), &mut self.rt);
            self.count_swim_error(r);
        }
        self.drain_swim(now);
        self.join_token += 1;
        let delay = self.join_delay;
        self.join_delay = (self.join_delay * 2).min(self.cfg.join_retry_max);
        self.schedule(now + delay, Wake::JoinRetry(self.join_token));
    }

    /// (Re)starts the announce loop after a short random delay, so nodes
    /// that lost the cluster together do not knock in lockstep.
    fn start_announcing(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.active = false;
        self.join_delay = self.cfg.join_retry;
        self.join_token += 1;
        let at = now + self.jitter(self.cfg.gossip_interval);
        self.schedule(at, Wake::JoinRetry(self.join_token));
    }

    /// Moves foca's effects out of its runtime: packets to the outbox,
    /// timers to the scheduler, notifications into the owner life cycle.
    pub(super) fn drain_swim(&mut self, now: Duration) {
        let mut drained = 0usize;
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.rt.to_send() {
                drained += 1;
                progressed = true;
                self.send_control(to.addr, wire::datagram::Body::Swim(data));
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                progressed = true;
                if self.rearm_suspects
                    && let Some(token) = token_of(&timer)
                {
                    self.rearm(now, token);
                }
                if let Timer::ChangeSuspectToDown { member_id, .. } = &timer {
                    self.suspicion_started(member_id);
                }
                let after = self.suspicions.stretch(&timer, after);
                if matches!(timer, Timer::PeriodicAnnounceDown(_)) && !self.has_down_members() {
                    // It would wake this node every second to knock on no
                    // one; it is handed back when a member is down.
                    self.announce_down_parked = Some((after, timer));
                    continue;
                }
                if matches!(timer, Timer::SendIndirectProbe { .. }) {
                    self.timers.schedule_lazy(now + after, Wake::Swim(timer));
                } else {
                    self.schedule(now + after, Wake::Swim(timer));
                }
            }
            while let Some(n) = self.rt.to_notify() {
                drained += 1;
                progressed = true;
                self.swim_notification(now, n);
            }
            if !progressed {
                break;
            }
        }
        if self.announce_down_parked.is_some() && self.has_down_members() {
            // foca's loop restarts a period from now, as if never parked.
            if let Some((after, timer)) = self.announce_down_parked.take() {
                self.schedule(now + after, Wake::Swim(timer));
            }
        }
        if drained > IDLE_RUNTIME && self.rt.backlog() == 0 {
            // A feed of a large cluster leaves room for a notification per
            // member in foca's queues, which would keep it for good.
            self.rt = AccumulatingRuntime::new();
        }
        self.arm_tick(now);
    }

    /// Whether foca holds a member declared down (one it knocks on
    /// periodically: a healed partition rejoins that way).
    fn has_down_members(&self) -> bool {
        self.swim.iter_membership_state().len() > self.swim.num_members()
    }

    fn swim_notification(&mut self, now: Duration, n: OwnedNotification<Identity>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                self.cluster_peers.insert(id.addr);
                self.suspicions.held.remove(&*id.name);
                self.owner_up(&id);
                self.resize_swim();
            }
            OwnedNotification::MemberDown(id) => {
                self.cluster_peers.remove(&id.addr);
                self.member_down(now, id);
                self.resize_swim();
            }
            OwnedNotification::Rename(old, new) => {
                if old.name != new.name {
                    self.owner_down(now, &old);
                }
                if new.incarnation > old.incarnation || old.name != new.name {
                    self.owner_up(&new);
                }
            }
            OwnedNotification::Active => {
                self.active = true;
                self.cluster.needs_sync = true;
            }
            OwnedNotification::Idle => self.start_announcing(now),
            OwnedNotification::Rejoin(id) => {
                // Declared down: this node was too slow to answer, or cut
                // off; either way its own judgement is suspect for a while.
                self.suspicions.worse(self.cfg.max_local_health);
                tracing::info!(
                    generation = id.generation,
                    "declared down by the cluster; rejoined"
                );
                self.rearm_suspects = true;
                for st in self.scopes_mut() {
                    st.needs_sync = true;
                }
                self.start_announcing(now);
            }
            OwnedNotification::Defunct if self.left => {}
            OwnedNotification::Defunct => {
                tracing::warn!("declared down and could not renew identity");
            }
        }
    }

    /// Runs a foca timer due at `at`. A probe judged late may blame the
    /// member for this node's own delay (its ack may be waiting unread), so
    /// it is judged again a little later, once, and local health worsens.
    pub(super) fn swim_timer(
        &mut self,
        now: Duration,
        at: Duration,
        timer: Timer<Identity>,
        may_defer: bool,
    ) {
        if self.left {
            return;
        }
        // A probe timeout whose probe was answered waits on nothing, so it
        // cannot be late (it is not woken for: `Node::poll_timeout`).
        let answered =
            matches!(timer, Timer::SendIndirectProbe { .. }) && self.swim.probe_answered();
        let judges = judges_a_probe(&timer) && !answered;
        let late = now.saturating_sub(at);
        let on_time = late <= self.cfg.late_wake;
        if judges && !on_time {
            self.stats.late_probe_wakes += 1;
            self.suspicions.worse(self.cfg.max_local_health);
            if may_defer {
                let again = now + late.min(self.cfg.probe_rtt);
                self.schedule(again, Wake::SwimLate(timer));
                return;
            }
        }
        let probe_round = matches!(timer, Timer::ProbeRandomMember(_));
        let started = self.stats.suspicions_started;
        let pings = self.stats.swim_out.messages;
        let r = self.swim.handle_timer(timer, &mut self.rt);
        self.count_swim_error(r);
        self.drain_swim(now);
        if probe_round {
            // Only a round that sent its ping (a stale token starts none).
            if self.stats.swim_out.messages > pings
                && let Some(target) = self.swim.probe_target().map(|id| id.addr)
            {
                self.digests_along(now, target);
            }
            self.look_at_suspects();
            if on_time && self.stats.suspicions_started == started {
                self.suspicions.better();
            }
        }
    }

    /// foca asked for the timeout of a suspicion: this node's own probe of
    /// `id` went unanswered (foca sets none for suspicions it only hears).
    fn suspicion_started(&mut self, id: &Identity) {
        if self.suspicions.own.insert(id.clone()) {
            self.stats.suspicions_started += 1;
            let health = self.suspicions.health();
            tracing::debug!(member = %id.name, health, "probe failed; suspecting");
        }
    }

    /// Forgets suspicions this node raised that ended. One that ended with
    /// the member still active was refuted: this node's probe misjudged,
    /// most likely from its own slowness.
    fn look_at_suspects(&mut self) {
        // Nearly always none: no scan of the membership each probe round.
        if self.suspicions.own.is_empty() {
            return;
        }
        let mut suspect = BTreeSet::new();
        let mut active = BTreeSet::new();
        for m in self.swim.iter_members() {
            if m.state() == foca::State::Suspect {
                suspect.insert(m.id().clone());
            }
            active.insert(m.id());
        }
        let own = &self.suspicions.own;
        let refuted = own.iter().filter(|id| !suspect.contains(*id) && active.contains(id)).count();
        for _ in 0..refuted {
            self.suspicions.worse(self.cfg.max_local_health);
        }
        self.suspicions.own.retain(|id| suspect.contains(id));
    }

    /// foca says `id` is down. Unless this node's own probe found it so,
    /// the news may come from a host that was cut off and is back (at a
    /// heal it declares down members others reached all along, suspicion
    /// first, as for a real failure), so the member is asked directly (an
    /// announce, answered by any live node) before its entries are hidden.
    fn member_down(&mut self, now: Duration, id: Identity) {
        let own = self.suspicions.own.remove(&id);
        let alive = self
            .owners
            .get(&id.name)
            .is_some_and(|o| o.status == Status::Alive && o.incarnation == id.incarnation);
        if own || !alive || self.left {
            return self.owner_down(now, &id);
        }
        self.stats.unexpected_downs += 1;
        tracing::debug!(member = %id.name, "declared down by others; asking it");
        let r = self.swim.announce(Identity::placeholder(id.addr), &mut self.rt);
        self.count_swim_error(r);
        let wait = self.cfg.probe_rtt * (1 + self.suspicions.health());
        self.schedule(now + wait, Wake::DownHold(id.clone()));
        let held = Held { id, answered: false, extended: false };
        self.suspicions.held.insert(held.id.name.to_string(), held);
    }

    /// A hold of a member declared down by others ended. Silent, it is down
    /// here too; if it answered, it gets `unexpected_down_hold` to renew
    /// its identity (which ends the hold: `MemberUp`).
    pub(super) fn down_hold_ended(&mut self, now: Duration, id: &Identity) {
        let Some(h) = self.suspicions.held.get_mut(&*id.name).filter(|h| &h.id == id) else {
            return;
        };
        if h.answered && !h.extended {
            h.extended = true;
            tracing::info!(member = %id.name, "declared down by others, but it answers here; held");
            self.schedule(now + self.cfg.unexpected_down_hold, Wake::DownHold(id.clone()));
            return;
        }
        self.suspicions.held.remove(&*id.name);
        let back = self
            .swim
            .iter_members()
            .any(|m| m.id().name == id.name && m.id().incarnation == id.incarnation);
        if !back {
            self.owner_down(now, id);
        }
    }

    /// Gives every member foca still suspects a new suspicion timeout.
    /// Renewing the identity (after being declared down) makes foca ignore
    /// every timer it set before, so a member suspected just before (a
    /// partition that healed in between) would stay suspect for ever: its
    /// probes succeed, which clears nothing, and it never hears it is
    /// suspected, the broadcast having been spent while apart. `token` is
    /// the one foca uses now, read off the first timer it sets after the
    /// renewal. With the timeout the member is found down unless it refutes,
    /// and then rejoins, as any suspected member would.
    fn rearm(&mut self, now: Duration, token: foca::TimerToken) {
        self.rearm_suspects = false;
        let suspects: Vec<(Identity, foca::Incarnation)> = self
            .swim
            .iter_members()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        for (member_id, incarnation) in suspects {
            tracing::debug!(member = %member_id.name, "suspicion timeout set again after rejoining");
            let timer = Timer::ChangeSuspectToDown { member_id, incarnation, token };
            self.schedule(now + self.swim_params.1, Wake::Swim(timer));
        }
    }

    /// Keeps foca's retransmissions and suspicion timeout in step with the
    /// cluster size (they grow with log10 n).
    fn resize_swim(&mut self) {
        let n = self.cluster_peers.len() as u32 + 1;
        let params = swim_params(&self.cfg, n);
        if params != self.swim_params {
            self.swim_params = params;
            let r = self.swim.set_config(swim_config(&self.cfg, n));
            self.count_swim_error(r);
        }
    }

    /// foca refused a call: counted, since the call changed nothing and a
    /// steady count means membership is not being kept.
    pub(super) fn count_swim_error(&mut self, r: Result<(), foca::Error>) {
        if let Err(e) = r {
            tracing::debug!(error = %e, "foca refused a call");
            self.stats.swim_errors += 1;
        }
    }
}

/// The token a foca timer carries, if it carries one.
fn token_of(timer: &Timer<Identity>) -> Option<foca::TimerToken> {
    match timer {
        Timer::ProbeRandomMember(t)
        | Timer::PeriodicAnnounce(t)
        | Timer::PeriodicAnnounceDown(t)
        | Timer::PeriodicGossip(t)
        | Timer::SendIndirectProbe { token: t, .. }
        | Timer::ChangeSuspectToDown { token: t, .. }
        | Timer::ProbeHeardSuspect { token: t, .. } => Some(*t),
        Timer::RemoveDown(_) => None,
    }
}

/// foca's retransmissions and suspicion timeout for a cluster of `n`:
/// updates go out as often as table events (`retransmit_mult ×
/// ceil(log10(n+1))`; foca's own default gives a single transmission to
/// small clusters, which left some nodes unaware of a failure for many
/// seconds), suspicion lasts `suspicion_mult × max(1, log10 n)` probes.
pub(super) fn swim_params(cfg: &Config, n: u32) -> (u8, Duration) {
    let tx = cfg.transmit_limit(n as usize, false).clamp(1, u32::from(u8::MAX)) as u8;
    let scale = f64::from(n.max(1)).log10().max(1.0);
    (tx, cfg.probe_period.mul_f64(cfg.suspicion_mult * scale))
}

pub(super) fn swim_config(cfg: &Config, cluster_size: u32) -> foca::Config {
    let n = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut c = foca::Config::new_lan(n);
    c.probe_period = cfg.probe_period;
    c.probe_rtt = cfg.probe_rtt;
    c.ring_probes = cfg.ring_probes;
    c.probe_heard_suspects = cfg.probe_heard_suspects;
    let (tx, suspicion) = swim_params(cfg, n.get());
    c.max_transmissions = NonZeroU8::new(tx).unwrap_or(NonZeroU8::MIN);
    c.suspect_to_down_after = suspicion;
    // NetworkDB retries failed nodes every second; foca's default (65 s)
    // would leave a healed partition split for minutes.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: cfg.reconnect_interval,
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_gossip = None;
    // foca's packet rides inside a Datagram: leave room for its framing.
    let room = datagram_room(cfg.packet_budget, 0);
    c.max_packet_size = NonZeroUsize::new(room.max(256)).unwrap_or(NonZeroUsize::MIN);
    c
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::codec;
    use crate::keyring::SEAL_OVERHEAD;

    #[test]
    fn foca_settings_follow_the_cluster_size() {
        let cfg = Config::default();
        let (tx1, s1) = swim_params(&cfg, 1);
        let (tx100, s100) = swim_params(&cfg, 100);
        assert_eq!(u32::from(tx1), cfg.transmit_limit(1, false));
        assert_eq!(u32::from(tx100), cfg.transmit_limit(100, false));
        assert_eq!(s1, cfg.probe_period.mul_f64(cfg.suspicion_mult), "at least one probe scale");
        assert_eq!(s100, s1 * 2, "log10(100) = 2");
        // A huge multiplier cannot overflow foca's u8.
        let wild = Config { retransmit_mult: 1_000, ..Config::default() };
        assert_eq!(swim_params(&wild, 10).0, u8::MAX);
    }

    #[test]
    fn foca_packets_leave_room_for_framing_and_seal() {
        let cfg = Config::default();
        let c = swim_config(&cfg, 30);
        let room = c.max_packet_size.get();
        assert!(
            room + codec::datagram_overhead(cfg.packet_budget) + SEAL_OVERHEAD <= cfg.packet_budget
        );
        assert!(c.periodic_gossip.is_none(), "updates ride the node's own ticks");
        assert_eq!(c.probe_period, cfg.probe_period);
        let tiny = Config { packet_budget: 10, ..Config::default() };
        assert_eq!(swim_config(&tiny, 1).max_packet_size.get(), 256, "a floor foca can work with");
        assert!(swim_params(&cfg, 30).1 > Duration::ZERO);
    }
}
