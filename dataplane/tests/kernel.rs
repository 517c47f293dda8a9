//! The data plane against a real kernel, inside namespaces this test makes.
//! Needs root (CAP_NET_ADMIN); without it the tests say so and pass, except
//! under CI (`CI` set), where they fail.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use netdb_dataplane::{
    Desired, Egress, Endpoint, Linux, Mac, Network, ReconcileReport, Remote, VXLAN_PORT,
    has_net_admin, peer_name, ruleset,
};

fn allowed(test: &str) -> bool {
    if has_net_admin() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run as root (CAP_NET_ADMIN)");
    eprintln!("SKIP {test}: needs CAP_NET_ADMIN (run as root)");
    false
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bridge(args: &[&str]) -> String {
    let out = Command::new("bridge").args(args).output().expect("run bridge");
    assert!(out.status.success(), "bridge {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `bridge fdb show` lists a permanent tunnel entry MAC → dst (the
/// kernel adds `link-netnsid N` between them: the VXLAN device's socket is
/// in another namespace).
fn tunnel_entry(fdb: &str, mac: &str, dst: &str) -> bool {
    fdb.lines()
        .any(|l| l.starts_with(&format!("{mac} dst {dst} ")) && l.ends_with("self permanent"))
}

/// Named namespaces, deleted on drop, with the overlay namespace the first
/// one's `Linux` makes.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str, names: &[&str]) -> Namespaces {
        let ns: Vec<String> =
            names.iter().map(|n| format!("ndt{}-{tag}-{n}", std::process::id())).collect();
        for n in &ns {
            ip(&["netns", "add", n]);
        }
        Namespaces(ns)
    }
    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0[i]))
    }
    /// The overlay namespace's name.
    fn ov(&self) -> String {
        format!("{}-ov", self.0[0])
    }
    fn ov_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ov()))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().chain([&self.ov()]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread that lives in namespace `path`, with its own
/// runtime, so the test's netlink sockets never touch the machine's own.
fn inside<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
    .join()
    .expect("namespace thread")
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn remote(last: u8, host: u8) -> Remote {
    Remote { ip: addr(last), mac: Mac::from_ipv4(addr(last)), host: Ipv4Addr::new(192, 0, 2, host) }
}

fn network(remotes: &[Remote], endpoints: &[Endpoint]) -> Network {
    Network {
        vni: 4242,
        mtu: 1450,
        local: Ipv4Addr::new(192, 0, 2, 1),
        remotes: remotes.iter().copied().collect::<BTreeSet<_>>(),
        endpoints: endpoints.iter().map(|e| (e.host_ifname.clone(), e.clone())).collect(),
        port: VXLAN_PORT,
        prune: true,
        gateway: None,
    }
}

fn endpoint(netns: PathBuf, host_ifname: &str, last: u8) -> Endpoint {
    Endpoint {
        netns,
        ifname: "eth0".into(),
        host_ifname: host_ifname.into(),
        ip: addr(last),
        prefix: 24,
        mac: Mac::from_ipv4(addr(last)),
        egress: None,
        docker: false,
    }
}

#[test]
fn reconcile_programs_repairs_and_cleans_the_kernel() {
    if !allowed("reconcile_programs_repairs_and_cleans_the_kernel") {
        return;
    }
    let ns = Namespaces::new("rec", &["host"]);
    let (host, ov, ovp) = (ns.0[0].clone(), ns.ov(), ns.ov_path());
    // Keep the host namespace up for the whole test: its devices need it.
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    let desired: Desired = [(4242, network(&[remote(5, 2), remote(6, 3)], &[]))].into();
    let reconcile = |d: Desired| {
        let ovp = ovp.clone();
        inside(ns.path(0), move || {
            Box::pin(async move { Linux::new(&ovp).unwrap().reconcile(&d).await.unwrap() })
        })
    };
    let first = reconcile(desired.clone());
    assert_eq!((first.created, first.fdb_added, first.neigh_added, first.failed), (1, 2, 2, 0));
    // The overlay's devices live in a namespace of their own, pinned like
    // `ip netns add`'s, with bridge netfilter off where it exists; the
    // VXLAN device's socket stays in the host's.
    assert!(!ip(&["-n", &host, "link", "show"]).contains("ndvx4242"));
    assert!(ip(&["netns", "list"]).contains(&ov));
    let hooks = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let out = Command::new("ip").args(["netns", "exec", &ov, "cat", hooks]).output().unwrap();
    if out.status.success() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "bridge netfilter");
    }
    let host = ov.clone();
    let links = ip(&["-n", &host, "-d", "link", "show", "ndvx4242"]);
    assert!(links.contains(&format!("link-netns {}", ns.0[0])), "{links}");

    let links = ip(&["-n", &host, "-d", "link", "show", "ndvx4242"]);
    assert!(links.contains("vxlan id 4242") && links.contains("dstport 4789"), "{links}");
    assert!(links.contains("nolearning") && links.contains("proxy"), "{links}");
    assert!(links.contains("master ndbr4242"), "{links}");
    let fdb = bridge(&["-n", &host, "fdb", "show", "dev", "ndvx4242"]);
    assert!(tunnel_entry(&fdb, "02:42:0a:4d:00:05", "192.0.2.2"), "{fdb}");
    assert!(tunnel_entry(&fdb, "02:42:0a:4d:00:06", "192.0.2.3"), "{fdb}");
    let neigh = ip(&["-n", &host, "neigh", "show", "dev", "ndvx4242"]);
    assert!(neigh.contains("10.77.0.5 lladdr 02:42:0a:4d:00:05 PERMANENT"), "{neigh}");

    // In step: nothing to do.
    let again = reconcile(desired.clone());
    assert_eq!(again.changes(), 0, "{again:?}");

    // Hand edits: one entry deleted, one stray entry added, one neighbor
    // removed. The next reconcile undoes all three.
    bridge(&[
        "-n",
        &host,
        "fdb",
        "del",
        "02:42:0a:4d:00:05",
        "dev",
        "ndvx4242",
        "dst",
        "192.0.2.2",
        "self",
    ]);
    bridge(&[
        "-n",
        &host,
        "fdb",
        "add",
        "02:42:0a:4d:00:63",
        "dev",
        "ndvx4242",
        "dst",
        "192.0.2.9",
        "self",
        "permanent",
    ]);
    ip(&["-n", &host, "neigh", "del", "10.77.0.6", "dev", "ndvx4242"]);
    let repair = reconcile(desired.clone());
    assert_eq!(
        (repair.fdb_added, repair.fdb_removed, repair.neigh_added, repair.failed),
        (1, 1, 1, 0),
        "{repair:?}"
    );
    let fdb = bridge(&["-n", &host, "fdb", "show", "dev", "ndvx4242"]);
    assert!(
        fdb.contains("02:42:0a:4d:00:05 dst 192.0.2.2") && !fdb.contains("02:42:0a:4d:00:63"),
        "{fdb}"
    );

    // A remote goes away; then the whole network does.
    let smaller: Desired = [(4242, network(&[remote(6, 3)], &[]))].into();
    let gone = reconcile(smaller);
    assert_eq!((gone.fdb_removed, gone.neigh_removed), (1, 1));
    let neigh = ip(&["-n", &host, "neigh", "show", "dev", "ndvx4242"]);
    assert!(!neigh.contains("10.77.0.5"), "{neigh}");
    let none = reconcile(Desired::new());
    assert_eq!(none.removed, 1);
    let links = ip(&["-n", &host, "link", "show"]);
    assert!(!links.contains("ndvx4242") && !links.contains("ndbr4242"), "{links}");
}

