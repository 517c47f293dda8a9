//! The way to the core from other tasks: every call is a message to the
//! loop, answered through a oneshot channel; `None`/`ShuttingDown` once the
//! loop is gone. Attach and detach run in tasks of their own beside the
//! loop (a client that hangs up mid-way must not leave half an endpoint),
//! reaching the overlay through this handle as their [`Host`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netdb::{Entry, MemberInfo, Node};
use netdb_dataplane::{Desired, Endpoint, Kernel, Linux};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Core, Health, KeyId, KeyOp, KeyReport, Snapshot};
use crate::dns::Dns;
use crate::overlay::{
    self, Attach, CreateNetwork, EndpointInfo, Host, NetworkDetail, NetworkInfo, Overlay,
};
use crate::watch::{Notice, Watched};

/// Why a call to the core failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// An attach or detach task panicked.
    #[error("the {0} task failed")]
    TaskFailed(&'static str),
    #[error(transparent)]
    Node(#[from] netdb::Error),
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    /// A bulk put refused an entry after writing others.
    #[error("{source} ({written} entries written before it)")]
    PutStopped { written: u32, source: netdb::Error },
}

/// Work for the core loop; only this module makes it.
pub(crate) struct Command(Box<dyn FnOnce(&mut Core) + Send>);

impl Command {
    /// Runs on the loop.
    pub(crate) fn apply(self, core: &mut Core) {
        (self.0)(core)
    }
}

/// The loop's end of the channel.
pub(crate) struct Commands(mpsc::Receiver<Command>);

impl Commands {
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        self.0.recv().await
    }
}

/// A new channel to the core; `kernel` is `None` when the data plane is
/// off; `dns` when the embedded DNS is off.
pub(crate) fn channel<K: Kernel>(
    kernel: Option<Arc<Mutex<K>>>,
    dns: Option<Dns>,
) -> (Handle<K>, Commands) {
    let (tx, rx) = mpsc::channel(256);
    (Handle { cmds: tx, kernel, dns }, Commands(rx))
}

/// A cheap, cloneable way to the core, and to the kernel (one writer at a
/// time: attach, detach and reconcile).
pub(crate) struct Handle<K = Linux> {
    cmds: mpsc::Sender<Command>,
    kernel: Option<Arc<Mutex<K>>>,
    dns: Option<Dns>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Handle { cmds: self.cmds.clone(), kernel: self.kernel.clone(), dns: self.dns.clone() }
    }
}

