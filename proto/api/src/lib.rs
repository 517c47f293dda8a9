//! netdb's gRPC admin API (`netdb.api.v1`), client and server, as tonic
//! generates them; only the agent and its CLI depend on it.

/// The generated messages and the `Netdb` service.
#[allow(missing_docs, unreachable_pub, unused_qualifications)] // generated code
mod generated {
    include!(concat!(env!("OUT_DIR"), "/netdb.api.v1.rs"));
}
pub use generated::*;

/// Encoded descriptors of every message and service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/netdb_descriptor.bin"));