#[test]
fn endpoints_are_wired_repaired_and_refused_cleanly() {
    if !allowed("endpoints_are_wired_repaired_and_refused_cleanly") {
        return;
    }
    let ns = Namespaces::new("ep", &["host", "c1", "c2"]);
    let (host, c1, c2) = (ns.ov(), ns.0[1].clone(), ns.0[2].clone());
    let e1 = endpoint(ns.path(1), "ndve00000001", 2);
    let e2 = endpoint(ns.path(2), "ndve00000002", 3);
    let net = network(&[], &[e1.clone(), e2.clone()]);
    let (n, a, b, ovp) = (net.clone(), e1.clone(), e2.clone(), ns.ov_path());
    inside(ns.path(0), move || {
        Box::pin(async move {
            let linux = Linux::new(&ovp).unwrap();
            linux.attach(&n, &a).await.unwrap();
            linux.attach(&n, &b).await.unwrap();
        })
    });
    let eth = ip(&["-n", &c1, "-d", "addr", "show", "eth0"]);
    assert!(
        eth.contains("inet 10.77.0.2/24") && eth.contains("link/ether 02:42:0a:4d:00:02"),
        "{eth}"
    );
    assert!(eth.contains("mtu 1450") && eth.contains("state UP"), "{eth}");
    let route = ip(&["-n", &c2, "route", "show"]);
    assert!(route.contains("10.77.0.0/24 dev eth0"), "{route}");
    let ping = Command::new("ip")
        .args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "2", "10.77.0.3"])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "same-host ping: {}", String::from_utf8_lossy(&ping.stdout));

    // The veth deleted by hand (the container loses its eth0): reconcile
    // wires it again. Another one unplugged from the bridge: enslaved again.
    ip(&["-n", &host, "link", "del", "ndve00000001"]);
    ip(&["-n", &host, "link", "set", "ndve00000002", "nomaster"]);
    let (desired, ovp) = ([(4242, net.clone())].into(), ns.ov_path());
    let r = inside(ns.path(0), move || {
        Box::pin(async move { Linux::new(&ovp).unwrap().reconcile(&desired).await.unwrap() })
    });
    assert_eq!((r.endpoints_repaired, r.failed), (2, 0), "{r:?}");
    assert!(ip(&["-n", &c1, "addr", "show", "eth0"]).contains("inet 10.77.0.2/24"));
    assert!(ip(&["-n", &host, "link", "show", "ndve00000002"]).contains("master ndbr4242"));

    // Refusals leave nothing behind.
    let (n, taken, missing) = (
        net.clone(),
        endpoint(ns.path(1), "ndve00000003", 4),
        endpoint(PathBuf::from("/run/netns/ndt-no-such-namespace"), "ndve00000004", 5),
    );
    let not_a_netns = endpoint(PathBuf::from("/proc/self/ns/uts"), "ndve00000005", 6);
    let ovp = ns.ov_path();
    let errors = inside(ns.path(0), move || {
        Box::pin(async move {
            let linux = Linux::new(&ovp).unwrap();
            let mut out = Vec::new();
            for ep in [taken, missing, not_a_netns] {
                out.push(linux.attach(&n, &ep).await.unwrap_err().to_string());
            }
            assert!(linux.detach("ndve00000001").await.unwrap());
            assert!(!linux.detach("ndve00000001").await.unwrap());
            out
        })
    });
    assert!(errors[0].contains("eth0 already exists"), "{errors:?}");
    assert!(errors[1].contains("No such file"), "{errors:?}");
    assert!(errors[2].contains("not a network namespace"), "{errors:?}");
    let links = ip(&["-n", &host, "link", "show"]) + &ip(&["-n", &ns.0[0], "link", "show"]);
    for leftover in ["ndve00000003", "ndvp00000003", "ndve00000004", "ndve00000005", "ndve00000001"]
    {
        assert!(!links.contains(leftover), "{leftover} left behind: {links}");
    }
    assert!(!ip(&["-n", &c1, "link", "show"]).contains("eth0"), "detach must remove eth0");
}

