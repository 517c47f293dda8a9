//! Two networks' names, shared by the DNS tests and the fuzzing entry so
//! that the fuzzer asks of the tables the tests describe.

use netdb::Entry;

use crate::overlay::Names;
use crate::overlay::record_entry as ep;

/// The names `entries` (of one network's `endpoints` table) hold.
pub(crate) fn names(entries: &[Entry]) -> Names {
    Names::from_entries(entries.iter().map(|e| ("", e)))
}

/// Network blue: web (alias www) on h1, db on h2, three endpoints of
/// service api, and old, whose host h3 is failed.
pub(crate) fn blue() -> Names {
    let mut old = ep("h3", 1, "old", "10.1.0.9", "", &[]);
    old.hidden = true;
    names(&[
        ep("h1", 5, "web", "10.1.0.2", "", &["www"]),
        ep("h2", 6, "db", "10.1.0.3", "", &[]),
        ep("h1", 7, "api1", "10.1.0.11", "api", &[]),
        ep("h2", 8, "api2", "10.1.0.12", "api", &[]),
        ep("h3", 9, "api3", "10.1.0.13", "api", &[]),
        old,
    ])
}

/// Network green: a web of its own, on h2.
pub(crate) fn green() -> Names {
    names(&[ep("h2", 3, "web", "10.2.0.7", "", &[])])
}
