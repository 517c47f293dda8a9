//! The JSON of Docker's legacy plugin protocols, as dockerd 20.10 sends and
//! reads it: the remote network driver (`NetworkDriver.*`, libnetwork's
//! drivers/remote/api/api.go) and the remote IPAM driver (`IpamDriver.*`,
//! ipams/remote/api/api.go), plus `Plugin.Activate`.
//!
//! Go's field names are kept exactly (`NetworkID`, `IPv4Data`, ...). Requests
//! are read leniently: every field may be missing, unknown fields are
//! ignored (dockerd versions add some) and a nil Go map, slice or pointer,
//! which Go encodes as `null`, reads as empty. Responses leave out what is
//! empty, because dockerd treats a present value as something the driver
//! chose (an `Interface.Address` it did not ask for is an error).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::null_as_default;

/// Free-form options dockerd passes to the network driver: values are any
/// JSON (`com.docker.network.portmap` is an array, `…enable_ipv6` a bool).
pub(crate) type Options = Map<String, Value>;

/// String options, as the IPAM protocol carries them (`map[string]string`).
pub(crate) type StringMap = BTreeMap<String, String>;

/// The option of CreateNetwork holding the user's `-o key=value` map.
pub(crate) const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The RequestAddress option saying what the address is for.
pub(crate) const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";

/// The value of [`REQUEST_ADDRESS_TYPE`] when dockerd asks for the
/// network's gateway (its first request after RequestPool).
pub(crate) const GATEWAY_ADDRESS: &str = "com.docker.network.gateway";

/// The body of an error reply to `method` (the request path, with or
/// without its leading slash).
///
/// With HTTP 200 dockerd decodes the interface's own response struct, whose
/// error field is `Err` for the network driver but `Error` for IPAM: an IPAM
/// reply carrying `Err` would be read as success. With any other status it
/// looks for `Err` whatever the interface, and shows the raw body otherwise;
/// so a non-200 reply should use [`status_error_body`].
pub(crate) fn error_body(method: &str, message: &str) -> Vec<u8> {
    let field =
        if method.trim_start_matches('/').starts_with("IpamDriver.") { "Error" } else { "Err" };
    json_object(field, message)
}

/// The body of a reply with a status other than 200: `{"Err": ...}`, the
/// only shape dockerd parses there (pkg/plugins/client.go).
pub(crate) fn status_error_body(message: &str) -> Vec<u8> {
    json_object("Err", message)
}

fn json_object(field: &str, message: &str) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(field.to_owned(), Value::String(message.to_owned()));
    // A map of strings always serializes.
    serde_json::to_vec(&m).unwrap_or_default()
}

/// A success reply with nothing to say: `{}`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Empty {}

/// `Plugin.Activate` → which protocols this plugin speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ActivateResponse {
    pub(crate) implements: Vec<String>,
}

impl ActivateResponse {
    /// netdb is both a network driver and an IPAM driver.
    pub(crate) fn network_and_ipam() -> ActivateResponse {
        ActivateResponse { implements: vec!["NetworkDriver".into(), "IpamDriver".into()] }
    }
}

/// Where a network's data lives and how far its connectivity reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    Local,
    Global,
}

/// `NetworkDriver.GetCapabilities` → the driver's scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CapabilitiesResponse {
    pub(crate) scope: Scope,
    /// dockerd uses `scope` when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connectivity_scope: Option<Scope>,
}

/// One address pool of a network, as IPAM gave it (`driverapi.IPAMData`).
/// Addresses are CIDR strings, the gateway included (`10.0.0.1/24`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct IpamData {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) address_space: String,
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub(crate) pool: String,
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub(crate) gateway: String,
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) aux_addresses: StringMap,
}

/// `NetworkDriver.CreateNetwork`. It carries no network name and no labels:
/// those are only in the Engine API.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub(crate) options: Options,
    #[serde(rename = "IPv4Data", deserialize_with = "null_as_default")]
    pub(crate) ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "null_as_default")]
    pub(crate) ipv6_data: Vec<IpamData>,
}

