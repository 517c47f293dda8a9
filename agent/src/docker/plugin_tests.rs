//! The plugin server and protocol types against a real dockerd: what the
//! unit tests assume about its requests (an empty Host header, empty bodies,
//! `null` maps) and how it reads replies, errors included.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::engine::tests::start_dockerd;
use super::engine::{CreateNetworkRequest, EngineError, Ipam, IpamConfig};
use super::http::{Handler, Reply, bind, serve};
use super::protocol::{
    self, ActivateResponse, AddressSpacesResponse, CapabilitiesResponse, DeleteNetworkRequest,
    Empty, IpamCapabilitiesResponse, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestAddressResponse, RequestPoolRequest, RequestPoolResponse, Scope,
    StringMap,
};

/// A minimal driver and IPAM: one pool, 10.65.0.0/24, and a record of
/// every call.
#[derive(Default)]
struct Probe {
    calls: Mutex<Vec<(String, Value)>>,
}

impl Probe {
    fn calls<T: DeserializeOwned>(&self, method: &str) -> Vec<T> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect()
    }
}

fn parse<T: DeserializeOwned + Default>(v: &Value) -> T {
    if v.is_null() { T::default() } else { serde_json::from_value(v.clone()).unwrap() }
}

impl Handler for Probe {
    async fn call(&self, method: &str, body: Bytes) -> Reply {
        // dockerd sends no body at all for the argument-less calls.
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return Reply::error(method, &format!("not JSON: {e}")),
            }
        };
        self.calls.lock().unwrap().push((method.to_owned(), v.clone()));
        match method {
            "Plugin.Activate" => Reply::json(&ActivateResponse::network_and_ipam()),
            "NetworkDriver.GetCapabilities" => {
                Reply::json(&CapabilitiesResponse { scope: Scope::Local, connectivity_scope: None })
            }
            "IpamDriver.GetCapabilities" => Reply::json(&IpamCapabilitiesResponse::default()),
            "IpamDriver.GetDefaultAddressSpaces" => Reply::json(&AddressSpacesResponse {
                local_default_address_space: "netdb-local".into(),
                global_default_address_space: "netdb".into(),
            }),
            "IpamDriver.RequestPool" => {
                let r: RequestPoolRequest = parse(&v);
                if !r.pool.is_empty() {
                    return Reply::error(method, &format!("pool {} is not ours to give", r.pool));
                }
                Reply::json(&RequestPoolResponse {
                    pool_id: "p1".into(),
                    pool: "10.65.0.0/24".into(),
                    data: StringMap::new(),
                })
            }
            "IpamDriver.RequestAddress" => {
                let r: RequestAddressRequest = parse(&v);
                let address = if r.is_gateway() { "10.65.0.1/24" } else { "10.65.0.2/24" };
                Reply::json(&RequestAddressResponse {
                    address: address.into(),
                    data: StringMap::new(),
                })
            }
            "NetworkDriver.CreateNetwork" => {
                let r: protocol::CreateNetworkRequest = parse(&v);
                if r.generic_options().contains_key("fail") {
                    return Reply::error(method, "asked to fail");
                }
                Reply::json(&Empty {})
            }
            "IpamDriver.ReleaseAddress"
            | "IpamDriver.ReleasePool"
            | "NetworkDriver.DeleteNetwork" => Reply::json(&Empty {}),
            _ => Reply::status(404, &format!("{method}: not implemented")),
        }
    }
}

