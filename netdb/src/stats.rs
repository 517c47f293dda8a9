//! Counters a node keeps about itself; the agent serves them as `stats`.

/// Why an input was dropped. Each drop is counted and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    #[error("message larger than the configured limit")]
    TooLarge,
    #[error("message does not decode")]
    Malformed,
    #[error("unsupported wire version")]
    BadVersion,
    #[error("name or key is empty, too long or has forbidden characters")]
    BadName,
    #[error("entry field out of bounds")]
    BadEntry,
    #[error("entry claims an owner it cannot have")]
    ForgedOwner,
    #[error("network not joined")]
    NotMember,
    #[error("owner's incarnation was superseded")]
    StaleIncarnation,
    #[error("owner left or was removed")]
    OwnerGone,
    #[error("owner had left the network at that time")]
    DetachedOwner,
    #[error("SWIM layer rejected the message")]
    Swim,
    #[error("push/pull frame for no open exchange")]
    UnexpectedSync,
    #[error("message from this node's own name")]
    FromSelf,
    #[error("plaintext message while keys are set")]
    Plaintext,
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    #[error("sealed message failed authentication")]
    Forged,
    #[error("keyring command already applied or older than one applied")]
    Replayed,
}

impl DropReason {
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub swim_in: Traffic,
    pub swim_out: Traffic,
    pub gossip_in: Traffic,
    pub gossip_out: Traffic,
    pub sync_in: Traffic,
    pub sync_out: Traffic,
    /// Entries that were news to this node, by how they arrived.
    pub entries_from_gossip: u64,
    pub entries_from_sync: u64,
    pub syncs_started: u64,
    pub syncs_completed: u64,
    pub syncs_failed: u64,
    pub syncs_served: u64,
    /// Events the broadcast queues dropped: over the length bound, or larger
    /// than a packet (both repaired by push/pull).
    pub queue_overflow: u64,
    pub queue_oversized: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Stats {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

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
    }
}