impl CreateNetworkRequest {
    /// The user's `-o key=value` options; values that are not strings
    /// (dockerd only sends strings there) are left out.
    pub(crate) fn generic_options(&self) -> StringMap {
        let Some(Value::Object(m)) = self.options.get(GENERIC_OPTIONS) else {
            return StringMap::new();
        };
        m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
    }
}

/// `NetworkDriver.DeleteNetwork`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct DeleteNetworkRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
}

/// The body of `DeleteEndpoint`, `EndpointOperInfo`, `Leave` and
/// `RevokeExternalConnectivity`: which endpoint of which network.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct EndpointRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_as_default")]
    pub(crate) endpoint_id: String,
}

/// An endpoint's addresses: CIDR strings and a MAC, empty when unset.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct EndpointInterface {
    #[serde(
        rename = "Address",
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) address: String,
    #[serde(
        rename = "AddressIPv6",
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) mac_address: String,
}

/// `NetworkDriver.CreateEndpoint`. `interface` holds what IPAM already
/// assigned.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_as_default")]
    pub(crate) endpoint_id: String,
    #[serde(rename = "Interface")]
    pub(crate) interface: Option<EndpointInterface>,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub(crate) options: Options,
}

/// The reply to CreateEndpoint. `interface` may only fill fields the request
/// left empty: dockerd fails the endpoint ("driver modified interface
/// address") when the driver returns one it had set, even unchanged.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub(crate) interface: Option<EndpointInterface>,
}

/// The reply to EndpointOperInfo: dockerd reads `…portmap` and
/// `…exposedports` from it for `docker inspect`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct EndpointOperInfoResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) value: Options,
}

/// `NetworkDriver.Join`: put the endpoint into a sandbox (a netns path).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct JoinRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_as_default")]
    pub(crate) endpoint_id: String,
    #[serde(rename = "SandboxKey", deserialize_with = "null_as_default")]
    pub(crate) sandbox_key: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub(crate) options: Options,
}

/// The interface the driver made in the host namespace (`src_name`), which
/// dockerd moves into the sandbox and renames `dst_prefix` + a free index.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct InterfaceName {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) src_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) dst_prefix: String,
}

/// How a static route reaches its destination; Go's `types.NEXTHOP` (0)
/// and `types.CONNECTED` (1), sent as the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteType {
    NextHop,
    Connected,
}

impl Serialize for RouteType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            RouteType::NextHop => 0,
            RouteType::Connected => 1,
        })
    }
}

impl<'de> Deserialize<'de> for RouteType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(RouteType::NextHop),
            1 => Ok(RouteType::Connected),
            n => Err(serde::de::Error::custom(format!(
                "RouteType {n}: expected 0 (next hop) or 1 (connected)"
            ))),
        }
    }
}

/// A route dockerd adds in the sandbox. `next_hop` is empty for a
/// connected route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StaticRoute {
    pub(crate) destination: String,
    pub(crate) route_type: RouteType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) next_hop: String,
}

/// The reply to Join. Without a gateway, a default route or
/// `disable_gateway_service`, dockerd adds docker_gwbridge to a
/// non-internal network's containers for egress.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct JoinResponse {
    #[serde(rename = "InterfaceName", skip_serializing_if = "Option::is_none")]
    pub(crate) interface_name: Option<InterfaceName>,
    /// A bare IP, not CIDR.
    #[serde(
        rename = "Gateway",
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) gateway: String,
    #[serde(
        rename = "GatewayIPv6",
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) static_routes: Vec<StaticRoute>,
    #[serde(rename = "DisableGatewayService")]
    pub(crate) disable_gateway_service: bool,
}

/// `NetworkDriver.ProgramExternalConnectivity`: sent only for the endpoint
/// that is its sandbox's gateway; options carry the port bindings.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID", deserialize_with = "null_as_default")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID", deserialize_with = "null_as_default")]
    pub(crate) endpoint_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub(crate) options: Options,
}

