//! Shared by the agent's process tests. Each test binary compiles its own
//! copy and uses only part of it.
#![allow(dead_code)]

pub(crate) mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Whether a test that needs root may run: without CAP_NET_ADMIN it says
/// SKIP and passes, except under CI (`CI` set), where it fails.
pub(crate) fn allowed(test: &str) -> bool {
    if netdb_dataplane::has_net_admin() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run as root (CAP_NET_ADMIN)");
    eprintln!("SKIP {test}: needs CAP_NET_ADMIN (run as root)");
    false
}

/// Whether dockerd, containerd and the Docker CLI are installed: without
/// them the test says SKIP and passes, except under CI (`CI` set), where
/// they are installed (Debian's docker.io, and busybox-static for the test
/// image).
pub(crate) fn docker_installed(test: &str) -> bool {
    let present = || {
        ["dockerd", "containerd", "docker"].iter().all(|cmd| {
            Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    };
    if present() {
        return true;
    }
    if std::env::var_os("CI").is_none() {
        eprintln!("SKIP {test}: needs dockerd (apt-get install -y docker.io busybox-static)");
        return false;
    }
    let o = Command::new("apt-get")
        .args(["install", "-y", "-qq", "docker.io", "busybox-static"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("run apt-get");
    assert!(o.status.success(), "apt-get install docker.io busybox-static: {o:?}");
    assert!(present(), "docker.io installed, yet dockerd, containerd or docker is missing");
    true
}

/// A Python with `packages` from PyPI, in the virtualenv `name` under the
/// target dir, kept across runs (a marker file says the install finished).
/// `None` (the caller skips) when python3, venv or PyPI are missing, except
/// under CI, where that fails the test; `purpose` says what needed them.
pub(crate) fn python_with(name: &str, packages: &[&str], purpose: &str) -> Option<PathBuf> {
    // Tests of one binary run in parallel: one install at a time.
    static VENV: Mutex<()> = Mutex::new(());
    let _one_at_a_time = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let py = venv.join("bin/python");
    let ready = venv.join("netdb-ready");
    if ready.exists() {
        return Some(py);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let venv_dir = venv.to_string_lossy().into_owned();
    let py_path = py.to_string_lossy().into_owned();
    let mut pip = vec!["-m", "pip", "install", "-q"];
    pip.extend_from_slice(packages);
    let steps = [("python3", vec!["-m", "venv", venv_dir.as_str()]), (py_path.as_str(), pip)];
    for (program, args) in &steps {
        let failure = match Command::new(program).args(args).output() {
            Ok(o) if o.status.success() => continue,
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let what = format!("{program} {}: {failure}", args.join(" "));
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs python3 with venv and PyPI (.ci/run installs python3-venv) for {purpose}: {what}"
        );
        eprintln!("SKIP: no Python for {purpose}: {what}");
        return None;
    }
    std::fs::write(&ready, packages.join(" ")).ok()?;
    Some(py)
}
