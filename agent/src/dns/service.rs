//! The DNS responder's own thread: it opens a listener in each local
//! container's namespace and writes the namespace's resolv.conf when the
//! container's first endpoint appears in the [`View`], and closes both
//! when its last one goes; and one at each gateway address Docker's
//! containers ask at, while the view has it. Queries are served on this thread, beside the
//! core loop's, so neither waits for the other.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::counters::{Counters, DnsTallies};
use super::listener::{Listener, Shared};
use super::resolv::{HostResolv, NetnsFiles};
use super::upstream::Upstreams;
use crate::overlay::View;

/// How often listeners that could not be opened are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The responder's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Empty: the host file's nameservers.
    pub(crate) upstreams: Vec<std::net::SocketAddr>,
    /// Queries per second per container; 0: no limit.
    pub(crate) rate: u32,
    /// The host's resolv.conf: default upstreams, and the search domains
    /// the containers get.
    pub(crate) host_file: PathBuf,
    /// Where the containers' resolv.conf files go.
    pub(crate) netns_etc: PathBuf,
}

/// The way to the responder's thread.
#[derive(Clone)]
pub(crate) struct Dns {
    settle: mpsc::Sender<oneshot::Sender<()>>,
    counters: Arc<Counters>,
}

impl Dns {
    /// Starts the thread, answering from the views `view` receives.
    pub(crate) fn start(s: Settings, view: watch::Receiver<Arc<View>>) -> anyhow::Result<Dns> {
        let host = HostResolv::read(&s.host_file);
        let upstreams = if s.upstreams.is_empty() { host.nameservers } else { s.upstreams };
        if upstreams.is_empty() {
            tracing::warn!(file = %s.host_file.display(), "no upstream resolver: containers resolve only the networks' names; use --dns-upstream");
        } else {
            tracing::info!(?upstreams, rate_limit = s.rate, "embedded DNS on");
        }
        if !netdb_dataplane::has_net_bind_service() {
            tracing::warn!(
                "no CAP_NET_BIND_SERVICE: the containers' resolver cannot listen at 127.0.0.11:53 and names do not resolve (run as root, grant it beside CAP_NET_ADMIN, or pass --no-dns)"
            );
        }
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(16);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let shared = Shared {
            view: view.clone(),
            upstreams: Arc::new(Upstreams::new(upstreams)),
            counters: counters.clone(),
            rate: s.rate,
        };
        let files = NetnsFiles::new(s.netns_etc, host.search);
        let manager = Manager {
            files,
            shared,
            view,
            open: BTreeMap::new(),
            gateways: BTreeMap::new(),
            failed: BTreeMap::new(),
        };
        std::thread::Builder::new()
            .name("netdb-dns".into())
            .spawn(move || runtime.block_on(manager.run(rx)))?;
        Ok(Dns { settle: tx, counters })
    }

    /// Returns once the responder has caught up with the latest view:
    /// an attach or detach that published one has its listener and
    /// resolv.conf in place (or gone) when this returns.
    pub(crate) async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.settle.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn tallies(&self) -> DnsTallies {
        self.counters.read()
    }
}

/// A namespace's identity: the same namespace may be named by several
/// paths (`/run/netns/NAME`, `/proc/PID/ns/net`).
type NsId = (u64, u64);

struct Open {
    paths: Vec<PathBuf>,
    _listener: Listener,
}

struct Manager {
    files: NetnsFiles,
    shared: Shared,
    view: watch::Receiver<Arc<View>>,
    open: BTreeMap<NsId, Open>,
    gateways: BTreeMap<Ipv4Addr, Listener>,
    /// Paths (or gateway addresses) whose listener could not be opened, with the error last
    /// logged (logged again only when it changes).
    failed: BTreeMap<PathBuf, String>,
}

