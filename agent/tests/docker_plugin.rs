//! The Docker plugin end to end, against real dockerd 20.10 daemons: two
//! hosts, each a network namespace with its own dockerd and netdb agent
//! (`--docker-plugin`), see [`netdb_chaos::dockerd`]. A network created
//! once with `docker network create -d netdb` is usable from both hosts'
//! Docker; containers on the two reach each other by address and by name,
//! and reach a namespace endpoint attached by netdb's CLI; the agent
//! restarted between `docker create` and `docker start`, and dockerd
//! restarted under running containers, break nothing; disconnect, rm -f
//! and network rm leave nothing behind. Needs root and dockerd (SKIP
//! without, except under CI, where it installs docker.io).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netdb_chaos::cluster::{text, until};
use netdb_chaos::dockerd::DockerHosts;
use serde_json::Value;
use support::cluster::BIN;
use support::{allowed, docker_installed};

mod support;

const SUBNET: &str = "10.20.0.0/24";
const GATEWAY: &str = "10.20.0.1";

/// Runs `f`, printing both hosts' logs if it panics.
fn with_logs<T>(hosts: &mut DockerHosts, f: impl FnOnce(&mut DockerHosts) -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *hosts))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}{}", hosts.logs(1), hosts.logs(2));
            std::panic::resume_unwind(e)
        }
    }
}

/// The container's address on `network`.
fn address(hosts: &DockerHosts, i: usize, container: &str, network: &str) -> String {
    let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    hosts.docker_ok(i, &["inspect", "-f", &f, container]).unwrap()
}

/// Whether `container` on host `i` gets an answer to one ping of `target`.
fn pings(hosts: &DockerHosts, i: usize, container: &str, target: &str) -> bool {
    hosts.docker(i, &["exec", container, "ping", "-c1", "-W1", target]).status.success()
}

/// This host's endpoints of `network` in netdb.
fn local_endpoints(hosts: &DockerHosts, i: usize, network: &str) -> Vec<Value> {
    let all = hosts.cluster().json(i, &["endpoint", "ls", network, "--local"]);
    all.as_array().cloned().unwrap_or_default()
}

/// Interfaces of host `i` whose names start with `prefix`.
fn links(hosts: &DockerHosts, i: usize, prefix: &str) -> Vec<String> {
    // The host's namespace and the agent's overlay namespace (its default
    // name, pinned in the host's own /run).
    let host = hosts.in_host(i, "ip", &["-o", "link", "show"]);
    let overlay = hosts.in_host(i, "ip", &["-n", "netdb", "-o", "link", "show"]);
    (text(&host) + &text(&overlay))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Whether host `i`'s Docker has a network named `network`.
fn in_docker(hosts: &DockerHosts, i: usize, network: &str) -> bool {
    hosts
        .docker_ok(i, &["network", "ls", "--format", "{{.Name}}"])
        .is_ok_and(|names| names.lines().any(|n| n == network))
}

/// The VNI of netdb network `network` as host `i` sees it.
fn nets_vni(hosts: &DockerHosts, i: usize, network: &str) -> u64 {
    let nets = hosts.cluster().json(i, &["network", "ls"]);
    nets.as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == network))
        .and_then(|n| n["vni"].as_u64())
        .unwrap_or_else(|| panic!("no VNI for {network} in {nets}"))
}

/// Plugin calls the agent of host `i` logged so far.
fn plugin_calls(hosts: &DockerHosts, i: usize) -> usize {
    hosts.agent_log(i).matches("docker plugin call").count()
}

/// A namespace held by a process of its own (`/proc/PID/ns/net` is seen
/// from the agents' mount namespaces, `/run/netns` is not).
struct Netns(Child);

impl Netns {
    fn new() -> Netns {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let path = format!("/proc/{}/ns/net", child.id());
        until("the namespace", Duration::from_secs(5), || {
            std::fs::read_link(&path).ok() != std::fs::read_link("/proc/self/ns/net").ok()
        });
        Netns(child)
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }

