//! Docker hosts on one machine ([`netdb_chaos::dockerd`]): two network
//! namespaces, each with its own dockerd and netdb agent. What the Docker
//! plugin's end-to-end test stands on, proven with what exists without the
//! plugin: containers without a network or on the host's, agents that
//! gossip over the underlay. Needs root and dockerd; without them the test
//! says SKIP and passes, except under CI (`CI` set), where it installs
//! Debian's docker.io and busybox-static if they are missing, and fails
//! without root.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netdb_chaos::cluster::{text, until};
use netdb_chaos::dockerd::DockerHosts;
use support::cluster::BIN;
use support::{allowed, docker_installed};

mod support;

#[test]
fn two_docker_hosts_each_with_its_own_dockerd_namespace_and_agent() {
    let test = "two_docker_hosts_each_with_its_own_dockerd_namespace_and_agent";
    if !allowed(test) || !docker_installed(test) {
        return;
    }
    let start = Instant::now();
    let mut hosts = DockerHosts::up("ndpl", [10, 224, 0], 2, Path::new(BIN), &[])
        .unwrap_or_else(|e| panic!("two docker hosts: {e:#}"));
    let up = start.elapsed();

    // Two daemons, each answering on its own socket, each with its own
    // data root.
    let mut roots = Vec::new();
    for i in 1..=2 {
        let version = hosts.docker_ok(i, &["version", "-f", "{{.Server.Version}}"]).unwrap();
        assert!(!version.is_empty(), "h{i}: docker version names no server version");
        let root = hosts.docker_ok(i, &["info", "-f", "{{.DockerRootDir}}"]).unwrap();
        assert!(
            Path::new(&root).starts_with(hosts.dir(i)),
            "h{i}'s data root {root} is not under {}",
            hosts.dir(i).display()
        );
        roots.push(root);
    }
    assert_ne!(roots[0], roots[1], "the two dockerd share a data root");

    // A container runs on each, and a container on the host's network sees
    // that host's namespace: its underlay address, not the other's.
    for i in 1..=2 {
        let image = hosts.busybox_image(i).unwrap_or_else(|e| panic!("h{i}: {e:#}"));
        let out = hosts.docker_ok(i, &["run", "--rm", "--network", "none", &image, "echo", "ok"]);
        assert_eq!(out.unwrap(), "ok", "h{i}: a container without a network");
        let addrs = hosts
            .docker_ok(i, &["run", "--rm", "--network", "host", &image, "ip", "-4", "addr"])
            .unwrap();
        let (mine, other) = (hosts.underlay_ip(i), hosts.underlay_ip(3 - i));
        assert!(
            addrs.contains(&format!("inet {mine}/24")),
            "h{i}: a host-network container does not see {mine}:\n{addrs}"
        );
        assert!(!addrs.contains(&format!("inet {other}/")), "h{i} sees h{}'s address", 3 - i);
    }

    // Both agents, in the hosts' namespaces, see each other alive.
    until("h1 to list both agents alive", Duration::from_secs(60), || hosts.alive(1) == 2);
    let members = hosts.cluster().json(1, &["members"]);
    let names: Vec<&str> =
        members.as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&"h1") && names.contains(&"h2"), "members: {members}");

    // The plugin directory is the host's own: a file made there inside h1
    // is not in the machine's, nor in h2's.
    let probe = format!("/run/docker/plugins/netdb-harness-probe-{}", std::process::id());
    let o = hosts.in_host(1, "touch", &[&probe]);
    assert!(o.status.success(), "touch {probe} in h1: {}", text(&o));
    assert!(hosts.in_host(1, "test", &["-e", &probe]).status.success(), "{probe} vanished in h1");
    assert!(!Path::new(&probe).exists(), "{probe}, made in h1, is in the machine's /run");
    assert!(!hosts.in_host(2, "test", &["-e", &probe]).status.success(), "{probe} is in h2's /run");

    // A killed agent comes back with its data dir; a restarted dockerd
    // answers on the same data root.
    hosts.stop_agent(2);
    until("h1 to see h2 gone", Duration::from_secs(60), || hosts.alive(1) == 1);
    hosts.start_agent(2).unwrap();
    until("h2 back", Duration::from_secs(60), || hosts.alive(1) == 2 && hosts.alive(2) == 2);
    hosts.restart_dockerd(2).unwrap_or_else(|e| panic!("restart h2's dockerd: {e:#}"));
    let root = hosts.docker_ok(2, &["info", "-f", "{{.DockerRootDir}}"]).unwrap();
    assert_eq!(root, roots[1], "h2's data root after a restart");
    assert!(hosts.docker(2, &["image", "inspect", "netdb-test/busybox"]).status.success());

    drop(hosts);
    eprintln!("docker hosts: up in {up:.1?}, whole test {:.1?}", start.elapsed());
}

#[test]
fn an_agent_that_cannot_start_fails_up_with_its_log_and_leaves_nothing() {
    let test = "an_agent_that_cannot_start_fails_up_with_its_log_and_leaves_nothing";
    if !allowed(test) || !docker_installed(test) {
        return;
    }
    let start = Instant::now();
    let err = match DockerHosts::up("ndpf", [10, 225, 0], 1, Path::new(BIN), &["--no-such-flag"]) {
        Ok(_) => panic!("an agent with an unknown flag came up"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("agent exited") && err.contains("--no-such-flag"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "up took {:?} to fail", start.elapsed());
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip").args(["netns", "list"]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(!namespaces.contains("ndpf-"), "namespaces left: {namespaces}");
    let run = format!("/tmp/netdb-test-ndpf-{}", std::process::id());
    assert!(!Path::new(&run).exists(), "{run} left");
    let cgroup = format!("netdb-test-ndpf-{}-h1", std::process::id());
    for top in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !top.path().join(&cgroup).exists(),
            "cgroup {cgroup} left in {}",
            top.path().display()
        );
    }
}
