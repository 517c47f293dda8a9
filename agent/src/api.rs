//! The gRPC admin API: each call runs as a closure on the core loop, which
//! owns the node, and answers through a oneshot channel.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use netdb::{EntryEventKind, Event};
use netdb_api::{self as api, netdb_server::Netdb};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use netdb_dataplane::Linux;

use netdb::KeyOp;

use crate::agent::{Command, Core};
use crate::keys;
use crate::overlay::Step;

/// Events a watcher may have queued before it counts as stuck and is cut.
const WATCH_BACKLOG: usize = 4096;

pub struct Api {
    cmds: mpsc::Sender<Command>,
    /// `None` when the data plane is off.
    kernel: Option<Kernel>,
}

/// The kernel, one writer at a time: attach, detach and reconcile.
pub type Kernel = Arc<tokio::sync::Mutex<Linux>>;

/// Runs `f` on the core loop and returns its result; `None` once the agent
/// is shutting down.
pub async fn on_core<R: Send + 'static>(
    cmds: &mpsc::Sender<Command>,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = oneshot::channel();
    let cmd: Command = Box::new(move |core| {
        let _ = tx.send(f(core));
    });
    cmds.send(cmd).await.ok()?;
    rx.await.ok()
}

async fn call_core<R: Send + 'static>(
    cmds: &mpsc::Sender<Command>,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Result<R, Status> {
    on_core(cmds, f).await.ok_or_else(|| Status::unavailable("the agent is shutting down"))
}

