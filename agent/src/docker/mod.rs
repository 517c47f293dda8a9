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

pub(crate) use plugin::Plugin;

/// The name of both drivers: `docker network create -d netdb --ipam-driver
/// netdb`.
pub(crate) const DRIVER: &str = "netdb";

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