#[test]
fn the_kernel_probe_works_here_and_leaves_the_host_untouched() {
    if !allowed("the_kernel_probe_works_here_and_leaves_the_host_untouched") {
        return;
    }
    let k = netdb_dataplane::probe_kernel(Ipv4Addr::new(192, 0, 2, 1), 1450);
    assert_eq!(k.netns, Ok(()));
    assert_eq!((k.bridge, k.vxlan, k.veth), (Some(Ok(())), Some(Ok(())), Some(Ok(()))));
    // The probe's devices lived in its own namespace, never here.
    let here = ip(&["-br", "link"]);
    assert!(!here.contains("ndveprobe"), "{here}");
}

/// One `Linux` living in a namespace for the whole test, as in the agent
/// (it remembers what it loaded into nftables), reconciling on request.
type Request = (Desired, std::sync::mpsc::Sender<ReconcileReport>);
struct Reconciler(std::sync::mpsc::Sender<Request>);

impl Reconciler {
    fn new(ns: &Namespaces) -> Reconciler {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let (path, ovp) = (ns.path(0), ns.ov_path());
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let linux = rt.block_on(async { Linux::new(&ovp).unwrap() });
            while let Ok((desired, reply)) = rx.recv() {
                let r = rt.block_on(linux.reconcile(&desired)).unwrap();
                let _ = reply.send(r);
            }
        });
        Reconciler(tx)
    }

    fn reconcile(&self, desired: &Desired) -> ReconcileReport {
        let (tx, rx) = std::sync::mpsc::channel();
        self.0.send((desired.clone(), tx)).unwrap();
        rx.recv().expect("the reconciler thread")
    }
}

