//! The files an installation uses, checked by the tools that will read
//! them: the systemd unit by `systemd-analyze`.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netdb");
const UNIT: &str = include_str!("../dist/netdb.service");

/// `systemd-analyze`, or `None` (SKIP) outside CI when it is missing.
fn systemd_analyze() -> Option<&'static str> {
    let found =
        Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must have systemd-analyze (Debian: systemd)");
        eprintln!("SKIP: systemd-analyze is not installed");
    }
    found.then_some("systemd-analyze")
}

/// The unit with its binary path pointing at the one under test.
fn unit_file(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netdb-unit-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("netdb.service");
    std::fs::write(&path, text.replace("/usr/local/bin/netdb", BIN)).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(sa) = systemd_analyze() else { return };
    let unit = unit_file("ok", UNIT);
    let out = Command::new(sa).args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stderr));
    // The check bites: the same unit naming a missing program is refused.
    let broken = unit_file("broken", &UNIT.replace("/usr/local/bin/netdb", "/nonexistent/netdb"));
    let out = Command::new(sa).args(["verify", "--man=no"]).arg(&broken).output().unwrap();
    assert!(!out.status.success(), "verify accepted a unit whose program does not exist");

    let out = Command::new(sa).args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for netdb.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 3.5, "exposure {exposure} (systemd-analyze security):\n{report}");
    for cap in ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"] {
        assert!(UNIT.contains(cap), "the agent needs {cap}");
    }
    for dir in [unit.parent(), broken.parent()].into_iter().flatten() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
