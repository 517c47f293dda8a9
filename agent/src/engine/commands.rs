//! What the API asks of the core, one method per request; each runs on the
//! loop at the core's current time.

use std::sync::Arc;

use bytes::Bytes;
use netdb::{Entry, EntryEventKind, Event, MemberInfo};
use netdb_dataplane::Desired;
use tokio::sync::mpsc;

use super::{Core, Error, KeyId, KeyOp, KeyReport};
use crate::overlay::{CreateNetwork, EndpointInfo, NetworkDetail, NetworkInfo};
use crate::watch::{Watched, Watcher};

impl Core {
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        self.node.members()
    }

    pub(crate) fn networks(&self) -> Vec<NetworkInfo> {
        self.overlay.networks(&self.node)
    }

    pub(crate) fn inspect_network(&self, name: &str) -> Result<NetworkDetail, Error> {
        Ok(self.overlay.inspect(&self.node, name)?)
    }

    pub(crate) fn create_network(&mut self, r: CreateNetwork) -> Result<NetworkInfo, Error> {
        let now = self.now();
        Ok(self.overlay.create(&mut self.node, now, r)?)
    }

    pub(crate) fn remove_network(&mut self, name: &str) -> Result<(), Error> {
        let now = self.now();
        Ok(self.overlay.remove(&mut self.node, now, name)?)
    }

    pub(crate) fn endpoints(&self, network: &str, local_only: bool) -> Vec<EndpointInfo> {
        self.overlay.endpoints(&self.node, network, local_only)
    }

    /// What the kernel must hold now.
    pub(crate) fn desired(&self) -> Desired {
        self.overlay.desired(&self.node, self.now())
    }

    /// Host-side veths of re-addressed endpoints, to remove before the
    /// reconcile wires them again.
    pub(crate) fn take_retired(&mut self) -> Vec<String> {
        self.overlay.take_retired()
    }

    /// Joins `network`, saved before the answer: a restart joins it again
    /// even if its attachment never left this host.
    pub(crate) fn join_network(&mut self, network: &str) -> Result<(), Error> {
        let now = self.now();
        self.node.join_network(now, network)?;
        self.overlay.user_joined(&self.node, network, true);
        Ok(())
    }

    pub(crate) fn leave_network(&mut self, network: &str) -> Result<(), Error> {
        let now = self.now();
        self.node.leave_network(now, network)?;
        self.overlay.user_joined(&self.node, network, false);
        Ok(())
    }

    /// Writes entries in order; stops at the first refused, saying how
    /// many were written before it.
    pub(crate) fn put(
        &mut self,
        network: &str,
        table: &str,
        entries: Vec<(String, Bytes)>,
    ) -> Result<u32, Error> {
        let now = self.now();
        let mut written = 0u32;
        for (key, value) in entries {
            self.node
                .put(now, network, table, &key, value)
                .map_err(|source| Error::PutStopped { written, source })?;
            written += 1;
        }
        Ok(written)
    }

    pub(crate) fn get(&self, network: &str, table: &str, key: &str) -> Option<Entry> {
        self.node.get(network, table, key).cloned()
    }

    pub(crate) fn delete(&mut self, network: &str, table: &str, key: &str) -> Result<(), Error> {
        let now = self.now();
        Ok(self.node.delete(now, network, table, key)?)
    }

    /// A table's visible entries, by key.
    pub(crate) fn dump(&self, network: &str, table: &str) -> Result<Vec<(String, Entry)>, Error> {
        self.node.check_joined(network)?;
        Ok(self
            .node
            .entries(network, table)
            .into_iter()
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect())
    }

    /// A new watch stream: the current entries as create events, then
    /// every change and conflict of the network.
    pub(crate) fn watch(
        &mut self,
        network: String,
        table: Option<String>,
    ) -> Result<mpsc::Receiver<Watched>, Error> {
        self.node.check_joined(&network)?;
        let name: Arc<str> = network.as_str().into();
        let snapshot: Vec<Event> = self
            .node
            .raw_entries(&network)
            .into_iter()
            .filter(|(t, _, e)| e.visible() && table.as_deref().is_none_or(|want| want == *t))
            .map(|(t, k, e)| Event::Entry {
                network: name.clone(),
                table: t.into(),
                key: k.into(),
                kind: EntryEventKind::Create,
                owner: e.owner.clone(),
                value: e.value.clone(),
            })
            .collect();
        let (w, rx) = Watcher::new(network, table, snapshot);
        self.watchers.push(w);
        Ok(rx)
    }

    /// Starts a keyring command cluster-wide; its sequence number.
    pub(crate) fn key_command(&mut self, op: KeyOp) -> Result<u64, Error> {
        let now = self.now();
        Ok(self.node.key_command(now, op)?)
    }

    pub(crate) fn key_report(&self, seq: u64) -> Option<KeyReport> {
        self.node.key_report(seq)
    }

    /// The key that seals, if gossip is sealed.
    pub(crate) fn primary_key(&self) -> Option<KeyId> {
        self.node.keyring().map(|k| k.primary())
    }
}