impl<K: Kernel> Handle<K> {
    /// Runs `f` on the core loop; `None` once the agent is shutting down.
    async fn on_core<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command(Box::new(move |core| {
            let _ = tx.send(f(core));
        }));
        self.cmds.send(cmd).await.ok()?;
        rx.await.ok()
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.on_core(f).await.ok_or(Error::ShuttingDown)
    }

    /// The kernel, when the data plane is on.
    pub(crate) fn kernel(&self) -> Option<&Arc<Mutex<K>>> {
        self.kernel.as_ref()
    }

    pub(crate) async fn members(&self) -> Result<Vec<MemberInfo>, Error> {
        self.call(|core| core.members()).await
    }

    pub(crate) async fn networks(&self) -> Result<Vec<NetworkInfo>, Error> {
        self.call(|core| core.networks()).await
    }

    pub(crate) async fn inspect_network(&self, name: String) -> Result<NetworkDetail, Error> {
        self.call(move |core| core.inspect_network(&name)).await?
    }

    pub(crate) async fn health(&self) -> Result<Health, Error> {
        self.call(|core| core.health()).await
    }

    pub(crate) async fn create_network(&self, r: CreateNetwork) -> Result<NetworkInfo, Error> {
        self.call(move |core| core.create_network(r)).await?
    }

    pub(crate) async fn remove_network(&self, name: String) -> Result<(), Error> {
        self.call(move |core| core.remove_network(&name)).await?
    }

    pub(crate) async fn endpoints(
        &self,
        network: String,
        local_only: bool,
    ) -> Result<Vec<EndpointInfo>, Error> {
        self.call(move |core| core.endpoints(&network, local_only)).await
    }

    /// Attaches an endpoint, in a task of its own; the container's
    /// resolver answers when this returns.
    pub(crate) async fn attach(&self, a: Attach) -> Result<EndpointInfo, Error> {
        let h = self.clone();
        let task = tokio::spawn(async move {
            let info = overlay::attach(&h, h.kernel.as_deref(), a).await;
            h.dns_settled().await;
            info
        });
        Ok(task.await.map_err(|_| Error::TaskFailed("attach"))??)
    }

    /// Detaches an endpoint, in a task of its own; the container's resolver
    /// (if this was its last endpoint) is gone when this returns.
    pub(crate) async fn detach(&self, network: String, name: String) -> Result<(), Error> {
        let h = self.clone();
        let task = tokio::spawn(async move {
            let done = overlay::detach(&h, h.kernel.as_deref(), network, name, None).await;
            h.dns_settled().await;
            done
        });
        Ok(task.await.map_err(|_| Error::TaskFailed("detach"))??)
    }

    /// True once this node holds the cluster's shared tables (network
    /// definitions): before, a network missing here may exist.
    pub(crate) async fn cluster_synced(&self) -> Result<bool, Error> {
        self.call(|core| core.node.cluster_synced()).await
    }

    /// Reserves an address of `network` for a Docker endpoint to come.
    pub(crate) async fn reserve(
        &self,
        network: String,
        want: Option<String>,
    ) -> Result<Ipv4Addr, Error> {
        Ok(overlay::reserve(self, network, want).await?)
    }

    /// Gives back an address reserved for a Docker endpoint; false if no
    /// reservation held it.
    pub(crate) async fn release(&self, network: String, ip: Ipv4Addr) -> Result<bool, Error> {
        Ok(overlay::release(self, network, ip).await?)
    }

    /// Detaches Docker's endpoint, its address kept reserved if asked (see
    /// `overlay::detach_docker`).
    pub(crate) async fn detach_docker(
        &self,
        network: String,
        name: String,
        keep_address: bool,
    ) -> Result<(), Error> {
        let h = self.clone();
        let task = tokio::spawn(async move {
            overlay::detach_docker(&h, h.kernel.as_deref(), network, name, keep_address).await
        });
        Ok(task.await.map_err(|_| Error::TaskFailed("detach"))??)
    }

    /// Addresses reserved for Docker's endpoints and not yet taken.
    pub(crate) async fn reservations(&self) -> Result<Vec<(String, Ipv4Addr)>, Error> {
        self.call(|core| core.overlay.reservations()).await
    }

    /// Sets the aliases of a local endpoint; false if they were already so.
    pub(crate) async fn set_aliases(
        &self,
        network: String,
        name: String,
        aliases: Vec<String>,
    ) -> Result<bool, Error> {
        Ok(overlay::set_aliases(self, network, name, aliases).await?)
    }

    /// Detaches a local endpoint whose namespace is gone and tells the
    /// network's watchers.
    pub(crate) async fn reap(&self, gone: Endpoint) -> Result<(), Error> {
        let reaped = overlay::reap(self, self.kernel.as_deref(), gone).await?;
        if let Some((network, text)) = reaped {
            self.call(move |core| core.announce(Notice::Detached, &network, &text)).await?;
        }
        Ok(())
    }

    async fn dns_settled(&self) {
        if let Some(dns) = &self.dns {
            dns.settle().await;
        }
    }

    /// What the kernel must hold now; `None` once the agent is shutting
    /// down.
    pub(crate) async fn desired(&self) -> Option<Desired> {
        self.on_core(|core| core.desired()).await
    }

    /// Host-side veths to remove before the next reconcile; `None` once
    /// the agent is shutting down.
    pub(crate) async fn take_retired(&self) -> Option<Vec<String>> {
        self.on_core(|core| core.take_retired()).await
    }

    pub(crate) async fn join_network(&self, network: String) -> Result<(), Error> {
        self.call(move |core| core.join_network(&network)).await?
    }

    pub(crate) async fn leave_network(&self, network: String) -> Result<(), Error> {
        self.call(move |core| core.leave_network(&network)).await?
    }

    pub(crate) async fn put(
        &self,
        network: String,
        table: String,
        entries: Vec<(String, Bytes)>,
    ) -> Result<u32, Error> {
        self.call(move |core| core.put(&network, &table, entries)).await?
    }

    pub(crate) async fn get(
        &self,
        network: String,
        table: String,
        key: String,
    ) -> Result<Option<Entry>, Error> {
        self.call(move |core| core.get(&network, &table, &key)).await
    }

    pub(crate) async fn delete(
        &self,
        network: String,
        table: String,
        key: String,
    ) -> Result<(), Error> {
        self.call(move |core| core.delete(&network, &table, &key)).await?
    }

    pub(crate) async fn dump(
        &self,
        network: String,
        table: String,
    ) -> Result<Vec<(String, Entry)>, Error> {
        self.call(move |core| core.dump(&network, &table)).await?
    }

    pub(crate) async fn watch(
        &self,
        network: String,
        table: Option<String>,
    ) -> Result<mpsc::Receiver<Watched>, Error> {
        self.call(move |core| core.watch(network, table)).await?
    }

    pub(crate) async fn counters(&self) -> Result<Vec<(String, u64)>, Error> {
        self.call(|core| core.counters()).await
    }

    /// Counters and state for one scrape of `/metrics`.
    pub(crate) async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.call(|core| core.snapshot()).await
    }

    pub(crate) async fn key_command(&self, op: KeyOp) -> Result<u64, Error> {
        self.call(move |core| core.key_command(op)).await?
    }

    pub(crate) async fn key_report(&self, seq: u64) -> Result<Option<KeyReport>, Error> {
        self.call(move |core| core.key_report(seq)).await
    }

    pub(crate) async fn primary_key(&self) -> Result<Option<KeyId>, Error> {
        self.call(|core| core.primary_key()).await
    }
}

impl<K: Kernel> Host for Handle<K> {
    fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Overlay, &mut Node, Duration) -> R + Send + 'static,
    ) -> impl Future<Output = Option<R>> + Send {
        self.on_core(move |core| {
            let now = core.now();
            f(&mut core.overlay, &mut core.node, now)
        })
    }

    fn wait(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}
