//! The gRPC admin API: each call translates its request into a call on the
//! core (`engine::Handle`) and the answer, or the refusal, back into gRPC.
//! Nothing here touches the node or the overlay directly.

use std::pin::Pin;

use netdb::KeyOp;
use netdb::{Event, MemberInfo};
use netdb_api::{self as api, netdb_server::Netdb};
use netdb_dataplane::{Kernel, Linux};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine::{self, Handle};
use crate::keys;
use crate::logging::LogControl;
use crate::overlay::{self, Attach, CreateNetwork, EndpointInfo, Kind, NetworkDetail, NetworkInfo};
use crate::watch::Watched;

/// The API service.
pub(crate) struct Api<K = Linux> {
    core: Handle<K>,
    /// The log filter, when this process installed the logger.
    log: Option<LogControl>,
}

impl<K: Kernel> Api<K> {
    pub(crate) fn new(core: Handle<K>) -> Self {
        Api { core, log: None }
    }

    /// Lets `SetLogLevel` change the agent's log filter.
    pub(crate) fn with_log(self, log: LogControl) -> Self {
        Api { log: Some(log), ..self }
    }

    /// Writes one put request's entries (Put, and each request of Import).
    async fn put_request(&self, r: api::PutRequest) -> Result<u32, engine::Error> {
        let entries = r.entries.into_iter().map(|kv| (kv.key, kv.value)).collect();
        self.core.put(r.network, r.table, entries).await
    }

