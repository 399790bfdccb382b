//! gRPC server plumbing every service uses the same way.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// Server reflection over APOLLO's descriptor set plus gRPC health, so
/// `grpcurl` works against any APOLLO service without local protos.
pub fn reflection_service(
) -> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(apollo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// Incoming connections from an already bound listener (so tests can bind
/// `127.0.0.1:0`), with `TCP_NODELAY`: small unary answers must not wait for
/// Nagle plus delayed ACK (about 40 ms per call otherwise).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
