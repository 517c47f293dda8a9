//! The host itself: privilege, kernel features (tried in a throwaway
//! namespace), nftables, bridge netfilter.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use netdb_dataplane::{OverlayPin, has_net_admin, probe_kernel};

use super::{Check, Finding};

/// The overlay MTU the agent gives networks by default.
pub(super) const OVERLAY_MTU: u32 = 1450;

pub(super) fn privilege(dataplane: bool) -> Check {
    if !dataplane {
        return Check::new(
            "privilege",
            Finding::Skip,
            "--no-dataplane: no kernel changes, no privilege needed",
        );
    }
    if has_net_admin() {
        let who = if nix::unistd::geteuid().is_root() { "root" } else { "a user" };
        return Check::new(
            "privilege",
            Finding::Pass,
            format!("running as {who} with CAP_NET_ADMIN"),
        );
    }
    Check::new(
        "privilege",
        Finding::Fail,
        "no CAP_NET_ADMIN: the agent would run without its data plane and refuse endpoints",
    )
    .fix("run the agent as root (sudo), or with CAP_NET_ADMIN and CAP_SYS_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_SYS_ADMIN); or pass --no-dataplane for tables only")
}

/// Network namespaces, a bridge, a VXLAN device and a veth pair, as the
/// agent makes them, each reported on its own.
pub(super) async fn kernel(dataplane: bool, tunnel: Option<IpAddr>) -> Vec<Check> {
    const NAMES: [&str; 4] = ["netns", "bridge", "vxlan", "veth"];
    let skip = |why: &str| NAMES.iter().map(|n| Check::new(n, Finding::Skip, why)).collect();
    if !dataplane {
        return skip("--no-dataplane: not needed");
    }
    if !has_net_admin() {
        return skip("not tried: needs root (CAP_NET_ADMIN), see privilege");
    }
    // The agent's tunnel address when it has one; any address does, since
    // nothing is sent.
    let local = match tunnel {
        Some(IpAddr::V4(ip)) => ip,
        _ => Ipv4Addr::new(192, 0, 2, 1),
    };
    let probe = tokio::task::spawn_blocking(move || probe_kernel(local, OVERLAY_MTU)).await;
    let Ok(k) = probe else { return skip("not tried: the probe did not run") };
    let netns = match k.netns {
        Ok(()) => Check::new("netns", Finding::Pass, "network namespaces work (a throwaway one made the probes below)"),
        Err(e) if e.contains("not permitted") => Check::new("netns", Finding::Fail, e)
            .fix("run as root: making and entering network namespaces needs CAP_SYS_ADMIN (the agent enters each container's)"),
        Err(e) => Check::new("netns", Finding::Fail, e)
            .fix("use a kernel with network namespaces (CONFIG_NET_NS=y)"),
    };
    let feature =
        |name: &'static str, r: Option<Result<(), String>>, works: String, fix: &str| match r {
            Some(Ok(())) => Check::new(name, Finding::Pass, works),
            Some(Err(e)) => Check::new(name, Finding::Fail, e).fix(fix),
            None => Check::new(name, Finding::Skip, "not tried: an earlier probe failed"),
        };
    vec![
        netns,
        feature(
            "bridge",
            k.bridge,
            format!("a bridge (MTU {OVERLAY_MTU}) can be made"),
            "modprobe bridge (kernel option CONFIG_BRIDGE); in a container, load it on the host",
        ),
        feature(
            "vxlan",
            k.vxlan,
            format!(
                "a VXLAN device (UDP {}, learning off, ARP proxy on) can be made and brought up",
                netdb_dataplane::VXLAN_PORT
            ),
            "modprobe vxlan (kernel option CONFIG_VXLAN); in a container, load it on the host",
        ),
        feature(
            "veth",
            k.veth,
            "a veth pair can be made".into(),
            "modprobe veth (kernel option CONFIG_VETH); in a container, load it on the host",
        ),
    ]
}

