//! APOLLO's wire format (protobuf package `apollo`).
//!
//! Generated from `proto/apollo.proto`, which keeps every field number of the
//! deployed contract. Every message also implements serde with the protobuf JSON
//! mapping (lowerCamelCase names, enum names, int64 as strings, RFC 3339
//! timestamps), which is what APOLLO publishes on NATS so that people and any
//! protobuf tool can read the streams.

#![allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]

/// Generated types, clients and servers of package `apollo`.
pub mod apollo {
    tonic::include_proto!("apollo");
    include!(concat!(env!("OUT_DIR"), "/apollo.serde.rs"));
}

pub use apollo::*;
pub use pbjson_types::Timestamp;

/// Encoded `FileDescriptorSet` of `apollo.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/apollo_descriptor.bin"));
