//! Watch streams as the core feeds them: entry events of one network (and
//! optionally one table) and notices (conflicts, endpoints reaped), through
//! a bounded channel. A
//! watcher that falls behind is cut rather than growing memory.

use netdb::Event;
use tokio::sync::mpsc;

/// Events a watcher may have queued before it counts as stuck and is cut.
const WATCH_BACKLOG: usize = 4096;

/// What a watch stream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watched {
    /// An entry event of the watched network (always `Event::Entry`).
    Entry(Event),
    /// A conflict found on, or an endpoint reaped from, the watched
    /// network.
    Notice { kind: Notice, network: String, text: String },
    /// The watcher fell behind and was cut; the stream ends.
    FellBehind,
}

/// What a notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// Two hosts disagree (a name, an address, a definition).
    Conflict,
    /// A local endpoint was detached because its namespace was gone.
    Detached,
}

impl Notice {
    /// The watch event's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Notice::Conflict => "conflict",
            Notice::Detached => "detached",
        }
    }
}

/// A watcher of one network (and optionally one table).
pub(crate) struct Watcher {
    network: String,
    table: Option<String>,
    tx: mpsc::Sender<Watched>,
}

impl Watcher {
    /// A watcher that first receives `snapshot` (the current entries, as
    /// create events); room is made for all of it plus the backlog.
    pub(crate) fn new(
        network: String,
        table: Option<String>,
        snapshot: Vec<Event>,
    ) -> (Watcher, mpsc::Receiver<Watched>) {
        let (tx, rx) = mpsc::channel(snapshot.len() + WATCH_BACKLOG);
        let w = Watcher { network, table, tx };
        for ev in snapshot {
            if w.wants(&ev) {
                w.send(ev);
            }
        }
        (w, rx)
    }

    /// Whether `ev` is an entry event this watcher receives.
    pub(crate) fn wants(&self, ev: &Event) -> bool {
        matches!(ev, Event::Entry { network, table, .. }
            if **network == *self.network && self.table.as_deref().is_none_or(|t| t == &**table))
    }

    /// False once the stream's receiver is gone.
    pub(crate) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Sends an event it [`wants`](Self::wants); false if the watcher is
    /// gone or stuck and must be dropped.
    pub(crate) fn send(&self, ev: Event) -> bool {
        // The last place is the notice's: a full queue could not tell the
        // client why its stream ended (it would look like a clean end).
        if self.tx.capacity() <= 1 {
            let _ = self.tx.try_send(Watched::FellBehind);
            return false;
        }
        self.tx.try_send(Watched::Entry(ev)).is_ok()
    }

    /// Sends a notice about `network`; false if the watcher must be
    /// dropped.
    pub(crate) fn notice(&self, kind: Notice, network: &str, text: &str) -> bool {
        if network != self.network {
            return self.is_open();
        }
        let out = Watched::Notice { kind, network: self.network.clone(), text: text.into() };
        self.tx.try_send(out).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(network: &str, key: &str) -> Event {
        Event::Entry {
            network: network.into(),
            table: "t".into(),
            key: key.into(),
            value: Bytes::new(),
            owner: "a".into(),
            kind: netdb::EntryEventKind::Create,
        }
    }

    #[test]
    fn a_watcher_wants_entry_events_of_its_network_and_table_only() {
        let (all, _rx) = Watcher::new("n".into(), None, Vec::new());
        let (one, _rx2) = Watcher::new("n".into(), Some("u".into()), Vec::new());
        assert!(all.wants(&entry("n", "k")));
        assert!(!all.wants(&entry("m", "k")));
        assert!(!one.wants(&entry("n", "k")), "table t, not u");
        assert!(!all.wants(&Event::KeyringChanged));
    }

    #[test]
    fn a_watcher_that_falls_behind_is_told_so_before_its_stream_ends() {
        let (w, mut rx) = Watcher::new("n".into(), None, Vec::new());
        let mut offered = 0;
        while w.send(entry("n", &format!("k{offered}"))) {
            offered += 1;
        }
        assert_eq!(offered, WATCH_BACKLOG - 1, "one place is kept for the notice");
        drop(w);
        let mut last = None;
        while let Ok(m) = rx.try_recv() {
            last = Some(m);
        }
        assert_eq!(last, Some(Watched::FellBehind));
    }
}
