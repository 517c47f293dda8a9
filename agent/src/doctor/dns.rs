//! The embedded DNS: whether it can listen in the containers, and where
//! it sends the names it does not know.

use netdb_dataplane::has_net_bind_service;

use super::{Check, Finding};
use crate::config::Settings;
use crate::dns::HostResolv;

pub(super) fn check(s: &Settings) -> Check {
    let Some(dns) = &s.dns else {
        let why = if s.dataplane { "--no-dns" } else { "--no-dataplane: no containers" };
        return Check::new("dns", Finding::Skip, why);
    };
    if !has_net_bind_service() {
        return Check::new(
            "dns",
            Finding::Fail,
            "no CAP_NET_BIND_SERVICE: the containers' resolver cannot listen at 127.0.0.11:53",
        )
        .fix("run the agent as root, or grant CAP_NET_BIND_SERVICE beside CAP_NET_ADMIN and CAP_SYS_ADMIN (systemd: AmbientCapabilities); or pass --no-dns");
    }
    let (upstreams, from) = if dns.upstreams.is_empty() {
        (HostResolv::read(&dns.host_file).nameservers, dns.host_file.display().to_string())
    } else {
        (dns.upstreams.clone(), "--dns-upstream".to_string())
    };
    if upstreams.is_empty() {
        return Check::new(
            "dns",
            Finding::Warn,
            format!("no upstream resolver in {from}: containers resolve only the networks' names"),
        )
        .fix("give --dns-upstream ADDR (repeatable), or a nameserver line in /etc/resolv.conf");
    }
    let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    Check::new(
        "dns",
        Finding::Pass,
        format!(
            "127.0.0.11:53 in each container; other names to {} (from {from}); {} queries/s per container",
            list.join(", "),
            dns.rate
        ),
    )
}