/// `NetworkDriver.DiscoverNew` and `DiscoverDelete` (swarm only).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct DiscoveryNotification {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) discovery_type: u32,
    pub(crate) discovery_data: Value,
}

/// `IpamDriver.GetCapabilities` → what dockerd must send along.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct IpamCapabilitiesResponse {
    /// dockerd then puts the endpoint's MAC in RequestAddress's options.
    #[serde(rename = "RequiresMACAddress")]
    pub(crate) requires_mac_address: bool,
    /// dockerd then replays local networks' requests after a restart.
    #[serde(rename = "RequiresRequestReplay")]
    pub(crate) requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces` → the names of the two spaces.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct AddressSpacesResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) local_default_address_space: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) global_default_address_space: String,
}

/// `IpamDriver.RequestPool`. An empty `pool` asks the driver to choose.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct RequestPoolRequest {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) address_space: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) pool: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) sub_pool: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) options: StringMap,
    #[serde(rename = "V6", deserialize_with = "null_as_default")]
    pub(crate) v6: bool,
}

/// The reply to RequestPool; `data[GATEWAY_ADDRESS]` would set the gateway.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RequestPoolResponse {
    #[serde(rename = "PoolID", deserialize_with = "null_as_default")]
    pub(crate) pool_id: String,
    /// CIDR.
    #[serde(rename = "Pool", deserialize_with = "null_as_default")]
    pub(crate) pool: String,
    #[serde(rename = "Data", deserialize_with = "null_as_default")]
    pub(crate) data: StringMap,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ReleasePoolRequest {
    #[serde(rename = "PoolID", deserialize_with = "null_as_default")]
    pub(crate) pool_id: String,
}

/// `IpamDriver.RequestAddress`. An empty `address` means any free one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RequestAddressRequest {
    #[serde(rename = "PoolID", deserialize_with = "null_as_default")]
    pub(crate) pool_id: String,
    #[serde(rename = "Address", deserialize_with = "null_as_default")]
    pub(crate) address: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub(crate) options: StringMap,
}

impl RequestAddressRequest {
    /// Whether dockerd asks for the network's gateway rather than an
    /// endpoint's address.
    pub(crate) fn is_gateway(&self) -> bool {
        self.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS)
    }
}

/// The reply to RequestAddress: the address in CIDR form.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct RequestAddressResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) address: String,
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) data: StringMap,
}

/// `IpamDriver.ReleaseAddress`. Unlike RequestAddress's reply, `address` is
/// a bare IP (dockerd 20.10 sends `10.0.0.2`, not `10.0.0.2/24`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", deserialize_with = "null_as_default")]
    pub(crate) pool_id: String,
    #[serde(rename = "Address", deserialize_with = "null_as_default")]
    pub(crate) address: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// Parses `text`, then checks that writing it back gives `expect`.
    fn round_trip<T: DeserializeOwned + Serialize>(text: &str, expect: Value) -> T {
        let v: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(serde_json::to_value(&v).unwrap(), expect, "{text}");
        v
    }

    fn write<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn activate_and_capabilities() {
        assert_eq!(
            write(&ActivateResponse::network_and_ipam()),
            json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        );
        let caps = CapabilitiesResponse { scope: Scope::Global, connectivity_scope: None };
        assert_eq!(write(&caps), json!({"Scope": "global"}));
        let caps =
            CapabilitiesResponse { scope: Scope::Local, connectivity_scope: Some(Scope::Global) };
        assert_eq!(write(&caps), json!({"Scope": "local", "ConnectivityScope": "global"}));
        assert_eq!(write(&Empty {}), json!({}));
    }

    #[test]
    fn create_network_as_dockerd_sends_it() {
        // Shape of a capture from dockerd 20.10 (`docker network create -o
        // foo=bar`), with a field from a newer dockerd added.
        let text = r#"{"NetworkID":"9377","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"foo":"bar","n":3}},
            "IPv4Data":[{"AddressSpace":"l","Gateway":"10.98.0.1/24","Pool":"10.98.0.0/24",
            "AuxAddresses":{"r":"10.98.0.5/24"}}],"IPv6Data":[],"Future":{"x":1}}"#;
        let r: CreateNetworkRequest = round_trip(
            text,
            json!({"NetworkID":"9377","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"foo":"bar","n":3}},
            "IPv4Data":[{"AddressSpace":"l","Gateway":"10.98.0.1/24","Pool":"10.98.0.0/24",
            "AuxAddresses":{"r":"10.98.0.5/24"}}],"IPv6Data":[]}),
        );
        assert_eq!(r.network_id, "9377");
        assert_eq!(r.ipv4_data[0].gateway, "10.98.0.1/24");
        assert_eq!(r.ipv4_data[0].aux_addresses["r"], "10.98.0.5/24");
        // The number is not a string: dropped, not an error.
        assert_eq!(r.generic_options(), StringMap::from([("foo".into(), "bar".into())]));

        // Nil Go maps and slices, and an IPAMData without Pool or Gateway
        // (Go's marshaller leaves nil ones out).
        let r: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"n","Options":null,"IPv4Data":[{"AddressSpace":"g"}],"IPv6Data":null}"#,
        )
        .unwrap();
        assert!(r.options.is_empty() && r.ipv6_data.is_empty());
        assert_eq!(r.ipv4_data[0].address_space, "g");
        assert!(r.ipv4_data[0].pool.is_empty() && r.generic_options().is_empty());
        let r: CreateNetworkRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, CreateNetworkRequest::default());

        let r: DeleteNetworkRequest =
            round_trip(r#"{"NetworkID":"9377","Why":1}"#, json!({"NetworkID":"9377"}));
        assert_eq!(r.network_id, "9377");
    }

    #[test]
    fn endpoints() {
        let text = r#"{"NetworkID":"n1","EndpointID":"e1",
            "Interface":{"Address":"10.98.0.2/24","AddressIPv6":"","MacAddress":"02:42:78:bd:a2:57"},
            "Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}"#;
        let r: CreateEndpointRequest = serde_json::from_str(text).unwrap();
        assert_eq!((r.network_id.as_str(), r.endpoint_id.as_str()), ("n1", "e1"));
        let iface = r.interface.clone().unwrap();
        assert_eq!(iface.address, "10.98.0.2/24");
        assert_eq!(iface.mac_address, "02:42:78:bd:a2:57");
        assert!(iface.address_ipv6.is_empty());
        assert_eq!(r.options["com.docker.network.portmap"], json!([]));
        let r: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n1","EndpointID":"e1","Interface":null,"Options":null}"#,
        )
        .unwrap();
        assert!(r.interface.is_none() && r.options.is_empty());

        // Nothing to fill in: no Interface at all; dockerd reads a missing
        // and a null one alike.
        assert_eq!(write(&CreateEndpointResponse::default()), json!({}));
        let r: CreateEndpointResponse = serde_json::from_str(r#"{"Interface":null}"#).unwrap();
        assert!(r.interface.is_none());
        let filled = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:00:0a:62:00:02".into(),
                ..Default::default()
            }),
        };
        round_trip::<CreateEndpointResponse>(
            r#"{"Interface":{"MacAddress":"02:00:0a:62:00:02","Address":""}}"#,
            write(&filled),
        );
        assert_eq!(write(&filled), json!({"Interface": {"MacAddress": "02:00:0a:62:00:02"}}));

        for text in [
            r#"{"NetworkID":"n1","EndpointID":"e1"}"#,
            r#"{"EndpointID":"e1","NetworkID":"n1","X":null}"#,
        ] {
            let r: EndpointRequest = round_trip(text, json!({"NetworkID":"n1","EndpointID":"e1"}));
            assert_eq!(r.endpoint_id, "e1");
        }

        let info = EndpointOperInfoResponse {
            value: Options::from_iter([("com.docker.network.portmap".into(), json!([]))]),
        };
        round_trip::<EndpointOperInfoResponse>(
            r#"{"Value":{"com.docker.network.portmap":[]}}"#,
            write(&info),
        );
        let r: EndpointOperInfoResponse = serde_json::from_str(r#"{"Value":null}"#).unwrap();
        assert!(r.value.is_empty());
    }

    #[test]
    fn join_and_leave() {
        let text = r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/var/run/docker/netns/78969cae91f9",
            "Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}"#;
        let r: JoinRequest = serde_json::from_str(text).unwrap();
        assert_eq!(r.sandbox_key, "/var/run/docker/netns/78969cae91f9");
        assert_eq!((r.network_id.as_str(), r.endpoint_id.as_str()), ("n1", "e1"));
        assert_eq!(r.options.len(), 2);
        let r: JoinRequest = serde_json::from_str(r#"{"SandboxKey":"k","Options":null}"#).unwrap();
        assert!(r.options.is_empty());

        let reply = JoinResponse {
            interface_name: Some(InterfaceName {
                src_name: "nd-e1".into(),
                dst_prefix: "eth".into(),
            }),
            gateway: "10.98.0.1".into(),
            gateway_ipv6: "fd00::1".into(),
            static_routes: vec![
                StaticRoute {
                    destination: "10.99.0.0/16".into(),
                    route_type: RouteType::NextHop,
                    next_hop: "10.98.0.254".into(),
                },
                StaticRoute {
                    destination: "10.97.0.0/24".into(),
                    route_type: RouteType::Connected,
                    next_hop: String::new(),
                },
            ],
            disable_gateway_service: true,
        };
        let expect = json!({
            "InterfaceName": {"SrcName": "nd-e1", "DstPrefix": "eth"},
            "Gateway": "10.98.0.1",
            "GatewayIPv6": "fd00::1",
            "StaticRoutes": [
                {"Destination": "10.99.0.0/16", "RouteType": 0, "NextHop": "10.98.0.254"},
                {"Destination": "10.97.0.0/24", "RouteType": 1}
            ],
            "DisableGatewayService": true
        });
        assert_eq!(write(&reply), expect);
        // DstName is in Go's struct but dockerd ignores it.
        let back: JoinResponse = round_trip(
            r#"{"InterfaceName":{"SrcName":"nd-e1","DstName":"x","DstPrefix":"eth"},
            "Gateway":"10.98.0.1","GatewayIPv6":"fd00::1","StaticRoutes":[
            {"Destination":"10.99.0.0/16","RouteType":0,"NextHop":"10.98.0.254"},
            {"Destination":"10.97.0.0/24","RouteType":1,"NextHop":""}],
            "DisableGatewayService":true,"Err":""}"#,
            expect,
        );
        assert_eq!(back, reply);
        assert_eq!(write(&JoinResponse::default()), json!({"DisableGatewayService": false}));
        assert!(
            serde_json::from_str::<StaticRoute>(r#"{"Destination":"x","RouteType":2}"#).is_err()
        );

        let r: ProgramExternalConnectivityRequest = round_trip(
            r#"{"NetworkID":"n1","EndpointID":"e1","Options":{"com.docker.network.portmap":[{"Proto":6}]}}"#,
            json!({"NetworkID":"n1","EndpointID":"e1","Options":{"com.docker.network.portmap":[{"Proto":6}]}}),
        );
        assert_eq!(r.options["com.docker.network.portmap"][0]["Proto"], 6);
        let r: ProgramExternalConnectivityRequest =
            serde_json::from_str(r#"{"NetworkID":"n1","EndpointID":"e1","Options":null}"#).unwrap();
        assert!(r.options.is_empty() && r.endpoint_id == "e1" && r.network_id == "n1");
    }

    #[test]
    fn discovery() {
        let r: DiscoveryNotification = serde_json::from_str(
            r#"{"DiscoveryType":1,"DiscoveryData":{"Address":"192.0.2.7","BindAddress":"0.0.0.0","Self":false}}"#,
        )
        .unwrap();
        assert_eq!(r.discovery_type, 1);
        assert_eq!(r.discovery_data["Address"], "192.0.2.7");
    }

    #[test]
    fn ipam() {
        assert_eq!(
            write(&IpamCapabilitiesResponse {
                requires_mac_address: true,
                requires_request_replay: false
            }),
            json!({"RequiresMACAddress": true, "RequiresRequestReplay": false})
        );
        let spaces: AddressSpacesResponse = round_trip(
            r#"{"LocalDefaultAddressSpace":"netdb-local","GlobalDefaultAddressSpace":"netdb","Error":""}"#,
            json!({"LocalDefaultAddressSpace":"netdb-local","GlobalDefaultAddressSpace":"netdb"}),
        );
        assert_eq!(spaces.global_default_address_space, "netdb");
        assert_eq!(spaces.local_default_address_space, "netdb-local");

        let r: RequestPoolRequest = round_trip(
            r#"{"AddressSpace":"l","Pool":"","SubPool":"","Options":{},"V6":false}"#,
            json!({"AddressSpace":"l","Pool":"","SubPool":"","Options":{},"V6":false}),
        );
        assert_eq!(r.address_space, "l");
        let r: RequestPoolRequest = serde_json::from_str(
            r#"{"AddressSpace":"g","Pool":"10.1.0.0/16","SubPool":"10.1.2.0/24","Options":null,"V6":true}"#,
        )
        .unwrap();
        assert!(r.v6 && r.options.is_empty());
        assert_eq!((r.pool.as_str(), r.sub_pool.as_str()), ("10.1.0.0/16", "10.1.2.0/24"));
        let reply = RequestPoolResponse {
            pool_id: "netdb/10.1.0.0/16".into(),
            pool: "10.1.0.0/16".into(),
            data: StringMap::from([(GATEWAY_ADDRESS.into(), "10.1.0.1/16".into())]),
        };
        round_trip::<RequestPoolResponse>(
            r#"{"PoolID":"netdb/10.1.0.0/16","Pool":"10.1.0.0/16","Data":{"com.docker.network.gateway":"10.1.0.1/16"}}"#,
            write(&reply),
        );
        let r: ReleasePoolRequest = round_trip(r#"{"PoolID":"p1"}"#, json!({"PoolID":"p1"}));
        assert_eq!(r.pool_id, "p1");

        let gw: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"p1","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(gw.is_gateway());
        let ep: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"p1","Address":"10.98.0.9","Options":{"com.docker.network.endpoint.macaddress":"02:42:78:bd:a2:57"}}"#,
        )
        .unwrap();
        assert!(!ep.is_gateway());
        assert_eq!((ep.pool_id.as_str(), ep.address.as_str()), ("p1", "10.98.0.9"));
        let ep: RequestAddressRequest =
            serde_json::from_str(r#"{"PoolID":"p1","Options":null}"#).unwrap();
        assert!(ep.address.is_empty() && !ep.is_gateway());
        let reply =
            RequestAddressResponse { address: "10.98.0.2/24".into(), data: StringMap::new() };
        assert_eq!(write(&reply), json!({"Address": "10.98.0.2/24"}));
        let r: ReleaseAddressRequest = round_trip(
            r#"{"PoolID":"p1","Address":"10.98.0.2"}"#,
            json!({"PoolID":"p1","Address":"10.98.0.2"}),
        );
        assert_eq!(r.address, "10.98.0.2");
    }

    #[test]
    fn error_bodies_by_interface() {
        let v = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
        assert_eq!(
            v(error_body("/IpamDriver.RequestPool", "no space")),
            json!({"Error": "no space"})
        );
        assert_eq!(v(error_body("IpamDriver.RequestAddress", "full")), json!({"Error": "full"}));
        assert_eq!(
            v(error_body("/NetworkDriver.Join", "no \"veth\"")),
            json!({"Err": "no \"veth\""})
        );
        assert_eq!(v(error_body("Plugin.Activate", "x")), json!({"Err": "x"}));
        assert_eq!(v(status_error_body("use POST")), json!({"Err": "use POST"}));
    }
}
