//! netdb's protobuf schemas: the gossip wire format (`wire`) and the gRPC
//! admin API (`api`, client and server).

pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/netdb.wire.v1.rs"));
}

pub mod api {
    include!(concat!(env!("OUT_DIR"), "/netdb.api.v1.rs"));
}

/// Encoded descriptors of every message and service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/netdb_descriptor.bin"));
