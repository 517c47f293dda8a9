//! The DNS responder's counters: written by its thread, read by `netdb
//! stats` and `/metrics` on the core loop.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Refusals;

/// Live counters, shared by every listener.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    forwarded: AtomicU64,
    upstream_failed: AtomicU64,
    rate_limited: AtomicU64,
    overloaded: AtomicU64,
    malformed: AtomicU64,
    not_a_query: AtomicU64,
    questions: AtomicU64,
    oversized: AtomicU64,
    strangers: AtomicU64,
    listeners: AtomicU64,
    listen_errors: AtomicU64,
}

/// [`Counters`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DnsTallies {
    /// Queries received from containers (UDP datagrams and TCP messages).
    pub(crate) queries: u64,
    /// Answered from the tables.
    pub(crate) answered: u64,
    /// Handed to the upstream resolvers.
    pub(crate) forwarded: u64,
    /// Forwarded queries no upstream answered in time (SERVFAIL sent).
    pub(crate) upstream_failed: u64,
    /// Dropped: the container asked faster than its rate limit.
    pub(crate) rate_limited: u64,
    /// Refused: too many forwarded queries or TCP connections in flight.
    pub(crate) overloaded: u64,
    /// Refused: not a DNS message.
    pub(crate) malformed: u64,
    /// Refused: a response, or not a standard query.
    pub(crate) not_a_query: u64,
    /// Refused: other than one question.
    pub(crate) questions: u64,
    /// Refused: larger than the transport allows.
    pub(crate) oversized: u64,
    /// Dropped: asked at a gateway by none of its network's containers.
    pub(crate) strangers: u64,
    /// Containers with a listener now.
    pub(crate) listeners: u64,
    /// Listeners that could not be opened (retried).
    pub(crate) listen_errors: u64,
}

impl DnsTallies {
    /// Every counter, named as `netdb stats` shows them.
    pub(crate) fn named(&self) -> [(&'static str, u64); 13] {
        [
            ("dns_queries", self.queries),
            ("dns_answered", self.answered),
            ("dns_forwarded", self.forwarded),
            ("dns_upstream_failed", self.upstream_failed),
            ("dns_rate_limited", self.rate_limited),
            ("dns_overloaded", self.overloaded),
            ("dns_refused:malformed", self.malformed),
            ("dns_refused:not_a_query", self.not_a_query),
            ("dns_refused:questions", self.questions),
            ("dns_refused:oversized", self.oversized),
            ("dns_refused:stranger", self.strangers),
            ("dns_listeners", self.listeners),
            ("dns_listen_errors", self.listen_errors),
        ]
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn read(&self) -> DnsTallies {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsTallies {
            queries: r(&self.queries),
            answered: r(&self.answered),
            forwarded: r(&self.forwarded),
            upstream_failed: r(&self.upstream_failed),
            rate_limited: r(&self.rate_limited),
            overloaded: r(&self.overloaded),
            malformed: r(&self.malformed),
            not_a_query: r(&self.not_a_query),
            questions: r(&self.questions),
            oversized: r(&self.oversized),
            strangers: r(&self.strangers),
            listeners: r(&self.listeners),
            listen_errors: r(&self.listen_errors),
        }
    }

    pub(crate) fn query(&self) {
        bump(&self.queries, 1);
    }

    pub(crate) fn answered(&self) {
        bump(&self.answered, 1);
    }

    pub(crate) fn forwarded(&self) {
        bump(&self.forwarded, 1);
    }

    pub(crate) fn upstream_failed(&self) {
        bump(&self.upstream_failed, 1);
    }

    pub(crate) fn rate_limited(&self) {
        bump(&self.rate_limited, 1);
    }

    pub(crate) fn overloaded(&self) {
        bump(&self.overloaded, 1);
    }

    pub(crate) fn refused(&self, r: &Refusals) {
        bump(&self.malformed, r.malformed);
        bump(&self.not_a_query, r.not_a_query);
        bump(&self.questions, r.questions);
        bump(&self.oversized, r.oversized);
        bump(&self.strangers, r.strangers);
    }

    pub(crate) fn set_listeners(&self, n: usize) {
        self.listeners.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn listen_error(&self) {
        bump(&self.listen_errors, 1);
    }
}
