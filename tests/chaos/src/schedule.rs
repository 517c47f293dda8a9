//! A random but reproducible schedule of faults: the same seed, hosts,
//! kinds and duration give the same steps.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::{Fault, FaultKind};

/// What a step costs besides its calm and fault periods (heal,
/// convergence, checks), to fit steps into a duration.
const OVERHEAD: Duration = Duration::from_secs(2);

/// One step: a calm period, then a fault held for a while, then its heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Before the fault: writes go on and no member may be suspected.
    pub calm: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it stays in force before the heal.
    pub hold: Duration,
}

/// Steps for `hosts` hosts (at least 2) filling about `duration`: every
/// kind of `kinds` once first (in a random order), then random ones.
pub fn schedule(seed: u64, hosts: usize, kinds: &[FaultKind], duration: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = kinds.to_vec();
    order.shuffle(&mut rng);
    let mut steps: Vec<Step> = order.into_iter().map(|k| step(&mut rng, hosts, k)).collect();
    let spent = |steps: &[Step]| steps.iter().map(|s| s.calm + s.hold + OVERHEAD).sum::<Duration>();
    while !kinds.is_empty() && spent(&steps) < duration {
        let kind = kinds[rng.random_range(0..kinds.len())];
        steps.push(step(&mut rng, hosts, kind));
    }
    steps
}

fn step(rng: &mut StdRng, hosts: usize, kind: FaultKind) -> Step {
    let calm = Duration::from_millis(rng.random_range(2000..4000));
    let hold = Duration::from_millis(rng.random_range(3000..8000));
    Step { calm, fault: fault(rng, hosts, kind), hold }
}

/// A fault of `kind` on a random minority of the hosts (one, or two of
/// five or more).
fn fault(rng: &mut StdRng, hosts: usize, kind: FaultKind) -> Fault {
    let mut all: Vec<usize> = (1..=hosts).collect();
    all.shuffle(rng);
    let few = if hosts >= 5 { rng.random_range(1..=2) } else { 1 };
    let mut f = Fault {
        kind,
        hosts: Vec::new(),
        groups: Vec::new(),
        percent: 0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        kbit: 0,
    };
    match kind {
        FaultKind::Kill | FaultKind::Pause | FaultKind::Partition => f.hosts = vec![all[0]],
        FaultKind::Split => {
            let cut = rng.random_range(1..=hosts / 2);
            let (a, b) = all.split_at(cut);
            f.groups = vec![sorted(a), sorted(b)];
        }
        FaultKind::Loss => {
            f.hosts = sorted(&all[..few]);
            f.percent = rng.random_range(10..=40);
        }
        FaultKind::Delay => {
            f.hosts = sorted(&all[..few]);
            f.delay = Duration::from_millis(rng.random_range(50..=250));
            f.jitter = Duration::from_millis(rng.random_range(0..=40));
        }
        FaultKind::Bandwidth => {
            f.hosts = sorted(&all[..few]);
            f.kbit = rng.random_range(128..=1024);
        }
        FaultKind::Busy => {}
    }
    f
}

fn sorted(hosts: &[usize]) -> Vec<usize> {
    let mut v = hosts.to_vec();
    v.sort_unstable();
    v
}

/// A fault in words, for the timeline: `partition h3`, `delay h1,h4 120ms±20ms`.
pub fn describe(f: &Fault) -> String {
    let hosts = f.hosts.iter().map(|h| format!("h{h}")).collect::<Vec<_>>().join(",");
    match f.kind {
        FaultKind::Kill => format!("kill {hosts}"),
        FaultKind::Pause => format!("pause {hosts}"),
        FaultKind::Partition => format!("partition {hosts}"),
        FaultKind::Split => {
            let groups: Vec<String> = f
                .groups
                .iter()
                .map(|g| g.iter().map(|h| format!("h{h}")).collect::<Vec<_>>().join(","))
                .collect();
            format!("split {}", groups.join(" | "))
        }
        FaultKind::Loss => format!("loss {hosts} {}%", f.percent),
        FaultKind::Delay => {
            format!("delay {hosts} {}ms±{}ms", f.delay.as_millis(), f.jitter.as_millis())
        }
        FaultKind::Bandwidth => format!("bandwidth {hosts} {}kbit", f.kbit),
        FaultKind::Busy => "busy (both cores)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [FaultKind; 8] = FaultKind::ALL;

    #[test]
    fn a_seed_gives_one_schedule_and_another_seed_another() {
        let a = schedule(7, 5, &ALL, Duration::from_secs(120));
        assert_eq!(a, schedule(7, 5, &ALL, Duration::from_secs(120)));
        assert_ne!(a, schedule(8, 5, &ALL, Duration::from_secs(120)));
    }

    #[test]
    fn even_a_short_run_has_every_kind_and_a_long_one_fills_its_time() {
        let short = schedule(1, 5, &ALL, Duration::from_secs(1));
        let mut kinds: Vec<FaultKind> = short.iter().map(|s| s.fault.kind).collect();
        kinds.sort();
        assert_eq!(kinds, ALL.to_vec());
        let long = schedule(1, 5, &ALL, Duration::from_secs(600));
        let spent: Duration = long.iter().map(|s| s.calm + s.hold + OVERHEAD).sum();
        assert!(spent >= Duration::from_secs(600) && long.len() > ALL.len(), "{spent:?}");
    }

    #[test]
    fn faults_hit_a_minority_and_splits_cover_every_host() {
        for s in schedule(3, 5, &ALL, Duration::from_secs(900)) {
            assert!(s.fault.hosts.len() <= 2, "{}", describe(&s.fault));
            if s.fault.kind == FaultKind::Split {
                let mut all: Vec<usize> = s.fault.groups.concat();
                all.sort();
                assert_eq!(all, vec![1, 2, 3, 4, 5]);
                assert!(s.fault.groups.iter().all(|g| !g.is_empty()));
            }
        }
    }
}
