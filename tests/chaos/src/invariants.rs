//! The invariants, as checks of what agents and kernels report against
//! each other and against the runner's [`History`]: pure functions of
//! their inputs, so the checker itself is tested on made-up ones.

use std::collections::BTreeMap;
use std::fmt;

use crate::cluster::{Ep, Pairs};
use crate::history::{Expect, History};

/// A user-table entry as an agent lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The owner's node name (`h3`).
    pub owner: String,
    /// Its value.
    pub value: String,
}

/// An agent's user table: key → entry.
pub type Table = BTreeMap<String, Entry>;

/// What an invariant says, one per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// (a) Every live agent holds the same tables and endpoints.
    Identical,
    /// (b) Nothing an owner deleted comes back.
    Resurrected,
    /// (c) Nothing a live owner wrote is lost.
    Lost,
    /// (h) Every key holds the newest value its owner wrote.
    Stale,
    /// A key nobody wrote.
    Unknown,
    /// (d) Every host's FDB and neighbor entries are what the tables say.
    Kernel,
    /// (e) Every container reaches every other one.
    Reach,
    /// (f) Names resolve as the tables say.
    Names,
    /// (g) No member is suspect or failed while no fault is in force
    /// (Busy aside).
    Suspicion,
    /// The cluster did not converge within the bound.
    Converged,
}

impl Check {
    /// The check's name in the timeline and the report.
    pub fn name(self) -> &'static str {
        match self {
            Check::Identical => "identical",
            Check::Resurrected => "resurrected",
            Check::Lost => "lost",
            Check::Stale => "stale",
            Check::Unknown => "unknown",
            Check::Kernel => "kernel",
            Check::Reach => "reach",
            Check::Names => "names",
            Check::Suspicion => "suspicion",
            Check::Converged => "converged",
        }
    }
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub check: Check,
    /// Where and how.
    pub detail: String,
}

impl Violation {
    /// A violation of `check`.
    pub fn new(check: Check, detail: impl Into<String>) -> Violation {
        Violation { check, detail: detail.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check.name(), self.detail)
    }
}

/// The name the agents give host `h`.
pub fn node_name(h: usize) -> String {
    format!("h{h}")
}

/// Checks (a), (b), (c), (h) on the tables of the live hosts, `views`
/// as (host, table), against what `history` expects.
pub fn tables(views: &[(usize, Table)], history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some((first, reference)) = views.first() {
        for (h, table) in &views[1..] {
            if table != reference {
                let differ = keys_differing(reference, table);
                out.push(Violation::new(
                    Check::Identical,
                    format!("h{h}'s table differs from h{first}'s in {differ:?}"),
                ));
            }
        }
    }
    // One violation per key and finding, naming every host it holds on:
    // a bug that reaches every host says so once, not once per host.
    let mut found: BTreeMap<(Check, String), Vec<usize>> = BTreeMap::new();
    let expected = history.expected();
    for (h, table) in views {
        for (key, expect) in &expected {
            let finding = match (expect, table.get(*key)) {
                (Expect::Value { owner, value }, None) => {
                    Some((Check::Lost, format!("{key} (h{owner} wrote {value:?} last) missing")))
                }
                (Expect::Value { owner, value }, Some(e))
                    if e.value != *value || e.owner != node_name(*owner) =>
                {
                    let held = format!("{key} = {:?} from {}", e.value, e.owner);
                    Some((Check::Stale, format!("{held}, h{owner} wrote {value:?} last,")))
                }
                (Expect::Deleted, Some(e)) => Some((
                    Check::Resurrected,
                    format!("{key} = {:?}, which {} deleted,", e.value, e.owner),
                )),
                _ => None,
            };
            if let Some(finding) = finding {
                found.entry(finding).or_default().push(*h);
            }
        }
        for key in table.keys().filter(|k| !expected.contains_key(k.as_str())) {
            found.entry((Check::Unknown, format!("{key}, never written,"))).or_default().push(*h);
        }
    }
    out.extend(found.into_iter().map(|((check, what), hosts)| {
        let on: Vec<String> = hosts.iter().map(|h| format!("h{h}")).collect();
        Violation::new(check, format!("{what} on {}", on.join(",")))
    }));
    out
}

/// Keys on which two tables differ (at most a few, for the message).
fn keys_differing(a: &Table, b: &Table) -> Vec<String> {
    let mut keys: Vec<String> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.dedup();
    keys.truncate(5);
    keys
}

/// Check (a) on endpoints: every live host lists the same ones, and as
/// many as there are `containers`.
pub fn endpoints(views: &[(usize, Vec<Ep>)], containers: usize) -> Vec<Violation> {
    let mut out = Vec::new();
    let sorted = |eps: &[Ep]| {
        let mut v = eps.to_vec();
        v.sort();
        v
    };
    let reference = views.first().map(|(h, eps)| (h, sorted(eps)));
    for (h, eps) in views {
        if eps.len() != containers {
            out.push(Violation::new(
                Check::Identical,
                format!("h{h} lists {} endpoints, {containers} are attached", eps.len()),
            ));
        }
        if let Some((first, reference)) = &reference
            && sorted(eps) != *reference
        {
            out.push(Violation::new(
                Check::Identical,
                format!("h{h}'s endpoints differ from h{first}'s"),
            ));
        }
    }
    out
}