impl Manager {
    async fn run(mut self, mut settle: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut retry = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                changed = self.view.changed() => {
                    if changed.is_err() {
                        // The core is gone: the agent is stopping. Files and
                        // listeners stay for the containers until it
                        // returns; the listeners go with the process.
                        return;
                    }
                    self.reconcile();
                }
                Some(done) = settle.recv() => {
                    self.reconcile();
                    let _ = done.send(());
                }
                _ = retry.tick(), if !self.failed.is_empty() => self.reconcile(),
            }
        }
    }

    /// Listeners and files for exactly the containers of the latest view.
    fn reconcile(&mut self) {
        let view = self.view.borrow_and_update().clone();
        let mut want: BTreeMap<NsId, (Vec<PathBuf>, Option<File>)> = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for path in view.containers() {
            match identify(path) {
                Ok((id, file)) => {
                    let slot = want.entry(id).or_insert_with(|| (Vec::new(), None));
                    slot.0.push(path.to_path_buf());
                    slot.1.get_or_insert(file);
                }
                Err(e) => {
                    failed.insert(path.to_path_buf(), format!("cannot open the namespace: {e}"));
                }
            }
        }
        let gone: Vec<NsId> = self
            .open
            .iter()
            .filter(|(id, o)| want.get(*id).is_none_or(|(paths, _)| *paths != o.paths))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(o) = self.open.remove(&id) {
                for p in o.paths.iter().filter(|p| !view.containers().any(|c| c == p.as_path())) {
                    self.forget(p);
                }
            }
        }
        for (id, (paths, file)) in want {
            if self.open.contains_key(&id) {
                continue;
            }
            let Some(file) = file else { continue };
            match Listener::open(&file, paths.clone(), self.shared.clone()) {
                Ok(listener) => {
                    for p in &paths {
                        self.configure(p, &mut failed);
                    }
                    tracing::info!(netns = ?paths, "DNS listening at 127.0.0.11:53 in the container");
                    self.open.insert(id, Open { paths, _listener: listener });
                }
                Err(e) => {
                    self.shared.counters.listen_error();
                    let why = format!("cannot listen at 127.0.0.11:53: {e}");
                    for p in paths {
                        failed.insert(p, why.clone());
                    }
                }
            }
        }
        self.open_gateways(&view, &mut failed);
        for (path, why) in &failed {
            if self.failed.get(path) != Some(why) {
                tracing::warn!(netns = %path.display(), error = %why, "no DNS for this container yet; retried every 5s");
            }
        }
        self.failed = failed;
        self.shared.counters.set_listeners(self.open.len() + self.gateways.len());
    }

    /// Listeners at exactly the view's gateway addresses.
    fn open_gateways(&mut self, view: &View, failed: &mut BTreeMap<PathBuf, String>) {
        let want: Vec<Ipv4Addr> = view.gateways().collect();
        self.gateways.retain(|ip, _| {
            let keep = want.contains(ip);
            if !keep {
                tracing::info!(gateway = %ip, "DNS listener at the gateway closed");
            }
            keep
        });
        for ip in want {
            if self.gateways.contains_key(&ip) {
                continue;
            }
            match Listener::at_gateway(ip, self.shared.clone()) {
                Ok(listener) => {
                    tracing::info!(gateway = %ip, "DNS listening at the gateway for Docker's containers (their --dns)");
                    self.gateways.insert(ip, listener);
                }
                Err(e) => {
                    self.shared.counters.listen_error();
                    // The bridge gets the address from the reconcile: the
                    // retry finds it there.
                    failed.insert(
                        PathBuf::from(format!("gateway {ip}")),
                        format!("cannot listen at {ip}:53: {e}"),
                    );
                }
            }
        }
    }

    /// Points the container's resolv.conf at the listener.
    fn configure(&self, path: &Path, failed: &mut BTreeMap<PathBuf, String>) {
        match self.files.write(path) {
            Ok(Some(file)) => tracing::debug!(file = %file.display(), "resolv.conf written"),
            Ok(None) => {}
            Err(e) => {
                // The listener answers all the same; only the file is the
                // operator's to fix.
                if !self.failed.contains_key(path) {
                    tracing::warn!(netns = %path.display(), error = %e, "resolv.conf not written");
                }
                failed.insert(path.to_path_buf(), format!("resolv.conf not written: {e}"));
            }
        }
    }

    /// The container's last endpoint went: its resolv.conf goes too.
    fn forget(&self, path: &Path) {
        if let Err(e) = self.files.remove(path) {
            tracing::warn!(netns = %path.display(), error = %e, "cannot remove the container's resolv.conf");
        }
        tracing::info!(netns = %path.display(), "DNS listener closed");
    }
}

/// The namespace a path names, opened.
fn identify(path: &Path) -> std::io::Result<(NsId, File)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok(((meta.dev(), meta.ino()), file))
}
