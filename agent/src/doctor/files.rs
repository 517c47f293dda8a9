//! Files the agent reads or owns: key and secret files (their modes) and
//! the data dir (writable, not another agent's).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::ports::{self, Proto};
use super::{Check, Finding};
use crate::config::Settings;

/// Key, cluster secret and TLS key files must be the owner's alone: anyone
/// who reads a gossip key can read and forge the cluster's tables.
pub(super) fn secrets(s: &Settings) -> Vec<Check> {
    let files = [
        ("key file", s.key_file.as_deref()),
        ("cluster secret file", s.cluster_secret_file.as_deref()),
        ("api tls key", s.api_tls.as_ref().map(|t| t.key.as_path())),
    ];
    let mut out: Vec<Check> =
        files.into_iter().filter_map(|(name, path)| Some(mode(name, path?))).collect();
    if s.keys.is_empty() && s.scheduled.is_none() {
        out.push(
            Check::new("gossip keys", Finding::Warn, "gossip is not encrypted: anyone who reaches the gossip port can read and write the tables")
                .fix("give every agent the same --key-file (head -c 32 /dev/urandom | base64 > /etc/netdb/keys; chmod 600 /etc/netdb/keys), or --cluster-secret-file"),
        );
    }
    out
}

fn mode(name: &'static str, path: &Path) -> Check {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => Check::new(name, Finding::Fail, format!("{shown}: {e}"))
            .fix(format!("create {shown}, or give the right path")),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Check::new(
            name,
            Finding::Fail,
            format!(
                "{shown} is open to group or others (mode {:04o})",
                m.permissions().mode() & 0o7777
            ),
        )
        .fix(format!("chmod 600 {shown}")),
        Ok(m) => Check::new(
            name,
            Finding::Pass,
            format!("{shown}: mode {:04o}, the owner's only", m.permissions().mode() & 0o7777),
        ),
    }
}

/// The data dir exists or can be made, takes writes, and is not held by
/// another agent (the one these settings describe, already running, is
/// fine).
pub(super) fn data_dir(s: &Settings) -> Check {
    const NAME: &str = "data dir";
    let Some(dir) = &s.data_dir else {
        return Check::new(NAME, Finding::Skip, "--no-dataplane without --data-dir: no data dir");
    };
    let shown = dir.display();
    if !dir.exists() {
        let parent = dir.ancestors().skip(1).find(|p| p.exists());
        let writable =
            parent.is_some_and(|p| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok());
        return if writable {
            Check::new(
                NAME,
                Finding::Pass,
                format!("{shown} does not exist yet; the agent will create it (mode 0700)"),
            )
        } else {
            Check::new(
                NAME,
                Finding::Fail,
                format!("{shown} does not exist and cannot be created by this user"),
            )
            .fix(format!(
                "sudo mkdir -p -m 700 {shown} (owned by the agent's user), or choose --data-dir"
            ))
        };
    }
    if !dir.is_dir() {
        return Check::new(NAME, Finding::Fail, format!("{shown} is not a directory"))
            .fix("choose a directory with --data-dir");
    }
    let probe = dir.join(format!(".netdb-doctor-{}", std::process::id()));
    let written = std::fs::OpenOptions::new().write(true).create_new(true).open(&probe);
    if let Err(e) = written {
        return Check::new(NAME, Finding::Fail, format!("{shown} takes no writes: {e}")).fix(
            format!("chown the agent's user {shown} (and make it writable), or choose --data-dir"),
        );
    }
    let _ = std::fs::remove_file(&probe);
    match lock_holder(&dir.join("lock")) {
        None => Check::new(NAME, Finding::Pass, format!("{shown}: writable, not locked")),
        Some(holder) => {
            let here =
                ports::holders(Proto::Udp, s.bind).processes.iter().any(|p| p.pid == holder.pid);
            if holder.agent && here {
                Check::new(
                    NAME,
                    Finding::Pass,
                    format!("{shown}: locked by the agent running here, {holder}"),
                )
            } else {
                let who =
                    if holder.agent { format!("another {holder}") } else { holder.to_string() };
                Check::new(NAME, Finding::Fail, format!("{shown} is locked by {who}")).fix(format!(
                    "one agent per data dir: give this one its own --data-dir, or stop pid {}",
                    holder.pid
                ))
            }
        }
    }
}

/// Who holds the agent's lock on `lock`, if anyone: tried with a lock of
/// our own (released at once), then named from `/proc/locks`.
fn lock_holder(lock: &Path) -> Option<ports::Holder> {
    let file = std::fs::File::open(lock).ok()?;
    let inode = file.metadata().ok()?.ino();
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => None,
        Err(_) => {
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            let pid = flock_pid(&locks, inode);
            Some(pid.map(ports::describe).unwrap_or(ports::Holder {
                pid: 0,
                name: "an unknown process".into(),
                agent: false,
            }))
        }
    }
}

/// The pid holding a flock on `inode`, from `/proc/locks` lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (waiters, marked `->`,
/// do not hold it).
fn flock_pid(locks: &str, inode: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let file_inode = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (file_inode == inode).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 08:01:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4321 08:01:5678 0 EOF\n";
        assert_eq!(flock_pid(locks, 5678), Some(1234));
        assert_eq!(flock_pid(locks, 99), None, "a POSIX lock is not the agent's");
    }

    #[test]
    fn a_lock_this_process_holds_is_found() {
        let dir = std::env::temp_dir().join(format!("netdb-doctor-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let held = nix::fcntl::Flock::lock(
            std::fs::File::create(&path).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let holder = lock_holder(&path).expect("locked");
        assert_eq!(holder.pid, std::process::id());
        drop(held);
        assert!(lock_holder(&path).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
