//! netdb's gossip wire format: the datagrams and push/pull frames agents
//! exchange, as protobuf messages (prost). The gRPC admin API lives apart,
//! in `netdb-api`, so the core carries no RPC or I/O runtime.
#![allow(missing_docs, unreachable_pub)] // generated code

include!(concat!(env!("OUT_DIR"), "/netdb.wire.v1.rs"));