/// Check (d) on host `h`: its (FDB, neighbor) entries against what the
/// tables imply.
pub fn kernel(h: usize, actual: &(Pairs, Pairs), expected: &(Pairs, Pairs)) -> Option<Violation> {
    let missing = |a: &Pairs, e: &Pairs| e.difference(a).cloned().collect::<Vec<_>>();
    let (fdb_missing, fdb_extra) =
        (missing(&actual.0, &expected.0), missing(&expected.0, &actual.0));
    let (nb_missing, nb_extra) = (missing(&actual.1, &expected.1), missing(&expected.1, &actual.1));
    if fdb_missing.is_empty()
        && fdb_extra.is_empty()
        && nb_missing.is_empty()
        && nb_extra.is_empty()
    {
        return None;
    }
    Some(Violation::new(
        Check::Kernel,
        format!(
            "h{h}: FDB missing {fdb_missing:?} extra {fdb_extra:?}; \
             neighbors missing {nb_missing:?} extra {nb_extra:?}"
        ),
    ))
}

/// Check (g) on what host `h` lists as members, (name, state), when no
/// fault but possibly Busy is in force: every one is alive.
pub fn members(h: usize, members: &[(String, String)], busy: bool) -> Vec<Violation> {
    let when = if busy { "while both cores were busy" } else { "with no fault in force" };
    members
        .iter()
        .filter(|(_, state)| state != "alive")
        .map(|(name, state)| {
            Violation::new(Check::Suspicion, format!("h{h} saw {name} {state} {when}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: usize, value: &str) -> Entry {
        Entry { owner: node_name(owner), value: value.into() }
    }

    fn table(entries: &[(&str, usize, &str)]) -> Table {
        entries.iter().map(|(k, o, v)| (k.to_string(), entry(*o, v))).collect()
    }

    fn checks(v: &[Violation]) -> Vec<Check> {
        v.iter().map(|v| v.check).collect()
    }

    fn history() -> History {
        let mut h = History::default();
        h.put(1, "h1-k1", "a");
        h.put(1, "h1-k1", "b");
        h.put(2, "h2-k1", "x");
        h.delete(2, "h2-k1");
        h
    }

    #[test]
    fn agreeing_tables_that_match_the_history_pass() {
        let t = table(&[("h1-k1", 1, "b")]);
        assert_eq!(tables(&[(1, t.clone()), (2, t)], &history()), vec![]);
    }

    #[test]
    fn a_resurrected_deleted_key_is_reported() {
        let t = table(&[("h1-k1", 1, "b"), ("h2-k1", 2, "x")]);
        assert_eq!(checks(&tables(&[(1, t)], &history())), vec![Check::Resurrected]);
    }

    #[test]
    fn a_lost_write_is_reported_once_with_every_host_that_lost_it() {
        let v = tables(&[(3, Table::new()), (4, Table::new())], &history());
        assert_eq!(checks(&v), vec![Check::Lost]);
        assert!(v[0].detail.ends_with("missing on h3,h4"), "{}", v[0]);
    }

    #[test]
    fn a_stale_value_and_a_wrong_owner_are_reported() {
        let stale = table(&[("h1-k1", 1, "a")]);
        let foreign = table(&[("h1-k1", 2, "b")]);
        assert_eq!(checks(&tables(&[(1, stale)], &history())), vec![Check::Stale]);
        assert_eq!(checks(&tables(&[(1, foreign)], &history())), vec![Check::Stale]);
    }

    #[test]
    fn diverging_hosts_and_unknown_keys_are_reported() {
        let good = table(&[("h1-k1", 1, "b")]);
        let extra = table(&[("h1-k1", 1, "b"), ("h9-k9", 9, "?")]);
        let v = tables(&[(1, good), (2, extra)], &history());
        assert_eq!(checks(&v), vec![Check::Identical, Check::Unknown]);
        assert!(v[0].detail.contains("h9-k9"), "{}", v[0]);
    }

    #[test]
    fn endpoints_must_agree_and_all_be_listed() {
        let ep =
            |n: &str| (n.to_string(), "h1".to_string(), "10.0.0.2".to_string(), "m".to_string());
        let both = vec![ep("a"), ep("b")];
        assert_eq!(
            endpoints(&[(1, both.clone()), (2, both.iter().rev().cloned().collect())], 2),
            vec![]
        );
        let v = endpoints(&[(1, both), (2, vec![ep("a")])], 2);
        assert_eq!(checks(&v), vec![Check::Identical, Check::Identical]);
    }

    #[test]
    fn kernel_entries_must_equal_the_tables() {
        let pairs = |p: &[(&str, &str)]| -> Pairs {
            p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let want = (pairs(&[("m1", "10.0.0.2")]), pairs(&[("10.1.0.2", "m1")]));
        assert_eq!(kernel(1, &want.clone(), &want), None);
        let stale = (pairs(&[("m1", "10.0.0.2"), ("m2", "10.0.0.3")]), want.1.clone());
        let v = kernel(1, &stale, &want).expect("an extra FDB entry is a violation");
        assert!(v.detail.contains("m2"), "{v}");
        assert!(kernel(1, &(Pairs::new(), want.1.clone()), &want).is_some());
    }

    #[test]
    fn a_suspect_member_in_a_calm_or_busy_period_is_reported() {
        let alive = |n: &str| (n.to_string(), "alive".to_string());
        assert_eq!(members(1, &[alive("h1"), alive("h2")], false), vec![]);
        let suspect = [alive("h1"), ("h2".to_string(), "suspect".to_string())];
        assert_eq!(checks(&members(1, &suspect, false)), vec![Check::Suspicion]);
        let v = members(1, &suspect, true);
        assert!(v[0].detail.contains("busy"), "{}", v[0]);
    }
}