fn nft_in(netns: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "table", "ip", "netdb"])
        .output()
        .expect("run nft");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_way_out_is_wired_reconciled_and_removed() {
    if !allowed("the_way_out_is_wired_reconciled_and_removed") {
        return;
    }
    let ns = Namespaces::new("gw", &["host", "c1"]);
    let (host, c1) = (ns.0[0].clone(), ns.0[1].clone());
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    let mut e1 = endpoint(ns.path(1), "ndve00000001", 2);
    e1.egress = Some(Egress {
        ifname: "gweth0".into(),
        ip: Ipv4Addr::new(198, 18, 0, 2),
        gateway: Ipv4Addr::new(198, 18, 0, 1),
        prefix: 16,
        publish: vec!["8080:80".parse().unwrap()],
    });
    let desired: Desired = [(4242, network(&[], &[e1]))].into();
    let k = Reconciler::new(&ns);

    let r = k.reconcile(&desired);
    assert_eq!((r.endpoints_repaired, r.nft_changed, r.failed), (1, 1, 0), "{r:?}");
    assert!(ip(&["-n", &host, "addr", "show", "ndgw0"]).contains("inet 198.18.0.1/16"));
    let port = ip(&["-n", &host, "-d", "link", "show", "ndge00000001"]);
    assert!(port.contains("master ndgw0") && port.contains("isolated on"), "{port}");
    let gw = ip(&["-n", &c1, "addr", "show", "gweth0"]);
    assert!(gw.contains("inet 198.18.0.2/16") && gw.contains("state UP"), "{gw}");
    let routes = ip(&["-n", &c1, "route"]);
    assert!(routes.contains("default via 198.18.0.1 dev gweth0"), "{routes}");
    let forwarding = Command::new("ip")
        .args(["netns", "exec", &host, "cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
    let table = nft_in(&host).expect("netdb's table");
    assert!(table.contains("dnat to 198.18.0.2:80") && table.contains("masquerade"), "{table}");
    let ping = Command::new("ip")
        .args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "2", "198.18.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "the container reaches its gateway");

    // In step: nft's listing of what was loaded is recognised.
    assert_eq!(k.reconcile(&desired).changes(), 0);

    // Edited by hand: the table replaced, the port unplugged.
    let nft = |args: &[&str]| {
        let s = Command::new("ip").args(["netns", "exec", &host, "nft"]).args(args).status();
        assert!(s.unwrap().success(), "nft {args:?}");
    };
    nft(&["add", "rule", "ip", "netdb", "postrouting", "counter"]);
    ip(&["-n", &host, "link", "set", "ndge00000001", "nomaster"]);
    let r = k.reconcile(&desired);
    assert_eq!((r.nft_changed, r.endpoints_repaired, r.failed), (1, 1, 0), "{r:?}");
    assert!(!nft_in(&host).unwrap().contains("counter"));
    assert!(ip(&["-n", &host, "-d", "link", "show", "ndge00000001"]).contains("isolated on"));
    assert_eq!(k.reconcile(&desired).changes(), 0);
    assert!(ruleset(&desired).is_some());

    // Nothing wanted: endpoint, bridge and table go.
    let r = k.reconcile(&Desired::new());
    assert_eq!((r.nft_changed, r.gateway_changed, r.failed), (1, 1, 0), "{r:?}");
    assert_eq!(nft_in(&host), None);
    let links = ip(&["-n", &host, "-br", "link"]) + &ip(&["-n", &ns.ov(), "-br", "link"]);
    assert!(!links.contains("ndgw0") && !links.contains("ndbr4242"), "{links}");
}

#[test]
fn a_vxlan_device_of_our_name_with_other_attributes_is_replaced_and_a_foreign_one_refused() {
    if !allowed(
        "a_vxlan_device_of_our_name_with_other_attributes_is_replaced_and_a_foreign_one_refused",
    ) {
        return;
    }
    let ns = Namespaces::new("attrs", &["host"]);
    ip(&["-n", &ns.0[0], "link", "set", "lo", "up"]);
    ip(&["netns", "add", &ns.ov()]);
    let host = ns.ov();
    let reconcile = |desired: Desired| {
        let ovp = ns.ov_path();
        inside(ns.path(0), move || {
            Box::pin(async move { Linux::new(&ovp).unwrap().reconcile(&desired).await.unwrap() })
        })
    };
    let show = || ip(&["-n", &host, "-d", "link", "show", "ndvx4242"]);
    // Left by someone (an earlier run, a hand edit) in the overlay
    // namespace (made by `ip netns add` here, and taken as it is): our
    // name, another VNI and port.
    ip(&["-n", &host, "link", "add", "ndvx4242", "type", "vxlan", "id", "77", "dstport", "4790"]);
    let net = Network { port: 4799, ..network(&[remote(5, 2)], &[]) };
    let r = reconcile([(4242, net.clone())].into());
    assert_eq!((r.created, r.failed), (1, 0), "{r:?}");
    let link = show();
    assert!(link.contains("vxlan id 4242") && link.contains("dstport 4799"), "{link}");
    assert!(link.contains("local 192.0.2.1"), "{link}");
    assert_eq!(reconcile([(4242, net.clone())].into()).changes(), 0, "in step now");

    // The port changed (a restart with another --vxlan-port): replaced,
    // its entries written again.
    let moved = Network { port: VXLAN_PORT, ..net.clone() };
    let r = reconcile([(4242, moved.clone())].into());
    assert_eq!((r.created, r.fdb_added, r.failed), (1, 1, 0), "{r:?}");
    assert!(show().contains("dstport 4789"), "{}", show());

    // A device of our name that is no VXLAN device (here a bridge) is
    // someone else's: refused with the reason, left alone, not removed.
    ip(&["-n", &host, "link", "del", "ndvx4242"]);
    ip(&["-n", &host, "link", "add", "ndvx4242", "type", "bridge"]);
    let (d, ovp): (Desired, _) = ([(4242, moved)].into(), ns.ov_path());
    let refused = inside(ns.path(0), move || {
        Box::pin(async move {
            let linux = Linux::new(&ovp).unwrap();
            let r = linux.reconcile(&d).await.unwrap();
            let net = &d[&4242];
            let e = linux.ensure_network(net).await.unwrap_err().to_string();
            (r, e)
        })
    });
    assert_eq!(refused.0.failed, 1, "{:?}", refused.0);
    assert_eq!(
        refused.1,
        "ndvx4242 exists but is a bridge device, not a VXLAN device; netdb neither uses nor \
         removes it: rename or delete it (ip link del ndvx4242)"
    );
    assert!(show().contains("bridge"), "left alone: {}", show());
    let r = reconcile(Desired::new());
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(show().contains("bridge"), "not removed with our networks: {}", show());
}

/// A Docker endpoint 10.77.0.`last`, as the agent passes it: no namespace,
/// interface name or way out.
fn docker_endpoint(host_ifname: &str, last: u8) -> Endpoint {
    Endpoint { ifname: String::new(), docker: true, ..endpoint(PathBuf::new(), host_ifname, last) }
}

/// Whether `ip link show`'s output has the UP flag (administratively up,
/// whatever the carrier).
fn is_up(show: &str) -> bool {
    let flags = show.split_once('<').and_then(|(_, rest)| rest.split_once('>'));
    flags.is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
}

/// The IPv4 addresses (address/prefix) of a link of namespace `netns`.
fn ipv4_of(netns: &str, link: &str) -> Vec<String> {
    let out = ip(&["-4", "-n", netns, "addr", "show", "dev", link]);
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("inet "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The MAC address of a link of namespace `netns`.
fn mac_of(netns: &str, link: &str) -> String {
    let out = ip(&["-n", netns, "-o", "link", "show", link]);
    out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string()
}

#[test]
fn a_docker_endpoint_is_left_for_docker_and_orphaned_with_its_namespace() {
    if !allowed("a_docker_endpoint_is_left_for_docker_and_orphaned_with_its_namespace") {
        return;
    }
    let ns = Namespaces::new("dock", &["host", "c1"]);
    let (host, c1, ov) = (ns.0[0].clone(), ns.0[1].clone(), ns.ov());
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    let (e1, e2) = (docker_endpoint("ndve00000001", 2), docker_endpoint("ndve00000002", 3));
    let net = network(&[], std::slice::from_ref(&e1));
    let (n, a, b, ovp) = (net.clone(), e1.clone(), e2.clone(), ns.ov_path());
    inside(ns.path(0), move || {
        Box::pin(async move {
            let linux = Linux::new(&ovp).unwrap();
            linux.attach(&n, &a).await.unwrap();
            // A retry makes the pair again.
            linux.attach(&n, &a).await.unwrap();
            // One Docker never takes goes whole.
            linux.attach(&n, &b).await.unwrap();
            assert!(linux.detach(&b.host_ifname).await.unwrap());
        })
    });
    let peer = peer_name("ndve00000001");
    let host_side = ip(&["-n", &ov, "link", "show", "ndve00000001"]);
    assert!(host_side.contains("master ndbr4242") && is_up(&host_side), "{host_side}");
    // The peer stays in the agent's namespace, where Docker looks for it.
    let left = ip(&["-n", &host, "link", "show", &peer]);
    assert!(left.contains("link/ether 02:42:0a:4d:00:02") && left.contains("mtu 1450"), "{left}");
    assert!(!is_up(&left), "Docker sets it up: {left}");
    assert!(ipv4_of(&host, &peer).is_empty(), "Docker addresses it");
    let links = ip(&["-n", &host, "link", "show"]) + &ip(&["-n", &ov, "link", "show"]);
    assert!(!links.contains("ndve00000002") && !links.contains(&peer_name("ndve00000002")));

    // Docker's part: the peer moved into the container and renamed.
    ip(&["-n", &host, "link", "set", &peer, "netns", &c1]);
    ip(&["-n", &c1, "link", "set", &peer, "name", "eth0"]);
    let k = Reconciler::new(&ns);
    let desired: Desired = [(4242, net)].into();
    let r = k.reconcile(&desired);
    assert_eq!((r.changes(), r.failed, r.netns_gone.len()), (0, 0, 0), "{r:?}");
    let eth = ip(&["-n", &c1, "link", "show", "eth0"]);
    assert!(eth.contains("link/ether 02:42:0a:4d:00:02") && !is_up(&eth), "untouched: {eth}");

    // The container's namespace destroyed: the pair goes with it (the
    // kernel cleans namespaces up in the background), and the endpoint is
    // left to the agent.
    ip(&["netns", "del", &c1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = k.reconcile(&desired);
        if !r.netns_gone.is_empty() || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.netns_gone, vec![e1], "{r:?}");
    assert_eq!((r.changes(), r.failed), (0, 0), "{r:?}");
}

#[test]
fn the_host_end_holds_exactly_the_gateway_address() {
    if !allowed("the_host_end_holds_exactly_the_gateway_address") {
        return;
    }
    let ns = Namespaces::new("gwaddr", &["host", "c1"]);
    let (host, ov) = (ns.0[0].clone(), ns.ov());
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    let k = Reconciler::new(&ns);
    let with = |gateway: Option<(Ipv4Addr, u8)>| -> Desired {
        [(4242, Network { gateway, ..network(&[], &[]) })].into()
    };

    let first = with(Some((addr(1), 24)));
    let r = k.reconcile(&first);
    assert_eq!((r.created, r.failed), (1, 0), "{r:?}");
    assert_eq!(ipv4_of(&host, "ndhost4242"), ["10.77.0.1/24"]);
    assert!(is_up(&ip(&["-n", &host, "link", "show", "ndhost4242"])));
    // Docker's MAC for the address: the same whenever it is made again.
    assert_eq!(mac_of(&host, "ndhost4242"), "02:42:0a:4d:00:01");
    let port = ip(&["-n", &ov, "link", "show", "ndhport4242"]);
    assert!(port.contains("master ndbr4242") && is_up(&port), "{port}");
    assert!(ipv4_of(&ov, "ndbr4242").is_empty(), "nothing routes in the overlay namespace");
    assert_eq!(k.reconcile(&first).changes(), 0, "in step");

    // An address added by hand besides: removed. Moved: made again.
    ip(&["-n", &host, "addr", "add", "10.77.9.9/16", "dev", "ndhost4242"]);
    let r = k.reconcile(&first);
    assert_eq!((r.addresses_changed, r.failed), (1, 0), "{r:?}");
    let r = k.reconcile(&with(Some((addr(254), 24))));
    assert_eq!((r.created, r.addresses_changed, r.failed), (1, 1, 0), "{r:?}");
    assert_eq!(ipv4_of(&host, "ndhost4242"), ["10.77.0.254/24"]);
    assert_eq!(mac_of(&host, "ndhost4242"), "02:42:0a:4d:00:fe");

    let r = k.reconcile(&with(None));
    assert_eq!((r.addresses_changed, r.failed), (1, 0), "{r:?}");
    assert!(!ip(&["-n", &host, "link", "show"]).contains("ndhost4242"));
    assert!(!ip(&["-n", &ov, "link", "show"]).contains("ndhport4242"), "a pair goes whole");

    // A network made by an attach has its host end at once, and a
    // container on the network reaches the host there.
    assert_eq!(k.reconcile(&Desired::new()).removed, 1);
    let net = Network { gateway: Some((addr(1), 24)), ..network(&[], &[]) };
    let ep = endpoint(ns.path(1), "ndve00000001", 2);
    let ovp = ns.ov_path();
    inside(ns.path(0), move || {
        Box::pin(async move { Linux::new(&ovp).unwrap().attach(&net, &ep).await.unwrap() })
    });
    assert_eq!(ipv4_of(&host, "ndhost4242"), ["10.77.0.1/24"]);
    let ping = Command::new("ip")
        .args(["netns", "exec", &ns.0[1], "ping", "-c", "1", "-W", "2", "10.77.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
}

#[test]
fn an_older_versions_devices_move_into_the_overlay_namespace_with_the_containers_kept() {
    if !allowed(
        "an_older_versions_devices_move_into_the_overlay_namespace_with_the_containers_kept",
    ) {
        return;
    }
    let ns = Namespaces::new("legacy", &["host", "c1"]);
    let (host, c1, ov) = (ns.0[0].clone(), ns.0[1].clone(), ns.ov());
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    // As versions before the overlay namespace made them: all in the
    // agent's namespace, the gateway address on the bridge.
    let run = |args: &str| {
        ip(&[&["-n", host.as_str()], &args.split(' ').collect::<Vec<_>>()[..]].concat())
    };
    run("link add ndbr4242 mtu 1450 type bridge");
    run("addr add 10.77.0.1/24 dev ndbr4242");
    run("link set ndbr4242 up");
    run(
        "link add ndvx4242 mtu 1450 type vxlan id 4242 local 192.0.2.1 dstport 4789 nolearning proxy",
    );
    run("link set ndvx4242 master ndbr4242 up");
    run(&format!("link add ndve00000001 mtu 1450 type veth peer name eth0 netns {c1}"));
    run("link set ndve00000001 master ndbr4242 up");
    ip(&["-n", &c1, "link", "set", "eth0", "address", "02:42:0a:4d:00:02"]);
    ip(&["-n", &c1, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    ip(&["-n", &c1, "link", "set", "eth0", "up"]);
    let eth0_index =
        || ip(&["-n", &c1, "-o", "link", "show", "eth0"]).split(':').next().unwrap().to_string();
    let before = eth0_index();

    let ep = endpoint(ns.path(1), "ndve00000001", 2);
    let net = Network { gateway: Some((addr(1), 24)), ..network(&[remote(5, 2)], &[ep]) };
    let desired: Desired = [(4242, net)].into();
    let k = Reconciler::new(&ns);
    let r = k.reconcile(&desired);
    assert_eq!((r.removed, r.created, r.endpoints_repaired, r.failed), (2, 1, 2, 0), "{r:?}");
    let here = ip(&["-n", &host, "-br", "link"]);
    assert!(!here.contains("ndbr4242") && !here.contains("ndvx4242"), "{here}");
    assert!(!here.contains("ndve00000001"), "{here}");
    let moved = ip(&["-n", &ov, "link", "show", "ndve00000001"]);
    assert!(moved.contains("master ndbr4242") && is_up(&moved), "{moved}");
    assert_eq!(eth0_index(), before, "the container's interface is the same one");
    assert_eq!(ipv4_of(&host, "ndhost4242"), ["10.77.0.1/24"]);
    let fdb = bridge(&["-n", &ov, "fdb", "show", "dev", "ndvx4242"]);
    assert!(tunnel_entry(&fdb, "02:42:0a:4d:00:05", "192.0.2.2"), "{fdb}");
    let ping = Command::new("ip")
        .args(["netns", "exec", &c1, "ping", "-c", "1", "-W", "2", "10.77.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    assert_eq!(k.reconcile(&desired).changes(), 0, "in step");
}
