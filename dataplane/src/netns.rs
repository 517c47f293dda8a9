//! A netlink socket inside another network namespace.
//!
//! A socket belongs to the namespace of the thread that created it, for its
//! whole life; so a short-lived thread enters the namespace, opens the
//! socket and ends, and the socket is then driven from the runtime like any
//! other. The agent's own threads never change namespace.

use std::fs::File;
use std::path::Path;

use nix::sched::CloneFlags;
use rtnetlink::Handle;
use tokio::task::JoinHandle;

use crate::Error;

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
    File::open(path).map_err(|source| Error::Netns { path: path.display().to_string(), source })
}

/// A connection in the namespace `file` refers to.
pub(crate) fn enter(path: &Path, file: &File) -> Result<Connection, Error> {
    let file = file.try_clone().map_err(|source| netns_err(path, source))?;
    let rt = tokio::runtime::Handle::current();
    let shown = path.to_path_buf();
    let opened = std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            let source = if e == nix::errno::Errno::EINVAL {
                std::io::Error::other("not a network namespace")
            } else {
                std::io::Error::from(e)
            };
            netns_err(&shown, source)
        })?;
        let _runtime = rt.enter();
        rtnetlink::new_connection().map_err(Error::Socket)
    })
    .join()
    .map_err(|_| netns_err(path, std::io::Error::other("namespace thread panicked")))?;
    let (conn, handle, _) = opened?;
    Ok(Connection { handle, task: tokio::spawn(conn) })
}

fn netns_err(path: &Path, source: std::io::Error) -> Error {
    Error::Netns { path: path.display().to_string(), source }
}
