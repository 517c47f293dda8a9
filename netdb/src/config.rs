//! Timers, sizes and limits of a node. Defaults follow Docker's NetworkDB
//! where it has a number (see docs/reference.md) and say why where not.

use std::time::Duration;

#[derive(Debug, Clone)]
/// Timers, limits and fan-out of a node. `Default` gives the tuned values;
/// tests and the agent override what they need.
pub struct Config {
    /// Table gossip period (NetworkDB: 200 ms).
    pub gossip_interval: Duration,
    /// Peers each gossip packet goes to (NetworkDB: 3).
    pub gossip_fanout: usize,
    /// Largest datagram after all framing (NetworkDB: 1400 B).
    pub packet_budget: usize,
    /// Bytes a node may put on the wire per gossip tick, fan-out included
    /// (256 KiB per 200 ms: at most 1.25 MiB/s, and only while a backlog
    /// lasts). NetworkDB sends one packet per tick, which is why a burst
    /// takes it tens of seconds; on the loopback benchmark's burst (30
    /// nodes × 100 entries) 64 KiB gave 5 s, 256 KiB 1.5 s.
    pub tick_byte_budget: usize,
    /// Transmissions of an event this node wrote: `retransmit_mult ×
    /// ceil(log10(n+1))` packets (NetworkDB: 4).
    pub retransmit_mult: u32,
    /// Transmissions of an event this node relays: `relay_mult ×
    /// ceil(log10(n+1))`. Relays need fewer: every node that learns an
    /// event relays it, and anti-entropy repairs the rest.
    pub relay_mult: u32,
    /// Copies of a relayed event heard from peers after which this node
    /// stops sending it, once it sent it at least once (0, or above 255
    /// where the count stops: never; it goes out `relay_mult ×
    /// ceil(log10(n+1))` times). A copy is a peer that
    /// holds the event and relays it: after a few, most of the scope holds
    /// it, and the last holes are push/pull's (`mismatch_sync_after`).
    /// Where copies come seldom (loss, few relays) the event keeps its
    /// transmissions: the redundancy follows the network instead of being
    /// set for the worst. A node's own writes keep all theirs. 3 halves
    /// the copies a node receives in the 100-agent burst
    /// (docs/performance.md, "CPU per received entry").
    pub quench_after: u32,
    /// News (events never sent, nor sent early) goes out in one packet at
    /// once when the next gossip tick is more than a quarter interval
    /// away and all of it fits in that packet, at most twice per interval
    /// and scope; the rest waits for the tick. News that does not fit in
    /// a packet is a burst, whose ticks are busy already. That packet is an
    /// extra copy: the tick still sends the event as if it had not gone,
    /// so the copies that quench it come as late as before. Without it each
    /// hop of an event waits for the relaying node's tick (100 ms on
    /// average at 200 ms), and an event that lands while a burst's relays
    /// keep the ticks going crawls: the 30-agent benchmark's delete took
    /// 0.2 s at the median node in some runs. Twice, because the burst's
    /// last events take the first packet of an interval at most nodes,
    /// and a delete issued as the burst ends then waited for the ticks
    /// (docs/performance.md, "The early wave").
    pub early_news: bool,
    /// Peers the early packet goes to (`early_news`). Wider than the
    /// tick's fan-out: the wave of early packets is the one chance to reach
    /// every node at once, and with k peers a packet about e^-k of the
    /// nodes are left to the ticks (up to `gossip_interval` later, more if
    /// their first round misses them too): at 3, one node in twenty.
    pub early_news_fanout: usize,
    /// Eager/lazy push tree (Plumtree) instead of repeated random fan-out:
    /// a new event goes once to a few eager peers, its id to a few lazy
    /// ones, a copy prunes the link it came on and a missed event is
    /// grafted in (`node::tree`). Off: a node of either kind understands
    /// the other's messages, so it can be turned on node by node.
    pub push_tree: bool,
    /// With the push tree, how long a version announced to this node may
    /// stay missing before it asks the announcer for it: about the time an
    /// eager push takes to arrive (a tick at each hop), so a graft is sent
    /// only when the eager path really missed.
    pub tree_graft_after: Duration,
    /// With the push tree, peers outside the eager set each new event's id
    /// is announced to. A node that neither the tree nor an announcement
    /// reaches waits for anti-entropy (seconds): with k announcements per
    /// event from every node, that is about e^-k of the nodes.
    pub tree_lazy_fanout: usize,
    /// Events a broadcast queue holds before dropping the oldest (counted);
    /// dropped events are repaired by anti-entropy (the gossip that goes
    /// on carries the digest root, and a peer that sees it differ pulls).
    /// An event queued costs about 500 bytes (its encoding, its key twice,
    /// its slot): the bound is above a 100-agent burst (10,000 events),
    /// and the rest of a bulk import goes by push/pull, as Serf's bounded
    /// queue (4,096) leaves it to anti-entropy; 100,000 held 50 MB after
    /// a million-entry import.
    pub max_queue_len: usize,
    /// Periodic push/pull per network (NetworkDB: 30 s).
    pub sync_interval: Duration,
    /// A push/pull that has not finished by then counts as failed.
    pub sync_timeout: Duration,
    /// How long a digest mismatch with a peer must last before it starts a
    /// push/pull (updates in flight make digests differ briefly): a gossip
    /// interval, the time an update in flight takes to arrive. It was 1 s;
    /// with `quench_after` gossip stops once most nodes hold an event and
    /// leaves the last few holes to push/pull, which then closed them
    /// seconds late (docs/performance.md, "CPU per received entry").
    pub mismatch_sync_after: Duration,
    /// A node with an empty queue still sends its digest this often per
    /// network, so a divergence is noticed in about a second.
    pub digest_interval: Duration,
    /// Tombstone lifetime (NetworkDB: 30 min).
    pub tombstone_ttl: Duration,
    /// How long a failed node's entries stay hidden but kept, waiting for
    /// it to come back, before they are removed.
    pub failed_grace: Duration,
    /// First delay between join attempts; doubles up to `join_retry_max`.
    pub join_retry: Duration,
    /// Longest delay between join attempts.
    pub join_retry_max: Duration,
    /// How often a node knocks on one failed member's door, so a healed
    /// partition reconnects (NetworkDB: 1 s).
    pub reconnect_interval: Duration,
    /// SWIM probe period and round-trip timeout (NetworkDB: 1 s, 500 ms).
    /// Under a third of that here: a failed node's entries must be gone
    /// within seconds. A kill costs about one period until someone probes
    /// the victim, one until the probe is judged, the suspicion and the
    /// news' spread (docs/performance.md): 300 ms, 150 ms and
    /// `suspicion_mult` 2 find it in about 1.5 s at 30 nodes. A stopped
    /// member is declared failed about 0.9 s after its stop at the
    /// earliest (a probe sent just after it, judged at the period's end,
    /// then 2 × 300 ms of suspicion), and an agent is back in its cluster
    /// some 20 ms after its exec: a supervisor's restart (systemd waits
    /// 100 ms) goes unnoticed. A busy node judges its late probes again and
    /// stretches its suspicions (`late_wake`, `max_local_health`) instead
    /// of accusing healthy ones.
    pub probe_period: Duration,
    /// Time a probe waits for its ack before asking others to probe.
    pub probe_rtt: Duration,
    /// Every other probe goes to the next live member in address order
    /// (the rest stay random): each member is then probed at least every
    /// second period, where random probing leaves it unprobed for a period
    /// with probability about 1/e and a crash's first probe waits a
    /// geometric number of periods (docs/performance.md, the kill tail).
    pub ring_probes: bool,
    /// A member heard to be suspect that is still suspect once its Down
    /// is overdue (the suspicion timeout and a probe period after the
    /// news) is probed by this node at its next turn: a member that missed
    /// every copy of the Down news then times the crash out with its own
    /// probe instead of waiting for its own probe round (seconds), while a
    /// suspect that answers (a healed partition's stale news) stays alive.
    pub probe_heard_suspects: bool,
    /// Suspicion lasts `suspicion_mult × max(1, log10 n) × probe_period`
    /// (NetworkDB: 4 × 1 s, stretched up to 6× by Lifeguard), times this
    /// node's local health factor. Only the nodes whose own probes failed
    /// time a suspicion out (foca).
    pub suspicion_mult: f64,
    /// A probe timer that fires this late means this node's own loop is
    /// behind (CPU starved): acks may be waiting unread. Its probe is judged
    /// once more a little later, and the node's local health worsens.
    pub late_wake: Duration,
    /// Lifeguard's local health multiplier, at most: a node whose probe
    /// timers fire late, whose suspicions are refuted, or that was declared
    /// down itself, gives a member it accuses `1 + score` times the
    /// suspicion timeout to refute, so an overloaded node does not get
    /// healthy ones declared down. Each probe judged on time without a new
    /// suspicion lowers the score by one, so it is back to 0 within a
    /// second of the load ending (Lifeguard: 8, and it also stretches the
    /// probes; see `node::suspicion`).
    pub max_local_health: u32,
    /// A member declared down by others (this node's own probe did not
    /// find it so) is first asked directly, for `probe_rtt` (stretched by
    /// local health): a host that was cut off declares down the members it
    /// could not reach, and at the heal that news reaches hosts that
    /// reached them all along. If it answers, its entries stay visible this
    /// long more, while it hears it was declared down and renews its
    /// identity; if it is silent, it is down here too. A real failure pays
    /// only the ask, on the nodes that did not suspect it themselves.
    pub unexpected_down_hold: Duration,
    /// Largest push/pull frame accepted or sent.
    pub max_sync_frame: usize,
    /// Longest node, network or table name.
    pub max_name_len: usize,
    /// Longest entry key, in bytes.
    pub max_key_len: usize,
    /// Largest entry value, in bytes.
    pub max_value_len: usize,
    /// Networks a node may join.
    pub max_networks: usize,
    /// A keyring command is resent to members that have not answered this
    /// often, until `key_query_timeout`, when the silent ones are reported.
    pub key_query_retry: Duration,
    /// When a keyring command stops waiting for answers.
    pub key_query_timeout: Duration,
    /// A keyring command whose sender's clock differs from the receiver's
    /// by more than this is refused (clock skew plus retries must fit).
    pub key_query_max_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            packet_budget: 1400,
            tick_byte_budget: 256 * 1024,
            retransmit_mult: 4,
            relay_mult: 2,
            quench_after: 3,
            early_news: true,
            early_news_fanout: 6,
            push_tree: false,
            tree_graft_after: Duration::from_millis(400),
            tree_lazy_fanout: 6,
            max_queue_len: 16_384,
            sync_interval: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(10),
            mismatch_sync_after: Duration::from_millis(200),
            digest_interval: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(30 * 60),
            failed_grace: Duration::from_secs(10 * 60),
            join_retry: Duration::from_secs(1),
            join_retry_max: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(1),
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(150),
            ring_probes: true,
            probe_heard_suspects: true,
            suspicion_mult: 2.0,
            late_wake: Duration::from_millis(100),
            max_local_health: 3,
            unexpected_down_hold: Duration::from_secs(3),
            max_sync_frame: 4 * 1024 * 1024,
            max_name_len: 128,
            max_key_len: 512,
            max_value_len: 16 * 1024,
            max_networks: 1024,
            key_query_retry: Duration::from_millis(300),
            key_query_timeout: Duration::from_secs(5),
            key_query_max_age: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Transmissions per event for a network of `n` nodes (self included).
    pub fn transmit_limit(&self, n: usize, relayed: bool) -> u32 {
        let mult = if relayed { self.relay_mult } else { self.retransmit_mult };
        mult.saturating_mul(ceil_log10(n as u64 + 1)).max(1)
    }
}

/// Smallest d with 10^d >= v.
fn ceil_log10(v: u64) -> u32 {
    let (mut d, mut p) = (0u32, 1u64);
    while p < v {
        p = p.saturating_mul(10);
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmit_limit_matches_networkdb() {
        let c = Config::default();
        // NetworkDB: 4 for n <= 9, 8 for n <= 99, 12 for n <= 999.
        assert_eq!(c.transmit_limit(1, false), 4);
        assert_eq!(c.transmit_limit(9, false), 4);
        assert_eq!(c.transmit_limit(10, false), 8);
        assert_eq!(c.transmit_limit(99, false), 8);
        assert_eq!(c.transmit_limit(100, false), 12);
        assert_eq!(c.transmit_limit(999, false), 12);
        assert_eq!(c.transmit_limit(1000, false), 16);
        assert_eq!(c.transmit_limit(200, true), 6);
    }
}
