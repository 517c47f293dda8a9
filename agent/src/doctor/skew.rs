//! Clock skew against the peers, when keys rotate on schedule: each
//! epoch's key derives from the wall clock, so members whose clocks drift
//! apart stop understanding each other. Measured by the running agent: a
//! `keys list` reports each member's clock against its own.

use std::time::Duration;

use netdb_api::{self as api, netdb_client::NetdbClient};
use tonic::transport::Channel;

use super::{Check, Finding};
use crate::client::show_skew;
use crate::config::Settings;

const NAME: &str = "clock skew";

/// A keyring command waits up to 5 s for silent members.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Skew worth a warning: NTP keeps hosts within milliseconds, so a second
/// means a clock that is not synchronised, long before it breaks anything.
const WARN_MS: i64 = 1_000;

/// The largest skew that still counts as healthy. Members hold the keys of
/// the previous, current and next epoch, so gossip survives skews up to an
/// epoch, and keyring commands (this measurement among them) are refused
/// beyond `key_query_max_age`. A quarter epoch and half the max age leave
/// room for the clocks to keep drifting until someone looks again, and for
/// the measurement's own error (half a round trip).
pub(super) fn bound(epoch: Duration, max_age: Duration) -> Duration {
    (epoch / 4).min(max_age / 2)
}

pub(super) async fn check(s: &Settings, agent: &mut Option<NetdbClient<Channel>>) -> Check {
    let Some((_, epoch)) = &s.scheduled else {
        return Check::new(
            NAME,
            Finding::Skip,
            "keys do not rotate on schedule (no --cluster-secret-file): clocks do not matter to gossip",
        );
    };
    let bound = bound(*epoch, s.core.key_query_max_age);
    let Some(c) = agent.as_mut() else {
        return Check::new(
            NAME,
            Finding::Warn,
            format!("no agent answers at {}: skew against the peers not measured", s.api),
        )
        .fix("start the agent (netdb agent with these settings), then run doctor again");
    };
    let req = api::KeysRequest { op: "list".into(), key: String::new() };
    let reply = match tokio::time::timeout(LIST_TIMEOUT, c.keys(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            return Check::new(
                NAME,
                Finding::Warn,
                format!("the agent at {} cannot list keys: {}", s.api, e.message()),
            )
            .fix("run the agent with --cluster-secret-file, at this version");
        }
        Err(_) => {
            return Check::new(
                NAME,
                Finding::Warn,
                format!("the agent at {} did not answer a key list in time", s.api),
            );
        }
    };
    judge(reply.steps.into_iter().next().unwrap_or_default(), bound)
}

/// The verdict on one `keys list`: fail when any member is surely beyond
/// `bound` (its skew minus the measurement's error), warn for unsynchronised
/// clocks, silent or older members.
fn judge(step: api::KeyStep, bound: Duration) -> Check {
    let bound_ms = bound.as_millis() as i64;
    let mut far = Vec::new();
    let mut loose = Vec::new();
    let mut unknown = Vec::new();
    let mut worst = 0i64;
    for r in &step.results {
        let Some(skew) = r.skew_ms else {
            unknown.push(r.node.clone());
            continue;
        };
        worst = worst.max(skew.saturating_abs());
        let surely = skew.saturating_abs().saturating_sub((r.rtt_ms / 2) as i64);
        let shown = format!("{} {}", r.node, show_skew(skew));
        if surely > bound_ms {
            far.push(shown);
        } else if surely > WARN_MS {
            loose.push(shown);
        }
    }
    let sync = "synchronise the clocks (chrony or systemd-timesyncd; check with `chronyc tracking` or `timedatectl`)";
    if !far.is_empty() {
        return Check::new(
            NAME,
            Finding::Fail,
            format!("clocks beyond {}s of this host's: {}", bound.as_secs(), far.join(", ")),
        )
        .fix(format!("{sync} on those members and here"));
    }
    if !step.missing.is_empty() {
        return Check::new(
            NAME,
            Finding::Warn,
            format!(
                "no answer from {}: down or unreachable, or a clock beyond {}s (keyring commands are refused then)",
                step.missing.join(", "),
                bound.as_secs() * 2
            ),
        )
        .fix(format!("check that they run and are reachable (netdb members); {sync}"));
    }
    if !loose.is_empty() {
        return Check::new(
            NAME,
            Finding::Warn,
            format!("clocks more than 1s off: {}", loose.join(", ")),
        )
        .fix(sync);
    }
    if !unknown.is_empty() {
        return Check::new(
            NAME,
            Finding::Warn,
            format!("{} do not report their clock (an older netdb)", unknown.join(", ")),
        )
        .fix("upgrade them");
    }
    Check::new(
        NAME,
        Finding::Pass,
        format!(
            "{} member(s), largest skew {} (bound {}s)",
            step.results.len(),
            show_skew(worst),
            bound.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(node: &str, skew_ms: Option<i64>, rtt_ms: u64) -> api::KeyNodeResult {
        api::KeyNodeResult { node: node.into(), ok: true, skew_ms, rtt_ms, ..Default::default() }
    }

    #[test]
    fn the_bound_is_a_quarter_epoch_or_half_the_command_max_age() {
        let max_age = Duration::from_secs(60);
        assert_eq!(bound(Duration::from_secs(12 * 3600), max_age), Duration::from_secs(30));
        assert_eq!(bound(Duration::from_secs(60), max_age), Duration::from_secs(15));
    }

    #[test]
    fn members_beyond_the_bound_fail_by_name() {
        let b = Duration::from_secs(30);
        let step = |results| api::KeyStep { results, ..Default::default() };
        let ok = judge(step(vec![result("a", Some(0), 0), result("b", Some(-12), 2)]), b);
        assert_eq!(ok.status, Finding::Pass, "{}", ok.detail);
        let far = judge(step(vec![result("a", Some(0), 0), result("b", Some(45_000), 4)]), b);
        assert_eq!(far.status, Finding::Fail);
        assert!(
            far.detail.contains("b +45.0s") && far.fix.unwrap().contains("chrony"),
            "{}",
            far.detail
        );
        let unsure = judge(step(vec![result("b", Some(30_500), 2_000)]), b);
        assert_eq!(unsure.status, Finding::Warn, "within the error of the measurement");
        let old = judge(step(vec![result("b", None, 0)]), b);
        assert_eq!(old.status, Finding::Warn);
        let silent =
            api::KeyStep { missing: vec!["c".into()], ..step(vec![result("a", Some(0), 0)]) };
        assert_eq!(judge(silent, b).status, Finding::Warn);
    }
}
