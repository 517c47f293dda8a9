//! The agent's Docker integration: the legacy plugin protocols (a remote
//! network driver and a remote IPAM driver) served over HTTP/1.1 on a Unix
//! socket that dockerd discovers under `/run/docker/plugins`, and a small
//! client of the Docker Engine API for what dockerd does not tell a plugin
//! (network names, labels, which containers sit on a network).
//!
//! `protocol` holds the JSON both ways, `http` the plugin server, `engine`
//! the Engine API client, `plugin` both drivers, `store` what they keep
//! across restarts, `sync` what is learned from Docker beside its calls
//! (names) and told to it (netdb's networks).

pub(crate) mod engine;
pub(crate) mod http;
mod plugin;
#[cfg(test)]
mod plugin_tests;
pub(crate) mod protocol;
mod store;
mod sync;

use std::path::Path;
use std::sync::Arc;

use netdb::ipam::Subnet;

use crate::config::DockerSettings;
use crate::engine::Handle;
use plugin::{Known, Plugin};

/// The name of both drivers: `docker network create -d netdb --ipam-driver
/// netdb`.
pub(crate) const DRIVER: &str = "netdb";

/// Serves both drivers on the plugin socket, and starts the sync with
/// Docker, for the agent's life.
pub(crate) async fn start(
    settings: &DockerSettings,
    data_dir: Option<&Path>,
    handle: Handle,
    pool: (Subnet, u8),
) -> anyhow::Result<()> {
    let (store, saved) = store::Store::open(data_dir)?;
    let engine = engine::Engine::new(&settings.engine_socket);
    let plugin = Arc::new(Plugin::new(handle, engine, pool, Known::new(store, saved)));
    let listener = http::bind(&settings.plugin_socket).await?;
    tracing::info!(socket = %settings.plugin_socket.display(), engine = %settings.engine_socket.display(), "serving Docker's network and IPAM plugins as netdb");
    tokio::spawn(http::serve(listener, plugin.clone()));
    tokio::spawn(sync::run(plugin));
    Ok(())
}

use serde::{Deserialize, Deserializer};

/// Reads a field that dockerd may send as `null` (a nil Go map, slice or
/// pointer) as its default. Only `#[serde(default)]` covers a missing field;
/// a `null` would otherwise fail the whole request.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