/// Egress (SNAT) and published ports need nftables; internal networks
/// work without, so a missing or broken nft is a warning, not a failure.
pub(super) fn nftables(dataplane: bool) -> Check {
    if !dataplane {
        return Check::new("nftables", Finding::Skip, "--no-dataplane: not needed");
    }
    let later = "needed for endpoints to reach the outside and for published ports";
    match Command::new("nft").args(["list", "tables"]).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Check::new("nftables", Finding::Warn, format!("`nft` is not installed ({later})"))
                .fix("apt-get install nftables (or: dnf install nftables)")
        }
        Err(e) => Check::new("nftables", Finding::Warn, format!("cannot run `nft`: {e} ({later})"))
            .fix("apt-get install nftables (or: dnf install nftables)"),
        Ok(out) if out.status.success() => {
            let tables = String::from_utf8_lossy(&out.stdout).lines().count();
            Check::new(
                "nftables",
                Finding::Pass,
                format!("`nft list tables` works ({tables} tables)"),
            )
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Check::new(
                "nftables",
                Finding::Warn,
                format!("`nft list tables` fails: {err} ({later})"),
            )
            .fix("modprobe nf_tables (kernel option CONFIG_NF_TABLES), and run as root")
        }
    }
}

/// A forward hook that drops by policy (dockerd's iptables FORWARD DROP, a
/// firewall) drops the containers' way out: it is routed from `ndgw0` in
/// this namespace, and each base chain's verdict stands on its own, so
/// netdb's own table cannot let it through. (Overlay traffic is bridged in
/// the overlay namespace and never meets it.) Rules of iptables-legacy are
/// not seen.
pub(super) fn forward_policy(dataplane: bool) -> Check {
    const NAME: &str = "forward policy";
    if !dataplane {
        return Check::new(NAME, Finding::Skip, "--no-dataplane: not needed");
    }
    let listed = match Command::new("nft").args(["-j", "list", "chains"]).output() {
        Ok(out) if out.status.success() => out.stdout,
        _ => {
            return Check::new(
                NAME,
                Finding::Skip,
                "`nft -j list chains` does not answer (see nftables)",
            );
        }
    };
    let chains: serde_json::Value = serde_json::from_slice(&listed).unwrap_or_default();
    let dropping: Vec<String> = chains["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = &item["chain"];
            (c["hook"] == "forward" && c["policy"] == "drop").then(|| {
                format!(
                    "{} {} {}",
                    c["family"].as_str().unwrap_or("?"),
                    c["table"].as_str().unwrap_or("?"),
                    c["name"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    if dropping.is_empty() {
        return Check::new(NAME, Finding::Pass, "no forward hook drops by policy");
    }
    Check::new(
        NAME,
        Finding::Warn,
        format!(
            "forwarded packets are dropped by policy in {}: endpoints' traffic to the outside (through {}) and to published ports is dropped unless accepted there; overlay traffic is not affected",
            dropping.join(", "),
            netdb_dataplane::GATEWAY_BRIDGE
        ),
    )
    .fix("with Docker: iptables -I DOCKER-USER -i ndgw0 -j ACCEPT; iptables -I DOCKER-USER -o ndgw0 -j ACCEPT (without Docker: the same in FORWARD)")
}

/// The overlay namespace holds the networks' bridges, so that the host's
/// iptables (Docker's FORWARD policy DROP) never sees the overlay's
/// frames. It must be pinned where the agent's next start finds it, and
/// keep bridge netfilter off (the agent turns it off at each reconcile:
/// br_netfilter loaded later turns it on in every namespace).
pub(super) fn overlay_namespace(dataplane: bool, path: &Path) -> Check {
    const NAME: &str = "overlay netns";
    if !dataplane {
        return Check::new(NAME, Finding::Skip, "--no-dataplane: not needed");
    }
    let shown = path.display();
    match netdb_dataplane::inspect_overlay(path) {
        Ok(OverlayPin::Absent) => Check::new(
            NAME,
            Finding::Pass,
            format!("{shown} not made yet: the agent makes and pins it at its start"),
        ),
        Ok(OverlayPin::Stale) => Check::new(
            NAME,
            Finding::Warn,
            format!(
                "{shown} is no namespace: its pin went with the mount namespace the agent ran in                  (`ip netns exec` makes one), and containers lose their links whenever the agent stops"
            ),
        )
        .fix("run the agent in the host's mount namespace (a service, or nsenter --net=... instead of ip netns exec)"),
        Ok(OverlayPin::Pinned { bridge_hooks: Some(true) }) => Check::new(
            NAME,
            Finding::Warn,
            format!("bridge netfilter is on in {shown}: overlay frames pass its (empty) iptables hooks"),
        )
        .fix("is the agent running? it turns it off at its next reconcile"),
        Ok(OverlayPin::Pinned { .. }) => Check::new(
            NAME,
            Finding::Pass,
            format!("{shown}: bridged overlay frames skip the host's iptables"),
        ),
        Err(e) => Check::new(NAME, Finding::Warn, format!("cannot look at it: {e}"))
            .fix("run netdb doctor as root"),
    }
}