    /// Runs one keyring command on every live member to its end.
    async fn key_step(&self, op: KeyOp) -> Result<api::KeyStep, Status> {
        let action = op.to_string();
        let seq = self.core.key_command(op).await.map_err(core_status)?;
        loop {
            match self.core.key_report(seq).await.map_err(core_status)? {
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
            .core
            .primary_key()
            .await
            .map_err(core_status)?
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
}

/// A node refusal as gRPC.
pub(crate) fn status(e: netdb::Error) -> Status {
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

/// An overlay refusal as gRPC.
fn overlay_status(e: overlay::Error) -> Status {
    let msg = e.to_string();
    match e {
        overlay::Error::Node(e) => status(e),
        e => match e.kind() {
            Kind::Invalid => Status::invalid_argument(msg),
            Kind::NotFound => Status::not_found(msg),
            Kind::Exists => Status::already_exists(msg),
            Kind::Precondition => Status::failed_precondition(msg),
            Kind::Exhausted => Status::resource_exhausted(msg),
            Kind::Unavailable => Status::unavailable(msg),
            Kind::Busy => Status::aborted(msg),
            Kind::Internal => Status::internal(msg),
        },
    }
}

/// A failed core call as gRPC.
fn core_status(e: engine::Error) -> Status {
    match e {
        engine::Error::ShuttingDown => Status::unavailable(e.to_string()),
        engine::Error::TaskFailed(_) => Status::internal(e.to_string()),
        engine::Error::Node(e) => status(e),
        engine::Error::Overlay(e) => overlay_status(e),
        engine::Error::PutStopped { ref source, .. } => {
            Status::new(status(source.clone()).code(), e.to_string())
        }
    }
}

fn entry(table: &str, key: &str, e: &netdb::Entry) -> api::Entry {
    api::Entry {
        table: table.into(),
        key: key.into(),
        value: e.value.clone(),
        owner: e.owner.to_string(),
        ltime: e.ltime,
    }
}

fn member(m: MemberInfo) -> api::Member {
    api::Member {
        name: m.name,
        addr: m.addr.map(|a| a.to_string()).unwrap_or_default(),
        state: m.state.as_str().into(),
        incarnation: m.incarnation,
        generation: m.generation,
        version: m.version,
    }
}

fn network(n: NetworkInfo) -> api::Network {
    let mut out =
        api::Network { name: n.name, peers: n.peers, entries: n.entries, ..Default::default() };
    if let Some(o) = n.overlay {
        out.subnet = o.subnet.to_string();
        out.vni = o.vni;
        out.mtu = o.mtu;
        out.local_endpoints = o.local_endpoints;
        out.hosts = o.hosts;
        out.conflicts = o.conflicts;
        out.origin = o.origin;
        out.internal = o.internal;
        out.warnings = o.warnings;
    }
    out
}

fn network_detail(d: NetworkDetail) -> api::NetworkDetail {
    let mut hosts: Vec<api::HostEndpoints> = Vec::new();
    for e in d.endpoints {
        match hosts.last_mut() {
            Some(h) if h.host == e.host => h.endpoints.push(endpoint(e)),
            _ => hosts
                .push(api::HostEndpoints { host: e.host.clone(), endpoints: vec![endpoint(e)] }),
        }
    }
    let mut out = api::NetworkDetail {
        network: Some(network(d.info)),
        gateway: d.gateway.map(|g| g.to_string()).unwrap_or_default(),
        created: d.created,
        hosts,
        ..Default::default()
    };
    if let Some(s) = d.scope {
        out.tables = s
            .tables
            .into_iter()
            .map(|(table, n)| api::TableCount { table, entries: n as u64 })
            .collect();
        out.kept = s.kept as u64;
        out.queue_len = s.queue_len as u64;
        out.root = s.root;
        out.synced = s.synced;
        out.syncs_started = s.syncs.started;
        out.syncs_completed = s.syncs.completed;
        out.syncs_failed = s.syncs.failed;
    }
    out
}

fn endpoint(e: EndpointInfo) -> api::EndpointInfo {
    api::EndpointInfo {
        network: e.network,
        name: e.name,
        host: e.host,
        ip: e.ip,
        prefix: e.prefix,
        mac: e.mac,
        ifname: e.ifname,
        netns: e.netns,
        service: e.service,
        aliases: e.aliases,
        local: e.local,
        gateway_ip: e.gateway_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        publish: e.publish,
        netns_missing: e.netns_missing,
    }
}

fn watched(w: Watched) -> Result<api::WatchEvent, Status> {
    match w {
        Watched::Entry(Event::Entry { network, table, key, kind, owner, value }) => {
            let (table, owner) = (String::from(&*table), String::from(&*owner));
            Ok(api::WatchEvent {
                event: kind.as_str().into(),
                network: String::from(&*network),
                entry: Some(api::Entry { table, key, value, owner, ltime: 0 }),
            })
        }
        Watched::Entry(_) => Err(Status::internal("a watch stream got a non-entry event")),
        Watched::Notice { kind, network, text } => Ok(api::WatchEvent {
            event: kind.as_str().into(),
            network,
            entry: Some(api::Entry { value: text.into(), ..Default::default() }),
        }),
        Watched::FellBehind => Err(Status::resource_exhausted("watch fell behind; start it again")),
    }
}

/// "Not given" in proto3 is the zero value.
fn given<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<api::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<K: Kernel> Netdb for Api<K> {
    async fn members(
        &self,
        _: Request<api::MembersRequest>,
    ) -> Result<Response<api::MembersReply>, Status> {
        let members = self.core.members().await.map_err(core_status)?;
        Ok(Response::new(api::MembersReply { members: members.into_iter().map(member).collect() }))
    }

    async fn networks(
        &self,
        _: Request<api::NetworksRequest>,
    ) -> Result<Response<api::NetworksReply>, Status> {
        let networks = self.core.networks().await.map_err(core_status)?;
        Ok(Response::new(api::NetworksReply {
            networks: networks.into_iter().map(network).collect(),
        }))
    }

    async fn inspect_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkDetail>, Status> {
        let d = self.core.inspect_network(req.into_inner().network).await.map_err(core_status)?;
        Ok(Response::new(network_detail(d)))
    }

    async fn health(
        &self,
        _: Request<api::HealthRequest>,
    ) -> Result<Response<api::HealthReply>, Status> {
        let h = self.core.health().await.map_err(core_status)?;
        Ok(Response::new(api::HealthReply {
            ready: h.ready(),
            name: h.name,
            version: h.version.into(),
            uptime_ms: h.uptime.as_millis() as u64,
            checks: h
                .checks
                .into_iter()
                .map(|c| api::HealthCheck { name: c.name.into(), ok: c.ok, detail: c.detail })
                .collect(),
        }))
    }

    async fn create_network(
        &self,
        req: Request<api::CreateNetworkRequest>,
    ) -> Result<Response<api::Network>, Status> {
        let r = req.into_inner();
        let create = CreateNetwork {
            name: r.name,
            subnet: r.subnet,
            vni: given(r.vni),
            mtu: given(r.mtu),
            internal: r.internal,
            routes: overlay::host_routes(),
        };
        let n = self.core.create_network(create).await.map_err(core_status)?;
        Ok(Response::new(network(n)))
    }

    async fn remove_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let name = req.into_inner().network;
        self.core.remove_network(name).await.map_err(core_status)?;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn attach(
        &self,
        req: Request<api::AttachRequest>,
    ) -> Result<Response<api::EndpointInfo>, Status> {
        let r = req.into_inner();
        let attach = Attach {
            network: r.network,
            name: r.name,
            netns: r.netns.into(),
            ip: given(r.ip),
            service: r.service,
            aliases: r.aliases,
            ifname: given(r.ifname),
            publish: r.publish,
            docker: false,
            mac: None,
        };
        let info = self.core.attach(attach).await.map_err(core_status)?;
        Ok(Response::new(endpoint(info)))
    }

    async fn detach(
        &self,
        req: Request<api::DetachRequest>,
    ) -> Result<Response<api::DetachReply>, Status> {
        let r = req.into_inner();
        self.core.detach(r.network, r.name).await.map_err(core_status)?;
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
        let endpoints = self.core.endpoints(r.network, r.local).await.map_err(core_status)?;
        Ok(Response::new(api::EndpointsReply {
            endpoints: endpoints.into_iter().map(endpoint).collect(),
        }))
    }

    async fn join_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let net = req.into_inner().network;
        self.core.join_network(net).await.map_err(core_status)?;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn leave_network(
        &self,
        req: Request<api::NetworkRequest>,
    ) -> Result<Response<api::NetworkReply>, Status> {
        let net = req.into_inner().network;
        self.core.leave_network(net).await.map_err(core_status)?;
        Ok(Response::new(api::NetworkReply {}))
    }

    async fn put(&self, req: Request<api::PutRequest>) -> Result<Response<api::PutReply>, Status> {
        let written = self.put_request(req.into_inner()).await.map_err(core_status)?;
        Ok(Response::new(api::PutReply { written }))
    }

    async fn import(
        &self,
        req: Request<tonic::Streaming<api::PutRequest>>,
    ) -> Result<Response<api::PutReply>, Status> {
        let mut stream = req.into_inner();
        let mut written = 0u32;
        while let Some(r) = stream.message().await? {
            written = match self.put_request(r).await {
                Ok(n) => written.saturating_add(n),
                // The count of the whole stream, not of its last request.
                Err(engine::Error::PutStopped { written: n, source }) => {
                    let written = written.saturating_add(n);
                    return Err(core_status(engine::Error::PutStopped { written, source }));
                }
                Err(e) => return Err(core_status(e)),
            };
        }
        Ok(Response::new(api::PutReply { written }))
    }

    async fn get(&self, req: Request<api::KeyRequest>) -> Result<Response<api::Entry>, Status> {
        let r = req.into_inner();
        let found =
            self.core.get(r.network, r.table.clone(), r.key.clone()).await.map_err(core_status)?;
        found
            .map(|e| Response::new(entry(&r.table, &r.key, &e)))
            .ok_or_else(|| Status::not_found("no such entry"))
    }

    async fn delete(
        &self,
        req: Request<api::KeyRequest>,
    ) -> Result<Response<api::DeleteReply>, Status> {
        let r = req.into_inner();
        self.core.delete(r.network, r.table, r.key).await.map_err(core_status)?;
        Ok(Response::new(api::DeleteReply {}))
    }

    async fn dump(
        &self,
        req: Request<api::TableRequest>,
    ) -> Result<Response<api::DumpReply>, Status> {
        let r = req.into_inner();
        let entries = self.core.dump(r.network, r.table.clone()).await.map_err(core_status)?;
        Ok(Response::new(api::DumpReply {
            entries: entries.iter().map(|(k, e)| entry(&r.table, k, e)).collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let rx = self.core.watch(r.network, given(r.table)).await.map_err(core_status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(watched))))
    }

    async fn stats(
        &self,
        _: Request<api::StatsRequest>,
    ) -> Result<Response<api::StatsReply>, Status> {
        let counters = self.core.counters().await.map_err(core_status)?;
        Ok(Response::new(api::StatsReply {
            counters: counters
                .into_iter()
                .map(|(name, value)| api::Counter { name, value })
                .collect(),
        }))
    }

    async fn set_log_level(
        &self,
        req: Request<api::LogLevelRequest>,
    ) -> Result<Response<api::LogLevelReply>, Status> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| Status::unavailable("this agent's log filter cannot be changed"))?;
        let filter = req.into_inner().filter;
        let previous = if filter.is_empty() {
            log.current()
        } else {
            log.set(&filter).map_err(|e| Status::invalid_argument(format!("{e:#}")))?
        };
        Ok(Response::new(api::LogLevelReply { previous, current: log.current() }))
    }
}
