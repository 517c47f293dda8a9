//! Endpoint names on a network: who holds each name or alias, from the
//! `endpoints` table entries, and which holder keeps a name that two
//! endpoints hold (the same answer on every host, since every host holds
//! the same entries).
//!
//! Names compare without regard to ASCII case: DNS answers them that way,
//! so `Web` and `web` are one name to a container asking.

use std::collections::BTreeMap;

use netdb::Entry;
use netdb_wire as wire;
use prost::Message;

/// One endpoint's hold on one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The endpoint's name (the name held may be one of its aliases).
    pub(crate) endpoint: String,
    /// The host that published it.
    pub(crate) host: String,
    /// The name is one of the endpoint's aliases, not its own name.
    pub(crate) alias: bool,
    /// The Lamport time of the entry's write: older holders keep a name.
    pub(crate) ltime: u64,
    /// The endpoint's host is failed: its entry is kept, not shown.
    pub(crate) failed: bool,
    /// The endpoint's address, as published.
    pub(crate) ip: String,
    /// The endpoint's service (empty: none).
    pub(crate) service: String,
}

impl Holder {
    /// `h2/web`, or `h2/web (alias)`: how conflicts name a holder.
    fn label(&self) -> String {
        let alias = if self.alias { " (alias)" } else { "" };
        format!("{}/{}{alias}", self.host, self.endpoint)
    }
}

/// Every name of one network's endpoints, with its holders oldest first.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_name: BTreeMap<String, Vec<Holder>>,
}

impl Names {
    /// The names the given `endpoints` table entries hold. Tombstones hold
    /// nothing; hidden entries (failed hosts) hold their names too, marked
    /// `failed`, so the caller decides whether they count. Entries that do
    /// not decode are skipped: they name nothing a container could ask for.
    pub(crate) fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a Entry)>,
    ) -> Names {
        let mut by_name: BTreeMap<String, Vec<Holder>> = BTreeMap::new();
        for (_, e) in entries {
            if e.deleted {
                continue;
            }
            let Ok(rec) = wire::ServiceRecord::decode(&e.value[..]) else { continue };
            let mut names: Vec<(String, bool)> = vec![(fold(&rec.name), false)];
            for a in &rec.aliases {
                let a = fold(a);
                if !names.iter().any(|(n, _)| *n == a) {
                    names.push((a, true));
                }
            }
            for (name, alias) in names {
                by_name.entry(name).or_default().push(Holder {
                    endpoint: rec.name.clone(),
                    host: e.owner.to_string(),
                    alias,
                    ltime: e.ltime,
                    failed: e.hidden,
                    ip: rec.ip.clone(),
                    service: rec.service.clone(),
                });
            }
        }
        for holders in by_name.values_mut() {
            holders.sort_by(|a, b| precedence(a).cmp(&precedence(b)));
        }
        Names { by_name }
    }

    /// Who holds `name`, oldest first (empty: nobody).
    pub(crate) fn holders(&self, name: &str) -> &[Holder] {
        self.by_name.get(&fold(name)).map_or(&[], Vec::as_slice)
    }

    /// The endpoint that answers for `name`: of the live holders, the
    /// oldest by (Lamport time, host). Every host holds the same entries
    /// once gossip has converged, so every host picks the same one. A
    /// failed host's endpoints answer nothing until it returns.
    pub(crate) fn answering(&self, name: &str) -> Option<&Holder> {
        self.holders(name).iter().find(|h| !h.failed)
    }

    /// Every endpoint once (under its own name), failed ones included.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Holder> {
        self.by_name.values().flatten().filter(|h| !h.alias)
    }

    /// Names held by more than one live endpoint, each with a sentence
    /// for the conflict report that names the holder kept.
    pub(crate) fn conflicts(&self, network: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (name, holders) in &self.by_name {
            let live: Vec<&Holder> = holders.iter().filter(|h| !h.failed).collect();
            let Some(kept) = self.answering(name).filter(|_| live.len() > 1) else { continue };
            let all: Vec<String> = live.iter().map(|h| h.label()).collect();
            out.push(format!(
                "name {name} of network {network} is held by {}; {} answers for it (the oldest)",
                all.join(" and "),
                kept.label()
            ));
        }
        out
    }
}

/// The order in which holders keep a name: oldest write first, the host's
/// name breaking ties between hosts, the endpoint's name within one.
fn precedence(h: &Holder) -> (u64, &str, &str, bool) {
    (h.ltime, &h.host, &h.endpoint, h.alias)
}

/// A name as DNS compares it.
pub(crate) fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// An `endpoints` entry as `host` publishes it at Lamport time `ltime`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn record_entry(
    host: &str,
    ltime: u64,
    name: &str,
    ip: &str,
    service: &str,
    aliases: &[&str],
) -> Entry {
    let rec = wire::ServiceRecord {
        name: name.into(),
        service: service.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ip: ip.into(),
    };
    Entry {
        value: bytes::Bytes::from(rec.encode_to_vec()),
        owner: host.into(),
        incarnation: 1,
        ltime,
        deleted: false,
        reap_at: None,
        hidden: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: &str, ltime: u64, name: &str, aliases: &[&str], hidden: bool) -> Entry {
        Entry { hidden, ..record_entry(owner, ltime, name, "10.1.0.2", "", aliases) }
    }

    #[test]
    fn the_oldest_live_holder_answers_whatever_the_order_of_the_entries() {
        let a = entry("h2", 7, "web", &[], false);
        let b = entry("h1", 9, "api", &["WEB"], false);
        let c = entry("h3", 7, "web", &[], false);
        let forward = Names::from_entries([("h2/web", &a), ("h1/api", &b), ("h3/web", &c)]);
        let backward = Names::from_entries([("h3/web", &c), ("h1/api", &b), ("h2/web", &a)]);
        for names in [&forward, &backward] {
            let kept = names.answering("Web").unwrap();
            assert_eq!((kept.host.as_str(), kept.endpoint.as_str()), ("h2", "web"));
            assert_eq!(names.holders("web").len(), 3);
            assert_eq!(
                names.conflicts("blue"),
                ["name web of network blue is held by h2/web and h3/web and h1/api (alias); \
                  h2/web answers for it (the oldest)"]
            );
        }
    }

    #[test]
    fn failed_holders_keep_the_name_but_neither_answer_nor_conflict() {
        let old = entry("h1", 1, "web", &[], true);
        let new = entry("h2", 5, "web", &["www", "web"], false);
        let mut gone = entry("h3", 2, "web", &[], false);
        gone.deleted = true;
        let names = Names::from_entries([("h1/web", &old), ("h2/web", &new), ("h3/web", &gone)]);
        assert_eq!(names.holders("web").len(), 2, "the tombstone holds nothing");
        assert!(names.holders("web")[0].failed);
        assert_eq!(names.answering("web").unwrap().host, "h2");
        assert!(names.answering("www").unwrap().alias);
        assert!(names.conflicts("blue").is_empty());
        assert!(names.answering("nosuch").is_none());
    }
}
