//! gRPC TLS and mutual TLS with real certificates, a real tonic server on
//! 127.0.0.1:0 and real tonic clients.

use std::{path::Path, time::Duration};

use apollo_common::grpc_tls::{self, GrpcTlsArgs, ServerTls, TlsError};
use apollo_common::testing::TestCa;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

type Ca = TestCa;

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// A health-only gRPC server with the given TLS settings; returns its port.
async fn start_server(tls: Option<ServerTls>, shutdown: CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = grpc_tls::incoming(listener, tls.as_ref());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    port
}

/// One health check over a fresh connection; Ok when the server answered.
async fn check(port: u16, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let channel: Channel = match tls {
        None => Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?,
        Some(tls) => Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| format!("tls config: {e:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?,
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| format!("call: {e:?}"))
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost")
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

#[tokio::test]
async fn tls_server_answers_tls_clients_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.leaf("localhost");
    let args = GrpcTlsArgs {
        server_cert: Some(write(dir.path(), "server.pem", &cert)),
        server_key: Some(write(dir.path(), "server.key", &key)),
        client_ca: None,
    };
    let tls = ServerTls::from_args(&args).unwrap().expect("TLS is on");
    let shutdown = CancellationToken::new();
    let port = start_server(Some(tls), shutdown.clone()).await;

    assert_eq!(check(port, Some(trusting(&ca))).await, Ok(SERVING));
    let plain = check(port, None).await;
    assert!(plain.is_err(), "plaintext client got {plain:?}");
    // A client that does not trust the server's CA is refused too.
    let other = Ca::new("other CA");
    let untrusted = check(port, Some(trusting(&other))).await;
    assert!(untrusted.is_err(), "untrusting client got {untrusted:?}");
    // The server still answers after the refused connections.
    assert_eq!(check(port, Some(trusting(&ca))).await, Ok(SERVING));
    shutdown.cancel();
}

#[tokio::test]
async fn plaintext_stays_the_default() {
    let args = GrpcTlsArgs::default();
    assert!(ServerTls::from_args(&args).unwrap().is_none());
    let shutdown = CancellationToken::new();
    let port = start_server(None, shutdown.clone()).await;
    assert_eq!(check(port, None).await, Ok(SERVING));
    shutdown.cancel();
}

#[tokio::test]
async fn client_ca_requires_a_certificate_signed_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = server_ca.leaf("localhost");
    let args = GrpcTlsArgs {
        server_cert: Some(write(dir.path(), "server.pem", &cert)),
        server_key: Some(write(dir.path(), "server.key", &key)),
        client_ca: Some(write(dir.path(), "clients.pem", &client_ca.pem())),
    };
    let tls = ServerTls::from_args(&args).unwrap().expect("TLS is on");
    let shutdown = CancellationToken::new();
    let port = start_server(Some(tls), shutdown.clone()).await;

    let anonymous = check(port, Some(trusting(&server_ca))).await;
    assert!(
        anonymous.is_err(),
        "client without certificate got {anonymous:?}"
    );

    let stranger = Ca::new("stranger CA");
    let (s_cert, s_key) = stranger.leaf("intruder");
    let foreign = check(
        port,
        Some(trusting(&server_ca).identity(Identity::from_pem(s_cert, s_key))),
    )
    .await;
    assert!(
        foreign.is_err(),
        "client signed by another CA got {foreign:?}"
    );

    let (c_cert, c_key) = client_ca.leaf("apolloctl");
    let signed = check(
        port,
        Some(trusting(&server_ca).identity(Identity::from_pem(c_cert, c_key))),
    )
    .await;
    assert_eq!(signed, Ok(SERVING));
    shutdown.cancel();
}

#[tokio::test]
async fn rotated_certificate_files_reach_new_connections_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let (cert, key) = old_ca.leaf("localhost");
    let cert_path = write(dir.path(), "server.pem", &cert);
    let key_path = write(dir.path(), "server.key", &key);
    let args = GrpcTlsArgs {
        server_cert: Some(cert_path.clone()),
        server_key: Some(key_path.clone()),
        client_ca: None,
    };
    let tls = ServerTls::from_args_with_recheck(&args, Duration::ZERO)
        .unwrap()
        .expect("TLS is on");
    let shutdown = CancellationToken::new();
    let port = start_server(Some(tls), shutdown.clone()).await;

    assert_eq!(check(port, Some(trusting(&old_ca))).await, Ok(SERVING));
    assert!(check(port, Some(trusting(&new_ca))).await.is_err());

    // Rotate: new certificate and key, written in place (key first, as a
    // careless rotation would; the mismatched pair in between is skipped).
    let (cert2, key2) = new_ca.leaf("localhost");
    std::fs::write(&key_path, key2).unwrap();
    std::fs::write(&cert_path, cert2).unwrap();

    assert_eq!(check(port, Some(trusting(&new_ca))).await, Ok(SERVING));
    let stale = check(port, Some(trusting(&old_ca))).await;
    assert!(stale.is_err(), "old certificate still served: {stale:?}");
    shutdown.cancel();
}

#[test]
fn unusable_files_are_refused_at_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.leaf("localhost");
    let cert_path = write(dir.path(), "server.pem", &cert);
    let missing_key = dir.path().join("missing.key");

    let err = ServerTls::from_args(&GrpcTlsArgs {
        server_cert: Some(cert_path.clone()),
        server_key: Some(missing_key.clone()),
        client_ca: None,
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot read TLS key {}", missing_key.display())),
        "{msg}"
    );

    let garbage = write(dir.path(), "garbage.key", "not a key\n");
    let msg = ServerTls::from_args(&GrpcTlsArgs {
        server_cert: Some(cert_path.clone()),
        server_key: Some(garbage.clone()),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(&format!("invalid TLS key {}", garbage.display())),
        "{msg}"
    );

    let (_, other_key) = ca.leaf("localhost");
    let mismatched = write(dir.path(), "other.key", &other_key);
    let msg = ServerTls::from_args(&GrpcTlsArgs {
        server_cert: Some(cert_path.clone()),
        server_key: Some(mismatched.clone()),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("does not match the certificate"), "{msg}");

    let bad_cert = write(dir.path(), "bad.pem", "hello\n");
    let msg = ServerTls::from_args(&GrpcTlsArgs {
        server_cert: Some(bad_cert.clone()),
        server_key: Some(write(dir.path(), "server.key", &key)),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(&format!("invalid TLS certificate {}", bad_cert.display())),
        "{msg}"
    );

    let bad_ca = write(dir.path(), "bad-ca.pem", "");
    let msg = ServerTls::from_args(&GrpcTlsArgs {
        server_cert: Some(cert_path),
        server_key: Some(write(dir.path(), "server.key", &key)),
        client_ca: Some(bad_ca.clone()),
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(&format!("invalid TLS client CA {}", bad_ca.display())),
        "{msg}"
    );
}