    fn ping(&self, target: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["ping", "-c1", "-W1", target])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn docker_network_create_d_netdb_gives_two_hosts_one_overlay() {
    let test = "docker_network_create_d_netdb_gives_two_hosts_one_overlay";
    if !allowed(test) || !docker_installed(test) {
        return;
    }
    let start = Instant::now();
    let mut hosts = DockerHosts::up("ndpg", [10, 225, 0], 2, Path::new(BIN), &["--docker-plugin"])
        .unwrap_or_else(|e| panic!("two docker hosts: {e:#}"));
    let image = hosts.busybox_image(1).unwrap();
    hosts.busybox_image(2).unwrap();
    let wait = Duration::from_secs(30);

    with_logs(&mut hosts, |hosts| {
        // Created once, on h1: a netdb network everywhere, in h2's Docker
        // too, without a second create.
        hosts
            .docker_ok(
                1,
                &[
                    "network",
                    "create",
                    "-d",
                    "netdb",
                    "--ipam-driver",
                    "netdb",
                    "--subnet",
                    SUBNET,
                    "app",
                ],
            )
            .unwrap();
        until("app in h2's Docker", wait, || in_docker(hosts, 2, "app"));
        let nets = hosts.cluster().json(2, &["network", "ls"]);
        assert!(nets.to_string().contains(SUBNET), "h2's netdb networks: {nets}");

        let dns = format!("--dns={GATEWAY}");
        let run = ["run", "-d", "--network", "app", &dns];
        hosts
            .docker_ok(
                1,
                &[&run[..], &["--name", "web", "--network-alias", "www", &image, "sleep", "600"]]
                    .concat(),
            )
            .unwrap();
        let before = plugin_calls(hosts, 2);
        let t0 = Instant::now();
        hosts
            .docker_ok(2, &[&run[..], &["--name", "client", &image, "sleep", "600"]].concat())
            .unwrap();
        let web = address(hosts, 1, "web", "app");
        until("client on h2 to ping web on h1 by address", wait, || {
            pings(hosts, 2, "client", &web)
        });
        let first_ping = t0.elapsed();
        let calls = plugin_calls(hosts, 2) - before;
        // RequestAddress, CreateEndpoint, Join (no ProgramExternalConnectivity:
        // docker_gwbridge is the container's gateway).
        assert_eq!(calls, 3, "one docker run made {calls} plugin calls");
        until("client to ping web by name", wait, || pings(hosts, 2, "client", "web"));
        until("web to ping client by name", wait, || pings(hosts, 1, "web", "client"));
        until("client to ping web by its network alias", wait, || pings(hosts, 2, "client", "www"));
        // A second container on a host whose address block has settled.
        let t1 = Instant::now();
        hosts
            .docker_ok(2, &[&run[..], &["--name", "client2", &image, "sleep", "600"]].concat())
            .unwrap();
        until("client2 to ping web", wait, || pings(hosts, 2, "client2", &web));
        let second_ping = t1.elapsed();
        hosts.docker_ok(2, &["rm", "-f", "client2"]).unwrap();
        let client = address(hosts, 2, "client", "app");
        assert_ne!(web, client);

        // Docker's containers are netdb endpoints: listed, in the kernel.
        let eps = local_endpoints(hosts, 1, "app");
        assert_eq!(eps.len(), 1, "h1's endpoints: {eps:?}");
        assert_eq!(eps[0]["ip"], Value::from(web.clone()));
        let all = hosts.cluster().json(1, &["endpoint", "ls", "app"]).to_string();
        assert!(all.contains(&client), "h1 does not list h2's container: {all}");

        // A namespace endpoint attached by netdb's CLI on h2 and Docker's
        // container on h1 reach each other.
        let ns = Netns::new();
        let o = hosts.netdb(2, &["endpoint", "attach", "app", "plain", "--netns", &ns.path()]);
        assert!(o.status.success(), "attach on h2: {}", text(&o));
        let plain = local_endpoints(hosts, 2, "app")
            .into_iter()
            .find(|e| e["name"] == "plain")
            .and_then(|e| e["ip"].as_str().map(String::from))
            .expect("the attached endpoint is listed");
        until("web to ping the CLI's endpoint", wait, || pings(hosts, 1, "web", &plain));
        until("the CLI's endpoint to ping web", wait, || ns.ping(&web));
        until("web to ping the CLI's endpoint by name", wait, || pings(hosts, 1, "web", "plain"));
        let o = hosts.netdb(2, &["endpoint", "detach", "app", "plain"]);
        assert!(o.status.success(), "detach: {}", text(&o));
        drop(ns);

        // The agent killed between docker create and docker start.
        hosts
            .docker_ok(
                2,
                &["create", "--network", "app", &dns, "--name", "late", &image, "sleep", "600"],
            )
            .unwrap();
        hosts.stop_agent(2);
        hosts.start_agent(2).unwrap();
        until("h2's agent back", wait, || hosts.alive(2) == 2);
        hosts.docker_ok(2, &["start", "late"]).unwrap();
        until("late to ping web", wait, || pings(hosts, 2, "late", &web));
        // The agent restarted under a running container: its name still
        // resolves across hosts, at the gateway the agent listens at again.
        until("client to ping web by name after the agent's restart", wait, || {
            pings(hosts, 2, "client", "web")
        });
        until("late to ping web by name", wait, || pings(hosts, 2, "late", "web"));

        // dockerd restarted under running containers (live restore): they
        // keep running and keep their connectivity, and their names
        // resolve, at the gateway and through Docker's resolver.
        let started =
            |h: &DockerHosts| h.docker_ok(2, &["inspect", "-f", "{{.State.StartedAt}}", "client"]);
        let before_restart = started(hosts).unwrap();
        hosts.restart_dockerd(2).unwrap();
        assert_eq!(started(hosts).unwrap(), before_restart, "client was restarted with dockerd");
        until("client to ping web after dockerd's restart", wait, || {
            pings(hosts, 2, "client", &web)
        });
        until("client to resolve web at the gateway after dockerd's restart", wait, || {
            let o = hosts.docker(2, &["exec", "client", "nslookup", "web", GATEWAY]);
            o.status.success() && text(&o).contains(&web)
        });
        until("client to ping web by name after dockerd's restart", wait, || {
            pings(hosts, 2, "client", "web")
        });
        let vni = nets_vni(hosts, 2, "app");
        let web_mac = hosts
            .docker_ok(
                1,
                &[
                    "inspect",
                    "-f",
                    "{{(index .NetworkSettings.Networks \"app\").MacAddress}}",
                    "web",
                ],
            )
            .unwrap();
        let fdb = hosts.fdb(2, vni);
        assert!(
            fdb.contains(&(web_mac.clone(), hosts.underlay_ip(1))),
            "h2's FDB does not send web's {web_mac} to h1: {fdb:?}"
        );

        // Docker's default IPAM (the subnet given) works too: h1's Docker
        // picks the address, netdb's IPAM keeps the others off it.
        hosts
            .docker_ok(1, &["network", "create", "-d", "netdb", "--subnet", "10.21.0.0/24", "dflt"])
            .unwrap();
        until("dflt in h2's Docker", wait, || in_docker(hosts, 2, "dflt"));
        let on_dflt = ["run", "-d", "--network", "dflt", "--dns=10.21.0.1"];
        hosts
            .docker_ok(1, &[&on_dflt[..], &["--name", "d1", &image, "sleep", "600"]].concat())
            .unwrap();
        hosts
            .docker_ok(2, &[&on_dflt[..], &["--name", "d2", &image, "sleep", "600"]].concat())
            .unwrap();
        let d1 = address(hosts, 1, "d1", "dflt");
        assert_ne!(d1, address(hosts, 2, "d2", "dflt"));
        until("d2 to ping d1", wait, || pings(hosts, 2, "d2", &d1));
        until("d2 to ping d1 by name", wait, || pings(hosts, 2, "d2", "d1"));
        hosts.docker_ok(1, &["rm", "-f", "d1"]).unwrap();
        hosts.docker_ok(2, &["rm", "-f", "d2"]).unwrap();

        // A prune on h2 takes h1's network out of h2's Docker only, for
        // good; docker network rm on h1, which made it, removes it
        // everywhere.
        hosts.docker_ok(2, &["network", "prune", "-f"]).unwrap();
        assert!(!in_docker(hosts, 2, "dflt"), "prune kept dflt on h2");
        assert!(in_docker(hosts, 2, "app"), "prune took app, in use");
        std::thread::sleep(Duration::from_secs(5));
        assert!(!in_docker(hosts, 2, "dflt"), "dflt came back on h2");
        assert!(in_docker(hosts, 1, "dflt"), "h2's prune took dflt off h1");
        assert!(hosts.cluster().json(2, &["network", "ls"]).to_string().contains("10.21.0.0/24"));
        hosts.docker_ok(1, &["network", "rm", "dflt"]).unwrap();
        until("dflt gone from netdb", wait, || {
            !hosts.cluster().json(2, &["network", "ls"]).to_string().contains("10.21.0.0/24")
        });

        // Refusals reach the user in Docker's own error, with the fix.
        let o = hosts.docker(
            1,
            &[
                "network",
                "create",
                "-d",
                "netdb",
                "--ipam-driver",
                "netdb",
                "--subnet",
                "10.22.0.0/24",
                "--gateway",
                "10.22.0.9",
                "bad",
            ],
        );
        assert!(!o.status.success(), "a gateway netdb does not use was taken");
        assert!(text(&o).contains("drop --gateway 10.22.0.9"), "{}", text(&o));

        // Disconnect: the endpoint, its veth and its address are gone.
        let late = address(hosts, 2, "late", "app");
        hosts.docker_ok(2, &["network", "disconnect", "app", "late"]).unwrap();
        until("late's endpoint gone", wait, || {
            !local_endpoints(hosts, 2, "app").iter().any(|e| e["ip"] == late.as_str())
        });
        hosts.docker_ok(2, &["rm", "-f", "late", "client"]).unwrap();
        hosts.docker_ok(1, &["rm", "-f", "web"]).unwrap();
        for i in 1..=2 {
            until("no endpoint left", wait, || local_endpoints(hosts, i, "app").is_empty());
            until("no veth left", wait, || links(hosts, i, "ndve").is_empty());
        }
        hosts.docker_ok(1, &["network", "rm", "app"]).unwrap();
        for i in 1..=2 {
            until("app gone from netdb", wait, || {
                !hosts.cluster().json(i, &["network", "ls"]).to_string().contains("\"app\"")
            });
            until("app gone from Docker", wait, || !in_docker(hosts, i, "app"));
            until("no bridge left", wait, || links(hosts, i, "ndbr").is_empty());
            let state = std::fs::read_to_string(hosts.data_dir(i).join("state.json")).unwrap();
            assert!(!state.contains("\"reserved\""), "h{i} keeps a reservation: {state}");
            let docker: Value = serde_json::from_str(
                &std::fs::read_to_string(hosts.data_dir(i).join("docker.json")).unwrap(),
            )
            .unwrap();
            for kept in ["networks", "endpoints"] {
                assert_eq!(docker[kept], serde_json::json!({}), "h{i}'s docker.json: {docker}");
            }
        }
        eprintln!(
            "docker plugin: first cross-host ping {first_ping:.2?} after docker run (a new \
             address block), {second_ping:.2?} for the next container; one docker run made \
             {calls} plugin calls; whole test {:.1?}",
            start.elapsed()
        );
    });
}
