//! The chaos scenario of `netdb_chaos` on a namespace cluster of this
//! package's agents: five hosts, a fixed seed, every kind of fault, the
//! invariants checked after every heal. Needs root; without CAP_NET_ADMIN
//! it says so and passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use netdb_chaos::netns::Netns;
use netdb_chaos::scenario::{self, Config};
use netdb_chaos::{Backend, FaultKind};
use support::allowed;
use support::cluster::BIN;

mod support;

/// `netdb-netem`, a binary of the netdb-tests package, from the directory
/// of this package's `netdb`: `cargo test --workspace` has built it there
/// (netdb-tests has integration tests, so its binaries are built); a run
/// of this package's tests alone builds it with the cargo running us
/// (which holds no lock on the target dir while tests run).
fn netem() -> PathBuf {
    let dir = Path::new(BIN).parent().expect("the netdb binary is in a directory");
    let path = dir.join("netdb-netem");
    if !path.exists() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-q", "-p", "netdb-tests", "--bin", "netdb-netem"]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo");
        assert!(status.success(), "cargo build -p netdb-tests --bin netdb-netem: {status}");
    }
    assert!(path.exists(), "{} is missing after building it", path.display());
    path
}

#[test]
fn five_hosts_keep_every_invariant_through_every_kind_of_fault() {
    if !allowed("five_hosts_keep_every_invariant_through_every_kind_of_fault") {
        return;
    }
    let start = Instant::now();
    let netem = netem();
    let mut cluster = Netns::up(Path::new(BIN), &netem, "ndch", "10.221.0", 5);
    let config = Config { seed: 13, duration: Duration::from_secs(90) };
    let report = scenario::run(&mut cluster, &config, &AtomicBool::new(false)).expect("chaos run");
    eprintln!("{} ({:.0} s with setup)", report.verdict(), start.elapsed().as_secs_f64());
    let mut kinds: Vec<FaultKind> = report.steps.iter().map(|s| s.fault.kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, cluster.kinds(), "every kind of fault ran");
    let violations: Vec<String> = report.violations().iter().map(|v| v.to_string()).collect();
    assert!(report.passed(), "{} violations:\n{}", violations.len(), violations.join("\n"));
}
