//! netdb's wire format: the protobuf messages of `wire.proto`, and the size
//! limits every decoder applies before it allocates anything.

pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/netdb.wire.v1.rs"));
}
