//! What the plugin must remember across its own and Docker's restarts:
//! Docker creates a network once and never says so again (a restarted
//! dockerd does not send CreateNetwork), and its endpoint IDs are all the
//! plugin is told later. Kept in `docker.json` beside the agent's state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::state::{read_bounded, write_atomic};

const FILE: &str = "docker.json";
const VERSION: u32 = 1;
/// A file larger than this is not ours.
const MAX_BYTES: u64 = 16 << 20;

/// One Docker network of this host's daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KnownNetwork {
    /// The netdb network it is; empty until Docker's name for it is known
    /// (Docker does not tell a driver the name: it is read back through
    /// the Engine API once Docker has saved the network).
    pub(crate) name: String,
    pub(crate) subnet: String,
    pub(crate) internal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vni: Option<u32>,
    /// This Docker's create made the netdb network: removing it here
    /// removes it everywhere. Other hosts' copies are only theirs to drop.
    #[serde(default)]
    pub(crate) origin: bool,
    /// Addresses come from netdb's IPAM driver (not Docker's own).
    #[serde(default)]
    pub(crate) netdb_ipam: bool,
}

/// One Docker endpoint: a netdb endpoint of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KnownEndpoint {
    /// Docker's network ID.
    pub(crate) network_id: String,
    /// The netdb network and endpoint name.
    pub(crate) network: String,
    pub(crate) name: String,
    /// The veth end Docker moves into the container.
    pub(crate) ifname: String,
    /// The container joined (Join came).
    pub(crate) joined: bool,
    /// The container's names were read from Docker and published.
    pub(crate) named: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) version: u32,
    /// By Docker's network ID.
    pub(crate) networks: BTreeMap<String, KnownNetwork>,
    /// netdb networks removed from this host's Docker by its user (`docker
    /// network rm` or prune of a copy another host made): not put back.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub(crate) declined: BTreeSet<String>,
    /// By Docker's endpoint ID.
    pub(crate) endpoints: BTreeMap<String, KnownEndpoint>,
}

/// The file, when the agent has a data dir.
pub(crate) struct Store {
    dir: Option<PathBuf>,
}

impl Store {
    /// Reads `dir/docker.json` (nothing yet: empty); `None`: kept in memory
    /// only.
    pub(crate) fn open(dir: Option<&Path>) -> anyhow::Result<(Store, Saved)> {
        let Some(dir) = dir else { return Ok((Store { dir: None }, Saved::default())) };
        let path = dir.join(FILE);
        let saved = match read_bounded(&path, MAX_BYTES)? {
            None => Saved::default(),
            Some(text) => {
                let saved: Saved = serde_json::from_slice(&text).with_context(|| {
                    format!(
                        "{} is corrupt; move it away (Docker's netdb networks must then be created again)",
                        path.display()
                    )
                })?;
                if saved.version != VERSION {
                    bail!(
                        "{} has version {}, this agent reads {VERSION}",
                        path.display(),
                        saved.version
                    );
                }
                saved
            }
        };
        Ok((Store { dir: Some(dir.into()) }, saved))
    }

    pub(crate) fn save(&self, saved: &Saved) {
        let Some(dir) = &self.dir else { return };
        let mut saved = saved.clone();
        saved.version = VERSION;
        let written = serde_json::to_vec_pretty(&saved)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| write_atomic(dir, FILE, &bytes));
        if let Err(e) = written {
            tracing::error!(error = %format!("{e:#}"), "cannot write docker.json; a restart would forget Docker's networks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_a_corrupt_one_is_refused_with_advice() {
        let dir = std::env::temp_dir().join(format!("netdb-docker-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (store, mut saved) = Store::open(Some(&dir)).unwrap();
        assert_eq!(saved, Saved::default());
        saved.networks.insert(
            "abc".into(),
            KnownNetwork {
                name: "app".into(),
                subnet: "10.20.0.0/24".into(),
                ..Default::default()
            },
        );
        store.save(&saved);
        let (_, again) = Store::open(Some(&dir)).unwrap();
        assert_eq!(again.networks, saved.networks);
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        let e = Store::open(Some(&dir)).err().unwrap();
        assert!(format!("{e:#}").contains("corrupt; move it away"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
