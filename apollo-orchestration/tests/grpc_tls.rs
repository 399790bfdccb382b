//! The service's gRPC server with mutual TLS, against a real NATS server.

use std::time::Duration;

use apollo_common::{shutdown::CancellationToken, testing::TestNats};
use clap::Parser as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_signed_by_the_client_ca() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca();
    let client_ca = ca();
    let (cert, key) = leaf(&server_ca, "localhost");
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    std::fs::write(dir.path().join("clients.pem"), client_ca.pem()).unwrap();
    let mut config = apollo_orchestration::Config::parse_from([
        "apollo-orchestration".to_string(),
        format!("--tls-cert={}", dir.path().join("tls.crt").display()),
        format!("--tls-key={}", dir.path().join("tls.key").display()),
        format!(
            "--tls-client-ca={}",
            dir.path().join("clients.pem").display()
        ),
    ]);
    let (n, s) = nats.bus_args();
    config.nats = n;
    config.streams = s;
    config.observability.shutdown_grace = Duration::from_millis(300);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let server = tokio::spawn(apollo_orchestration::serve(config, listener, token.clone()));

    let trusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca.pem()))
        .domain_name("localhost");
    let check = |tls: Option<ClientTlsConfig>| async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };

    let (c_cert, c_key) = leaf(&client_ca, "apolloctl");
    let admitted = check(Some(
        trusting.clone().identity(Identity::from_pem(c_cert, c_key)),
    ))
    .await;
    assert_eq!(admitted, Ok(()));
    let anonymous = check(Some(trusting)).await;
    assert!(
        anonymous.is_err(),
        "client without certificate: {anonymous:?}"
    );
    let plain = check(None).await;
    assert!(plain.is_err(), "plaintext client: {plain:?}");

    token.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn unreadable_key_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = leaf(&ca(), "localhost");
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    let key = dir.path().join("absent.key");
    let config = apollo_orchestration::Config::parse_from([
        "apollo-orchestration".to_string(),
        format!("--tls-cert={}", dir.path().join("tls.crt").display()),
        format!("--tls-key={}", key.display()),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = apollo_orchestration::serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot read TLS key {}", key.display())),
        "{err}"
    );
}
