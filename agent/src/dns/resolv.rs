//! resolv.conf, both ways: the host's, read for the upstream resolvers
//! and search domains; and the one written for a named namespace, which
//! `ip netns exec NAME` bind-mounts over `/etc/resolv.conf` so that the
//! container asks the embedded DNS.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the embedded DNS listens inside each container (Docker's
/// address, which images and tools already expect).
pub(crate) const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// The host's resolver file.
pub(crate) const HOST_FILE: &str = "/etc/resolv.conf";

/// Where `ip netns exec` looks for per-namespace files.
pub(crate) const NETNS_ETC: &str = "/etc/netns";

/// The first line of every file we write: only such files are ever
/// replaced or removed.
const MARKER: &str = "# Written by netdb on endpoint attach; removed on detach.";

/// Most nameservers glibc uses; later lines are ignored there too.
const MAX_NAMESERVERS: usize = 3;

/// What a resolv.conf says that we use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostResolv {
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) search: Vec<String>,
}

impl HostResolv {
    /// Reads `path`; a missing or unreadable file is no resolvers.
    pub(crate) fn read(path: &Path) -> HostResolv {
        match std::fs::read_to_string(path) {
            Ok(text) => HostResolv::parse(&text),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the host's resolver configuration; names outside the networks will not resolve (use --dns-upstream)");
                HostResolv::default()
            }
        }
    }

    /// The `nameserver` lines (our own address skipped: forwarding to it
    /// would loop) and the last `search` or `domain` line.
    pub(crate) fn parse(text: &str) -> HostResolv {
        let mut out = HostResolv::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // An IPv6 link-local server carries %zone: not ours to
                    // route, skipped.
                    let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
                        continue;
                    };
                    let addr = SocketAddr::new(ip, 53);
                    if addr != LISTEN && out.nameservers.len() < MAX_NAMESERVERS {
                        out.nameservers.push(addr);
                    }
                }
                Some("search" | "domain") => out.search = words.map(str::to_string).collect(),
                _ => {}
            }
        }
        out
    }
}

/// An upstream resolver as given on the command line: an address, with
/// or without a port (53).
pub(crate) fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => {
            Err(format!("{text:?} is not a resolver address; give an IP, IP:PORT or [IPv6]:PORT"))
        }
    }
}

/// The name of a namespace `ip netns` manages (`/run/netns/NAME`), the
/// only kind whose resolv.conf we can place.
pub(crate) fn netns_name(netns: &Path) -> Option<&str> {
    let parent = netns.parent()?;
    if parent != Path::new("/run/netns") && parent != Path::new("/var/run/netns") {
        return None;
    }
    netns.file_name()?.to_str()
}

/// The per-namespace files under `root` (normally [`NETNS_ETC`]).
#[derive(Debug, Clone)]
pub(crate) struct NetnsFiles {
    root: PathBuf,
    search: Vec<String>,
}

impl NetnsFiles {
    pub(crate) fn new(root: impl Into<PathBuf>, search: Vec<String>) -> NetnsFiles {
        NetnsFiles { root: root.into(), search }
    }

    fn file(&self, netns: &Path) -> Option<PathBuf> {
        Some(self.root.join(netns_name(netns)?).join("resolv.conf"))
    }

