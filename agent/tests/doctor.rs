//! `netdb doctor` run as a user would, against this host: it passes when
//! the host is fit, and fails with the fix when a requirement is taken
//! away. Tests of the data-plane checks need root (CAP_NET_ADMIN); without
//! it they say SKIP and pass, except under CI (`CI` set), where they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::allowed;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_netdb");

/// A scratch directory and the agents started in it, gone on drop.
struct Scratch {
    dir: PathBuf,
    agents: Vec<Child>,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("netdb-doctor-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir, agents: Vec::new() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn api(&self, name: &str) -> String {
        format!("unix:{}", self.path(&format!("{name}.sock")))
    }

    /// Starts `program args`, logging to NAME.log; its pid.
    fn start(&mut self, name: &str, program: &str, args: &[&str]) -> u32 {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        let pid = child.id();
        self.agents.push(child);
        pid
    }

    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > Duration::from_secs(30) {
                let logs: Vec<String> = std::fs::read_dir(&self.dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                panic!("timed out waiting until {what}\n{}", logs.join("\n---\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn netdb(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run netdb")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Doctor's checks as JSON, by name.
fn checks(args: &[&str]) -> (bool, Vec<Value>) {
    let mut full = vec!["doctor"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = netdb(&full);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor -o json is not JSON ({e}): {}", text(&out)));
    (out.status.success(), v.as_array().expect("an array of checks").clone())
}

fn check<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no check {name}: {all:?}"))
}

fn failed(all: &[Value]) -> Vec<&Value> {
    all.iter().filter(|c| c["status"] == "fail").collect()
}

#[test]
fn a_fit_host_passes_every_check() {
    if !allowed("a_fit_host_passes_every_check") {
        return;
    }
    let s = Scratch::new("fit");
    let out = netdb(&[
        "--api",
        &s.api("none"),
        "doctor",
        "--bind",
        "127.0.80.1:7946",
        "--data-dir",
        &s.path("data"),
    ]);
    assert!(out.status.success(), "doctor failed on a fit host:\n{}", text(&out));
    let shown = text(&out);
    for name in ["privilege", "netns", "bridge", "vxlan", "veth", "gossip udp", "data dir"] {
        let line = shown.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
        assert!(line.starts_with("PASS"), "{name}: {line}\n{shown}");
    }
    assert!(!std::path::Path::new(&s.path("data")).exists(), "doctor creates nothing");
}

#[test]
fn json_output_is_one_object_per_check() {
    let s = Scratch::new("json");
    let (ok, all) =
        checks(&["--api", &s.api("none"), "--bind", "127.0.80.2:7946", "--no-dataplane"]);
    assert!(ok, "{all:?}");
    let mut names: Vec<&str> = all.iter().map(|c| c["check"].as_str().unwrap()).collect();
    for c in &all {
        let status = c["status"].as_str().unwrap();
        assert!(["pass", "warn", "fail", "skip"].contains(&status), "{c}");
        assert!(c["detail"].is_string() && (c["fix"].is_null() || c["fix"].is_string()), "{c}");
    }
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "one object per check: {names:?}");
    for expected in [
        "settings",
        "privilege",
        "vxlan",
        "nftables",
        "gossip udp",
        "gossip tcp",
        "underlay mtu",
        "dns",
        "clock skew",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    assert_eq!(check(&all, "privilege")["status"], "skip", "--no-dataplane needs no privilege");
}

#[test]
fn a_gossip_port_taken_by_another_process_fails_naming_it_and_the_fix() {
    let s = Scratch::new("taken");
    let _taken = std::net::UdpSocket::bind("127.0.81.1:7946").unwrap();
    let (ok, all) =
        checks(&["--api", &s.api("none"), "--bind", "127.0.81.1:7946", "--no-dataplane"]);
    assert!(!ok, "doctor exits non-zero when a check fails");
    let udp = check(&all, "gossip udp");
    assert_eq!(udp["status"], "fail", "{udp}");
    let me = std::process::id();
    let detail = udp["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("(pid {me})")), "the holder is named: {detail}");
    let fix = udp["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("kill {me}")) && fix.contains("--bind"), "{fix}");
    assert_eq!(failed(&all).len(), 1, "only the port fails: {all:?}");
    // As people read it, with the exit status a script checks.
    let out =
        netdb(&["--api", &s.api("none"), "doctor", "--bind", "127.0.81.1:7946", "--no-dataplane"]);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("FAIL  gossip udp") && shown.contains("fix: stop it"), "{shown}");
}

#[test]
fn a_key_file_readable_by_others_fails_with_chmod() {
    let s = Scratch::new("keymode");
    let key = s.path("keys");
    std::fs::write(&key, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "--api",
        &s.api("none"),
        "--bind",
        "127.0.81.2:7946",
        "--no-dataplane",
        "--key-file",
        &key,
    ];
    let (ok, all) = checks(&args);
    assert!(!ok);
    let c = check(&all, "key file");
    assert_eq!(c["status"], "fail", "{c}");
    assert_eq!(c["fix"], format!("chmod 600 {key}"));
    assert!(c["detail"].as_str().unwrap().contains("0644"), "{c}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, all) = checks(&args);
    assert!(ok, "{all:?}");
    assert_eq!(check(&all, "key file")["status"], "pass");
}

#[test]
fn a_port_held_by_a_running_agent_passes() {
    let mut s = Scratch::new("agent");
    let api = s.api("n1");
    let pid = s.start(
        "n1",
        BIN,
        &["--api", &api, "agent", "--no-dataplane", "--name", "n1", "--bind", "127.0.82.1:7946"],
    );
    let sock = s.path("n1.sock");
    s.wait("the agent serves its API", || std::path::Path::new(&sock).exists());
    let (ok, all) = checks(&["--api", &api, "--bind", "127.0.82.1:7946", "--no-dataplane"]);
    assert!(ok, "{all:?}");
    for name in ["gossip udp", "gossip tcp"] {
        let c = check(&all, name);
        assert_eq!(c["status"], "pass", "{c}");
        let detail = c["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("held by netdb agent (pid {pid})")), "{detail}");
    }
}

#[test]
fn a_data_dir_locked_by_another_agent_fails_and_the_agent_running_here_passes() {
    if !allowed("a_data_dir_locked_by_another_agent_fails_and_the_agent_running_here_passes") {
        return;
    }
    let mut s = Scratch::new("lock");
    let data = s.path("data");
    let api = s.api("n1");
    // The agent runs with its data plane in a namespace of its own, so it
    // touches nothing of this host's; its overlay namespace is pinned under
    // a name of the test's, removed at the end.
    let overlay = format!("ndt-lock-{}", std::process::id());
    let script = format!(
        "ip link set lo up && exec {BIN} --api {api} agent --name n1 --bind 127.0.83.1:7946 --data-dir {data} --overlay-netns {overlay}"
    );
    let pid = s.start("n1", "unshare", &["--net", "sh", "-c", &script]);
    let lock = s.path("data/lock");
    s.wait("the agent locks its data dir", || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| l.contains(&format!(" {pid} ")))
            && std::path::Path::new(&lock).exists()
    });
    let (ok, all) =
        checks(&["--api", &s.api("none"), "--bind", "127.0.83.2:7946", "--data-dir", &data]);
    assert!(!ok);
    let c = check(&all, "data dir");
    assert_eq!(c["status"], "fail", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("another netdb agent (pid {pid})")), "{detail}");
    assert!(c["fix"].as_str().unwrap().contains("--data-dir"), "{c}");
    // The same settings, asked in the agent's namespace: it is the agent
    // running here, so its lock and its port are fine.
    let target = pid.to_string();
    let out = Command::new("nsenter")
        .args([
            "-t",
            &target,
            "-n",
            BIN,
            "doctor",
            "--bind",
            "127.0.83.1:7946",
            "--data-dir",
            &data,
        ])
        .args(["--api", &api, "-o", "json"])
        .output()
        .unwrap();
    let all: Vec<Value> =
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone();
    let _ = Command::new("ip").args(["netns", "del", &overlay]).status();
    for name in ["data dir", "gossip udp"] {
        assert_eq!(check(&all, name)["status"], "pass", "{}", check(&all, name));
    }
}

#[test]
fn scheduled_keys_report_each_members_clock_skew_and_doctor_checks_it() {
    let mut s = Scratch::new("skew");
    let secret = s.path("secret");
    std::fs::write(&secret, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC1zZWNyZXQ=\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let addr = |i: usize| format!("127.0.84.{}:7946", i + 1);
    for i in 0..3 {
        let name = format!("n{}", i + 1);
        let api = s.api(&name);
        let args = [
            "--api",
            &api,
            "agent",
            "--no-dataplane",
            "--name",
            &name,
            "--bind",
            &addr(i),
            "--join",
            &addr(0),
            "--cluster-secret-file",
            &secret,
        ];
        s.start(&name, BIN, &args);
    }
    let api = s.api("n1");
    let list = || netdb(&["--api", &api, "keys", "list", "-o", "json"]);
    s.wait("n1 lists the keys of all 3 members", || {
        let out = list();
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| v["steps"][0]["results"].as_array().is_some_and(|r| r.len() == 3))
    });
    let v: Value = serde_json::from_slice(&list().stdout).unwrap();
    for r in v["steps"][0]["results"].as_array().unwrap() {
        let skew = r["skew_ms"].as_i64().unwrap_or_else(|| panic!("no skew: {r}"));
        assert!(skew.abs() < 1_000, "one host, one clock: {r}");
    }
    // Keyring changes stay refused with scheduled keys.
    let out = netdb(&["--api", &api, "keys", "rotate"]);
    assert!(!out.status.success() && text(&out).contains("rotate on schedule"), "{}", text(&out));
    let (ok, all) = checks(&[
        "--api",
        &api,
        "--bind",
        &addr(0),
        "--no-dataplane",
        "--cluster-secret-file",
        &secret,
    ]);
    assert!(ok, "{all:?}");
    let c = check(&all, "clock skew");
    assert_eq!(c["status"], "pass", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("3 member(s)"), "{c}");
    // Without a running agent, the skew is not measured: a warning.
    let (_, all) = checks(&[
        "--api",
        &s.api("none"),
        "--bind",
        "127.0.84.9:7946",
        "--no-dataplane",
        "--cluster-secret-file",
        &secret,
    ]);
    assert_eq!(check(&all, "clock skew")["status"], "warn");
}

#[test]
fn the_overlay_namespace_check_tells_a_stale_pin_and_bridge_netfilter_apart() {
    if !allowed("the_overlay_namespace_check_tells_a_stale_pin_and_bridge_netfilter_apart") {
        return;
    }
    let s = Scratch::new("ovns");
    let overlay = |pin: &str| {
        let (_, all) =
            checks(&["--api", &s.api("none"), "--bind", "127.0.80.3:7946", "--overlay-netns", pin]);
        check(&all, "overlay netns").clone()
    };
    // Not made yet: the agent will.
    let absent = overlay(&s.path("absent"));
    assert_eq!(absent["status"], "pass", "{absent}");
    assert!(absent["detail"].as_str().unwrap().contains("not made yet"), "{absent}");
    // A file left where the pin was (its mount gone with a private mount
    // namespace).
    std::fs::write(s.path("stale"), b"").unwrap();
    let stale = overlay(&s.path("stale"));
    assert_eq!(stale["status"], "warn", "{stale}");
    assert!(stale["fix"].as_str().unwrap().contains("nsenter"), "{stale}");
    // A real namespace, `ip netns add`'s: bridge netfilter on there (where
    // br_netfilter is loaded) is warned about, off passes.
    let name = format!("ndt-ovns-{}", std::process::id());
    let ok = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    ok(&["netns", "add", &name]);
    let pin = format!("/run/netns/{name}");
    let hooks = "net.bridge.bridge-nf-call-iptables";
    let loaded =
        Command::new("ip").args(["netns", "exec", &name, "sysctl", hooks]).output().unwrap();
    if loaded.status.success() {
        ok(&["netns", "exec", &name, "sysctl", "-qw", &format!("{hooks}=1")]);
        let on = overlay(&pin);
        assert_eq!(on["status"], "warn", "{on}");
        ok(&["netns", "exec", &name, "sysctl", "-qw", &format!("{hooks}=0")]);
    }
    let off = overlay(&pin);
    ok(&["netns", "del", &name]);
    assert_eq!(off["status"], "pass", "{off}");
}

#[test]
fn a_forward_hook_that_drops_by_policy_is_warned_about() {
    if !allowed("a_forward_hook_that_drops_by_policy_is_warned_about") {
        return;
    }
    let s = Scratch::new("fwd");
    // A namespace of the test's own: the machine's firewall is not touched.
    let name = format!("ndt-fwd-{}", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).output().unwrap();
    assert!(ip(&["netns", "add", &name]).status.success());
    let api = s.api("none");
    let doctor = || {
        let args =
            ["netns", "exec", &name, BIN, "--api", &api, "doctor", "--bind", "127.0.0.1:7946"];
        let out = ip(&[&args[..], &["-o", "json"]].concat());
        let all: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor -o json ({e}): {}", text(&out)))
            .as_array()
            .unwrap()
            .clone();
        check(&all, "forward policy").clone()
    };
    let open = doctor();
    // As dockerd leaves it (iptables-nft's table and chain).
    let nft = |rule: &str| ip(&["netns", "exec", &name, "nft", rule]).status.success();
    assert!(nft("add table ip filter"));
    assert!(nft(
        "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"
    ));
    let dropping = doctor();
    ip(&["netns", "del", &name]);
    assert_eq!(open["status"], "pass", "{open}");
    assert_eq!(dropping["status"], "warn", "{dropping}");
    assert!(dropping["detail"].as_str().unwrap().contains("ip filter FORWARD"), "{dropping}");
    assert!(dropping["fix"].as_str().unwrap().contains("DOCKER-USER -i ndgw0"), "{dropping}");
}
