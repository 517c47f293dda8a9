//! Who holds a port: the sockets bound to it (`/proc/net/{udp,tcp}{,6}`)
//! and the processes whose descriptors point at those sockets
//! (`/proc/PID/fd`). Read-only; another user's descriptors are visible to
//! root only.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::{Check, Finding};

/// UDP or TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        })
    }
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
    /// A `netdb agent` process.
    pub agent: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.agent {
            write!(f, "netdb agent (pid {})", self.pid)
        } else {
            write!(f, "`{}` (pid {})", self.name, self.pid)
        }
    }
}

/// Who holds `proto` on `addr`: the processes, and whether sockets were
/// found that no visible process holds (the kernel's, or another user's
/// when we are not root).
#[derive(Debug, Default)]
pub(crate) struct Holders {
    pub processes: BTreeSet<Holder>,
    pub unowned: bool,
}

/// The bound sockets of one `/proc/net` table whose local address clashes
/// with `addr`: the same port, and the same address or a wildcard on
/// either side. TCP counts listeners only: the agent's listener, like
/// std's, reuses addresses of closed connections.
pub(crate) fn clashing_inodes(table: &str, proto: Proto, addr: SocketAddr) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if proto == Proto::Tcp && *state != "0A" {
                return None;
            }
            let bound = parse_addr(local)?;
            (bound.port() == addr.port() && clashes(bound.ip(), addr.ip()))
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// Two local addresses of one port exclude each other.
fn clashes(bound: IpAddr, wanted: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let (bound, wanted) = (v4(bound), v4(wanted));
    // An IPv6 wildcard socket takes IPv4 too unless it is v6-only, which
    // /proc does not show: counted as a clash, the cautious reading.
    bound.is_unspecified() || wanted.is_unspecified() || bound == wanted
}

/// `0100007F:1F0A` (IPv4) or 32 hex digits and a port (IPv6): the address
/// as the kernel stores it, each 32-bit word printed in host order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = ip
        .as_bytes()
        .chunks(8)
        .map(|w| {
            let w = std::str::from_utf8(w).ok()?;
            Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Who holds `proto` on `addr` on this host (this network namespace).
pub(crate) fn holders(proto: Proto, addr: SocketAddr) -> Holders {
    let files = match proto {
        Proto::Udp => ["/proc/net/udp", "/proc/net/udp6"],
        Proto::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
    };
    let mut inodes: BTreeSet<u64> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| clashing_inodes(&t, proto, addr))
        .collect();
    let mut out = Holders::default();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        out.unowned = !inodes.is_empty();
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let mut found = false;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                found = true;
                if let Some(i) = inode {
                    inodes.remove(&i);
                }
            }
        }
        if found {
            out.processes.insert(describe(pid));
        }
    }
    out.unowned = !inodes.is_empty();
    out
}

/// A process by its pid: name, and whether it is a netdb agent.
pub(crate) fn describe(pid: u32) -> Holder {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0).skip(1);
    let agent = name == "netdb" && args.any(|a| a == b"agent");
    Holder { pid, name, agent }
}

