//! Counters a node keeps about itself; the agent serves them as `stats`.

use std::time::Duration;

/// Why an input was dropped. Each drop is counted and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    /// Larger than the configured limit.
    #[error("message larger than the configured limit")]
    TooLarge,
    /// Does not decode.
    #[error("message does not decode")]
    Malformed,
    /// Another wire version.
    #[error("unsupported wire version")]
    BadVersion,
    /// A name or key breaks the rules.
    #[error("name or key is empty, too long or has forbidden characters")]
    BadName,
    /// A field is out of bounds.
    #[error("entry field out of bounds")]
    BadEntry,
    /// Claims an owner it cannot have.
    #[error("entry claims an owner it cannot have")]
    ForgedOwner,
    /// For a network this node did not join.
    #[error("network not joined")]
    NotMember,
    /// From an owner's superseded incarnation.
    #[error("owner's incarnation was superseded")]
    StaleIncarnation,
    /// From an owner that left or was removed.
    #[error("owner left or was removed")]
    OwnerGone,
    /// Written before its owner left the network.
    #[error("owner had left the network at that time")]
    DetachedOwner,
    /// SWIM (foca) refused it.
    #[error("SWIM layer rejected the message")]
    Swim,
    /// A push/pull frame of no open exchange.
    #[error("push/pull frame for no open exchange")]
    UnexpectedSync,
    /// From this node's own name.
    #[error("message from this node's own name")]
    FromSelf,
    /// Plaintext while keys are set.
    #[error("plaintext message while keys are set")]
    Plaintext,
    /// Sealed with a key this node does not hold.
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    /// Failed authentication.
    #[error("sealed message failed authentication")]
    Forged,
    /// A keyring command applied already, older than one applied, or stale.
    #[error("keyring command already applied or older than one applied")]
    Replayed,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 17] = [
        DropReason::TooLarge,
        DropReason::Malformed,
        DropReason::BadVersion,
        DropReason::BadName,
        DropReason::BadEntry,
        DropReason::ForgedOwner,
        DropReason::NotMember,
        DropReason::StaleIncarnation,
        DropReason::OwnerGone,
        DropReason::DetachedOwner,
        DropReason::Swim,
        DropReason::UnexpectedSync,
        DropReason::FromSelf,
        DropReason::Plaintext,
        DropReason::UnknownKey,
        DropReason::Forged,
        DropReason::Replayed,
    ];

    /// A stable, metric-friendly name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooLarge => "too_large",
            DropReason::Malformed => "malformed",
            DropReason::BadVersion => "bad_version",
            DropReason::BadName => "bad_name",
            DropReason::BadEntry => "bad_entry",
            DropReason::ForgedOwner => "forged_owner",
            DropReason::NotMember => "not_member",
            DropReason::StaleIncarnation => "stale_incarnation",
            DropReason::OwnerGone => "owner_gone",
            DropReason::DetachedOwner => "detached_owner",
            DropReason::Swim => "swim",
            DropReason::UnexpectedSync => "unexpected_sync",
            DropReason::FromSelf => "from_self",
            DropReason::Plaintext => "plaintext",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Forged => "forged",
            DropReason::Replayed => "replayed",
        }
    }
}

/// How a member's state changed, as this node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberChange {
    /// Seen alive for the first time.
    Up,
    /// Declared failed by SWIM.
    Failed,
    /// Alive again after being declared failed, same incarnation.
    Returned,
    /// Back with a newer incarnation (a restart, or a renewed identity).
    Rejoined,
    /// Left gracefully.
    Left,
}

impl MemberChange {
    /// Every change, in counter order.
    pub const ALL: [MemberChange; 5] = [
        MemberChange::Up,
        MemberChange::Failed,
        MemberChange::Returned,
        MemberChange::Rejoined,
        MemberChange::Left,
    ];

    /// A stable, metric-friendly name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberChange::Up => "up",
            MemberChange::Failed => "failed",
            MemberChange::Returned => "returned",
            MemberChange::Rejoined => "rejoined",
            MemberChange::Left => "left",
        }
    }
}

