//! Network namespaces: a netlink socket inside another one, and the
//! overlay namespace the networks' bridges and VXLAN devices live in.
//!
//! A socket belongs to the namespace of the thread that created it, for its
//! whole life; so a short-lived thread enters the namespace, opens the
//! socket and ends, and the socket is then driven from the runtime like any
//! other. The agent's own threads never change namespace.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use rtnetlink::Handle;
use tokio::task::JoinHandle;

use crate::Error;

/// The bridge-netfilter switches: at 1, frames the namespace's bridges
/// forward pass through its iptables hooks (br_netfilter). br_netfilter
/// sets them to 1 in every namespace when it loads (Docker loads it).
const BRIDGE_HOOKS: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// A connection whose driver task ends when the value is dropped.
pub(crate) struct Connection {
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection in the current namespace.
pub(crate) fn here() -> Result<Connection, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
    Ok(Connection { handle, task: tokio::spawn(conn) })
}

/// Opens a namespace file, with an error that names it.
pub(crate) fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| netns_err(path, source))
}

/// A connection in the namespace `file` refers to.
pub(crate) fn enter(path: &Path, file: &File) -> Result<Connection, Error> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = run_in(path, file, move || {
        let _runtime = rt.enter();
        rtnetlink::new_connection().map_err(Error::Socket)
    })?;
    Ok(Connection { handle, task: tokio::spawn(conn) })
}

/// Runs `f` on a thread of its own inside the namespace `file` (at `path`,
/// for errors) refers to.
pub(crate) fn run_in<T: Send + 'static>(
    path: &Path,
    file: &File,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let file = file.try_clone().map_err(|source| netns_err(path, source))?;
    let shown = path.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            let source = if e == nix::errno::Errno::EINVAL {
                std::io::Error::other("not a network namespace")
            } else {
                std::io::Error::from(e)
            };
            netns_err(&shown, source)
        })?;
        f()
    })
    .join()
    .map_err(|_| netns_err(path, std::io::Error::other("namespace thread panicked")))?
}

/// The overlay namespace pinned at `path`: opened if it is one; otherwise
/// made and pinned there by a bind mount, as `ip netns add` does, so it
/// outlives the agent (the containers' veths live in it) and `ip netns
/// exec <name>` shows it. A file there that is no namespace (its mount
/// went with the mount namespace it was made in) is replaced.
pub(crate) fn overlay(path: &Path) -> Result<File, Error> {
    if let Ok(file) = File::open(path)
        && is_netns(&file)
    {
        return Ok(file);
    }
    let err = |source| netns_err(path, source);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        share(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    OpenOptions::new().write(true).create_new(true).open(path).map_err(err)?;
    let made = fresh()?;
    let this = format!("/proc/self/fd/{}", made.as_raw_fd());
    let pinned =
        nix::mount::mount(Some(this.as_str()), path, None::<&str>, MsFlags::MS_BIND, None::<&str>);
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(err(e.into()));
    }
    tracing::info!(netns = %path.display(), "made the overlay network namespace");
    open(path)
}

/// A new network namespace held only by the file returned: it goes when
/// the file is closed.
pub(crate) fn fresh() -> Result<File, Error> {
    std::thread::spawn(|| -> std::io::Result<File> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    .map_err(|source| netns_err(Path::new("(a new namespace)"), source))
}

/// Makes the mounts under `dir` propagate to mount namespaces made later
/// (the ones `ip netns exec` makes), binding `dir` onto itself first when
/// it is no mount point: what `ip netns add` does to /run/netns.
fn share(dir: &Path) -> std::io::Result<()> {
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        other => Ok(other?),
    }
}

pub(crate) fn is_netns(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Turns the bridge-netfilter switches off in the namespace `file` refers
/// to, where they are on; true if one was. Absent switches (br_netfilter
/// not loaded) are left absent.
pub(crate) fn bridge_hooks_off(path: &Path, file: &File) -> Result<bool, Error> {
    run_in(path, file, || {
        let mut changed = false;
        for switch in BRIDGE_HOOKS {
            let Ok(value) = std::fs::read_to_string(switch) else { continue };
            if value.trim() != "0" {
                std::fs::write(switch, "0").map_err(|source| Error::Netlink {
                    what: format!("turn off {switch} in the overlay namespace"),
                    source,
                })?;
                changed = true;
            }
        }
        Ok(changed)
    })
}

/// What is pinned where the overlay namespace should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayPin {
    /// Nothing: the agent makes it at its start.
    Absent,
    /// A file that is no namespace: the mount that pinned it went with the
    /// mount namespace the agent ran in (`ip netns exec` makes one).
    Stale,
    /// A namespace; whether its bridge-netfilter switches are on (`None`:
    /// br_netfilter is not loaded).
    Pinned {
        /// `bridge-nf-call-iptables` there.
        bridge_hooks: Option<bool>,
    },
}

/// Looks at the overlay namespace pinned at `path`, without changing it.
pub fn inspect_overlay(path: &Path) -> Result<OverlayPin, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OverlayPin::Absent),
        Err(e) => return Err(netns_err(path, e)),
    };
    if !is_netns(&file) {
        return Ok(OverlayPin::Stale);
    }
    let bridge_hooks = run_in(path, &file, || {
        Ok(std::fs::read_to_string(BRIDGE_HOOKS[0]).ok().map(|v| v.trim() != "0"))
    })?;
    Ok(OverlayPin::Pinned { bridge_hooks })
}

fn netns_err(path: &Path, source: std::io::Error) -> Error {
    Error::Netns { path: path.display().to_string(), source }
}
