//! Clusters of real `netdb agent` processes on loopback addresses, driven
//! through the CLI the way a user would.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_netdb");

struct Cluster {
    dir: PathBuf,
    subnet: u8,
    agents: Vec<Option<Child>>,
}

impl Cluster {
    /// `n` agents on 127.0.`subnet`.1..n, all seeded to the first. Each test
    /// uses its own subnet so tests run in parallel.
    fn start(subnet: u8, n: usize) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("netdb-loopback-{}-{subnet}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster { dir, subnet, agents: (0..n).map(|_| None).collect() };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait("every agent sees all members alive", Duration::from_secs(30), |c| {
            (0..n).all(|i| c.alive_members(i).len() == n)
        });
        c
    }

    fn empty(subnet: u8, n: usize) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("netdb-loopback-{}-{subnet}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cluster { dir, subnet, agents: (0..n).map(|_| None).collect() }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        format!("127.0.{}.{}:7946", self.subnet, i + 1).parse().unwrap()
    }

    fn api(&self, i: usize) -> String {
        format!("unix:{}/n{}.sock", self.dir.display(), i + 1)
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("n{}.log", i + 1))).unwrap();
        let child = Command::new(BIN)
            .args([
                "--api",
                &self.api(i),
                "agent",
                "--no-dataplane",
                "--name",
                &format!("n{}", i + 1),
            ])
            .args(["--bind", &self.addr(i).to_string(), "--join", &self.addr(0).to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.agents[i] = Some(child);
    }

    fn signal(&mut self, i: usize, sig: &str) -> Child {
        let child = self.agents[i].take().expect("agent running");
        let ok =
            Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} n{}", i + 1);
        child
    }

    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(BIN).args(["--api", &self.api(i)]).args(args).output().expect("run netdb")
    }

    fn json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        let out = self.cli(i, &full);
        assert!(
            out.status.success(),
            "netdb {args:?} on n{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    fn try_json(&self, i: usize, args: &[&str]) -> Option<Value> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        let out = self.cli(i, &full);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    fn member_state(&self, observer: usize, name: &str) -> Option<String> {
        let ms = self.try_json(observer, &["members"])?;
        ms.as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["state"].as_str().unwrap_or("").to_string())
    }

    fn alive_members(&self, i: usize) -> Vec<String> {
        let Some(ms) = self.try_json(i, &["members"]) else { return Vec::new() };
        ms.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "alive")
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Keys of NET/t on agent i, sorted.
    fn keys(&self, i: usize) -> Vec<String> {
        let Some(es) = self.try_json(i, &["table", "dump", "net", "t"]) else {
            return vec!["<unreachable>".into()];
        };
        let mut keys: Vec<String> = es
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["key"].as_str().unwrap_or("").to_string())
            .collect();
        keys.sort();
        keys
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while !f(self) {
            if start.elapsed() > limit {
                let logs: String = (0..self.agents.len())
                    .map(|i| {
                        let log = std::fs::read_to_string(self.dir.join(format!("n{}.log", i + 1)))
                            .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(8).collect();
                        format!(
                            "--- n{} log tail:\n{}\n",
                            i + 1,
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("timed out after {limit:?} waiting until {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stat(&self, i: usize, name: &str) -> u64 {
        self.json(i, &["stats"])[name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn expected(keys: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    v.sort();
    v
}

#[test]
fn five_agents_share_entries_and_handle_kill_leave_and_restart() {
    let mut c = Cluster::start(61, 5);
    for i in 0..5 {
        c.json(i, &["network", "join", "net"]);
    }
    c.wait("every agent sees 4 peers in net", Duration::from_secs(20), |c| {
        (0..5).all(|i| {
            c.json(i, &["network", "ls"])[0]["peers"].as_array().map_or(0, |p| p.len()) == 4
        })
    });
    // n1 writes 20 entries in bulk from a file, the others one each.
    let file = c.dir.join("bulk.txt");
    let mut f = std::fs::File::create(&file).unwrap();
    for k in 0..20 {
        writeln!(f, "bulk-{k:02} value {k}").unwrap();
    }
    drop(f);
    let put = c.json(0, &["table", "put", "net", "t", "--file", file.to_str().unwrap()]);
    assert_eq!(put["written"], 20);
    for i in 1..5 {
        c.json(i, &["table", "put", "net", "t", &format!("from-n{}", i + 1), "hello"]);
    }
    let mut want: Vec<String> = (0..20).map(|k| format!("bulk-{k:02}")).collect();
    want.extend((2..=5).map(|i| format!("from-n{i}")));
    want.sort();
    c.wait("all 24 entries are on every agent", Duration::from_secs(20), |c| {
        (0..5).all(|i| c.keys(i) == want)
    });
    let e = &c.json(3, &["table", "get", "net", "t", "bulk-07"]);
    assert_eq!((e["value"].as_str(), e["owner"].as_str()), (Some("value 7"), Some("n1")));

    c.json(0, &["table", "delete", "net", "t", "bulk-00"]);
    want.retain(|k| k != "bulk-00");
    c.wait("the delete reached every agent", Duration::from_secs(20), |c| {
        (0..5).all(|i| c.keys(i) == want)
    });

    // SIGKILL n5: failed, and its entry gone everywhere.
    let mut dead = c.signal(4, "-KILL");
    let _ = dead.wait();
    want.retain(|k| k != "from-n5");
    c.wait("n5 is failed and its entry gone", Duration::from_secs(30), |c| {
        (0..4).all(|i| c.member_state(i, "n5").as_deref() == Some("failed") && c.keys(i) == want)
    });

    // SIGTERM n4 while a watch client is connected to it: a graceful
    // leave, exit 0, without waiting for the client to go.
    let mut watcher = Command::new(BIN)
        .args(["--api", &c.api(3), "watch", "net"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut leaving = c.signal(3, "-TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = leaving.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGTERMed agent still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    let _ = watcher.kill();
    let _ = watcher.wait();
    want.retain(|k| k != "from-n4");
    c.wait("n4 is left and its entry gone", Duration::from_secs(10), |c| {
        (0..3).all(|i| c.member_state(i, "n4").as_deref() == Some("left") && c.keys(i) == want)
    });

    // n3 crashes and comes straight back: a new process without its state.
    let mut crashed = c.signal(2, "-KILL");
    let _ = crashed.wait();
    c.spawn(2);
    want.retain(|k| k != "from-n3");
    c.wait("n3 rejoined", Duration::from_secs(20), |c| c.try_json(2, &["members"]).is_some());
    c.json(2, &["network", "join", "net"]);
    c.wait(
        "the restarted n3 caught up and its old entry is gone everywhere",
        Duration::from_secs(30),
        |c| {
            (0..3).all(|i| c.keys(i) == want && c.member_state(i, "n3").as_deref() == Some("alive"))
        },
    );
    assert!(c.stat(2, "entries_from_sync") > 0, "n3 caught up by push/pull");
    assert_eq!(
        want,
        expected(&[
            "bulk-01", "bulk-02", "bulk-03", "bulk-04", "bulk-05", "bulk-06", "bulk-07", "bulk-08",
            "bulk-09", "bulk-10", "bulk-11", "bulk-12", "bulk-13", "bulk-14", "bulk-15", "bulk-16",
            "bulk-17", "bulk-18", "bulk-19", "from-n2",
        ])
    );
}

#[test]
fn agents_with_the_push_tree_converge() {
    // 127.0.6.x. Six, so that each agent has peers outside its eager set
    // (it keeps at least two and starts with three).
    let n = 6;
    let mut c = Cluster::empty(6, n);
    for i in 0..n {
        c.spawn_with(i, &["--push-tree"]);
    }
    c.wait("every agent sees all members alive", Duration::from_secs(30), |c| {
        (0..n).all(|i| c.alive_members(i).len() == n)
    });
    for i in 0..n {
        c.json(i, &["network", "join", "net"]);
    }
    c.wait("every agent sees its peers in net", Duration::from_secs(20), |c| {
        (0..n).all(|i| {
            c.json(i, &["network", "ls"])[0]["peers"].as_array().map_or(0, |p| p.len()) == n - 1
        })
    });
    let mut want = Vec::new();
    for round in 0..5 {
        for i in 0..n {
            let key = format!("n{}-{round}", i + 1);
            c.json(i, &["table", "put", "net", "t", &key, "v"]);
            want.push(key);
        }
    }
    want.sort();
    c.wait("every agent holds every entry", Duration::from_secs(20), |c| {
        (0..n).all(|i| c.keys(i) == want)
    });
    let tree: u64 =
        (0..n).map(|i| c.stat(i, "tree_ihave_sent") + c.stat(i, "tree_prune_sent")).sum();
    assert!(tree > 0, "the agents ran the tree (announcements or prunes sent)");
}

#[test]
fn garbage_datagrams_and_streams_are_counted_and_change_nothing() {
    let c = Cluster::start(62, 3);
    for i in 0..3 {
        c.json(i, &["network", "join", "net"]);
    }
    c.json(1, &["table", "put", "net", "t", "k1", "v1"]);
    c.wait("k1 everywhere", Duration::from_secs(20), |c| (0..3).all(|i| c.keys(i) == ["k1"]));
    let before = c.json(0, &["table", "dump", "net", "t"]);
    let drops_before: u64 = ["drops:malformed", "drops:too_large", "drops:bad_version"]
        .iter()
        .map(|n| c.stat(0, n))
        .sum();

    let target = c.addr(0);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u32 = 12345;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    for len in [0usize, 1, 2, 7, 100, 1400, 9000] {
        for _ in 0..20 {
            udp.send_to(&noise(len), target).unwrap();
        }
    }
    // A wire-version-2 datagram, and one truncated mid-field.
    udp.send_to(&[0x08, 0x02, 0x12, 0x00], target).unwrap();
    udp.send_to(&[0x08, 0x01, 0x1a, 0x7f, 0x0a], target).unwrap();
    udp.send_to(&vec![0u8; 65_000], target).unwrap();

    // Streams: random bytes; a 4 GiB length prefix; a frame cut short; a
    // well-framed frame of garbage.
    let streams: Vec<Vec<u8>> = vec![
        noise(5000),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 100, 1, 2, 3],
        [vec![0, 0, 0, 16], noise(16)].concat(),
    ];
    for s in &streams {
        let mut t = TcpStream::connect(target).unwrap();
        let _ = t.write_all(s);
    }
    c.wait("the drops are counted", Duration::from_secs(10), |c| {
        let now: u64 = ["drops:malformed", "drops:too_large", "drops:bad_version"]
            .iter()
            .map(|n| c.stat(0, n))
            .sum();
        now >= drops_before + 100
    });
    assert!(c.stat(0, "drops:too_large") >= 1, "the oversized stream frame is counted");
    assert!(c.stat(0, "drops:bad_version") >= 1);
    assert_eq!(c.json(0, &["table", "dump", "net", "t"]), before, "nothing it holds changed");
    assert_eq!(c.alive_members(0).len(), 3);
    c.json(0, &["table", "put", "net", "t", "k2", "v2"]);
    c.wait("it still serves and gossips", Duration::from_secs(20), |c| {
        (0..3).all(|i| c.keys(i) == ["k1", "k2"])
    });
}

#[test]
fn errors_say_what_to_do() {
    let dir = std::env::temp_dir().join(format!("netdb-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = format!("unix:{}/none.sock", dir.display());
    let out = Command::new(BIN).args(["--api", &sock, "members"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the netdb agent") && err.contains("--api"), "{err}");

    let out = Command::new(BIN).args(["agent", "--no-such-flag"]).output().unwrap();
    assert!(!out.status.success());

    // A seed nobody answers: the agent keeps trying and says so.
    let log = dir.join("lonely.log");
    let mut lonely = Command::new(BIN)
        .args([
            "--api",
            &format!("unix:{}/lonely.sock", dir.display()),
            "agent",
            "--no-dataplane",
            "--name",
            "lonely",
        ])
        .args(["--bind", "127.0.63.1:7946", "--join", "127.0.63.99:7946"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("no seed has answered yet") {
        assert!(start.elapsed() < Duration::from_secs(15), "no retry message");
        assert!(lonely.try_wait().unwrap().is_none(), "the agent gave up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port is taken now: a second agent on it must refuse to start.
    let out = Command::new(BIN)
        .args([
            "--api",
            &format!("unix:{}/second.sock", dir.display()),
            "agent",
            "--no-dataplane",
            "--name",
            "second",
        ])
        .args(["--bind", "127.0.63.1:7946"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address in use") && err.contains("--bind"), "{err}");
    let _ = lonely.kill();
    let _ = lonely.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agents_with_a_key_file_seal_traffic_and_shut_out_other_keys() {
    let mut c = Cluster::empty(64, 3);
    let good = c.dir.join("good.keys");
    let other = c.dir.join("other.keys");
    std::fs::write(&good, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    std::fs::write(&other, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n").unwrap();
    c.spawn_with(0, &["--key-file", good.to_str().unwrap()]);
    c.spawn_with(1, &["--key-file", good.to_str().unwrap()]);
    c.spawn_with(2, &["--key-file", other.to_str().unwrap()]);
    c.wait("the two agents with the same key see each other", Duration::from_secs(20), |c| {
        c.alive_members(0).len() == 2 && c.alive_members(1).len() == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.alive_members(2), vec!["n3".to_string()], "the other key stays out");
    assert!(c.stat(0, "drops:unknown_key") > 0, "its knocks were counted");
    let log = std::fs::read_to_string(c.dir.join("n1.log")).unwrap();
    assert!(
        log.contains("gossip is sealed") && !log.contains("AQEBAQ"),
        "fingerprints logged, never keys"
    );
}

#[test]
fn keys_rotate_under_load_loses_nothing_and_splits_nothing() {
    let n = 5;
    let mut c = Cluster::empty(65, n);
    let old_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
    let files: Vec<PathBuf> = (0..n).map(|i| c.dir.join(format!("n{}.keys", i + 1))).collect();
    for f in &files {
        std::fs::write(f, format!("{old_key}\n")).unwrap();
    }
    for (i, f) in files.iter().enumerate() {
        c.spawn_with(i, &["--key-file", f.to_str().unwrap()]);
    }
    c.wait("5 keyed agents form a cluster", Duration::from_secs(30), |c| {
        (0..n).all(|i| c.alive_members(i).len() == n)
    });
    for i in 0..n {
        c.json(i, &["network", "join", "net"]);
    }
    let before = c.json(0, &["keys", "list"]);
    let old_fp = before["steps"][0]["results"][0]["fingerprints"][0].as_str().unwrap().to_string();
    assert_eq!(before["steps"][0]["results"].as_array().unwrap().len(), n);

    // Writers on every agent and a watchdog on membership, while n1 rotates.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = std::sync::Arc::new(c);
    let writers: Vec<_> = (0..n)
        .map(|i| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut written = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("n{}-{written}", i + 1);
                    let out = c.cli(i, &["table", "put", "net", "t", &key, "v"]);
                    assert!(out.status.success(), "put on n{} failed", i + 1);
                    written += 1;
                }
                written
            })
        })
        .collect();
    let watchdog = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..n {
                    for m in c
                        .try_json(i, &["members"])
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default()
                    {
                        if m["state"] != "alive" {
                            bad.push(format!("n{} saw {} {}", i + 1, m["name"], m["state"]));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bad
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let rotated = c.json(0, &["keys", "rotate"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let bad = watchdog.join().unwrap();

    assert_eq!(rotated["complete"], true, "{rotated}");
    let steps = rotated["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{rotated}");
    for s in steps {
        assert_eq!(s["results"].as_array().unwrap().len(), n, "every member answered: {s}");
    }
    assert!(bad.is_empty(), "a member was marked down during the rotation: {bad:?}");
    let total: usize = written.iter().sum();
    eprintln!("entries written during the rotation: {written:?}");
    assert!(written.iter().all(|w| *w > 0), "{written:?}");
    c.wait("every written entry on every agent", Duration::from_secs(30), |c| {
        (0..n).all(|i| c.json(i, &["table", "dump", "net", "t"]).as_array().unwrap().len() == total)
    });

    // One key everywhere, the new one, and it is what each file holds.
    let after = c.json(0, &["keys", "list"]);
    let new_fp = after["steps"][0]["results"][0]["fingerprints"][0].as_str().unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    for r in after["steps"][0]["results"].as_array().unwrap() {
        assert_eq!(r["fingerprints"], serde_json::json!([new_fp]), "{after}");
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let keys: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(keys.len(), 1, "{text}");
        assert!(!text.contains(old_key));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    for (i, file) in files.iter().enumerate() {
        let log = std::fs::read_to_string(c.dir.join(format!("n{}.log", i + 1))).unwrap();
        let new_key = std::fs::read_to_string(file).unwrap();
        let new_key = new_key.lines().find(|l| !l.starts_with('#')).unwrap();
        assert!(!log.contains(old_key) && !log.contains(new_key), "a key in n{}'s log", i + 1);
    }
    let mut c = std::sync::Arc::try_unwrap(c).ok().expect("no other owner");

    // install takes the key on stdin (never argv); remove takes its
    // fingerprint; both reach every member.
    let extra = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=";
    let mut install = Command::new(BIN)
        .args(["--api", &c.api(1), "keys", "install", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    install.stdin.take().unwrap().write_all(format!("{extra}\n").as_bytes()).unwrap();
    let out = install.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let listed = c.json(3, &["keys", "list"]);
    for r in listed["steps"][0]["results"].as_array().unwrap() {
        assert_eq!(r["fingerprints"].as_array().unwrap().len(), 2, "{listed}");
        assert_eq!(r["fingerprints"][0], new_fp.as_str(), "install does not change the primary");
    }
    let extra_fp =
        listed["steps"][0]["results"][0]["fingerprints"][1].as_str().unwrap().to_string();
    let refused = c.cli(0, &["keys", "remove", &new_fp]);
    assert!(!refused.status.success(), "removing the primary is refused");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("is the primary"));
    c.json(0, &["keys", "remove", &extra_fp]);

    // An agent restarted after the rotation reads the new key and rejoins;
    // one with the rotated-out key cannot inject anything.
    c.signal(2, "-KILL").wait().unwrap();
    c.spawn_with(2, &["--key-file", files[2].to_str().unwrap()]);
    let stale = c.dir.join("stale.keys");
    std::fs::write(&stale, format!("{old_key}\n")).unwrap();
    c.agents.push(None);
    c.spawn_with(n, &["--key-file", stale.to_str().unwrap()]);
    // n1 may never have seen n3 go: the stale agent must be up on its own.
    c.wait("the restarted agent rejoins and the stale one answers", Duration::from_secs(20), |c| {
        c.alive_members(0).len() == n && c.try_json(n, &["members"]).is_some()
    });
    c.json(n, &["network", "join", "net"]);
    c.json(n, &["table", "put", "net", "t", "injected", "x"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.alive_members(0).iter().all(|m| m != "n6"), "the old key got in");
    let dump = c.json(0, &["table", "dump", "net", "t"]);
    assert!(dump.as_array().unwrap().iter().all(|e| e["key"] != "injected"));
    assert!(c.stat(0, "drops:unknown_key") > 0);
}

/// Runs openssl (a test tool here, like ping for the namespace tests).
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_tcp_api_requires_tls_with_client_certificates() {
    let c = Cluster::empty(66, 1);
    let d = c.dir.clone();
    let ca = |name: &str| {
        openssl(
            &d,
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
                .iter()
                .copied()
                .chain([
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                ])
                .collect::<Vec<_>>(),
        );
    };
    let leaf = |ca: &str, name: &str, san: &str| {
        openssl(
            &d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(d.join(format!("{name}.ext")), format!("subjectAltName={san}\n")).unwrap();
        openssl(
            &d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    };
    ca("ca");
    ca("rogue-ca");
    leaf("ca", "agent", "IP:127.0.66.1");
    leaf("ca", "admin", "DNS:admin");
    leaf("rogue-ca", "intruder", "DNS:intruder");
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let api = "127.0.66.1:7999";

    // An agent serving its API on `api`.
    let agent_at = |api: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--api", api, "agent", "--no-dataplane", "--name", "t1"]);
        cmd.args(["--bind", "127.0.66.1:7946"]);
        cmd
    };
    // Refusals at start: plaintext TCP, insecure on a routable address.
    let out = agent_at(api).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs TLS with client certificates"), "{err}");
    let out = agent_at("0.0.0.0:7999").arg("--api-insecure").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("loopback addresses only"), "{err}");

    let log = std::fs::File::create(d.join("tls.log")).unwrap();
    let mut agent = agent_at(api)
        .args([
            "--api-tls-cert",
            &p("agent.pem"),
            "--api-tls-key",
            &p("agent.key"),
            "--api-tls-client-ca",
            &p("ca.pem"),
        ])
        .stderr(log)
        .spawn()
        .unwrap();
    let client = |cert: &str| {
        Command::new(BIN)
            .args([
                "--api",
                api,
                "members",
                "--tls-ca",
                &p("ca.pem"),
                "--tls-cert",
                &p(&format!("{cert}.pem")),
                "--tls-key",
                &p(&format!("{cert}.key")),
            ])
            .output()
            .unwrap()
    };
    let start_at = Instant::now();
    let mut ok = client("admin");
    while !ok.status.success() && start_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        ok = client("admin");
    }
    assert!(
        ok.status.success(),
        "the admin certificate is accepted: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("t1"));
    let rogue = client("intruder");
    assert!(!rogue.status.success(), "a certificate from another CA is refused");
    let plain = Command::new(BIN).args(["--api", api, "members"]).output().unwrap();
    assert!(!plain.status.success(), "plaintext gRPC is refused");
    let routable =
        Command::new(BIN).args(["--api", "10.255.255.1:7999", "members"]).output().unwrap();
    let err = String::from_utf8_lossy(&routable.stderr);
    assert!(err.contains("not on loopback"), "the CLI never speaks plaintext off loopback: {err}");
    let no_cert = Command::new(BIN)
        .args(["--api", api, "members", "--tls-ca", &p("ca.pem")])
        .output()
        .unwrap();
    assert!(!no_cert.status.success(), "TLS without a client certificate is refused");
    let _ = agent.kill();
    let _ = agent.wait();

    // --api-insecure on loopback: allowed, for local tooling.
    let mut insecure = agent_at(api).arg("--api-insecure").stderr(Stdio::null()).spawn().unwrap();
    let start_at = Instant::now();
    let mut plain = Command::new(BIN).args(["--api", api, "members"]).output().unwrap();
    while !plain.status.success() && start_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        plain = Command::new(BIN).args(["--api", api, "members"]).output().unwrap();
    }
    assert!(plain.status.success());
    let _ = insecure.kill();
    let _ = insecure.wait();
}

#[test]
fn health_version_members_and_inspect_report_what_the_cluster_holds() {
    let c = Cluster::start(67, 3);
    let version = env!("CARGO_PKG_VERSION");
    // Every member gossips its release in its node record.
    c.wait("every member's version is known", Duration::from_secs(10), |c| {
        let ms = c.json(2, &["members"]);
        ms.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|m| m["version"] == version))
    });
    let h = c.json(1, &["health"]);
    assert_eq!((h["ready"].as_bool(), h["live"].as_bool()), (Some(true), Some(true)), "{h}");
    assert_eq!(h["name"], "n2");
    assert_eq!(h["version"], version);
    let names: Vec<&str> =
        h["checks"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["joined", "cluster-synced"], "no kernel check without a data plane");
    let v = c.json(0, &["version"]);
    assert_eq!(
        (v["client"].as_str(), v["agent"]["version"].as_str()),
        (Some(version), Some(version))
    );

    for i in 0..2 {
        assert!(c.cli(i, &["network", "join", "demo"]).status.success());
    }
    assert!(c.cli(0, &["table", "put", "demo", "svc", "web", "10.0.0.2"]).status.success());
    assert!(c.cli(1, &["table", "put", "demo", "routes", "r1", "x"]).status.success());
    c.wait("both holders show both tables", Duration::from_secs(10), |c| {
        (0..2).all(|i| {
            let d = c.json(i, &["network", "inspect", "demo"]);
            d["tables"] == serde_json::json!([{"table": "routes", "entries": 1}, {"table": "svc", "entries": 1}])
        })
    });
    let d0 = c.json(0, &["network", "inspect", "demo"]);
    let d1 = c.json(1, &["network", "inspect", "demo"]);
    assert_eq!(d0["root"], d1["root"], "equal tables, equal digests");
    assert_eq!(d0["network"]["peers"], serde_json::json!(["n2"]));
    // Joining makes one side or both pull the other's tables, at a gossip
    // tick: news goes at once, so the tables may agree before.
    let count = |c: &Cluster, what: &str| -> u64 {
        (0..2)
            .filter_map(|i| c.json(i, &["network", "inspect", "demo"])["syncs"][what].as_u64())
            .sum()
    };
    c.wait("a push/pull of the joined network", Duration::from_secs(10), |c| {
        count(c, "started") >= 1 && count(c, "completed") >= 1
    });
    assert_eq!(count(&c, "failed"), 0);
    // A network the agent neither defined nor joined is refused, with advice.
    let out = c.cli(2, &["network", "inspect", "demo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("netdb network ls"));
}

#[test]
fn health_fails_while_the_seeds_do_not_answer_and_version_needs_no_agent() {
    let mut c = Cluster::empty(68, 2);
    // Seeded to n1, which never starts.
    c.spawn(1);
    c.wait("n2 answers", Duration::from_secs(10), |c| {
        c.try_json(1, &["health", "--live"]).is_some()
    });
    let out = c.cli(1, &["health"]);
    assert!(!out.status.success(), "not ready while no seed answered");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("joined") && text.contains("FAIL"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready: joined"));
    assert!(c.cli(1, &["health", "--live"]).status.success(), "live all the same");
    let out = c.cli(0, &["version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains("no agent answered"),
        "{text}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for verb in ["agent", "members", "inspect", "health", "keys"] {
            assert!(text.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with(".ie") && page.contains(".TH netdb 1"), "{page}");
    // Checked by bash itself: the completion script parses.
    let script = Command::new(BIN).args(["completions", "bash"]).output().unwrap().stdout;
    let path = std::env::temp_dir().join(format!("netdb-completion-{}.bash", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let bash = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(bash.status.success(), "{}", String::from_utf8_lossy(&bash.stderr));
}

/// One HTTP/1.1 request to `addr`; the status line, the headers (lower
/// case) and the body.
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    use std::io::Read;
    let mut t = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(t, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    t.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// Python with `prometheus_client`, whose text parser reads the scrapes.
fn prometheus_parser() -> Option<PathBuf> {
    support::python_with("prometheus-venv", &["prometheus_client"], "the Prometheus parser")
}

/// The scrape parsed by `prometheus_client`'s text parser: a list of
/// families with their samples.
fn parse_scrape(python: &PathBuf, text: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps([
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]))
"#;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// The value of the sample `name` with exactly these labels.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.iter().flat_map(|f| f["samples"].as_array().unwrap()).find_map(|s| {
        let l = s["labels"].as_object().unwrap();
        let same = s["name"] == name
            && l.len() == labels.len()
            && labels.iter().all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v));
        same.then(|| s["value"].as_f64().unwrap())
    })
}

#[test]
fn metrics_agree_with_the_api_and_follow_prometheus_conventions() {
    let Some(python) = prometheus_parser() else { return };
    let mut c = Cluster::empty(71, 3);
    let metrics = |i: usize| format!("127.0.71.{}:9946", i + 1);
    for i in 0..3 {
        c.spawn_with(i, &["--metrics", &metrics(i)]);
    }
    c.wait("every agent sees all members alive", Duration::from_secs(30), |c| {
        (0..3).all(|i| c.alive_members(i).len() == 3)
    });
    for i in 0..3 {
        c.json(i, &["network", "join", "net"]);
    }
    for k in 0..5 {
        c.json(k % 3, &["table", "put", "net", "t", &format!("k{k}"), "v"]);
    }
    c.json(1, &["table", "put", "net", "u", "only", "v"]);
    c.wait("6 entries everywhere", Duration::from_secs(20), |c| {
        (0..3).all(|i| {
            c.keys(i).len() == 5
                && c.try_json(i, &["table", "dump", "net", "u"])
                    .is_some_and(|u| u.as_array().is_some_and(|a| a.len() == 1))
        })
    });
    // Something for the drop counters.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..10 {
        udp.send_to(&[0x08, 0x01, 0x1a, 0x7f, 0x0a], c.addr(0)).unwrap();
    }
    c.wait("the garbage is counted", Duration::from_secs(10), |c| {
        c.stat(0, "drops:malformed") >= 10
    });

    let (status, _, _) = http_get(&metrics(0), "/");
    assert!(status.contains(" 404 "), "{status}");
    let (status, headers, _) = http_get(&metrics(0), "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");

    for i in 0..3 {
        let before = c.json(i, &["stats"]);
        let (_, _, text) = http_get(&metrics(i), "/metrics");
        let after = c.json(i, &["stats"]);
        let families = parse_scrape(&python, &text);
        let members = c.json(i, &["members"]);
        let alive = members.as_array().unwrap().iter().filter(|m| m["state"] == "alive").count();

        // Conventions, on every family: prefix, HELP and TYPE, _total.
        assert!(families.len() >= 20, "{text}");
        for f in &families {
            let name = f["name"].as_str().unwrap();
            assert!(name.starts_with("netdb_"), "{name}");
            assert!(!f["help"].as_str().unwrap().is_empty(), "{name} has no HELP");
            assert!(text.contains(&format!("# TYPE {name}")), "{name} has no TYPE");
            assert_ne!(f["type"], "unknown", "{name}");
            if f["type"] == "counter" {
                for s in f["samples"].as_array().unwrap() {
                    assert!(s["name"].as_str().unwrap().ends_with("_total"), "{s}");
                }
            }
        }

        // Gauges equal what the API says.
        assert_eq!(sample(&families, "netdb_members", &[("state", "alive")]), Some(alive as f64));
        assert_eq!(sample(&families, "netdb_members", &[("state", "failed")]), Some(0.0));
        for (table, want) in [("t", 5.0), ("u", 1.0)] {
            let dump = c.json(i, &["table", "dump", "net", table]);
            assert_eq!(dump.as_array().unwrap().len() as f64, want);
            let got = sample(&families, "netdb_entries", &[("network", "net"), ("table", table)]);
            assert_eq!(got, Some(want), "entries of net/{table} on n{}", i + 1);
        }
        let networks = c.json(i, &["network", "ls"]).as_array().unwrap().len() as f64;
        assert_eq!(sample(&families, "netdb_networks", &[]), Some(networks));

        // Counters lie between the API's readings before and after the scrape.
        let between = |metric: &str, labels: &[(&str, &str)], stat: &str| {
            let v = sample(&families, metric, labels)
                .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"));
            let (lo, hi) = (before[stat].as_f64().unwrap(), after[stat].as_f64().unwrap());
            assert!(lo <= v && v <= hi, "{metric} {labels:?} = {v}, stats {stat} {lo}..{hi}");
        };
        for kind in ["swim", "gossip", "sync"] {
            for (dir, d) in [("in", "in"), ("out", "out")] {
                let l = [("kind", kind), ("direction", dir)];
                between("netdb_messages_total", &l, &format!("{kind}_{d}_messages"));
                between("netdb_message_bytes_total", &l, &format!("{kind}_{d}_bytes"));
            }
        }
        for reason in ["malformed", "too_large", "not_member", "forged"] {
            between("netdb_drops_total", &[("reason", reason)], &format!("drops:{reason}"));
        }
        for s in ["started", "completed", "failed", "served"] {
            between(&format!("netdb_syncs_{s}_total"), &[], &format!("syncs_{s}"));
        }
        between("netdb_sync_duration_seconds_count", &[], "syncs_completed");
        between("netdb_swim_errors_total", &[], "swim_errors");
        between("netdb_member_changes_total", &[("change", "up")], "member_changes:up");
        assert!(sample(&families, "netdb_member_changes_total", &[("change", "up")]) >= Some(2.0));
        assert!(
            sample(&families, "netdb_messages_total", &[("kind", "gossip"), ("direction", "out")])
                > Some(0.0)
        );
        if i == 0 {
            assert!(
                sample(&families, "netdb_drops_total", &[("reason", "malformed")]) >= Some(10.0)
            );
        }
    }

    // Counters only grow between scrapes.
    let first = parse_scrape(&python, &http_get(&metrics(1), "/metrics").2);
    c.json(1, &["table", "put", "net", "t", "later", "v"]);
    std::thread::sleep(Duration::from_millis(500));
    let second = parse_scrape(&python, &http_get(&metrics(1), "/metrics").2);
    for f in first.iter().filter(|f| f["type"] == "counter" || f["type"] == "histogram") {
        for s in f["samples"].as_array().unwrap() {
            let labels: Vec<(String, String)> = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let labels: Vec<(&str, &str)> =
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let name = s["name"].as_str().unwrap();
            let later = sample(&second, name, &labels).unwrap_or_else(|| panic!("{name} gone"));
            assert!(later >= s["value"].as_f64().unwrap(), "{name} {labels:?} went down");
        }
    }
    assert!(
        sample(&second, "netdb_messages_total", &[("kind", "gossip"), ("direction", "out")])
            > sample(&first, "netdb_messages_total", &[("kind", "gossip"), ("direction", "out")])
    );

    // A taken port is refused with the flag to change.
    let out = Command::new(BIN)
        .args(["--api", &format!("unix:{}/extra.sock", c.dir.display()), "agent"])
        .args(["--no-dataplane", "--name", "extra", "--bind", "127.0.71.9:7946"])
        .args(["--metrics", &metrics(0)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot bind metrics listener 127.0.71.1:9946")
            && err.contains("address in use")
            && err.contains("--metrics"),
        "{err}"
    );
}

/// Agent `i`'s log, each line parsed as JSON (a line that is not fails).
fn json_log(c: &Cluster, i: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(c.dir.join(format!("n{}.log", i + 1))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn has_change(log: &[Value], message: &str, member: &str) -> bool {
    log.iter().any(|l| l["level"] == "INFO" && l["message"] == message && l["member"] == member)
}

#[test]
fn json_logs_show_membership_changes_and_the_level_changes_at_run_time() {
    let mut c = Cluster::empty(72, 3);
    c.spawn_with(0, &["--log-format", "json", "--metrics", "127.0.72.1:9946"]);
    c.spawn(1);
    c.spawn(2);
    c.wait("n1 logs n2 and n3 up", Duration::from_secs(30), |c| {
        let log = json_log(c, 0);
        has_change(&log, "member up", "n2") && has_change(&log, "member up", "n3")
    });
    let up = json_log(&c, 0)
        .into_iter()
        .find(|l| l["message"] == "member up" && l["member"] == "n2")
        .unwrap();
    assert_eq!(up["addr"], "127.0.72.2:7946", "{up}");
    assert!(up["timestamp"].is_string() && up["target"].is_string(), "{up}");

    let mut dead = c.signal(1, "-KILL");
    let _ = dead.wait();
    c.wait("n1 logs n2 failed", Duration::from_secs(30), |c| {
        has_change(&json_log(c, 0), "member failed", "n2")
    });
    c.spawn(1);
    c.wait("n1 logs n2 rejoined", Duration::from_secs(30), |c| {
        has_change(&json_log(c, 0), "member rejoined", "n2")
    });
    let log = json_log(&c, 0);
    let ups = log.iter().filter(|l| l["message"] == "member up" && l["member"] == "n3").count();
    assert_eq!(ups, 1, "one line per change, not per event");
    assert!(log.iter().all(|l| l["level"] != "DEBUG"), "info by default");

    // Run-time level: a broken HTTP request to the metrics port is logged
    // at debug, so debug lines come when asked for and stop after.
    let poke = || {
        let mut t = TcpStream::connect("127.0.72.1:9946").unwrap();
        let _ = t.write_all(b"NOT HTTP\r\n\r\n");
        let _ = std::io::Read::read_to_end(&mut t, &mut Vec::new());
    };
    let shown = c.json(0, &["log-level"]);
    assert_eq!(shown["current"], "info");
    let set = c.json(0, &["log-level", "debug"]);
    assert_eq!((set["previous"].as_str(), set["current"].as_str()), (Some("info"), Some("debug")));
    poke();
    c.wait("debug lines appear", Duration::from_secs(10), |c| {
        json_log(c, 0).iter().any(|l| l["level"] == "DEBUG")
    });
    let set = c.json(0, &["log-level", "info"]);
    assert_eq!(set["previous"], "debug");
    let lines_at_info = json_log(&c, 0).len();
    poke();
    std::thread::sleep(Duration::from_millis(500));
    let log = json_log(&c, 0);
    let after = log.get(lines_at_info..).unwrap_or_default();
    assert!(after.iter().all(|l| l["level"] != "DEBUG"), "debug after info: {after:?}");
    let bad = c.cli(0, &["log-level", "info,=x=y"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad log filter"));
    assert_eq!(c.json(0, &["log-level"])["current"], "info");
}

#[test]
fn a_tables_only_agent_with_a_data_dir_restarts_live_and_a_leave_ends_its_life() {
    let mut c = Cluster::empty(73, 3);
    let data = |i: usize| c.dir.join(format!("n{}-data", i + 1)).to_string_lossy().into_owned();
    let dirs: Vec<String> = (0..3).map(data).collect();
    for (i, dir) in dirs.iter().enumerate() {
        c.spawn_with(i, &["--data-dir", dir]);
    }
    c.wait("every agent sees all members alive", Duration::from_secs(30), |c| {
        (0..3).all(|i| c.alive_members(i).len() == 3)
    });
    for i in 0..3 {
        c.json(i, &["network", "join", "net"]);
    }
    c.json(0, &["table", "put", "net", "t", "kept", "before"]);
    // Killed as soon as its entry is everywhere: its attachment to "net"
    // may not have gone out yet (an early packet of "net" can leave before
    // the cluster scope's next one), so n1 must take back its network from
    // its data dir, not from what its peers hold of it.
    c.wait("n1's entry everywhere", Duration::from_secs(20), |c| {
        (0..3).all(|i| c.keys(i) == ["kept"])
    });
    let incarnation = |c: &Cluster, observer: usize| -> Option<u64> {
        let ms = c.try_json(observer, &["members"])?;
        ms.as_array()?.iter().find(|m| m["name"] == "n1")?["incarnation"].as_u64()
    };
    let life = incarnation(&c, 1).expect("n2 knows n1");

    // SIGKILL and straight back with its data dir: the same life, so n2
    // never loses the entry, and n1 takes back its network and entry.
    let mut dead = c.signal(0, "-KILL");
    let _ = dead.wait();
    c.spawn_with(0, &["--data-dir", &dirs[0]]);
    let start = Instant::now();
    // Long enough for a failure to be detected, had n1 not come back as
    // the member n2 knows.
    while start.elapsed() < Duration::from_secs(10) {
        assert_eq!(c.keys(1), ["kept"], "n2 kept n1's entry through the restart");
        assert_eq!(c.member_state(1, "n1").as_deref(), Some("alive"), "n2 never saw n1 fail");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait("the restarted n1 holds its network and entry again", Duration::from_secs(20), |c| {
        c.keys(0) == ["kept"]
    });
    let e = c.json(0, &["table", "get", "net", "t", "kept"]);
    assert_eq!((e["value"].as_str(), e["owner"].as_str()), (Some("before"), Some("n1")));
    assert_eq!(incarnation(&c, 1), Some(life), "n2 sees the same incarnation");
    assert_eq!(c.member_state(1, "n1").as_deref(), Some("alive"));

    // A graceful leave (SIGTERM, no endpoints) removes its entries and ends
    // the life: the next start is a new incarnation.
    let mut leaving = c.signal(0, "-TERM");
    assert!(leaving.wait().unwrap().success());
    c.wait("n1 left and its entry is gone", Duration::from_secs(10), |c| {
        c.member_state(1, "n1").as_deref() == Some("left") && c.keys(1).is_empty()
    });
    c.spawn_with(0, &["--data-dir", &dirs[0]]);
    c.wait("n1 back as a new incarnation", Duration::from_secs(20), |c| {
        incarnation(c, 1).is_some_and(|i| i > life)
            && c.member_state(1, "n1").as_deref() == Some("alive")
    });
}