/// What tried to bind `proto` on `addr` says, for the port check of `what`
/// (the gossip port, the VXLAN port). The socket is closed at once. With
/// `vxlan` (the overlay namespace), a socket of the kernel's is VXLAN
/// devices sharing the port.
pub(crate) fn check(
    name: &'static str,
    proto: Proto,
    addr: SocketAddr,
    what: &str,
    vxlan: Option<&Path>,
) -> Check {
    let tried = match proto {
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
    };
    let subject = format!("{what}, {proto} {addr}");
    match tried {
        Ok(()) => Check::new(name, Finding::Pass, format!("{subject}: free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            held(name, proto, addr, &subject, vxlan)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Check::new(
            name,
            Finding::Fail,
            format!("{subject}: no interface of this host has {}", addr.ip()),
        )
        .fix(
            "give --bind an address of this host (see `ip -br addr`), or 0.0.0.0 with --advertise",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Check::new(name, Finding::Fail, format!("{subject}: {e}")).fix(
                "ports below 1024 need root (or CAP_NET_BIND_SERVICE); use another with --bind",
            )
        }
        Err(e) => Check::new(name, Finding::Fail, format!("{subject}: cannot bind: {e}"))
            .fix("use another address or port with --bind"),
    }
}

fn held(
    name: &'static str,
    proto: Proto,
    addr: SocketAddr,
    subject: &str,
    vxlan: Option<&Path>,
) -> Check {
    let h = holders(proto, addr);
    if let Some(agent) = h.processes.iter().find(|p| p.agent) {
        return Check::new(name, Finding::Pass, format!("{subject}: held by {agent}"));
    }
    let named: Vec<String> = h.processes.iter().map(ToString::to_string).collect();
    if !named.is_empty() {
        let pids: Vec<String> = h.processes.iter().map(|p| p.pid.to_string()).collect();
        return Check::new(name, Finding::Fail, format!("{subject}: held by {}", named.join(", ")))
            .fix(format!(
                "stop it (kill {}) or give the agent another port with --bind",
                pids.join(" ")
            ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Check::new(
            name,
            Finding::Fail,
            format!("{subject}: in use by a process this user cannot see"),
        )
        .fix("run `sudo netdb doctor` to name it; then stop it or use another port with --bind");
    }
    if let Some(overlay) = vxlan {
        return vxlan_devices(name, subject, overlay);
    }
    Check::new(
        name,
        Finding::Fail,
        format!("{subject}: in use by the kernel (no process holds it)"),
    )
    .fix("find its owner with `ss -ulpn` / `ss -tlpn`, or give the agent another port with --bind")
}

/// The kernel holds the VXLAN port for VXLAN devices; they share it when
/// their settings match, and netdb's own devices are expected there (in
/// the overlay namespace, their sockets here).
fn vxlan_devices(name: &'static str, subject: &str, overlay: &Path) -> Check {
    let mut ours = Vec::new();
    let mut others = Vec::new();
    for dev in netdb_dataplane::vxlan_devices(overlay) {
        if netdb_dataplane::device_vni(&dev).is_some() { ours.push(dev) } else { others.push(dev) }
    }
    if others.is_empty() && !ours.is_empty() {
        let detail = format!(
            "{subject}: held by the kernel for netdb's VXLAN devices ({})",
            ours.join(", ")
        );
        return Check::new(name, Finding::Pass, detail);
    }
    let who = if others.is_empty() {
        "VXLAN devices of another overlay (Docker, flannel: possibly in another namespace)"
            .to_string()
    } else {
        format!("other VXLAN devices ({})", others.join(", "))
    };
    Check::new(name, Finding::Warn, format!("{subject}: held by the kernel for {who}"))
        .fix("devices of one port share it, but their VNIs must not collide: netdb takes VNIs from 4096 up; pick free ones with `netdb network create --vni`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse_in_host_word_order() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        let text = format!("{v4:08X}:1F0A");
        assert_eq!(parse_addr(&text), Some("127.0.0.1:7946".parse().unwrap()));
        let zero = "00000000000000000000000000000000:12B5";
        assert_eq!(parse_addr(zero), Some("[::]:4789".parse().unwrap()));
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[test]
    fn clashing_sockets_share_the_port_and_an_address_or_a_wildcard() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let other = u32::from_ne_bytes([10, 0, 0, 1]);
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        let row = |n: u32, ip: u32, port: u16, st: &str, inode: u64| {
            format!(
                "{n}: {ip:08X}:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000 0 0 {inode} 1"
            )
        };
        let table = [
            header.to_string(),
            row(0, lo, 7946, "07", 11),
            row(1, other, 7946, "07", 12),
            row(2, 0, 7946, "07", 13),
            row(3, lo, 7947, "07", 14),
            row(4, lo, 7946, "01", 15),
        ]
        .join("\n");
        let at: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        assert_eq!(clashing_inodes(&table, Proto::Udp, at), vec![11, 13, 15]);
        assert_eq!(clashing_inodes(&table, Proto::Tcp, at), Vec::<u64>::new(), "no listener");
        let any: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        assert_eq!(clashing_inodes(&table, Proto::Udp, any), vec![11, 12, 13, 15]);
        let listen = row(5, lo, 7946, "0A", 16);
        assert_eq!(clashing_inodes(&format!("{header}\n{listen}"), Proto::Tcp, at), vec![16]);
    }

    #[test]
    fn a_port_this_process_holds_is_named() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let h = holders(Proto::Udp, sock.local_addr().unwrap());
        let me = std::process::id();
        assert!(h.processes.iter().any(|p| p.pid == me && !p.agent), "{h:?}");
    }
}