    /// Writes the namespace's resolv.conf, pointing at the embedded DNS;
    /// `Ok(None)` for a namespace `ip netns` does not manage. A file we did
    /// not write is left alone (an error says so): it is the operator's.
    pub(crate) fn write(&self, netns: &Path) -> io::Result<Option<PathBuf>> {
        let Some(file) = self.file(netns) else { return Ok(None) };
        if let Ok(old) = std::fs::read_to_string(&file)
            && !old.starts_with(MARKER)
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and was not written by netdb; remove it for names to resolve in this container",
                    file.display()
                ),
            ));
        }
        let mut text = format!("{MARKER}\nnameserver {}\n", LISTEN.ip());
        if !self.search.is_empty() {
            text += &format!("search {}\n", self.search.join(" "));
        }
        // Names of the networks have no dot, or one (NAME.NETWORK): they
        // are asked as they are first, before any search domain.
        text += "options ndots:0\n";
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
            // Readable by the container's users whatever the agent's umask.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        // Written whole and renamed, so a container never reads half a file.
        let tmp = file.with_extension("netdb-tmp");
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &file)?;
        Ok(Some(file))
    }

    /// Removes the namespace's resolv.conf if we wrote it, and its
    /// directory if that leaves it empty.
    pub(crate) fn remove(&self, netns: &Path) -> io::Result<()> {
        let Some(file) = self.file(netns) else { return Ok(()) };
        match std::fs::read_to_string(&file) {
            Ok(text) if text.starts_with(MARKER) => std::fs::remove_file(&file)?,
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = file.parent() {
            // Not empty (the operator's hosts file...): kept.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_nameservers_and_search_domains() {
        let r = HostResolv::parse(
            "# generated\nnameserver 10.0.0.2\nnameserver 127.0.0.11\nnameserver fe80::1%eth0\n\
             nameserver ::1\nsearch a.example b.example\noptions edns0\nnameserver 10.0.0.3\n\
             nameserver 10.0.0.4\n",
        );
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.3:53".parse().unwrap(),
        ];
        assert_eq!(r.nameservers, want, "ours skipped, zoned skipped, three at most");
        assert_eq!(r.search, ["a.example", "b.example"]);
        assert_eq!(HostResolv::parse("nameserver\nnameserver x\n"), HostResolv::default());
    }

    #[test]
    fn upstreams_take_a_port_or_default_to_53() {
        assert_eq!(parse_upstream("10.0.0.2"), Ok("10.0.0.2:53".parse().unwrap()));
        assert_eq!(parse_upstream("127.0.0.1:5300"), Ok("127.0.0.1:5300".parse().unwrap()));
        assert_eq!(parse_upstream("[::1]:5300"), Ok("[::1]:5300".parse().unwrap()));
        assert_eq!(parse_upstream("::1"), Ok("[::1]:53".parse().unwrap()));
        assert!(parse_upstream("dns.example").unwrap_err().contains("not a resolver address"));
    }

    #[test]
    fn only_namespaces_ip_netns_manages_get_a_file() {
        assert_eq!(netns_name(Path::new("/run/netns/web1")), Some("web1"));
        assert_eq!(netns_name(Path::new("/var/run/netns/web1")), Some("web1"));
        assert_eq!(netns_name(Path::new("/proc/42/ns/net")), None);
        assert_eq!(netns_name(Path::new("/run/netns")), None);
    }

    #[test]
    fn written_on_attach_removed_on_detach_and_a_foreign_file_is_left_alone() {
        let root = std::env::temp_dir().join(format!("netdb-resolv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let files = NetnsFiles::new(&root, vec!["corp.example".into()]);
        let ns = Path::new("/run/netns/web1");

        let file = files.write(ns).unwrap().unwrap();
        assert_eq!(file, root.join("web1/resolv.conf"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(MARKER), "{text}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by the container's users");
        assert!(text.contains("\nnameserver 127.0.0.11\nsearch corp.example\noptions ndots:0\n"));
        files.write(ns).unwrap();
        files.remove(ns).unwrap();
        assert!(!root.join("web1").exists(), "the directory we made goes too");
        files.remove(ns).unwrap();

        std::fs::create_dir_all(root.join("db1")).unwrap();
        std::fs::write(root.join("db1/resolv.conf"), "nameserver 10.9.9.9\n").unwrap();
        let db = Path::new("/run/netns/db1");
        let err = files.write(db).unwrap_err();
        assert!(err.to_string().contains("was not written by netdb"), "{err}");
        files.remove(db).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("db1/resolv.conf")).unwrap(),
            "nameserver 10.9.9.9\n"
        );

        assert_eq!(files.write(Path::new("/proc/1/ns/net")).unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