/// Removes the plugin's socket from dockerd's discovery directory.
struct Socket(PathBuf);

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn dockerd_creates_and_removes_a_network_through_the_plugin() {
    let daemon = match start_dockerd("plugin") {
        Ok(d) => d,
        Err(why) => {
            println!("SKIP dockerd_creates_and_removes_a_network_through_the_plugin: {why}");
            return;
        }
    };
    // dockerd looks for plugins here whatever its --exec-root.
    let plugin = format!("netdb-test-{}", std::process::id());
    let socket = Socket(PathBuf::from(format!("/run/docker/plugins/{plugin}.sock")));
    let probe = Arc::new(Probe::default());
    let server = tokio::spawn(serve(bind(&socket.0).await.unwrap(), probe.clone()));
    let engine = daemon.ready().await;

    let request = CreateNetworkRequest {
        name: format!("{plugin}-n1"),
        driver: plugin.clone(),
        ipam: Ipam { driver: plugin.clone(), config: Vec::new() },
        options: BTreeMap::from([("vni".into(), "4097".into())]),
        labels: BTreeMap::from([("l".into(), "v".into())]),
        internal: false,
    };
    let id = engine.create_network(&request).await.unwrap();

    let created: Vec<protocol::CreateNetworkRequest> = probe.calls("NetworkDriver.CreateNetwork");
    assert_eq!(created.len(), 1);
    let c = &created[0];
    assert_eq!(c.network_id, id);
    assert_eq!(c.generic_options(), StringMap::from([("vni".into(), "4097".into())]));
    assert_eq!(c.ipv4_data[0].address_space, "netdb-local");
    assert_eq!(
        (c.ipv4_data[0].pool.as_str(), c.ipv4_data[0].gateway.as_str()),
        ("10.65.0.0/24", "10.65.0.1/24")
    );
    assert!(c.ipv6_data.is_empty());
    assert!(probe.calls::<RequestAddressRequest>("IpamDriver.RequestAddress")[0].is_gateway());

    let net = engine.network_inspect(&id).await.unwrap().unwrap();
    assert_eq!((net.driver.as_str(), net.ipam.driver.as_str()), (plugin.as_str(), plugin.as_str()));
    assert_eq!(
        net.ipam.config,
        [IpamConfig { subnet: "10.65.0.0/24".into(), gateway: "10.65.0.1".into() }]
    );
    assert_eq!(net.labels, request.labels);

    // An IPAM error in `Error` with 200 reaches the user.
    let asks_pool = CreateNetworkRequest {
        name: format!("{plugin}-n2"),
        ipam: Ipam {
            driver: plugin.clone(),
            config: vec![IpamConfig { subnet: "10.66.0.0/16".into(), gateway: String::new() }],
        },
        ..request.clone()
    };
    let e = engine.create_network(&asks_pool).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Status { message, .. } if message.contains("pool 10.66.0.0/16 is not ours to give")),
        "{e:?}"
    );
    // And a driver error in `Err`.
    let fails = CreateNetworkRequest {
        name: format!("{plugin}-n3"),
        options: BTreeMap::from([("fail".into(), "1".into())]),
        ..request.clone()
    };
    let e = engine.create_network(&fails).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Status { message, .. } if message.contains("asked to fail")),
        "{e:?}"
    );

    engine.remove_network(&id).await.unwrap();
    let deleted: Vec<DeleteNetworkRequest> = probe.calls("NetworkDriver.DeleteNetwork");
    assert_eq!(deleted.iter().filter(|d| d.network_id == id).count(), 1);
    // Released as a bare IP although it was handed out in CIDR form.
    let released: Vec<ReleaseAddressRequest> = probe.calls("IpamDriver.ReleaseAddress");
    assert!(released.iter().all(|r| r.address == "10.65.0.1" && r.pool_id == "p1"), "{released:?}");
    let pools: Vec<ReleasePoolRequest> = probe.calls("IpamDriver.ReleasePool");
    assert!(!pools.is_empty() && pools.iter().all(|r| r.pool_id == "p1"));

    // The argument-less calls came with empty bodies.
    for m in
        ["Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces"]
    {
        let calls = probe.calls.lock().unwrap();
        assert!(calls.iter().any(|(c, v)| c == m && v.is_null()), "{m}: {calls:?}");
    }
    server.abort();
}