/// Upper bounds, in seconds, of the push/pull duration buckets: from a
/// loopback exchange to one near the default 10 s timeout.
pub const SYNC_SECONDS_BOUNDS: [f64; 11] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// Durations counted into fixed buckets ([`SYNC_SECONDS_BOUNDS`]), the
/// last bucket holding everything above the highest bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    pub counts: [u64; SYNC_SECONDS_BOUNDS.len() + 1],
    /// Sum of every observation.
    pub sum: Duration,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = SYNC_SECONDS_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(SYNC_SECONDS_BOUNDS.len());
        self.counts[i] += 1;
        self.sum += d;
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Messages and bytes of one kind in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages.
    pub messages: u64,
    /// Bytes, sealing included.
    pub bytes: u64,
}

impl Traffic {
    /// Counts one message of `bytes` bytes.
    pub fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
    }
}

/// Push tree control messages, by kind and direction: a message counts
/// once per kind it carries (announcements, grafts, a prune).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCounts {
    /// IHAVE batches sent.
    pub ihave_sent: u64,
    /// IHAVE batches received.
    pub ihave_received: u64,
    /// GRAFTs sent: events announced and still missing after a while.
    pub graft_sent: u64,
    /// GRAFTs received (each answered with the entries asked for).
    pub graft_received: u64,
    /// PRUNEs sent: an eager peer brought only copies.
    pub prune_sent: u64,
    /// PRUNEs received.
    pub prune_received: u64,
}

/// Counters a node keeps about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// SWIM and keyring datagrams received.
    pub swim_in: Traffic,
    /// SWIM and keyring datagrams sent.
    pub swim_out: Traffic,
    /// Gossip datagrams received.
    pub gossip_in: Traffic,
    /// Gossip datagrams sent (one per peer).
    pub gossip_out: Traffic,
    /// Push/pull frames received.
    pub sync_in: Traffic,
    /// Push/pull frames sent.
    pub sync_out: Traffic,
    /// Entries that were news to this node and arrived by gossip.
    pub entries_from_gossip: u64,
    /// Entries that were news to this node and arrived by push/pull.
    pub entries_from_sync: u64,
    /// Entries a gossip packet brought that this node already held, that
    /// very version: the redundancy of epidemic spread (older versions are
    /// not counted).
    pub gossip_copies: u64,
    /// Push tree control messages sent and received (`Config::push_tree`).
    pub tree: TreeCounts,
    /// Push/pull exchanges this node opened.
    pub syncs_started: u64,
    /// Opened exchanges that completed.
    pub syncs_completed: u64,
    /// Opened exchanges that failed (refused, broken, timed out).
    pub syncs_failed: u64,
    /// Exchanges this node served.
    pub syncs_served: u64,
    /// Events the broadcast queues dropped: over the length bound, or larger
    /// than a packet (both repaired by push/pull).
    pub queue_overflow: u64,
    /// Events larger than a packet, left to push/pull.
    pub queue_oversized: u64,
    /// Calls foca refused (a timer, an announce, a settings change, ...);
    /// each changed nothing.
    pub swim_errors: u64,
    /// Members this node started suspecting because its own probe (and the
    /// indirect ones) went unanswered. On a calm cluster this stays still:
    /// each one is a real failure or a false accusation.
    pub suspicions_started: u64,
    /// Probe timers that fired later than `late_wake`: this node's loop was
    /// behind, and its local health worsened.
    pub late_probe_wakes: u64,
    /// Members declared down by others, not by this node's own probe: they
    /// were asked directly before their entries were hidden.
    pub unexpected_downs: u64,
    /// Drops by [`DropReason`], indexed by the reason's number.
    pub drops: [u64; DropReason::ALL.len()],
    /// Membership changes by [`MemberChange`], indexed by its number.
    pub member_changes: [u64; MemberChange::ALL.len()],
    /// How long completed exchanges this node opened took.
    pub sync_seconds: Histogram,
    /// Entries of this node that came back from peers newer than what it
    /// holds (written by its life before a restart) and were written again
    /// with what it holds now.
    pub own_entries_restated: u64,
}

impl Stats {
    /// Counts a drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Drops of one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Membership changes of one kind.
    pub fn changes(&self, change: MemberChange) -> u64 {
        self.member_changes[change as usize]
    }

    /// Drops of every reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let mut s = Stats::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            s.drop(*r);
        }
        assert_eq!(s.total_drops(), DropReason::ALL.len() as u64);
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, c) in MemberChange::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.counts[0], 2, "bounds are inclusive");
        assert_eq!(h.counts[5], 1, "30 ms is in the 50 ms bucket");
        assert_eq!(h.counts[SYNC_SECONDS_BOUNDS.len()], 1, "above every bound");
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum, Duration::from_micros(60_031_500));
    }
}