/// Attach: reserve on the core, wire the kernel, publish on the core. The
/// kernel lock is held from the wiring to the publication, so a reconcile
/// never sees a half-made endpoint.
async fn attach(
    cmds: mpsc::Sender<Command>,
    kernel: Option<Kernel>,
    r: api::AttachRequest,
) -> Result<api::EndpointInfo, Status> {
    let r = Arc::new(r);
    let mut waits = 0;
    let ready = loop {
        let req = r.clone();
        let step = call_core(&cmds, move |core| {
            let now = core.now();
            core.overlay.begin_attach(&mut core.node, now, &req)
        })
        .await??;
        match step {
            Step::Ready(ready) => break ready,
            Step::Wait(_) if waits >= MAX_ATTACH_WAITS => {
                let net = r.network.clone();
                call_core(&cmds, move |core| {
                    let now = core.now();
                    core.overlay.abandon_attach(&mut core.node, now, &net)
                })
                .await?;
                return Err(Status::unavailable(format!(
                    "network {}: no address block settled after {waits} tries (other hosts claiming, or the cluster not synced yet); try again",
                    r.network
                )));
            }
            Step::Wait(d) => {
                waits += 1;
                tokio::time::sleep(d).await;
            }
        }
    };
    let kernel = kernel.ok_or_else(|| Status::failed_precondition("the data plane is off"))?;
    let linux = kernel.lock().await;
    let wired = linux.attach(&ready.network, &ready.endpoint).await;
    let key = ready.key();
    let ok = wired.is_ok();
    let published = call_core(&cmds, move |core| {
        let now = core.now();
        core.overlay.finish_attach(&mut core.node, now, &key, ok)
    })
    .await
    .and_then(|r| r);
    if ok && published.is_err() {
        let _ = linux.detach(&ready.endpoint.host_ifname).await;
    }
    published?;
    match wired {
        Ok(()) => Ok(ready.reply),
        Err(e @ netdb_dataplane::Error::IfnameTaken { .. }) => {
            Err(Status::already_exists(e.to_string()))
        }
        Err(e @ netdb_dataplane::Error::Netns { .. }) => {
            Err(Status::failed_precondition(e.to_string()))
        }
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// Detach: out of the desired state, veth removed, entries withdrawn, all
/// under the kernel lock.
async fn detach(
    cmds: mpsc::Sender<Command>,
    kernel: Option<Kernel>,
    r: api::DetachRequest,
) -> Result<(), Status> {
    let linux = match &kernel {
        Some(k) => Some(k.lock().await),
        None => None,
    };
    let (net, name) = (r.network.clone(), r.name.clone());
    let host_ifname =
        call_core(&cmds, move |core| core.overlay.begin_detach(&net, &name)).await??;
    let removed = match &linux {
        Some(l) => l.detach(&host_ifname).await.map(|_| ()),
        None => Ok(()),
    };
    let ok = removed.is_ok();
    call_core(&cmds, move |core| {
        let now = core.now();
        core.overlay.finish_detach(&mut core.node, now, &r.network, &r.name, ok)
    })
    .await?;
    removed.map_err(|e| Status::internal(e.to_string()))
}

/// Settle waits an attach sits through before giving up (each is one
/// claim of a block; losing many races in a row means heavy contention).
const MAX_ATTACH_WAITS: usize = 8;

impl Api {
    /// Runs one keyring command on every live member to its end.
    async fn key_step(&self, op: KeyOp) -> Result<api::KeyStep, Status> {
        let action = op.to_string();
        let seq = self.command(move |node, now| node.key_command(now, op)).await?;
        loop {
            let report = self.call(move |core| core.node.key_report(seq)).await?;
            match report {
                Some(r) if r.done => return Ok(keys::step(action, r)),
                Some(_) => tokio::time::sleep(keys::POLL).await,
                None => return Err(Status::internal("the keyring command was forgotten")),
            }
        }
    }

    /// New key, installed everywhere, made primary, old primary removed;
    /// stops at the first step not confirmed by every live member.
    async fn rotate(&self) -> Result<api::KeysReply, Status> {
        let old = self
            .call(|core| core.node.keyring().map(|k| k.primary()))
            .await?
            .ok_or_else(|| status(netdb::Error::NoKeyring))?;
        let key = keys::generate()?;
        let new = netdb::keyring::key_id(&key);
        let mut steps = Vec::new();
        let (new_fp, old_fp) =
            (netdb::keyring::fingerprint(&new), netdb::keyring::fingerprint(&old));
        for op in [KeyOp::Install(key), KeyOp::Use(new), KeyOp::Remove(old)] {
            let mut step = self.key_step(op.clone()).await?;
            // Confirmed means each member's keyring now reads as it should,
            // not only that it answered.
            let holds = |r: &api::KeyNodeResult| match &op {
                KeyOp::Install(_) => r.fingerprints.contains(&new_fp),
                KeyOp::Use(_) => r.fingerprints.first() == Some(&new_fp),
                _ => !r.fingerprints.contains(&old_fp),
            };
            step.complete &= step.results.iter().all(holds);
            let complete = step.complete;
            steps.push(step);
            if !complete {
                tracing::warn!(
                    step = steps.len(),
                    "key rotation stopped: a member did not confirm"
                );
                return Ok(api::KeysReply { steps, complete: false });
            }
        }
        tracing::info!(old = %old_fp, new = %new_fp, "key rotated");
        Ok(api::KeysReply { steps, complete: true })
    }

    pub fn new(cmds: mpsc::Sender<Command>, kernel: Option<Kernel>) -> Self {
        Api { cmds, kernel }
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, Status> {
        call_core(&self.cmds, f).await
    }

    /// A call that runs a node command at the current time.
    async fn command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut netdb::Node, std::time::Duration) -> Result<R, netdb::Error>
        + Send
        + 'static,
    ) -> Result<R, Status> {
        self.call(move |core| {
            let now = core.now();
            f(&mut core.node, now)
        })
        .await?
        .map_err(status)
    }
}

pub fn status(e: netdb::Error) -> Status {
    use netdb::Error as E;
    let msg = e.to_string();
    match e {
        E::BadName { .. } | E::BadKey { .. } | E::ValueTooLarge { .. } => {
            Status::invalid_argument(msg)
        }
        E::NotJoined(_) => Status::failed_precondition(msg),
        E::NotOwner { .. } => Status::permission_denied(msg),
        E::NotFound { .. } => Status::not_found(msg),
        E::TooManyNetworks(_) => Status::resource_exhausted(msg),
        E::Left => Status::unavailable(msg),
        E::NoKeyring | E::ScheduledKeys => Status::failed_precondition(msg),
    }
}

pub fn entry(table: &str, key: &str, e: &netdb::Entry) -> api::Entry {
    api::Entry {
        table: table.into(),
        key: key.into(),
        value: e.value.clone(),
        owner: e.owner.clone(),
        ltime: e.ltime,
    }
}

/// A watcher of one network (and optionally one table).
pub struct Watcher {
    network: String,
    table: Option<String>,
    tx: mpsc::Sender<Result<api::WatchEvent, Status>>,
}

impl Watcher {
    /// Offers an event; false if the watcher is gone or stuck and must be
    /// dropped.
    pub fn offer(&self, ev: &Event) -> bool {
        let Event::Entry { network, table, key, kind, owner, value } = ev else { return true };
        if *network != self.network || self.table.as_ref().is_some_and(|t| t != table) {
            return !self.tx.is_closed();
        }
        let out = api::WatchEvent {
            event: kind.as_str().into(),
            network: network.clone(),
            entry: Some(api::Entry {
                table: table.clone(),
                key: key.clone(),
                value: value.clone(),
                owner: owner.clone(),
                ltime: 0,
            }),
        };
        match self.tx.try_send(Ok(out)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = self
                    .tx
                    .try_send(Err(Status::resource_exhausted("watch fell behind; start it again")));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a conflict notice about `network`; false if the watcher must
    /// be dropped.
    pub fn notice(&self, network: &str, text: &str) -> bool {
        if network != self.network {
            return !self.tx.is_closed();
        }
        let out = api::WatchEvent {
            event: "conflict".into(),
            network: self.network.clone(),
            entry: Some(api::Entry { value: Bytes::from(text.to_string()), ..Default::default() }),
        };
        self.tx.try_send(Ok(out)).is_ok()
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<api::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Netdb for Api {
    async fn members(
        &self,
        _: Request<api::MembersRequest>,
    ) -> Result<Response<api::MembersReply>, Status> {
        let members = self
            .call(|core| {
                core.node
                    .members()
                    .into_iter()
                    .map(|m| api::Member {
                        name: m.name,
                        addr: m.addr.map(|a| a.to_string()).unwrap_or_default(),
                        state: m.state.as_str().into(),
                        incarnation: m.incarnation,
                        generation: m.generation,
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(api::MembersReply { members }))
    }

    async fn networks(
        &self,
        _: Request<api::NetworksRequest>,
    ) -> Result<Response<api::NetworksReply>, Status> {
        let networks = self.call(|core| core.overlay.networks(&core.node)).await?;
        Ok(Response::new(api::NetworksReply { networks }))
    }

    async fn create_network(
        &self,
        req: Request<api::CreateNetworkRequest>,
    ) -> Result<Response<api::Network>, Status> {
        let r = req.into_inner();
        let n = self
            .call(move |core| {
                let now = core.now();
                core.overlay.create(&mut core.node, now, r)
            })
            .await??;
        Ok(Response::new(n))
    }

    async fn remove_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let name = req.into_inner().network;
        self.call(move |core| {
            let now = core.now();
            core.overlay.remove(&mut core.node, now, &name)
        })
        .await??;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn attach(
        &self,
        req: Request<api::AttachRequest>,
    ) -> Result<Response<api::EndpointInfo>, Status> {
        // Its own task: a client that goes away mid-attach must not leave a
        // reservation or a half-wired veth behind.
        let task = tokio::spawn(attach(self.cmds.clone(), self.kernel.clone(), req.into_inner()));
        let info = task.await.map_err(|_| Status::internal("the attach task failed"))??;
        Ok(Response::new(info))
    }

    async fn detach(
        &self,
        req: Request<api::DetachRequest>,
    ) -> Result<Response<api::DetachReply>, Status> {
        let task = tokio::spawn(detach(self.cmds.clone(), self.kernel.clone(), req.into_inner()));
        task.await.map_err(|_| Status::internal("the detach task failed"))??;
        Ok(Response::new(api::DetachReply {}))
    }

    async fn keys(
        &self,
        req: Request<api::KeysRequest>,
    ) -> Result<Response<api::KeysReply>, Status> {
        let r = req.into_inner();
        let op = match r.op.as_str() {
            "list" => KeyOp::List,
            "install" => KeyOp::Install(keys::parse_key(&r.key)?),
            "use" => KeyOp::Use(keys::parse_id(&r.key)?),
            "remove" => KeyOp::Remove(keys::parse_id(&r.key)?),
            "rotate" => return self.rotate().await.map(Response::new),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown keys command {other:?}: list, install, use, remove or rotate"
                )));
            }
        };
        let step = self.key_step(op).await?;
        let complete = step.complete;
        Ok(Response::new(api::KeysReply { steps: vec![step], complete }))
    }

    async fn endpoints(
        &self,
        req: Request<api::EndpointsRequest>,
    ) -> Result<Response<api::EndpointsReply>, Status> {
        let r = req.into_inner();
        let endpoints =
            self.call(move |core| core.overlay.endpoints(&core.node, &r.network, r.local)).await?;
        Ok(Response::new(api::EndpointsReply { endpoints }))
    }

    async fn join_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let net = req.into_inner().network;
        self.command(move |node, now| node.join_network(now, &net)).await?;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn leave_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let net = req.into_inner().network;
        self.command(move |node, now| node.leave_network(now, &net)).await?;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn put(&self, req: Request<api::PutRequest>) -> Result<Response<api::PutReply>, Status> {
        let r = req.into_inner();
        let written = self
            .call(move |core| {
                let now = core.now();
                let mut written = 0u32;
                for kv in r.entries {
                    core.node
                        .put(now, &r.network, &r.table, &kv.key, kv.value)
                        .map_err(|e| (written, e))?;
                    written += 1;
                }
                Ok(written)
            })
            .await?
            .map_err(|(written, e)| {
                let s = status(e);
                Status::new(
                    s.code(),
                    format!("{} ({written} entries written before it)", s.message()),
                )
            })?;
        Ok(Response::new(api::PutReply { written }))
    }

    async fn get(&self, req: Request<api::KeyRequest>) -> Result<Response<api::Entry>, Status> {
        let r = req.into_inner();
        let found = self
            .call(move |core| {
                core.node.get(&r.network, &r.table, &r.key).map(|e| entry(&r.table, &r.key, e))
            })
            .await?;
        found.map(Response::new).ok_or_else(|| Status::not_found("no such entry"))
    }

    async fn delete(
        &self,
        req: Request<api::KeyRequest>,
    ) -> Result<Response<api::DeleteReply>, Status> {
        let r = req.into_inner();
        self.command(move |node, now| node.delete(now, &r.network, &r.table, &r.key)).await?;
        Ok(Response::new(api::DeleteReply {}))
    }

    async fn dump(
        &self,
        req: Request<api::TableRequest>,
    ) -> Result<Response<api::DumpReply>, Status> {
        let r = req.into_inner();
        let entries = self
            .command(move |node, _| {
                node.check_joined(&r.network)?;
                Ok(node
                    .entries(&r.network, &r.table)
                    .into_iter()
                    .map(|(k, e)| entry(&r.table, k, e))
                    .collect())
            })
            .await?;
        Ok(Response::new(api::DumpReply { entries }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let table = (!r.table.is_empty()).then_some(r.table);
        let rx = self
            .call(move |core| {
                core.node.check_joined(&r.network)?;
                let snapshot: Vec<_> = core
                    .node
                    .raw_entries(&r.network)
                    .into_iter()
                    .filter(|(t, _, e)| {
                        e.visible() && table.as_deref().is_none_or(|want| want == *t)
                    })
                    .map(|(t, k, e)| Event::Entry {
                        network: r.network.clone(),
                        table: t.into(),
                        key: k.into(),
                        kind: EntryEventKind::Create,
                        owner: e.owner.clone(),
                        value: e.value.clone(),
                    })
                    .collect();
                let (tx, rx) = mpsc::channel(snapshot.len() + WATCH_BACKLOG);
                let w = Watcher { network: r.network, table, tx };
                for ev in &snapshot {
                    w.offer(ev);
                }
                core.watchers.push(w);
                Ok(rx)
            })
            .await?
            .map_err(status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        _: Request<api::StatsRequest>,
    ) -> Result<Response<api::StatsReply>, Status> {
        let counters = self
            .call(|core| {
                core.counters()
                    .into_iter()
                    .map(|(name, value)| api::Counter { name, value })
                    .collect()
            })
            .await?;
        Ok(Response::new(api::StatsReply { counters }))
    }
}

/// Parses "KEY VALUE" lines for bulk puts: the key is the first word, the
/// value the rest of the line; blank lines and lines starting with # are
/// skipped.
pub fn parse_bulk(text: &str) -> Result<Vec<api::KeyValue>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(char::is_whitespace) else {
            return Err(format!("line {}: expected \"KEY VALUE\"", n + 1));
        };
        out.push(api::KeyValue {
            key: key.into(),
            value: Bytes::from(value.trim_start().to_string()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_lines_split_at_the_first_space() {
        let kv = parse_bulk("a 1\n\n# note\nb two words\n").unwrap();
        assert_eq!(kv.len(), 2);
        assert_eq!(kv[1].key, "b");
        assert_eq!(kv[1].value, Bytes::from("two words"));
        assert!(parse_bulk("lonely").unwrap_err().contains("line 1"));
    }
}
