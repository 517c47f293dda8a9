//! netdb's own nftables table: SNAT of the gateway subnet and the DNAT of
//! published ports, generated whole from the desired state.
//!
//! The `nft` tool is driven with a generated ruleset rather than netlink
//! (the nftnl/rustables crates): nftables' netlink messages are a bytecode
//! of expressions that `nft` compiles for us, and a ruleset loaded with
//! `nft -f` is one transaction, so replacing the whole table each time it
//! differs is atomic and never shows a half-made table. Nothing outside
//! `table ip netdb` is read or written.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::{Desired, Error, GATEWAY_BRIDGE};

/// The table netdb owns, in nft's syntax (family and name).
pub const NFT_TABLE: &str = "ip netdb";

/// The ruleset `desired` needs in netdb's table; `None` when nothing needs
/// the table (no endpoint has a way out), so it is removed. Two endpoints
/// publishing one host port (refused by the agent, but possible in a state
/// file edited by hand) resolve to the first in order, every time.
pub fn ruleset(desired: &Desired) -> Option<String> {
    let egress: Vec<_> =
        desired.values().flat_map(|n| n.endpoints.values()).filter_map(|e| e.way_out()).collect();
    let first = egress.first()?;
    let subnet = network_of(first.gateway, first.prefix);
    let mut taken = BTreeSet::new();
    let mut dnat = String::new();
    for e in &egress {
        for p in &e.publish {
            if taken.insert((p.proto, p.host_port)) {
                // Only traffic for one of the host's own addresses: a
                // container's traffic to that port elsewhere passes.
                let _ = writeln!(
                    dnat,
                    "\t\tfib daddr type local {} dport {} dnat to {}:{}",
                    p.proto, p.host_port, e.ip, p.port
                );
            }
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "table {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet}/{} oifname != \"{GATEWAY_BRIDGE}\" masquerade\n\
         \t}}\n\
         }}\n",
        first.prefix
    );
    Some(out)
}

fn network_of(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// netdb's table as `nft` lists it; `None` when there is none (or no `nft`
/// at all: then there cannot be a table of ours to remove either).
pub(crate) fn list() -> Result<Option<String>, Error> {
    let out = match Command::new("nft").args(["list", "table", "ip", "netdb"]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Nft(format!("cannot run nft: {e}"))),
    };
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(Error::Nft(format!("nft list table {NFT_TABLE}: {}", err.trim())))
    }
}

/// Replaces netdb's table by `ruleset`, or removes it (`None`), in one
/// transaction.
pub(crate) fn load(ruleset: Option<&str>) -> Result<(), Error> {
    // Declaring the table first makes the delete valid when there is none.
    let mut script = format!("table {NFT_TABLE}\ndelete table {NFT_TABLE}\n");
    script.push_str(ruleset.unwrap_or_default());
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Nft(format!("cannot feed nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Nft(format!("nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(format!(
            "nft refused netdb's ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{egress_endpoint, network};
    use crate::{Publish, Remote};

    fn desired_with(eps: &[crate::Endpoint]) -> Desired {
        let mut net = network(&[] as &[Remote]);
        for e in eps {
            net.endpoints.insert(e.host_ifname.clone(), e.clone());
        }
        [(4096, net)].into()
    }

    fn publish(text: &str) -> Publish {
        text.parse().unwrap()
    }

    #[test]
    fn no_way_out_needs_no_table() {
        assert_eq!(ruleset(&Desired::new()), None);
        let mut internal = egress_endpoint("ndve1", 2, &[]);
        internal.egress = None;
        assert_eq!(ruleset(&desired_with(&[internal])), None);
    }

    #[test]
    fn the_gateway_subnet_is_masqueraded_and_ports_are_forwarded() {
        let a = egress_endpoint("ndve1", 2, &[publish("8080:80"), publish("5353:53/udp")]);
        let b = egress_endpoint("ndve2", 3, &[publish("8080:81"), publish("9090:90")]);
        let r = ruleset(&desired_with(&[a, b])).unwrap();
        assert!(r.starts_with("table ip netdb {\n"), "{r}");
        assert!(
            r.contains("ip saddr 198.18.0.0/16 oifname != \"ndgw0\" masquerade"),
            "SNAT of the gateway subnet: {r}"
        );
        // In both prerouting (outside) and output (this host).
        assert_eq!(r.matches("tcp dport 8080 dnat to 198.18.0.2:80\n").count(), 2, "{r}");
        assert_eq!(r.matches("udp dport 5353 dnat to 198.18.0.2:53\n").count(), 2, "{r}");
        assert_eq!(r.matches("tcp dport 9090 dnat to 198.18.0.3:90\n").count(), 2, "{r}");
        assert!(!r.contains("dnat to 198.18.0.3:81"), "the host port's first holder wins: {r}");
    }

    #[test]
    fn network_of_masks_the_host_bits() {
        assert_eq!(network_of(Ipv4Addr::new(198, 18, 7, 1), 16), Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(network_of(Ipv4Addr::new(10, 1, 2, 3), 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network_of(Ipv4Addr::new(10, 1, 2, 3), 32), Ipv4Addr::new(10, 1, 2, 3));
    }
}
